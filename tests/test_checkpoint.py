"""Checkpoints and `suite resume`: a run stopped after a checkpoint and resumed ends exactly where
the uninterrupted run ends; checkpoints survive a kill mid-write; resume refuses what it cannot
continue."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from conftest import ROOT, last_json, suite_cmd
from torch.utils.data import TensorDataset

from baselines.consensus_backup import observations
from suite import checkpoint as ckpt
from suite.algorithms.dybw import DyBWRule
from suite.cli import build_config, main
from suite.config import apply_overrides, flatten
from suite.launcher import RankFailure, launch
from suite.loop import Job, Trainer, run_worker
from suite.registry import ALGORITHMS
from suite.stragglers import StragglerConfig, StragglerModel, VirtualClock
from suite.tasks.data import Dataset, ShardedBatches, TensorSplit
from suite.transport import Transport

# Knobs that make each algorithm's state matter within a few steps (thresholds that move,
# residuals, error averaging, late messages), on top of a small model.
EXTRA = {
    "allreduce_sgd": ["optim.momentum=0.9"],
    "eventgrad": ["algorithm.warmup=2", "algorithm.horizon=0.95"],
    "powersgd": ["algorithm.start_iter=3"],  # compressing across the checkpoint
    "eventgrad_topk": ["algorithm.warmup=2", "algorithm.horizon=0.95"],
    "saef": [
        "algorithm.compressor=top_k",
        "algorithm.compressor.ratio=0.1",
        "algorithm.average_every=3",
        "optim.momentum=0.9",
    ],
    "dybw": [
        "algorithm.straggler.slow_ranks=3",
        "algorithm.straggler.slow_prob=0.5",
        "algorithm.window=4",
    ],
}
SMALL = ["model.hidden=16", "batch_size=16", "eval_every=3", "log_every=2", "device=cpu"]
# What may differ between equal runs: time, and bookkeeping that checkpointing itself adds.
NOISY = {
    "wall_seconds",
    "train_seconds",
    "samples_per_second",
    "compute_seconds",
    "comm_seconds",
    "network_seconds",  # replays measured compute gaps
    "network_seconds_per_step",
    "network_seconds_to_target",
    "reference_step_ms",  # the host's speed, timed after training
    "per_rank",
    "run_id",
    "checkpoints",
    "checkpoint_seconds",
    "harness_bytes_sent",
}


def _deterministic(summary: dict) -> dict:
    out = {k: v for k, v in summary.items() if k not in NOISY}
    out["per_rank"] = [
        (r["bytes_sent"], r["bytes_recv"], r["messages"]) for r in summary["per_rank"]
    ]
    return out


# ---------------------------------------------------------------------------------------------
# The codec


def _policy() -> dict:
    """An algorithm's kind of state: a virtual straggler clock, a DyBW rule (windows of
    observations), a generator, a list both share."""
    peers = [[1, 2], [0, 2], [0, 1]]
    model = StragglerModel(StragglerConfig(slow_ranks=(2,), slow_prob=0.5), 3)
    return {
        "clock": VirtualClock(model, peers, late="use"),
        "rule": DyBWRule(peers, [0, 1, 2], window=3),
        "generator": torch.Generator().manual_seed(3),
        "last": None,
    }


def _advance(policy: dict, steps: int) -> list:
    out = []
    for _ in range(steps):
        clock, rule = policy["clock"], policy["rule"]
        it = clock.step(rule.backups(), rule.required(clock.t))
        rule.observe(observations(it, clock.in_peers))
        policy["last"] = it
        out.append(
            (it.end.tolist(), it.used, it.late_used, torch.rand(2, generator=policy["generator"]))
        )
    return out


def _object_naming(path: str) -> dict:
    return {"__ckpt__": "object", "id": 0, "class": path, "attrs": {"seed": 7}}


@pytest.mark.parametrize(
    "path",
    [
        "suite.__main__:X",  # importing it would run the CLI: a module no job loads
        "suite.checkpoint:Path",  # pathlib's, re-exported by a suite module
        "suite.checkpoint:np.random.Generator",  # reached through a module attribute
        "os:system",  # outside the suite's packages
    ],
)
def test_a_checkpoint_naming_a_class_outside_the_loaded_suite_is_refused(path: str) -> None:
    """Rank files come from folders a shared store points to: decoding one imports nothing and
    builds no class but the suite's own."""
    loaded = set(sys.modules)
    with pytest.raises(ValueError, match="checkpoint names class"):
        ckpt.restore(_object_naming(path))
    assert set(sys.modules) == loaded  # nothing was imported on the file's say-so


