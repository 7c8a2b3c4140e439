"""`suite sweep` shared between drivers and stopped hard: Optuna and MLflow stay in step.

Every test drives the real CLI (``python -m suite sweep``) on a tiny space: Local SGD's learning
rate on digits, 2 ranks, 20 steps (a trial takes about 8 s here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import suite_cmd
from mlflow.tracking import MlflowClient

STUDY = "baseline/periods:lr:smoke"
SWEEP = [
    "sweep", "baseline/periods", "--space", "lr",
    "--set", "nproc=2", "--set", "steps=20", "--set", "eval_every=10",
    "--set", "eval_per_rank=false",
]  # fmt: skip
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
# The MLflow status each Optuna state must come with (a pruned job ends its run KILLED).
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def _driver(tmp_path: Path, tag: str, trials: int, *args: str, **env: str) -> subprocess.Popen[str]:
    """A `suite sweep` in its own process group (so a test can kill it with its job), its
    stderr in ``tmp_path/<tag>.err``."""
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(
        [sys.executable, "-m", "suite", *SWEEP, *args, "--trials", str(trials)],
        cwd=tmp_path,
        env={**base, "PYTHONUNBUFFERED": "1", **env},
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / f"{tag}.err").open("w"),
        text=True,
        start_new_session=True,
    )


def _trials(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path}/optuna.db")
    except Exception:  # not created yet
        return []
    return study.get_trials()


def _wait_for(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _runs(tmp_path: Path) -> tuple[list[Any], list[Any]]:
    """(trial runs, study parent runs) of the baseline experiment."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("baseline")
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    trial_runs = [r for r in runs if "suite.trial" in r.data.tags]
    parents = [r for r in runs if r.data.tags.get("suite.kind") == "study"]
    return trial_runs, parents


def _assert_optuna_and_mlflow_agree(tmp_path: Path) -> None:
    trial_runs, parents = _runs(tmp_path)
    states = {t.number: t.state.name for t in _trials(tmp_path)}
    assert trial_runs
    for run in trial_runs:
        state = states[int(run.data.tags["suite.trial"])]
        assert run.info.status == RUN_STATUS[state], (run.data.tags["suite.trial"], state)
    assert [p.info.status for p in parents] == ["FINISHED"]


def test_two_drivers_share_a_study_and_both_finish(tmp_path: Path) -> None:
    quick = {"SUITE_SWEEP_HEARTBEAT": "1", "SUITE_SWEEP_GRACE": "30"}  # a waiting driver polls
    first = _driver(tmp_path, "first", 3, **quick)
    # The second driver joins while the first has a trial in flight: today it marked that
    # trial FAIL at start-up and the first driver crashed telling it.
    _wait_for("a running trial", lambda: any(t.state.name == "RUNNING" for t in _trials(tmp_path)))
    second = _driver(tmp_path, "second", 3, **quick)
    for proc, tag in ((first, "first"), (second, "second")):
        assert proc.wait(timeout=300) == 0, (tmp_path / f"{tag}.err").read_text()
    trials = _trials(tmp_path)
    finished = [t for t in trials if t.state in FINISHED]
    # Two drivers may each start a trial at the same moment: one extra at most.
    assert 3 <= len(finished) <= 4, [t.state.name for t in trials]
    assert not [t for t in trials if t.state.name in ("FAIL", "RUNNING", "WAITING")]
    _assert_optuna_and_mlflow_agree(tmp_path)


