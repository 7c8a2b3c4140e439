"""Wire bytes and the trace in a whole run: the summary, the per-step rows and the stored trace
agree with one another, and the same seed gives the same wire bytes."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import re
import threading
import time

import numpy as np
import pytest
import torch
from conftest import KeptMetrics

from suite import trace
from suite.config import RunConfig, apply_overrides
from suite.launcher import launch
from suite.loop import Job, Trainer
from suite.transport import Transport

SMALL = ["model.hidden=16", "eval_every=0", "eval_per_rank=false", "device=cpu", "log_every=2"]


def _train(cfg: RunConfig) -> tuple | None:
    sink = KeptMetrics()
    transport = Transport()
    job = Job(cfg, target="test", paper="test", progress=False)
    summary, artifacts = Trainer(job, transport, sink if transport.rank == 0 else None).run()
    if summary is None:
        return None
    return summary, artifacts, sink.logged


def _run(n: int, *items: str) -> tuple[dict, dict, list]:
    cfg = apply_overrides(RunConfig(), [*SMALL, f"nproc={n}", *items])
    return launch(_train, n, (cfg,))[0]


@pytest.fixture(scope="module")
def allreduce() -> tuple[dict, dict, list]:
    return _run(3, "algorithm=allreduce_sgd", "steps=4")


def test_summary_and_rows_carry_wire_bytes(allreduce: tuple) -> None:
    summary, _, rows = allreduce
    n = summary["num_params"] * 4
    # ring all-reduce on 3 ranks: 2 (N-1) n per step on the wire, n per rank of payload
    assert summary["wire_bytes"] == 4 * 2 * 2 * n
    assert summary["bytes_sent"] == 4 * 3 * n
    per_rank = [r["wire_bytes"] for r in summary["per_rank"]]
    assert sum(per_rank) == summary["wire_bytes"] and summary["wire_bytes_max"] == max(per_rank)
    assert summary["link_wire_bytes_max"] == max(per_rank)  # one out-link per rank: the ring
    wire_rows = [m["wire_bytes"] for _, m in rows if "wire_bytes" in m]
    assert wire_rows == [(s + 1) * 2 * 2 * n for s in range(4)]  # cumulative, summed over ranks


def test_the_trace_has_one_record_per_op_in_order(allreduce: tuple) -> None:
    summary, artifacts, _ = allreduce
    tr = trace.load(artifacts[trace.ARTIFACT])
    comm = json.loads(artifacts["comm.json"])
    assert tr.world_size == 3 and tr.channels[:2] == ("algorithm", "harness")
    assert tr.truncated == (False, False, False)
    for rank, records in enumerate(tr.ranks):
        algo = records[records["channel"] == tr.channels.index("algorithm")]
        assert [trace.KINDS[k] for k in algo["kind"]] == ["all_reduce"] * 4
        assert list(algo["step"]) == [0, 1, 2, 3]
        assert (records["gap"] >= 0).all() and (records["seconds"] >= 0).all()
        assert (np.diff(records["step"]) >= 0).all()
        # every counted call is a record, and nothing after training's end is either (the
        # end-of-run gathers that ship the counters and the trace are in neither)
        harness = records[records["channel"] == tr.channels.index("harness")]
        assert len(algo) == comm[rank]["algorithm"]["calls"]
        # the rows gathers between evaluations are async: each is a call and a wait record
        calls = harness[harness["kind"] != trace.KIND["wait"]]
        assert len(calls) == comm[rank]["harness"]["calls"]
        waits = np.flatnonzero(records["kind"] == trace.KIND["wait"])
        assert len(waits) == 1  # steps 0-1's rows, taken at step 3's flush
        for i in waits:
            assert trace.KINDS[records["kind"][records["ref"][i]]] == "gather"
            assert records["channel"][i] == tr.channels.index("harness")
    # each rank's compute after its last record, to training's end (the final evaluation's
    # all-reduce is the last record: what follows is bookkeeping, well under a second)
    assert len(tr.tail) == 3 and all(0 <= t < 1.0 for t in tr.tail)
    assert tr.wire_bytes() == summary["wire_bytes"]
    assert max(tr.link_wire_bytes().values()) == summary["link_wire_bytes_max"]


def test_a_point_to_point_trace_replays_the_summary_and_waits_point_back() -> None:
    summary, artifacts, _ = _run(3, "algorithm=eventgrad", "steps=6")
    tr = trace.load(artifacts[trace.ARTIFACT])
    assert tr.wire_bytes() == summary["wire_bytes"] > 0
    for records in tr.ranks:
        kinds = [trace.KINDS[k] for k in records["kind"]]
        assert "send" in kinds and "wait" in kinds
        for i in np.flatnonzero(records["kind"] == trace.KIND["wait"]):
            ref = records["ref"][i]
            # the algorithm's sends and receives, and the harness's async rows gathers
            assert 0 <= ref < i and kinds[ref] in ("send", "recv", "gather")
            assert records["peer"][ref] == records["peer"][i]
            assert records["channel"][ref] == records["channel"][i]
        assert (records["gap"] >= 0).all()


def test_the_same_seed_gives_the_same_wire_bytes() -> None:
    runs = [_run(2, "algorithm=eventgrad", "steps=6", "seed=3") for _ in range(2)]
    (a, art_a, _), (b, art_b, _) = runs
    assert a["wire_bytes"] == b["wire_bytes"] > 0
    assert a["link_wire_bytes_max"] == b["link_wire_bytes_max"]
    la = trace.load(art_a[trace.ARTIFACT]).link_wire_bytes()
    assert la == trace.load(art_b[trace.ARTIFACT]).link_wire_bytes()


def test_load_reads_the_artifact_from_a_path(allreduce: tuple, tmp_path) -> None:
    _, artifacts, _ = allreduce
    path = tmp_path / trace.ARTIFACT
    path.write_text(artifacts[trace.ARTIFACT])
    tr = trace.load(path)
    assert tr.wire_bytes() == trace.load(artifacts[trace.ARTIFACT]).wire_bytes()


def _whole_and_resumed(cfg: RunConfig, folder: str) -> tuple[dict, dict] | None:
    """Artifacts of a run checkpointed after step 5, and of the same run resumed from there."""
    from suite import checkpoint as ckpt

    first = Job(cfg, "t", "p", progress=False, checkpoint=ckpt.Checkpointing(folder, every=5))
    _, whole = Trainer(first, Transport()).run()
    resumed = dataclasses.replace(first, checkpoint=ckpt.Checkpointing(folder, 5, resume=True))
    _, again = Trainer(resumed, Transport()).run()
    return (whole, again) if whole else None


def _algorithm_ops(tr: trace.Trace) -> list[list[tuple]]:
    c = tr.channels.index("algorithm")
    return [
        [
            (int(r["step"]), trace.KINDS[r["kind"]], tr.groups[r["group"]], int(r["peer"]),
             int(r["payload"]), int(r["tag"]))
            for r in records[records["channel"] == c]
        ]
        for records in tr.ranks
    ]  # fmt: skip


def test_a_resumed_run_keeps_the_trace_of_its_first_life(tmp_path) -> None:
    cfg = apply_overrides(RunConfig(), [*SMALL, "nproc=3", "algorithm=eventgrad", "steps=8"])
    whole, again = launch(_whole_and_resumed, 3, (cfg, str(tmp_path)))[0]
    ops = _algorithm_ops(trace.load(whole[trace.ARTIFACT]))
    assert {op[0] for op in ops[0]} == set(range(8))
    assert _algorithm_ops(trace.load(again[trace.ARTIFACT])) == ops


def test_a_rank_stops_recording_at_the_limit_and_the_trace_says_so(monkeypatch) -> None:
    monkeypatch.setattr(trace, "MAX_RECORDS", 3)  # the ranks fork from here
    summary, artifacts, _ = _run(2, "algorithm=allreduce_sgd", "steps=6")
    tr = trace.load(artifacts[trace.ARTIFACT])
    assert tr.truncated == (True, True)
    assert [len(records) for records in tr.ranks] == [3, 3]
    assert summary["wire_bytes"] > tr.wire_bytes()  # the counters go on; the trace stopped
    recorder = trace.Recorder(limit=2)
    for _ in range(4):
        recorder.note(0, 0, -1, 8, 0, 1.0, 2.0)
    assert len(recorder) == 2 and recorder.truncated and not recorder.enabled


def _noted_one_by_one(recorder: trace.Recorder, ops: list) -> None:
    """What ``append`` stands for: each issue, then each wait, noted as the transport's
    ``all_reduce_async`` and ``Work.wait`` note them."""
    issued = [recorder.note(1, 2, -1, n, 0, t0, t1) for n, t0, t1, _, _ in ops]
    for (n, _, _, began, ended), index in zip(ops, issued, strict=True):
        if index >= 0:
            recorder.note(trace.KIND["wait"], 2, -1, n, 0, began, ended, index)


def _packed(recorder: trace.Recorder, ops: list) -> tuple[bytes, float]:
    """``ops`` packed as DDP's compiled hook packs them (baselines/ddp_hook.cpp: ``take``),
    from where ``recorder`` stands, and when the last of them ends."""
    nan, last, first, rows = math.nan, recorder.last_end, recorder.count, b""
    head = (recorder.step, 1, 2, -1)
    for n, t0, t1, _, _ in ops:
        rows += trace._PACK(*head, n, 0, recorder.channel, t0 - last, t1 - t0, -1, nan, nan)
        last = t1
    for index, (n, _, _, began, ended) in enumerate(ops, first):
        wait = (recorder.step, trace.KIND["wait"], 2, -1, n, 0, recorder.channel)
        rows += trace._PACK(*wait, began - last, ended - began, index, nan, nan)
        last = ended
    return rows, last


@pytest.mark.parametrize("limit", [100, 5, 4, 2])  # room for all; past it mid-way; at once
def test_appending_packed_waited_ops_is_noting_each_op(limit: int) -> None:
    ops = [(40, 1.0, 1.5, 2.125, 2.25), (8, 1.75, 2.0, 2.25, 2.5), (16, 2.0, 2.125, 2.5, 3.0)]
    batch, single = trace.Recorder(limit=limit), trace.Recorder(limit=limit)
    batch.last_end = single.last_end = 0.0
    batch.note(0, 0, -1, 4, 0, 0.25, 0.5)  # a record before: the first gap counts from it
    single.note(0, 0, -1, 4, 0, 0.25, 0.5)
    batch.step = single.step = 7
    batch.channel = single.channel = 1
    rows, last_end = _packed(batch, ops)
    batch.append(rows, last_end)
    _noted_one_by_one(single, ops)
    assert len(batch) == len(single) == min(limit, 7)
    assert batch.truncated == single.truncated == (limit <= 7)
    if limit == 100:
        assert batch.last_end == single.last_end == 3.0
    for field in trace.FIELDS:  # field by field: NaN (the cpu fields) equals NaN there
        np.testing.assert_array_equal(batch.records()[field], single.records()[field])
    if limit == 100:
        records = batch.records()
        assert list(records["kind"][1:]) == [1, 1, 1] + [trace.KIND["wait"]] * 3
        assert list(records["ref"][4:]) == [1, 2, 3]
        assert records["gap"][1] == 0.5 and records["gap"][4] == 0.0
        assert records["seconds"][6] == 0.5
        assert (records["step"][1:] == 7).all() and (records["channel"][1:] == 1).all()
    off = trace.Recorder()
    off.end()
    off.append(rows, last_end)
    assert len(off) == 0
    with pytest.raises(ValueError, match="CPU seconds"):  # an emulated run's recorder
        trace.Recorder(cpu=True).append(rows, last_end)


def test_a_record_has_its_gaps_cpu_seconds_apart_from_its_wall_seconds() -> None:
    """cpu: the main thread's CPU seconds since the previous record. A gap asleep is wall time
    without CPU; a gap computing is CPU (the network model's demand on shared processors)."""
    recorder = trace.Recorder(cpu=True)  # emulated runs' recorders (trace.CPU_CLOCK)
    time.sleep(0.05)
    recorder.note(0, 0, -1, 8, 0, time.perf_counter(), time.perf_counter())
    busy = time.thread_time()
    while time.thread_time() - busy < 0.05:
        pass
    recorder.note(0, 0, -1, 8, 0, time.perf_counter(), time.perf_counter())
    asleep, computing = recorder.records()
    assert asleep["gap"] >= 0.05
    assert asleep["cpu"] < 0.025
    assert computing["cpu"] >= 0.05 and computing["gap"] >= 0.05
    recorder = trace.Recorder()  # elsewhere the clock is not read (it costs a system call)
    recorder.note(0, 0, -1, 8, 0, time.perf_counter(), time.perf_counter())
    assert np.isnan(recorder.records()["cpu"]).all()
    assert np.isnan(recorder.records()["other_cpu"]).all()


def _burn(seconds: float) -> None:
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


def test_other_threads_cpu_is_kept_apart_from_the_main_threads() -> None:
    """other_cpu: the CPU seconds of the rank's other threads since the previous record (gloo
    moves a collective's bytes in its own threads); cpu keeps the main thread's alone."""
    recorder = trace.Recorder(cpu=True)
    _burn(0.03)  # the gap's compute, on the main thread
    t0 = time.perf_counter()
    worker = threading.Thread(target=_burn, args=(0.06,))  # the op's work, in another thread
    worker.start()
    worker.join()
    recorder.note(0, 0, -1, 8, 0, t0, time.perf_counter())
    (record,) = recorder.records()
    assert 0.03 <= record["cpu"] < 0.055
    assert 0.06 <= record["other_cpu"] < 0.085


def test_traces_and_checkpoints_stored_before_the_cpu_fields_still_load(tmp_path) -> None:
    """Version 1 (no ``cpu``, no ``other_cpu``) and 2 (no ``other_cpu``): the records load with
    what is missing NaN (unknown), in an artifact and in a checkpoint's transport state."""
    for version, missing in ((1, ("cpu", "other_cpu")), (2, ("other_cpu",))):
        fields = [name for name in trace.FIELDS if name not in missing]
        old = np.dtype([(name, trace.DTYPE[name]) for name in fields])
        records = np.zeros(2, dtype=old)
        records["kind"], records["gap"], records["ref"] = trace.KIND["all_reduce"], 0.25, -1
        records["payload"] = 8
        text = trace.encode(1, [(0,)], ["algorithm"], [records])
        buffer = io.BytesIO()  # the same artifact, as that version wrote it
        with np.load(io.BytesIO(base64.b64decode(text))) as npz:
            meta = json.dumps({**json.loads(npz["meta"].tobytes().decode()), "version": version})
        np.savez_compressed(buffer, rank0=records, meta=np.frombuffer(meta.encode(), np.uint8))
        tr = trace.load(base64.b64encode(buffer.getvalue()).decode())
        assert tr.ranks[0].dtype == trace.DTYPE
        assert (tr.ranks[0]["gap"] == 0.25).all()
        for name in missing:
            assert np.isnan(tr.ranks[0][name]).all(), (version, name)
        if version == 2:
            assert (tr.ranks[0]["cpu"] == 0).all()  # kept
            continue
        (loaded,) = launch(_resume_from_version_1, 1, (records,))
        assert len(loaded) == 2 and np.isnan(loaded["cpu"]).all() and (loaded["gap"] == 0.25).all()


def _resume_from_version_1(records: np.ndarray) -> np.ndarray:
    """A checkpoint's transport state as written before ``cpu`` (no "fields"), loaded."""
    transport = Transport()
    state = transport.state_dict()
    state["_trace"] = {"records": torch.from_numpy(records.view(np.uint8).copy()),
                       "groups": [[0]], "channels": ["algorithm"]}  # fmt: skip
    transport.load_state_dict(state)
    return transport.trace_records()[0]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"junk\n", "neither a .npz archive nor its base64 text"),
        (base64.b64encode(b"not a zip"), "neither a .npz archive nor its base64 text"),
        (b"PK\x03\x04garbage", "a damaged or foreign .npz (File is not a zip file)"),
        (b"", "neither a .npz archive nor its base64 text"),
    ],
)
def test_a_file_that_is_not_a_trace_is_a_clear_error(tmp_path, capsys, content, why) -> None:
    from suite import cli

    path = tmp_path / "x.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="^" + re.escape(why)):
        trace.load(path)
    assert cli.main(["replay", str(path)]) == 2  # not a traceback
    assert f"{path} is not a trace artifact" in capsys.readouterr().err


def test_base64_text_wrapped_over_lines_still_loads(tmp_path) -> None:
    buf = io.BytesIO()
    np.savez(buf, other=np.zeros(3))
    text = base64.encodebytes(buf.getvalue())  # 76 columns a line, as the base64 tool writes
    assert b"\n" in text.strip()
    with pytest.raises(ValueError, match=r"a damaged or foreign \.npz"):  # decoded, then judged
        trace.load(text)


def test_an_npz_that_is_not_a_trace_is_a_clear_error(tmp_path) -> None:
    buf = io.BytesIO()
    np.savez(buf, other=np.zeros(3))  # a real archive, without the trace's meta
    with pytest.raises(ValueError, match=r"a damaged or foreign \.npz"):
        trace.load(buf.getvalue())
