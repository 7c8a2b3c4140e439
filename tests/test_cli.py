"""The command line as a user meets it: exit codes, messages, the JSON line, failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import last_json, suite_cmd

from suite.cli import JSON_KEYS

FAST = ["--steps", "20", "--set", "eval_every=0", "--set", "model.hidden=32"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["run", "allreduce"], ["unknown target 'allreduce'", "allreduce_sgd", "local_sgd"]),
        (["run", "allreduce_sgd", "--set", "model=vgg"], ["unknown model 'vgg'", "mlp", "cnn2"]),
        (["run", "allreduce_sgd", "--set", "optim.lrr=1"], ["unknown config key", "optim.lr"]),
        (["run", "allreduce_sgd", "--set", "steps=many"], ["bad value 'many' for steps"]),
        (["run", "single", "--nproc", "2"], ["exactly 1 process"]),
        (["run", "allreduce_sgd", "--set", "dataset=mnist"], ["--data-dir"]),
        (["run", "allreduce_sgd", "--tracking-uri", "ftp://x"], ["valid schemes"]),
        (["list", "gizmos"], ["unknown kind 'gizmos'", "algorithms", "datasets"]),
    ],
)
def test_bad_input_exits_2_naming_the_valid_choices(
    tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    proc = suite_cmd(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing half-written


def test_list_shows_descriptions_and_paper_labels(tmp_path: Path) -> None:
    proc = suite_cmd("list", cwd=tmp_path)
    assert proc.returncode == 0
    for name in ("allreduce_sgd", "local_sgd", "single", "digits", "resnet18_cifar", "identity"):
        assert name in proc.stdout
    assert "[baseline]" in proc.stdout
    # each with its docstring's summary, whole where the source wraps it over two lines
    line = next(x for x in proc.stdout.splitlines() if x.split()[:1] == ["ddp"])
    assert line.endswith("[baseline] torch DistributedDataParallel (bucketed all-reduce "
                         "overlapping backward) through the transport."), line  # fmt: skip
    only = suite_cmd("list", "models", "resnet*", cwd=tmp_path).stdout
    assert "resnet20" in only and "mlp" not in only


def test_show_lists_every_settable_key(tmp_path: Path) -> None:
    proc = suite_cmd("show", "local_sgd", "--set", "algorithm.period=3", cwd=tmp_path)
    assert proc.returncode == 0
    assert "algorithm.period" in proc.stdout and "= 3" in proc.stdout
    assert "optim.schedule" in proc.stdout and "constant | multistep" in proc.stdout


def test_show_gives_the_algorithms_tuning_advice_from_its_config_docstring(
    tmp_path: Path,
) -> None:
    shown = suite_cmd("show", "ddp_fp16", cwd=tmp_path).stdout.splitlines()
    assert shown[2] == "# Knobs of DDP (the defaults are PyTorch's)."
    advice = next(i for i, line in enumerate(shown) if line.startswith("# compression: "))
    knob = next(i for i, line in enumerate(shown) if line.startswith("algorithm.compression "))
    assert advice < knob and shown[knob].split("=")[1].split()[0] == "fp16"


def test_a_config_without_a_docstring_gives_no_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the signature a dataclass makes up for its ``__doc__``."""
    from dataclasses import make_dataclass
    from types import SimpleNamespace

    from suite import cli

    bare = make_dataclass("BareConfig", [("period", int, 4)])
    assert bare.__doc__.startswith("BareConfig(")
    algorithms = SimpleNamespace(get=lambda name: SimpleNamespace(config=bare))
    monkeypatch.setitem(cli.REGISTRIES, "algorithms", algorithms)
    assert cli._config_advice("bare") == []
    bare.__doc__ = "Knobs of Bare.\n\n    period: how often."
    assert cli._config_advice("bare") == ["Knobs of Bare.", "", "period: how often."]