def test_a_killed_drivers_trial_is_retried_and_mlflow_agrees(tmp_path: Path) -> None:
    short = {"SUITE_SWEEP_HEARTBEAT": "1", "SUITE_SWEEP_GRACE": "3"}
    # Jobs that train for seconds (20 steps end before their MLflow run is seen RUNNING).
    longer = ("--set", "steps=5000", "--set", "eval_every=2500")
    driver = _driver(tmp_path, "killed", 2, *longer, **short)

    def in_flight() -> int | None:
        """The number of a trial whose job has its MLflow run open, after a finished one."""
        if not any(t.state in FINISHED for t in _trials(tmp_path)):
            return None
        running = [r for r in _runs(tmp_path)[0] if r.info.status == "RUNNING"]
        return int(running[0].data.tags["suite.trial"]) if running else None

    killed = _wait_for("a second trial in flight", in_flight)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver, its job, ranks and MLflow writer
    driver.wait(timeout=30)
    resumed = subprocess.run(
        [sys.executable, "-m", "suite", *SWEEP, *longer, "--trials", "2"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | short,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    trials = _trials(tmp_path)
    by_number = {t.number: t for t in trials}
    assert by_number[killed].state.name == "FAIL"
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retried) == 1 and retried[0].state in FINISHED
    assert retried[0].params == by_number[killed].params
    assert len([t for t in trials if t.state in FINISHED]) == 2
    _assert_optuna_and_mlflow_agree(tmp_path)


def test_a_driver_whose_trial_another_failed_carries_on(tmp_path: Path) -> None:
    driver = _driver(tmp_path, "driver", 1)

    def running() -> optuna.trial.FrozenTrial | None:
        return next((t for t in _trials(tmp_path) if t.state.name == "RUNNING"), None)

    trial = _wait_for("a running trial", running)
    # What another driver does to a trial it takes for dead (heartbeats stalled too long).
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
    assert driver.wait(timeout=300) == 0, (tmp_path / "driver.err").read_text()
    assert "marked FAIL by another driver" in (tmp_path / "driver.err").read_text()
    trials = _trials(tmp_path)
    assert len([t for t in trials if t.state in FINISHED]) == 1
    _assert_optuna_and_mlflow_agree(tmp_path)


@pytest.mark.parametrize("storage", ["bogus://x", "not-a-url", "sqlite://"])
def test_a_bad_storage_url_is_refused_before_anything(tmp_path: Path, storage: str) -> None:
    done = suite_cmd(*SWEEP, "--trials", "1", "--storage", storage, cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "sqlite:///PATH" in done.stderr and "postgresql://" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_whose_trials_fail_exits_1_naming_them(tmp_path: Path) -> None:
    """Every trial's job crashes: the study ends short of the trials asked for, and the sweep
    says so with exit 1 (it exited 0, as if the study were done)."""
    crash = ["--set", "fault.kind=crash", "--set", "fault.rank=1", "--set", "fault.step=2"]
    done = suite_cmd(*SWEEP, *crash, "--trials", "2", cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "the study has 0 of the 2 finished trials asked for; failed trial(s): 0, 1" in (
        done.stderr
    )
    assert [t.state.name for t in _trials(tmp_path)] == ["FAIL", "FAIL"]
    # it said up front what each trial runs: the row the space tunes, and what it optimises
    assert (
        "each trial runs row 'Local SGD (H=4)' (local_sgd) of baseline/periods at profile smoke, "
        "seed 0; objectives: test_accuracy (maximize)" in done.stderr
    )
    _assert_optuna_and_mlflow_agree(tmp_path)


def test_a_storage_password_is_never_recorded(tmp_path: Path) -> None:
    """The parent run's tags are for every reader of the store (and reports are committed):
    the Optuna storage is recorded without its password, which the driver reads from its own
    files (PGPASSWORD, ~/.pgpass) when a report opens the study again."""
    from suite import sweep
    from suite.registry import RECIPES
    from suite.tracking import without_password

    assert without_password("postgresql://ann:s3cr:et@db:5432/optuna") == (
        "postgresql://ann@db:5432/optuna"
    )
    assert without_password("sqlite:////tmp/optuna.db") == "sqlite:////tmp/optuna.db"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = RECIPES.get("baseline/periods").obj
    storage = "postgresql://ann:s3cret@db/optuna"
    run_id = sweep._parent_run(uri, recipe, "lr", "s", storage)
    client = MlflowClient(uri)
    tags = client.get_run(run_id).data.tags
    assert tags["suite.storage"] == "postgresql://ann@db/optuna"
    assert not [k for k, v in tags.items() if "s3cret" in v]
    client.set_tag(run_id, "suite.storage", storage)  # a parent run of an older version
    assert sweep._parent_run(uri, recipe, "lr", "s", storage) == run_id  # a driver takes it on
    assert client.get_run(run_id).data.tags["suite.storage"] == "postgresql://ann@db/optuna"


def test_a_trial_has_a_heartbeat_from_the_moment_it_is_asked(tmp_path: Path) -> None:
    """Optuna never fails a RUNNING trial without any heartbeat: a driver killed between
    ``ask`` and its heartbeat thread's first beat left a trial that every later driver waited
    for, forever. The first beat is recorded before the trial is handed out, so it goes stale."""
    from suite import sweep

    stale = sweep._StaleTrial(f"sqlite:///{tmp_path / 'mlflow.db'}", "baseline", "s", 1)
    storage = sweep._storage(f"sqlite:///{tmp_path / 'optuna.db'}", 1, 1, stale)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = sweep._Slots(study, wanted=1, budget=1, poll=1, seed=0).next()
    assert trial is not None  # and its driver "dies" here: no heartbeat thread ever starts
    time.sleep(2.5)  # past the 1 s grace period
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]


def test_a_trials_report_waits_out_a_locked_storage_and_never_kills_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rank 0 reports each evaluation to the study: a SQLite file another driver holds past
    its 5 s busy wait used to crash the rank (the trial FAIL, its training lost)."""
    import sqlite3
    import threading

    from suite.sweep import OptunaPruner

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=url, study_name="s")
    trial = study.ask()
    held = sqlite3.connect(tmp_path / "optuna.db", isolation_level=None, check_same_thread=False)
    held.execute("BEGIN EXCLUSIVE")
    threading.Timer(8, held.execute, args=("ROLLBACK",)).start()
    assert OptunaPruner(url, "s", trial._trial_id)(3, 0.5) is False
    assert optuna.load_study(study_name="s", storage=url).trials[0].intermediate_values == {3: 0.5}
    assert "the Optuna storage is locked by another process; retrying" in capsys.readouterr().err
    # a study that is gone: a warning, and the run goes on unpruned
    assert OptunaPruner(url, "gone", trial._trial_id)(4, 0.6) is False
    assert "step 4 not reported to Optuna" in capsys.readouterr().err
    # a trial another driver failed meanwhile: its job stops (no use training on)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        OptunaPruner(url, "s", trial._trial_id)(5, 0.7)


def test_a_ctrl_c_after_a_trials_job_ended_keeps_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C lands after the trial's job finished (its MLflow run FINISHED) but before the
    study was told: the trial is told COMPLETE with its value, not FAIL (which also flipped
    its finished MLflow run to FAILED)."""
    from collections import defaultdict

    from suite import sweep
    from suite.registry import RECIPES

    def finished_job(*args: Any, **kwargs: Any) -> dict[str, Any]:
        summary: dict[str, Any] = defaultdict(lambda: 0.75)  # every objective's metric
        summary.update(run_id="r0", pruned=False)
        return summary

    def interrupted(self: Any, key: str, value: Any) -> None:
        if key == "mlflow_run_id":
            raise KeyboardInterrupt  # the Ctrl-C, just after the job's summary came back
        original(self, key, value)

    original = optuna.trial.Trial.set_user_attr
    monkeypatch.setattr(sweep, "run_job", finished_job)
    monkeypatch.setattr(optuna.trial.Trial, "set_user_attr", interrupted)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    with pytest.raises(KeyboardInterrupt):
        sweep.sweep(
            RECIPES.get("baseline/periods").obj, "lr", trials=1,
            uri=f"sqlite:///{tmp_path / 'mlflow.db'}", storage=storage, study_name="s",
        )  # fmt: skip
    (trial,) = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert trial.state.name == "COMPLETE" and trial.value == 0.75


def test_a_sweep_that_crashes_ends_its_parent_run_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a read-only audit (2026-12-04): only Ctrl-C changed the parent run's status, so
    anything else that escaped the trials (a bug, a storage that gave up) ended it FINISHED."""
    from suite import sweep
    from suite.registry import RECIPES

    def broken_job(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("a bug in the driver")

    monkeypatch.setattr(sweep, "run_job", broken_job)
    with pytest.raises(RuntimeError, match="a bug in the driver"):
        sweep.sweep(
            RECIPES.get("baseline/periods").obj, "lr", trials=1,
            uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="s",
        )  # fmt: skip
    _, parents = _runs(tmp_path)
    assert [p.info.status for p in parents] == ["FAILED"]
