"""The practitioners' baselines: ddp, ddp_fp16/ddp_bf16 and powersgd (baselines/ddp.py,
baselines/powersgd.py) train as their references do and count what they send."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from conftest import last_json, suite_cmd
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel

from baselines import ddp_hook
from suite import transport
from suite.config import RunConfig, apply_overrides
from suite.launcher import RankFailure, heartbeat, launch
from suite.loop import Job, Trainer, build_dataset, initial_model
from suite.netmodel import NetworkSpec, op_seconds, replay
from suite.tasks.data import ShardedBatches
from suite.trace import DTYPE, KIND, Trace
from suite.transport import Transport

SMALL = [
    "dataset=digits",
    "model=mlp",
    "model.hidden=32",
    "eval_every=0",
    "eval_per_rank=false",
    "device=cpu",
    "batch_size=16",
]


def _config(*items: str) -> RunConfig:
    return apply_overrides(RunConfig(), [*SMALL, *items])


def _train(cfg: RunConfig, held: int | None = None) -> dict:
    """Train; with the run's result, every read of the transport's totals by the loop's rows
    (``rows``: bytes sent and received, messages, wire bytes) and, by each, how many
    all-reduces a compiled hook held untaken (``held``). ``held`` bounds those
    (transport.OUTSIDE_HELD)."""
    if held is not None:
        transport.OUTSIDE_HELD = held  # in this forked rank only
    trainer = Trainer(Job(cfg, target="test", paper="test", progress=False), Transport())
    rows, holding, counted = [], [], trainer.transport.counted

    def reading() -> tuple[float, ...]:
        totals = counted()
        rows.append(totals[:4])
        shared = trainer.transport._counters.outside_shared
        holding.append(0 if shared is None else shared[transport.OUTSIDE_SLOTS.index("calls")])
        return totals

    trainer.transport.counted = reading
    summary, _ = trainer.run()
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    records, *_ = trainer.transport.trace_records()
    return {
        "state": state,
        "summary": summary,
        "compiled": getattr(trainer.algorithm, "compiled", None) is not None,
        "counts": trainer.transport.stats.to_dict(),
        "trace": records,
        "rows": rows,
        "held": holding,
    }


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize(("micro_batches", "bucket_cap_mb"), [(1, 25.0), (2, 25.0), (1, 0.001)])
def test_ddp_on_two_ranks_equals_allreduce_sgd_and_one_process_on_the_union_batch(
    micro_batches: int, bucket_cap_mb: float
) -> None:
    common = ["steps=12", f"micro_batches={micro_batches}", "optim.momentum=0.9"]
    cap = f"algorithm.bucket_cap_mb={bucket_cap_mb}"
    ddp = launch(_train, 2, (_config("algorithm=ddp", cap, "nproc=2", *common),))
    ref = launch(_train, 2, (_config("algorithm=allreduce_sgd", "nproc=2", *common),))[0]
    one_cfg = _config("algorithm=single", "nproc=1", "batch_size=32", *common)
    one = launch(_train, 1, (one_cfg,))[0]
    assert _max_diff(ddp[0]["state"], ddp[1]["state"]) == 0.0  # ranks stay identical
    assert _max_diff(ddp[0]["state"], ref["state"]) < 1e-5
    assert _max_diff(ddp[0]["state"], one["state"]) < 1e-5
    init = initial_model(one_cfg, build_dataset(one_cfg)).state_dict()
    assert _max_diff(init, one["state"]) > 1e-3  # the runs really moved
    # the whole gradient once per step, nothing else: one all-reduce if it fits one bucket
    summary = ddp[0]["summary"]
    assert summary["bytes_sent"] == 12 * 2 * summary["num_params"] * 4
    # a bucket closes once past 1 KiB: fc2 (1.3 KiB), then fc1 (8.3 KiB)
    buckets = 1 if bucket_cap_mb == 25.0 else 2
    assert summary["messages"] == 12 * 2 * buckets


def test_16_bit_buckets_halve_ddps_wire_bytes_at_about_the_same_accuracy() -> None:
    common = ["nproc=2", "steps=60", "eval_every=60", "optim.lr=0.1"]
    out = {
        name: launch(_train, 2, (_config(f"algorithm={name}", *common),))[0]["summary"]
        for name in ("ddp", "ddp_fp16", "ddp_bf16")
    }
    full = out["ddp"]
    assert full["wire_bytes"] == 60 * 2 * full["num_params"] * 4  # ring on 2 ranks: |x| each
    for half in ("ddp_fp16", "ddp_bf16"):
        assert out[half]["wire_bytes"] * 2 == full["wire_bytes"]
        assert out[half]["bytes_sent"] * 2 == full["bytes_sent"]
        assert abs(out[half]["test_accuracy"] - full["test_accuracy"]) <= 0.02
    assert full["test_accuracy"] > 0.8


def _powersgd_bytes(model: torch.nn.Module, rank: int, start: int, steps: int) -> int:
    """One rank's counted bytes: plain all-reduces before ``start``, then per step the
    uncompressed tensors plus P (n r) and Q (m r) of each matrix worth compressing, with each
    gradient viewed as PyTorch's hook views it (shape[0] x the rest)."""
    dense = sum(p.numel() for p in model.parameters())
    per_step = 0
    for p in model.parameters():
        n, m = p.shape[0], p.numel() // p.shape[0]
        r = min(n, m, rank)
        per_step += (n + m) * r if (n + m) * r * 2.0 < n * m else n * m
    return 4 * (start * dense + (steps - start) * per_step)