def test_a_checkpoint_naming_a_suite_class_is_rebuilt() -> None:
    restored = ckpt.restore(_object_naming("suite.stragglers:StragglerConfig"))
    assert type(restored) is StragglerConfig and restored.seed == 7


def test_the_codec_restores_state_in_place_through_weights_only_files(tmp_path: Path) -> None:
    live = _policy()
    _advance(live, 6)
    ckpt.save_rank(tmp_path, 6, 0, ckpt.capture(live))
    fresh = _policy()
    clock, window = fresh["clock"], fresh["rule"].windows[0]
    out = ckpt.restore(ckpt.load_rank(tmp_path, 6, 0), fresh)  # weights_only: plain data
    assert out is fresh and fresh["clock"] is clock and fresh["rule"].windows[0] is window
    assert fresh["rule"].in_peers is fresh["clock"].in_peers  # shared before, shared after
    assert fresh["last"].t == 5 and len(window) == 3
    # the restored state goes on exactly as the original
    assert str(_advance(fresh, 4)) == str(_advance(live, 4))

    live["rule"].lock = threading.Lock()  # what cannot be saved is named, not dropped
    with pytest.raises(TypeError, match=r"state\['rule'\]\.lock"):
        ckpt.capture(live)


def test_auto_checkpoints_only_runs_projected_longer_than_a_few_minutes() -> None:
    assert ckpt.auto_interval(0.05, 2000) == 0  # 100 s: a smoke run, no checkpoints
    assert ckpt.auto_interval(1.0, 100_000) == 600  # every ~10 minutes
    assert ckpt.auto_interval(2000.0, 10) == 1


@pytest.mark.parametrize("split", ["tensors", "loader"])
def test_the_data_position_resumes_mid_epoch(split: str) -> None:
    x, y = torch.arange(40.0).view(20, 2), torch.arange(20) % 2
    train = TensorSplit(x, y) if split == "tensors" else TensorDataset(x, y)

    def noisy(batch: torch.Tensor, train: bool, gen: torch.Generator | None) -> torch.Tensor:
        return batch + torch.rand(batch.shape, generator=gen)  # augmentation draws

    data = Dataset("d", (2,), 2, train, TensorSplit(x, y), noisy)
    first = ShardedBatches(data, 3, 1, 2, seed=4)  # 3 batches per epoch
    for _ in range(4):
        next(first)
    state = ckpt.restore(ckpt.capture(first.state_dict()))
    again = ShardedBatches(data, 3, 1, 2, seed=4)
    again.load_state_dict(state)
    for _ in range(4):  # the rest of epoch 1, then epoch 2
        (a, ya), (b, yb) = next(first), next(again)
        assert torch.equal(a, b) and torch.equal(ya, yb)


# ---------------------------------------------------------------------------------------------
# Atomic writes: a kill at any point leaves the previous checkpoint usable