@pytest.mark.parametrize("args", [["list"], ["show", "ddp"]], ids=["list", "show"])
def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path, args: list[str]) -> None:
    """`suite list | head -1`: the pipe is closed before the command writes to it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "suite", *args], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    # 141: its output is larger than the stdout buffer, so it is written before the exit
    assert proc.returncode == 141 and "Traceback" not in err, err


def test_a_stand_in_is_labelled_in_what_run_and_show_print_and_in_its_mlflow_tags(
    tmp_path: Path,
) -> None:
    """adaptive_topk is our stand-in for the paper's rule: every line naming it says so, and
    its MLflow run carries a tag to filter on."""
    from mlflow.tracking import MlflowClient

    proc = suite_cmd("run", "adaptive_topk", "--nproc", "2", "--json", *FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("adaptive_topk (stand-in): starting 2 local rank(s)")
    assert "adaptive_topk (stand-in): adaptive_topk on digits/mlp" in proc.stderr
    out = last_json(proc.stdout)
    assert out["stand_in"] is True
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(out["run_id"])
    assert run.data.tags["suite.stand_in"] == "true"
    shown = suite_cmd("show", "dybw", cwd=tmp_path)
    assert shown.stdout.startswith("# dybw (stand-in) (paper: dybw)"), shown.stderr
    faithful = suite_cmd("show", "eventgrad", cwd=tmp_path)  # the control: the paper's own rule
    assert faithful.stdout.startswith("# eventgrad (paper: eventgrad)"), faithful.stderr


def test_run_prints_the_json_summary(tmp_path: Path) -> None:
    proc = suite_cmd(
        "run", "allreduce_sgd", "--nproc", "2", "--json", "--no-track", *FAST, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    out = last_json(proc.stdout)
    assert list(out)[: len(JSON_KEYS)] == list(JSON_KEYS)
    assert out["target"] == "allreduce_sgd" and out["world_size"] == 2 and out["steps"] == 20
    assert out["bytes_sent"] == 20 * 2 * out["num_params"] * 4
    assert out["wire_bytes"] == 20 * 2 * out["num_params"] * 4  # ring, 2 ranks: n per rank
    assert out["run_id"] is None and out["stand_in"] is False
    assert 0 < out["reference_step_ms"] < 1000  # the host's speed beside its simulated time
    assert "bytes sent" in proc.stderr  # the human table still reaches the terminal
    assert not (tmp_path / "mlflow.db").exists()


def _deterministic(summary: dict) -> dict:
    noisy = {
        "wall_seconds",
        "train_seconds",
        "samples_per_second",
        "compute_seconds",
        "comm_seconds",
        "network_seconds",  # replays the measured compute gaps
        "network_seconds_per_step",
        "reference_step_ms",  # the host's speed, timed after training
        "run_id",
        "per_rank",
    }
    return {k: v for k, v in summary.items() if k not in noisy}


def test_same_seed_same_summary_other_seed_other_summary(tmp_path: Path) -> None:
    runs = [
        last_json(
            suite_cmd(
                "run",
                "allreduce_sgd",
                "--nproc",
                "2",
                "--json",
                "--no-track",
                "--quiet",
                "--seed",
                str(seed),
                *FAST,
                cwd=tmp_path,
            ).stdout
        )
        for seed in (5, 5, 6)
    ]
    assert _deterministic(runs[0]) == _deterministic(runs[1])
    assert runs[0]["train_loss"] != runs[2]["train_loss"]


@pytest.mark.parametrize(
    ("kind", "reason"), [("crash", "exited with code 1"), ("exit", "exited with code 3")]
)
def test_a_dying_rank_fails_the_run_with_its_traceback(
    tmp_path: Path, kind: str, reason: str
) -> None:
    start = time.monotonic()
    proc = suite_cmd(
        "run",
        "allreduce_sgd",
        "--nproc",
        "3",
        "--no-track",
        *FAST,
        "--set",
        f"fault.kind={kind}",
        "--set",
        "fault.rank=2",
        "--set",
        "fault.step=5",
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    assert f"rank 2 {reason}" in proc.stderr
    if kind == "crash":
        assert "injected fault: rank 2 crashes at step 5" in proc.stderr
        assert "_maybe_inject_fault" in proc.stderr
    assert elapsed < 60


def test_a_hung_rank_fails_the_run_within_the_bound(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = suite_cmd(
        "run",
        "allreduce_sgd",
        "--nproc",
        "2",
        "--no-track",
        *FAST,
        "--hang-timeout",
        "4",
        "--set",
        "fault.kind=hang",
        "--set",
        "fault.rank=1",
        "--set",
        "fault.step=3",
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    assert "rank 1 hung" in proc.stderr
    assert "_maybe_inject_fault" in proc.stderr  # the stack shows where it hangs
    assert elapsed < 60


def test_the_command_exits_fast_yet_runs_exit_handlers_and_flushes_its_output() -> None:
    script = (
        "import atexit, sys\n"
        "from suite.cli import exit_now\n"
        "atexit.register(lambda: print('handler ran', file=sys.stderr))\n"
        "print('unflushed', end='')\n"
        "exit_now(3)\n"
        "print('never')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (3, "unflushed", "handler ran\n")


@pytest.mark.parametrize("watch", ["pidfd", "polling"])
def test_a_child_of_a_driver_gets_sigterm_when_the_driver_dies(watch: str) -> None:
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    script = (
        "import os, sys, time\n"
        "from suite import cli\n"
        "if sys.argv[1] == 'polling':\n"
        "    del os.pidfd_open  # as where there is none\n"
        "cli._die_with_driver()\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "SUITE_DRIVER_PID": str(driver.pid)}
    start = time.monotonic()
    child = subprocess.run([sys.executable, "-c", script, watch], env=env, timeout=30)
    driver.wait()
    assert child.returncode == -signal.SIGTERM  # no handler here: SIGTERM's default, death
    assert time.monotonic() - start < 10


def test_a_stop_signal_after_training_waits_until_the_run_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by a read-only audit (2026-12-04): a SIGTERM (a driver stopping its runs) between
    the end of training and MLflow's record of it ended a trained run FAILED ("the process
    running the job died") with its summary unkept. The probe of the host's speed runs in that
    window; here it sends the signal."""
    import torch
    from mlflow.tracking import MlflowClient

    import suite.hostspeed
    from suite.cli import main

    def probe_then_stop() -> float:
        os.kill(os.getpid(), signal.SIGTERM)  # handled now, in this (the main) thread
        return 0.5

    monkeypatch.setattr(suite.hostspeed, "reference_step_ms", probe_then_stop)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    threads = torch.get_num_threads()  # the preflight lowers it for the ranks it forks
    try:
        code = main(["run", "allreduce_sgd", "--nproc", "2", "--steps", "2", "--tracking-uri", uri])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "SIGTERM came after training ended: the run was recorded first" in err
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["final.reference_step_ms"] == 0.5
    assert list((tmp_path / "suite-summaries").iterdir())  # kept beside the store too