@pytest.mark.parametrize("rank", [1, 2])
def test_powersgd_counts_its_rank_r_closed_form(rank: int) -> None:
    steps, start = 10, 3
    cfg = _config(
        "algorithm=powersgd",
        f"algorithm.rank={rank}",
        f"algorithm.start_iter={start}",
        "nproc=2",
        f"steps={steps}",
    )
    summary = launch(_train, 2, (cfg,))[0]["summary"]
    model = initial_model(cfg, build_dataset(cfg))
    expected = _powersgd_bytes(model, rank, start, steps)
    assert expected < 4 * steps * summary["num_params"] / 2  # it does compress
    assert [r["bytes_sent"] for r in summary["per_rank"]] == [expected] * 2
    assert summary["wire_bytes"] == 2 * expected  # ring all-reduce on 2 ranks
    # one bucket: one all-reduce a step, then three (uncompressed, Ps, Qs)
    assert summary["messages"] == 2 * (start + 3 * (steps - start))


def _torch_ddp(cfg: RunConfig, hook: str) -> dict:
    """The same run with torch's own DDP and hooks, in a plain loop (no transport)."""
    data = build_dataset(cfg)
    model = initial_model(cfg, data)
    ddp = DistributedDataParallel(model, init_sync=False, forward_sync_buffers=False)
    state = None
    if hook == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif hook == "powersgd":
        args = cfg.algorithm.args
        state = powerSGD_hook.PowerSGDState(
            None, matrix_approximation_rank=args.rank, start_powerSGD_iter=args.start_iter
        )
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    batches = ShardedBatches(data, cfg.batch_size, dist.get_rank(), cfg.nproc, cfg.seed)
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=False)
        x, y = next(batches)
        F.cross_entropy(ddp(x), y).backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("name", "hook", "extra"),
    [
        ("ddp", "none", []),
        ("ddp_fp16", "fp16", []),
        ("powersgd", "powersgd", ["algorithm.start_iter=3", "algorithm.rank=2"]),
    ],
)
def test_each_equals_torchs_own_ddp_hook_on_two_ranks(
    name: str, hook: str, extra: list[str]
) -> None:
    cfg = _config(f"algorithm={name}", "nproc=2", "steps=12", "optim.momentum=0.9", *extra)
    ours = launch(_train, 2, (cfg,))
    theirs = launch(_torch_ddp, 2, (cfg, hook))
    init = initial_model(cfg, build_dataset(cfg)).state_dict()
    for r in range(2):
        assert _max_diff(ours[r]["state"], theirs[r]) < 1e-5, f"rank {r}"
        assert _max_diff(init, theirs[r]) > 1e-3