_KILLER = textwrap.dedent(
    """
    import builtins, os, signal, sys
    import torch
    from suite import checkpoint as ckpt

    folder, victim = sys.argv[1], sys.argv[2]
    ckpt.save_rank(folder, 1, 0, {"w": torch.arange(1000.0)})
    ckpt.write_manifest(folder, {"step": 1})

    real_open = builtins.open

    class Dying:
        # a file that dies (SIGKILL) halfway through the first large write
        def __init__(self, f):
            self.f = f
        def write(self, data):
            self.f.write(bytes(data)[: len(data) // 2])
            self.f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        def __getattr__(self, name):
            return getattr(self.f, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.f.close()

    def dying_open(path, *args, **kwargs):
        f = real_open(path, *args, **kwargs)
        return Dying(f) if victim in os.fspath(path) else f

    builtins.open = dying_open
    ckpt.save_rank(folder, 2, 0, {"w": torch.arange(1000.0) + 1})
    ckpt.write_manifest(folder, {"step": 2})
    """
)


@pytest.mark.parametrize("victim", ["rank0.pt", "manifest.json"])
def test_a_kill_mid_write_leaves_the_previous_checkpoint_usable(
    tmp_path: Path, victim: str
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, str(tmp_path), victim], env=env, capture_output=True
    )
    assert proc.returncode == -9, proc.stderr.decode()  # really killed mid-write
    manifest = ckpt.read_manifest(tmp_path)
    assert manifest is not None and manifest["step"] == 1
    assert torch.equal(ckpt.load_rank(tmp_path, 1, 0)["w"], torch.arange(1000.0))


# ---------------------------------------------------------------------------------------------
# Every registered algorithm: checkpoint, resume in a fresh trainer, the same end


def _twice(cfg: object, folder: str) -> tuple[dict, dict]:
    """Train with a checkpoint after step 5, then again from that checkpoint."""
    first = Job(cfg, "t", "p", progress=False, checkpoint=ckpt.Checkpointing(folder, every=5))
    whole, _ = Trainer(first, Transport()).run()
    resumed = dataclasses.replace(first, checkpoint=ckpt.Checkpointing(folder, 5, resume=True))
    again, _ = Trainer(resumed, Transport()).run()
    return whole, again


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_algorithm_resumes_to_the_same_end(tmp_path: Path, name: str) -> None:
    n = ALGORITHMS.get(name).meta.get("world_size") or (4 if name == "dybw" else 3)
    cfg = apply_overrides(
        build_config(_args(name, n))[0], [*SMALL, "steps=8", *EXTRA.get(name, [])]
    )
    whole, again = launch(_twice, n, (cfg, str(tmp_path)))[0]
    assert whole["checkpoints"] == 1 and again["steps"] == 8
    assert _deterministic(again) == _deterministic(whole)


def _args(target: str, nproc: int, *extra: str) -> argparse.Namespace:
    return argparse.Namespace(
        target=target, set=list(extra), nproc=nproc, seed=None, steps=None, epochs=None,
        data_dir=None, device=None,
    )  # fmt: skip


def _plain(job: Job) -> dict:
    return Trainer(job, Transport()).run()[0]


def test_auto_agrees_on_an_interval_from_the_measured_step_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = apply_overrides(build_config(_args("allreduce_sgd", 2))[0], [*SMALL, "steps=8"])
    auto = Job(cfg, "t", "p", progress=False, checkpoint=ckpt.Checkpointing(str(tmp_path)))

    assert launch(_plain, 2, (auto,))[0]["checkpoints"] == 0  # a smoke run: none
    monkeypatch.setattr(ckpt, "AUTO_MIN_SECONDS", 0.0)  # the ranks fork from here
    monkeypatch.setattr(ckpt, "AUTO_PERIOD_SECONDS", 1e-9)  # -> every step after log_every
    # decided after log_every = 2 steps; then after every step but the last: 2, 3, ..., 7
    assert launch(_plain, 2, (auto,))[0]["checkpoints"] == 6
    assert ckpt.read_manifest(tmp_path)["step"] == 7


# ---------------------------------------------------------------------------------------------
# The CLI: a crashed run resumed with `suite resume` equals the uninterrupted run

