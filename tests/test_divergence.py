"""A run that diverges (non-finite loss or parameters) stops at once and says so everywhere:
exit 1 with one valid JSON line, a FAILED MLflow run tagged ``suite.diverged``, a row reported
as diverged by ``suite reproduce`` (its claims fail), a PRUNED sweep trial."""

from __future__ import annotations

import json
import os
import pickle
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from conftest import suite_cmd
from mlflow.tracking import MlflowClient

import reports.builder as builder
import suite.reproduce as reproduce_mod
from suite.config import RunConfig, apply_overrides
from suite.divergence import Diverged, json_safe
from suite.launcher import RankFailure, launch
from suite.loop import Job, run_worker
from suite.recipes import Claim, Profile, Recipe, Row, Space
from suite.sweep import sweep
from suite.transport import Transport

# The command: lr 1e6 with momentum turns the loss NaN after a few steps.
BLOW_UP = ("optim.lr=1e6", "optim.momentum=0.9")


def _strict_json(line: str) -> dict:
    """json.loads that refuses NaN and Infinity, as every non-Python parser does."""

    def reject(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=reject)


def _client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def _processes_with(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker`` (forked ranks inherit the CLI's)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(pid))
    return found


def test_the_cli_stops_a_diverging_run_and_marks_it(tmp_path: Path) -> None:
    marker = f"diverge-{uuid.uuid4().hex}"
    sets = [a for item in (*BLOW_UP, "log_every=1") for a in ("--set", item)]
    proc = suite_cmd(
        "run", "local_sgd", *sets, "--steps", "100", "--nproc", "2", "--json",
        "--run-name", marker, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    line = _strict_json(proc.stdout.strip().splitlines()[-1])
    assert line["diverged"] is True and line["target"] == "local_sgd"
    assert line["diverged_rank"] in (0, 1) and line["diverged_what"] == "loss"
    step = line["diverged_step"]
    assert 0 < step <= 12
    assert f"diverged at step {step} on rank {line['diverged_rank']}" in proc.stderr
    assert "optim.lr" in proc.stderr and "Traceback" not in proc.stderr
    assert _processes_with(marker) == []  # every rank is gone
    client = _client(tmp_path)
    run = client.get_run(line["run_id"])
    assert run.info.status == "FAILED"
    tags = run.data.tags
    assert tags["suite.diverged"] == "true"
    assert (tags["suite.diverged_step"], tags["suite.diverged_rank"]) == (
        str(step),
        str(line["diverged_rank"]),
    )
    # rows were logged every step up to the divergence, none past it
    logged = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert logged and max(logged) < step


def test_the_json_line_and_summary_json_stay_json_without_a_target_reached(
    tmp_path: Path,
) -> None:
    # target never reached: steps_to_target and friends are NaN in the summary
    proc = suite_cmd(
        "run", "allreduce_sgd", "--nproc", "2", "--steps", "5", "--json", "--quiet",
        "--set", "target_accuracy=0.999", "--set", "model.hidden=16", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = _strict_json(proc.stdout.strip().splitlines()[-1])
    assert line["steps_to_target"] is None
    client = _client(tmp_path)
    path = client.download_artifacts(line["run_id"], "summary.json", str(tmp_path))
    stored = _strict_json(Path(path).read_text())
    assert stored["steps_to_target"] is None and stored["run_id"] == line["run_id"]


def test_json_safe_replaces_every_non_finite_number() -> None:
    nan, inf = float("nan"), float("inf")
    value = {"a": nan, "b": [1.0, -inf, {"c": inf}], "d": (2, "x"), "e": 3.5}
    assert json_safe(value) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, "x"], "e": 3.5}


def _config(*items: str) -> RunConfig:
    small = ["model.hidden=16", "eval_every=0", "eval_per_rank=false", "nproc=2", "device=cpu"]
    return apply_overrides(RunConfig(), [*small, *items])


def _train(cfg: RunConfig) -> object:
    return run_worker(Job(cfg, target="test", paper="test", progress=False))


def test_the_loop_raises_diverged_on_a_non_finite_loss() -> None:
    cfg = _config("algorithm=allreduce_sgd", "steps=100", *BLOW_UP)
    with pytest.raises(RankFailure) as caught:
        launch(_train, 2, (cfg,))
    error = caught.value.error
    assert isinstance(error, Diverged), caught.value.report()
    assert error.what == "loss" and 0 < error.step < 100 and error.rank in (0, 1)


def test_the_loop_raises_diverged_on_non_finite_parameters() -> None:
    # A finite loss on the one step, but weight decay 1e30 and lr 1e10 overflow the parameters;
    # the last step's parameters are checked before the final evaluation.
    cfg = _config("algorithm=allreduce_sgd", "steps=1", "optim.lr=1e10", "optim.weight_decay=1e30")
    with pytest.raises(RankFailure) as caught:
        launch(_train, 2, (cfg,))
    error = caught.value.error
    assert isinstance(error, Diverged), caught.value.report()
    assert (error.step, error.what) == (0, "parameters")


class _Custom(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _raise_on_rank_1(unpicklable: bool) -> int:
    t = Transport()
    if t.rank == 1:
        if unpicklable:
            raise RuntimeError("cannot travel", lambda: None)  # a lambda does not pickle
        raise _Custom(42)
    t.all_reduce(torch.ones(1))
    return t.rank


@pytest.mark.parametrize("unpicklable", [False, True])
def test_the_launcher_hands_back_the_culprits_exception(unpicklable: bool) -> None:
    with pytest.raises(RankFailure) as caught:
        launch(_raise_on_rank_1, 2, (unpicklable,))
    failure = caught.value
    assert failure.rank == 1
    if unpicklable:
        assert failure.error is None and "cannot travel" in failure.details
    else:
        assert isinstance(failure.error, _Custom) and failure.error.code == 42
    assert pickle.loads(pickle.dumps(Diverged(3, 1, "loss"))).step == 3


# -- suite reproduce and suite sweep -------------------------------------------------------------

SMALL = ("nproc=2", "steps=20", "eval_every=10", "model.hidden=16", "eval_per_rank=false")
ROWS = (
    Row("Fine", "allreduce_sgd"),
    Row("Blows up", "local_sgd", (*BLOW_UP, "model.hidden=128")),  # NaN at step 9
)
ON_FINE = Claim("test_accuracy", "Fine", ">=", value=0.0)
ON_BLOWN = Claim("bytes_sent", "Blows up", "<=", other="Fine")


def _recipe() -> Recipe:
    lr = Space("Blows up", lambda t: [f"optim.lr={1e6 if t.number == 0 else 0.05}"])
    return Recipe(
        paper="blowup",
        key="Table 1",
        title="one row diverges",
        rows=ROWS,
        claims=(ON_FINE, ON_BLOWN),
        profiles={"smoke": Profile(SMALL, seeds=(0,))},
        reference="Fine",
        spaces={"lr": lr},
    )


def test_reproduce_reports_a_diverged_row_and_fails_its_claims(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    recipe = _recipe()
    monkeypatch.setattr(reproduce_mod, "recipes_of", lambda paper: [recipe])
    monkeypatch.setattr(builder, "recipes_of", lambda paper: [recipe])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "report"
    assert reproduce_mod.reproduce("blowup", profile="smoke", uri=uri, out_dir=out) == 1
    err = capsys.readouterr().err
    assert "Blows up | seed 0 DIVERGED at step" in err
    assert "Fine | seed 0: accuracy" in err  # the other row ran
    readme = (out / "README.md").read_text()
    assert "| Blows up | 1 | diverged |" in readme
    cells = [line.strip("|").split(" | ") for line in readme.splitlines() if line.startswith("|")]
    at = next(c for c in cells if c[0].strip() == "claim").index("verdict")
    verdicts = {c[0].strip(): c[at].strip() for c in cells if " of " in c[0]}
    assert verdicts[ON_FINE.describe()] == "holds"
    assert verdicts[ON_BLOWN.describe()] == "fails (Blows up diverged)"
    # a diverged run is a result: the next reproduce does not run it again
    assert reproduce_mod.reproduce("blowup", profile="smoke", uri=uri, out_dir=out) == 1
    assert "0 to run" in capsys.readouterr().err


def test_a_diverged_sweep_trial_is_pruned_and_the_study_goes_on(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert sweep(_recipe(), "lr", trials=2, uri=uri, storage=storage, study_name="s") == 0
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    states = {t.number: t.state.name for t in trials}
    assert states == {0: "PRUNED", 1: "COMPLETE"}
    blown = trials[0]
    assert blown.user_attrs["diverged_step"] > 0
    run = _client(tmp_path).get_run(blown.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["suite.diverged"] == "true"