@pytest.mark.parametrize("target", ["ddp", "ddp_bf16", "powersgd"])
def test_the_baselines_run_through_the_cli(tmp_path: Path, target: str) -> None:
    proc = suite_cmd(
        "run", target, "--steps", "20", "--nproc", "2", "--no-track", "--quiet", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = last_json(proc.stdout)
    assert summary["algorithm"] == target and summary["steps"] == 20
    assert summary["wire_bytes"] > 0 and summary["network_seconds"] > 0


@pytest.mark.parametrize("compute", [0.5, 2.0])
def test_a_replayed_async_all_reduce_overlaps_the_compute_before_its_wait(compute: float) -> None:
    # a DDP bucket: the all-reduce is issued, backward goes on, the rank waits at the end
    net = NetworkSpec(1e9, 1e-3)
    n = 4_000_000
    cost = op_seconds("all_reduce", n, 2, net)
    rows = [
        (0, KIND["all_reduce"], 0, -1, n, 0, 0, 0.0, 0.0, -1, np.nan, np.nan),
        (0, KIND["wait"], 0, -1, n, 0, 0, compute * cost, 0.0, 0, np.nan, np.nan),
    ]
    ranks = tuple(np.array(rows, dtype=DTYPE) for _ in range(2))
    timeline = replay(Trace(2, ((0, 1),), ("algorithm", "harness"), ranks), net)
    assert timeline.network_seconds == pytest.approx(max(1.0, compute) * cost)


def _collectives_while_built(cfg: RunConfig) -> tuple[int, int]:
    """Collectives the process group ran while the algorithm was built, and the bytes the
    transport counted meanwhile."""
    group = dist.distributed_c10d._get_default_group()
    before = group._get_sequence_number_for_group()
    trainer = Trainer(Job(cfg, target="test", paper="test", progress=False), Transport())
    return group._get_sequence_number_for_group() - before, trainer.transport.stats.bytes_sent


@pytest.mark.parametrize("name", ["ddp", "ddp_bf16", "powersgd"])
def test_building_sends_only_ddps_bucket_assignment(name: str) -> None:
    # settle_buckets' dry passes go through the hook, which passes the zeros through: what is
    # left is DDP's broadcast of its rebuilt bucket assignment (two small integer tensors),
    # set-up outside the transport as the module docstring says. DDP's built-in all-reduce
    # of the zeros (the hook registered after the dry passes) made it 4.
    cfg = _config(f"algorithm={name}", "nproc=2", "steps=1")
    assert launch(_collectives_while_built, 2, (cfg,)) == [(2, 0)] * 2


@pytest.mark.parametrize(
    ("compression", "bucket_cap_mb", "held"),
    [("none", 25.0, None), ("none", 0.001, None), ("bf16", 0.001, None), ("none", 0.001, 1)],
)
def test_the_compiled_hook_trains_counts_and_traces_as_the_python_hook(
    compression: str, bucket_cap_mb: float, held: int | None
) -> None:
    """The same model, counters, per-step rows and trace, the rows read while the compiled
    hook still holds its all-reduces (the transport takes them only when read, or at the
    bound ``held``), the trace in time order with the harness's gathers (every 3 steps)."""
    common = [
        "algorithm=ddp", "nproc=2", "steps=7", "micro_batches=2", "optim.momentum=0.9",
        f"algorithm.compression={compression}", f"algorithm.bucket_cap_mb={bucket_cap_mb}",
        "log_every=3",
    ]  # fmt: skip
    buckets = 1 if bucket_cap_mb > 1 else 2
    runs, took = {}, {}
    for hook in ("compiled", "python"):
        began = time.perf_counter()
        runs[hook] = launch(_train, 2, (_config(*common, f"algorithm.hook={hook}"), held))
        took[hook] = time.perf_counter() - began
    for r in range(2):
        compiled, python = runs["compiled"][r], runs["python"][r]
        for run in (compiled, python):  # the trace's time in the all-reduces is the counters'
            traced = run["trace"][run["trace"]["channel"] == 0]["seconds"].sum()
            assert traced == pytest.approx(run["counts"]["ops"]["all_reduce"]["seconds"])
        assert compiled["compiled"] and not python["compiled"]
        assert _max_diff(compiled["state"], python["state"]) == 0.0, f"rank {r}"
        counts = {k: v for k, v in compiled["counts"].items() if k != "seconds"}
        expected = {k: v for k, v in python["counts"].items() if k != "seconds"}
        for op in (*counts["ops"].values(), *expected["ops"].values()):
            op.pop("seconds")
        assert counts == expected and counts["messages"] == 7 * buckets
        assert compiled["rows"] == python["rows"] and len(compiled["rows"]) == 2 * 7
        # held across steps until a gather took them (at most 2 steps, then 3, at the bound 0)
        assert max(compiled["held"]) == (3 * buckets if held is None else 0)
        assert max(python["held"]) == 0
        # one issue and one wait record per all-reduce, in the same order, with their sizes
        fields = ["step", "kind", "group", "peer", "payload", "tag", "channel", "ref"]
        assert compiled["trace"][fields].tolist() == python["trace"][fields].tolist()
        assert (compiled["trace"]["channel"] == 1).sum() >= 2  # the harness's gathers between
        for name in ("gap", "seconds"):
            assert (compiled["trace"][name] >= 0).all()
        # the records tile part of the run's time: gaps are from the previous record's end
        spans = compiled["trace"]["gap"].sum() + compiled["trace"]["seconds"].sum()
        assert 0 < spans < took["compiled"]
        ref = compiled["trace"]["ref"]
        waits = (compiled["trace"]["kind"] == KIND["wait"]) & (compiled["trace"]["channel"] == 0)
        assert (compiled["trace"]["kind"][ref[waits]] == KIND["all_reduce"]).all()
    assert runs["compiled"][0]["summary"]["network_seconds"] > 0


def test_ddp_falls_back_to_its_python_hook_where_the_compiled_one_cannot_be_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch.utils.cpp_extension

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error building extension: g++: not found")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    with pytest.warns(RuntimeWarning, match=r"could not be built \(.*g\+\+: not found\).*Python"):
        assert ddp_hook.build() is None


def test_a_hook_choice_outside_the_two_is_refused() -> None:
    refused = r"'c' for algorithm\.hook; valid choices: compiled, python"
    with pytest.raises(ValueError, match=refused):
        _config("algorithm=ddp", "algorithm.hook=c")


@pytest.mark.timeout(240)  # the bug this guards against waits forever
def test_a_torch_build_lock_left_by_a_killed_process_does_not_stop_later_builds() -> None:
    from torch.utils.cpp_extension import _get_build_directory

    assert ddp_hook.build() is not None  # built (or found built) first
    lock = Path(_get_build_directory(ddp_hook.NAME, False)) / "lock"
    lock.touch()  # as a process killed inside torch's load() leaves it
    assert ddp_hook.build() is not None
    assert not lock.exists()


def _peer_hangs_after_beating(cfg: RunConfig, hook: str) -> None:
    """Three steps, then rank 1 waits half a second, beats and hangs, while rank 0 goes on
    into step 3, where its backward pass waits (in C++, for the compiled hook) for rank 1's
    all-reduce. Rank 1's last beat is newer than any rank 0 makes before that backward: only
    rank 0's mark as communicating keeps the blame off it."""
    trainer = Trainer(Job(cfg, target="test", paper="test", progress=False), Transport())
    assert (trainer.algorithm.compiled is not None) == (hook == "compiled")
    trainer.begin()
    for step in range(3):
        trainer.train_step(step)
    if dist.get_rank() == 1:
        time.sleep(0.5)
        heartbeat()
        time.sleep(3600)
    trainer.train_step(3)


@pytest.mark.timeout(240)  # a first build of the compiled hook takes about a minute
@pytest.mark.parametrize("hook", ["compiled", "python"])
def test_a_peer_hanging_while_ddp_waits_in_backward_is_the_one_blamed(hook: str) -> None:
    cfg = _config("algorithm=ddp", f"algorithm.hook={hook}", "nproc=2", "steps=10")
    if hook == "compiled":  # built (a minute, the first time) or loaded before the clock starts
        assert ddp_hook.compiled() is not None
    start = time.monotonic()
    with pytest.raises(RankFailure) as info:
        launch(_peer_hangs_after_beating, 2, (cfg, hook), hang_timeout=3)
    failure = info.value
    assert failure.rank == 1, failure.report()
    assert "hung" in failure.reason
    assert "in _peer_hangs_after_beating" in failure.details  # its own stack, where it sleeps
    assert list(failure.others) == [0]
    assert time.monotonic() - start < 3 + 20