CLI_SETS = ["eval_every=8", "log_every=4", "model.hidden=16", "batch_size=16"]
CLI = ["--steps", "16", *(x for item in CLI_SETS for x in ("--set", item)),
       "--checkpoint-every", "5", "--json", "--quiet"]  # fmt: skip
CRASH = ["--set", "fault.kind=crash", "--set", "fault.rank=1", "--set", "fault.step=12"]
NAMED = [("allreduce_sgd", 2), ("eventgrad", 3), ("saef", 3), ("crossover_sgd", 4), ("dybw", 4)]


def _job(target: str, n: int, *extra: str, **kwargs: object) -> Job:
    """The job `suite run TARGET --nproc N` + CLI + EXTRA builds (with ``extra`` on top)."""
    sets = [*CLI_SETS, *EXTRA.get(target, []), "steps=16", "epochs=0", *extra]
    cfg, paper = build_config(_args(target, n, *sets))
    return Job(cfg, target, paper, progress=False, **kwargs)


@pytest.mark.parametrize(("target", "n"), NAMED[:-1])
def test_a_crashed_run_resumed_from_its_folder_ends_as_the_uninterrupted_one(
    tmp_path: Path, target: str, n: int
) -> None:
    folder = str(tmp_path / "ck")
    crash = [f"fault.{item}" for item in ("kind=crash", "rank=1", "step=12")]
    crashing = _job(target, n, *crash, checkpoint=ckpt.Checkpointing(folder, 5))
    with pytest.raises(RankFailure, match="rank 1 crashes at step 12"):
        launch(run_worker, n, (crashing,))  # untracked: its checkpoints are in the folder
    assert ckpt.read_manifest(folder)["step"] == 10
    resumed = suite_cmd("resume", "--checkpoint-dir", folder, "--json", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    summary = last_json(resumed.stdout)
    assert summary["steps"] == 16 and summary["checkpoints"] == 3  # after 5, 10 and 15
    assert _deterministic(summary) == _deterministic(launch(_plain, n, (_job(target, n),))[0])
    assert not Path(folder).exists()  # spent: removed once the run finished


def test_a_tracked_crashed_run_resumes_into_the_same_mlflow_run(
    store: tuple[str, object], tmp_path: Path
) -> None:
    uri, client = store
    target, n = NAMED[-1]
    sets = [x for item in EXTRA[target] for x in ("--set", item)]
    run = ["run", target, "--nproc", str(n), *CLI, *sets, "--experiment", "tracked"]
    crashed = suite_cmd(*run, *CRASH, "--tracking-uri", uri, cwd=tmp_path)
    assert crashed.returncode == 1, crashed.stderr
    (found,) = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    run_id = found.info.run_id
    assert found.info.status == "FAILED"
    assert f"continue with: suite resume {run_id}" in crashed.stderr
    folder = Path(found.data.tags["suite.checkpoint_dir"])
    assert folder.parent == Path(uri.removeprefix("sqlite:///")).parent / "checkpoints"
    assert ckpt.read_manifest(folder)["step"] == 10

    resumed = suite_cmd("resume", run_id, "--json", "--tracking-uri", uri, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    summary = last_json(resumed.stdout)
    assert summary["run_id"] == run_id
    assert _deterministic(summary) == _deterministic(launch(_plain, n, (_job(target, n),))[0])
    found = client.get_run(run_id)
    assert found.info.status == "FINISHED" and found.data.tags["suite.resumed_from_step"] == "10"
    assert found.data.metrics["final.steps"] == 16
    steps = {m.step for m in client.get_metric_history(run_id, "train_loss")}
    assert steps == set(range(16))  # the first life's rows and the resumed ones, one run
    assert not folder.exists()


# ---------------------------------------------------------------------------------------------
# What resume refuses (exit 2, saying why), before anything starts


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    """One MLflow store for these tests (creating one costs seconds)."""
    from suite.tracking import open_client

    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    return uri, open_client(uri)


def _make_run(client: object, status: str, experiment: str = "x", **tags: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run_id = client.create_run(exp_id, tags={"target": "allreduce_sgd", **tags}).info.run_id
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


@pytest.mark.parametrize(
    ("status", "with_checkpoint", "reason"),
    [
        (None, False, "no run 'feedc0de'"),
        ("FINISHED", True, "is FINISHED"),
        ("RUNNING", True, "is RUNNING"),
        ("FAILED", False, "has no checkpoint"),
        ("diverged", True, "diverged"),
    ],
)
def test_resume_refuses_what_it_cannot_continue(
    store: tuple[str, object],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    status: str | None,
    with_checkpoint: bool,
    reason: str,
) -> None:
    uri, client = store
    folder = tmp_path / "ck"
    if with_checkpoint:
        folder.mkdir()
        ckpt.write_manifest(folder, {"step": 3})
    tags = {"suite.checkpoint_dir": str(folder)}
    if status == "diverged":  # a run that stopped on a non-finite loss (FAILED, tagged)
        status, tags["suite.diverged"] = "FAILED", "true"
    run_id = "feedc0de" if status is None else _make_run(client, status, **tags)
    assert main(["resume", run_id, "--tracking-uri", uri]) == 2
    assert reason in capsys.readouterr().err
    if status is not None:
        assert client.get_run(run_id).info.status == status  # untouched


def test_a_checkpoint_folder_in_use_is_refused(tmp_path: Path) -> None:
    """Two jobs on one folder (two `suite resume` of a run, one --checkpoint-dir twice) delete
    each other's checkpoints: the second is refused, exit 2, until the first ends."""
    folder = tmp_path / "ck"
    fd = ckpt.hold(folder)
    assert ckpt.hold(folder) == fd  # this process's next job on it: held already
    other = "import sys; from suite import checkpoint; checkpoint.hold(sys.argv[1])"
    refused = subprocess.run(
        [sys.executable, "-c", other, str(folder)], capture_output=True, text=True, cwd=ROOT
    )
    assert refused.returncode != 0 and "is in use by another job" in refused.stderr
    args = ("--no-track", "--checkpoint-every", "5", "--checkpoint-dir", str(folder))
    run = suite_cmd("run", "allreduce_sgd", "--steps", "2", *args, cwd=tmp_path)
    assert run.returncode == 2 and f"checkpoint folder {folder} is in use" in run.stderr
    cfg = build_config(_args("allreduce_sgd", 2))[0]
    manifest = {"step": 3, "every": 5, "target": "allreduce_sgd", "config": flatten(cfg)}
    ckpt.write_manifest(folder, manifest)
    again = suite_cmd("resume", "--checkpoint-dir", str(folder), cwd=tmp_path)
    assert again.returncode == 2 and "is in use by another job" in again.stderr, again.stderr
    assert ckpt.read_manifest(folder)["step"] == 3  # untouched
    os.close(ckpt._HELD.pop(str(folder.resolve())))  # the first job's process ends
    free = subprocess.run([sys.executable, "-c", other, str(folder)], cwd=ROOT)
    assert free.returncode == 0


@pytest.mark.parametrize("manifest", [{"step": 3}, {"step": 3, "target": "single"}])
def test_a_manifest_missing_what_resume_needs_is_refused(tmp_path: Path, manifest) -> None:
    ckpt.write_manifest(tmp_path, manifest)
    done = suite_cmd("resume", "--checkpoint-dir", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "refusing to resume" in done.stderr or "names no target" in done.stderr


def test_checkpoints_of_an_untracked_run_need_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()  # the preflight lowers it for the ranks it would fork
    try:
        code = main(["run", "allreduce_sgd", "--no-track", "--checkpoint-every", "5"])
    finally:
        torch.set_num_threads(threads)
    assert code == 2 and "--checkpoint-dir" in capsys.readouterr().err


@pytest.mark.parametrize("every", ["auto", "5"])
def test_a_new_run_refuses_a_folder_holding_another_runs_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], every: str
) -> None:
    """A crashed run's checkpoint, waiting for `suite resume`: a new run pointed at its folder
    would have deleted it (its own saves, and its cleanup once it finished)."""
    folder = tmp_path / "ck"
    folder.mkdir()
    ckpt.write_manifest(folder, {"step": 7, "every": 5})
    (folder / "step-000000007").mkdir()
    argv = ["run", "allreduce_sgd", "--no-track", "--steps", "2", "--checkpoint-dir", str(folder)]
    threads = torch.get_num_threads()
    try:
        code = main([*argv, "--checkpoint-every", every])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert code == 2 and "holds the checkpoint of another run (after step 7)" in err, err
    assert f"suite resume --checkpoint-dir {folder}" in err
    assert ckpt.read_manifest(folder)["step"] == 7 and (folder / "step-000000007").is_dir()
    assert not ckpt.is_held(folder)  # left free for the `suite resume` the message suggests


def test_a_run_that_cannot_be_checkpointed_runs_without(tmp_path: Path) -> None:
    real = ["algorithm.clock=real", "algorithm.time_scale=0.001", "steps=6"]
    cfg = apply_overrides(build_config(_args("consensus_backup", 2))[0], [*SMALL, *real])
    job = Job(cfg, "t", "p", progress=False, checkpoint=ckpt.Checkpointing(str(tmp_path), 2))
    assert launch(_plain, 2, (job,))[0]["checkpoints"] == 0
    assert ckpt.read_manifest(tmp_path) is None


# ---------------------------------------------------------------------------------------------
# suite reproduce resumes a failed run that has a checkpoint instead of starting it again


def test_reproduce_resumes_a_failed_run_with_a_checkpoint(
    store: tuple[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from suite import reproduce as rep
    from suite.tracking import code_state

    uri, client = store
    planned = rep.plan("baseline", "smoke", [0], ())[0]
    folder = tmp_path / "ck"
    folder.mkdir()
    ckpt.write_manifest(folder, {"step": 3})
    code = {"suite.code": code_state()[1]}  # runs of other code are not resumed
    gone = {**planned.tags, **code, "suite.checkpoint_dir": str(tmp_path / "gone")}
    _make_run(client, "FAILED", "baseline", **gone)  # its checkpoint folder is gone
    tags = {**planned.tags, **code, "suite.checkpoint_dir": str(folder)}
    failed = _make_run(client, "FAILED", "baseline", **tags)
    diverged = _make_run(client, "FAILED", "baseline", **tags, **{"suite.diverged": "true"})
    for bare in ("FAILED", "KILLED"):
        _make_run(client, bare, "baseline", **planned.tags)  # no checkpoint at all
    assert rep.resumable_runs(uri, "baseline") == {planned.hash: failed}  # not the diverged one
    # (a diverged run of the same config also counts as done: reproduce would skip the row)
    client.delete_run(diverged)

    calls: list[tuple] = []

    def job(*args: object, **kwargs: object) -> dict:
        calls.append(args)
        return {"test_accuracy": 0.5, "bytes_sent": 1}

    monkeypatch.setattr(rep, "plan", lambda *a, **k: [planned])
    monkeypatch.setattr(rep, "resume_job", job)
    monkeypatch.setattr(rep, "run_job", job)
    monkeypatch.setattr("reports.builder.build_report", _no_report)
    rep.reproduce("baseline", profile="smoke", uri=uri, seeds=[0])
    assert calls == [(failed,)]  # resumed, not started again


class _NoReport:
    out_dir = Path(".")
    verdicts: ClassVar[dict] = {}

    def all_hold(self, profile: str) -> bool:
        return True


def _no_report(*args: object, **kwargs: object) -> _NoReport:
    return _NoReport()
