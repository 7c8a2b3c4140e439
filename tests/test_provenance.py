"""Provenance (issue 15): runs tied to their code, MLflow's and Optuna's own conventions, and a
suite that never dirties its own checkout.

The reproduce test works in a fresh `git clone` of this repository's HEAD (commit first: work not
committed is not in the clone), with one tiny paper added and committed there (one row, 2 ranks,
10 steps), so each reproduction runs a single short job.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import ROOT, suite_cmd
from mlflow.tracking import MlflowClient

TINY = '''
"""A one-row recipe for tests/test_provenance.py."""
from suite.recipes import Claim, Profile, Recipe, Row, register

register(
    Recipe(
        paper="tiny",
        key="T1",
        title="one all-reduce SGD job",
        rows=(Row("All-reduce SGD", "allreduce_sgd"),),
        claims=(Claim("test_accuracy", "All-reduce SGD", ">=", value=0.0, source="test"),),
        profiles={
            "smoke": Profile(
                ("nproc=2", "steps=10", "eval_every=5", "eval_per_rank=false"), seeds=(0,)
            )
        },
    )
)
'''


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout


def _reproduce(clone: Path) -> subprocess.CompletedProcess[str]:
    """`suite reproduce tiny` as a user in the clone runs it: default store and report folder,
    the clone's own code (PYTHONPATH)."""
    env = {"PYTHONPATH": os.pathsep.join([str(clone), os.environ.get("PYTHONPATH", "")])}
    return suite_cmd("reproduce", "tiny", cwd=clone, env=env, timeout=300)


def test_reproduce_leaves_a_clean_clone_and_reuses_only_runs_of_the_same_code(
    tmp_path: Path,
) -> None:
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "--quiet", str(ROOT), str(clone))
    (clone / "reproduce" / "tiny").mkdir()
    (clone / "reproduce" / "tiny" / "__init__.py").write_text(textwrap.dedent(TINY))
    _git(clone, "add", "reproduce/tiny")
    _git(clone, "commit", "--quiet", "-m", "a tiny paper")
    head = _git(clone, "rev-parse", "HEAD").strip()

    first = _reproduce(clone)
    assert first.returncode == 0, first.stderr
    assert "T1 at smoke: digits/mlp, 2 ranks, 10 steps" in first.stderr  # what it trains
    # the suite wrote its store, summaries and report, and the checkout is still clean
    assert _git(clone, "status", "--porcelain") == ""
    assert (clone / "out" / "reports" / "tiny" / "README.md").is_file()

    client = MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny").experiment_id
    rows = client.search_runs([exp], "tags.`suite.recipe` = 'tiny/t1'")
    assert len(rows) == 1
    run = rows[0]
    assert run.data.tags["mlflow.source.git.commit"] == head
    assert run.data.tags["suite.code"] == head
    assert "mlflow.user" in run.data.tags and "mlflow.source.name" in run.data.tags
    # MLflow's duration covers the training, at least
    duration = (run.info.end_time - run.info.start_time) / 1000
    assert duration >= run.data.metrics["final.train_seconds"]
    host_ms = run.data.metrics["final.reference_step_ms"]  # the host's speed, per run
    # nested under the paper's parent run, which holds the claims and the report
    parent = run.data.tags["mlflow.parentRunId"]
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"claims.csv", "report"} <= artifacts
    report = (clone / "out" / "reports" / "tiny" / "README.md").read_text()
    assert str(tmp_path) not in report  # no machine path in a report
    assert f"Runs by the code that made them: smoke: 1 by commit {head[:10]}." in report
    assert f"timed by each run after its training: smoke: {host_ms:.3g} ms (1 run)." in report
    _check_compare_view_data(client, exp, run, parent)

    # same code: the run is reused, and the report says so
    again = _reproduce(clone)
    assert again.returncode == 0, again.stderr
    assert "1 reused from the store (1 by commit " + head[:10] in again.stderr
    assert "0 to run" in again.stderr

    # a commit that touches suite/: the old run is not reused, the job runs again
    with (clone / "suite" / "__init__.py").open("a") as f:
        f.write("# a code change\n")
    _git(clone, "commit", "--quiet", "-am", "touch suite/")
    changed = _reproduce(clone)
    assert changed.returncode == 0, changed.stderr
    assert "0 reused from the store, 1 to run" in changed.stderr
    rows = client.search_runs([exp], "tags.`suite.recipe` = 'tiny/t1'")
    new_head = _git(clone, "rev-parse", "HEAD").strip()
    assert sorted(r.data.tags["suite.code"] for r in rows) == sorted([head, new_head])
    report = (clone / "out" / "reports" / "tiny" / "README.md").read_text()
    assert f"smoke: 1 by commit {new_head[:10]}." in report  # the run it shows, not the old one
    assert _git(clone, "status", "--porcelain") == ""


def _check_compare_view_data(client: MlflowClient, exp: str, row: Any, parent: str) -> None:
    """What README's steps for comparing methods in MLflow's UI group and filter by: the
    documented tags and params on every row run, and the parent run expanding to its rows."""
    readme = (ROOT / "README.md").read_text()
    steps = readme.split("Comparing the methods of a paper in MLflow's UI", 1)[1]
    steps = steps.split("\n\n", 1)[0]
    for key in ("paper", "suite.recipe", "suite.row", "suite.profile", "suite.code"):
        assert f"`{key}`" in steps and row.data.tags.get(key), key
    assert row.data.tags["suite.row"] == "All-reduce SGD"  # the method: one group per row
    assert row.data.tags["suite.profile"] == "smoke" and row.data.tags["paper"] == "tiny"
    assert "`algorithm`" in steps and row.data.params["algorithm"] == "allreduce_sgd"
    assert client.get_experiment(exp).name == "tiny"  # "Experiments → the paper"
    assert client.get_run(parent).info.run_name == "tiny smoke reproduction"
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert [r.info.run_id for r in children] == [row.info.run_id]


def test_a_study_names_its_objectives_links_mlflow_and_never_reruns_a_configuration(
    tmp_path: Path,
) -> None:
    """A trial that draws a finished trial's parameters takes its result without a job."""
    name = "baseline/periods:lr:smoke"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    lr = optuna.distributions.FloatDistribution(0.005, 0.5, log=True)
    done = optuna.trial.create_trial(
        params={"lr": 0.1}, distributions={"lr": lr}, value=0.75, user_attrs={"mlflow_run_id": "x"}
    )
    study.add_trial(done)
    study.enqueue_trial({"lr": 0.1})  # the next trial draws the same configuration
    args = ["sweep", "baseline/periods", "--space", "lr", "--trials", "2"]
    proc = suite_cmd(*args, "--set", "nproc=2", "--set", "steps=10", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    study = optuna.load_study(study_name=name, storage=storage)
    assert study.metric_names == ["test_accuracy"]
    trials = study.get_trials()
    assert len(trials) == 2
    twin = trials[1]
    assert twin.state == optuna.trial.TrialState.COMPLETE and twin.value == 0.75
    assert twin.user_attrs["duplicate_of"] == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("baseline").experiment_id
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert client.get_run(parent).data.tags["suite.kind"] == "study"
    jobs = client.search_runs([exp], "tags.`suite.study` = 'baseline/periods:lr:smoke'")
    assert [r.info.run_id for r in jobs] == [parent]  # no job ran for the duplicate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(400)
def test_a_crashed_rank_under_torchrun_leaves_its_own_traceback(tmp_path: Path) -> None:
    """Two local nodes (two torchrun agents, one rank each) meet on a c10d rendezvous; rank 1
    crashes. Its traceback reaches torchrun's failure summary and the run's error.txt."""
    port = _free_port()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    crash = ["--set", "fault.kind=crash", "--set", "fault.rank=1", "--set", "fault.step=5"]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "job7",
        "-m", "suite", "run", "allreduce_sgd", "--steps", "200", "--quiet", *crash,
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    nodes = [
        subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert all(node.returncode != 0 for node in nodes)
    summaries = "\n".join(err for _, err in outputs)
    # torchrun's summary shows the failing rank's own traceback, not "error_file: <N/A>"
    assert "Root Cause" in summaries, summaries
    assert "injected fault: rank 1 crashes at step 5" in summaries.split("Root Cause")[-1]

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("baseline").experiment_id])
    assert run.info.status == "FAILED"
    assert run.info.run_name.endswith("-torchrun [failed]")
    tags = run.data.tags
    assert tags["suite.launcher"] == "torchrun" and tags["suite.nodes"] == "2"
    assert tags["suite.rdzv_id"] == "job7" and tags["suite.hosts"]
    error = Path(client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path)))
    text = error.read_text()
    assert text.startswith("rank 1 ")
    assert "injected fault: rank 1 crashes at step 5" in text


def test_a_failed_local_run_is_named_so(tmp_path: Path) -> None:
    crash = ["--set", "fault.kind=crash", "--set", "fault.rank=1", "--set", "fault.step=3"]
    proc = suite_cmd("run", "allreduce_sgd", "--nproc", "2", "--steps", "50", *crash, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("baseline").experiment_id])
    assert run.info.run_name == "allreduce_sgd-n2-s0-local [failed]"
    assert run.data.tags["suite.launcher"] == "local"


def test_a_report_says_which_code_made_its_runs_per_profile() -> None:
    """A report may show runs of several commits (smoke run long ago, real since): its header
    names each one's code, per profile, instead of claiming one code made them all."""
    import pandas as pd

    from reports.text import made_by

    runs = pd.DataFrame(
        {"profile": ["smoke", "smoke", "real", "real", "real"],
         "code": ["a" * 40, "a" * 40, "b" * 40, "b" * 40 + "+f00d", "unknown"]}
    )  # fmt: skip
    assert made_by(runs) == (
        f"Runs by the code that made them: smoke: 2 by commit {'a' * 10}; real: 1 by commit "
        f"{'b' * 10}, 1 by commit {'b' * 10} with local changes, 1 by unrecorded code."
    )
    assert made_by(runs.iloc[:0]) == ""


def test_a_report_names_the_machines_and_torch_that_made_its_runs_per_profile() -> None:
    """On CPU a run repeats bit for bit only on like hardware and torch (the compare recipe's
    real accuracies moved between two hosts, with the same code): the header names both, per
    profile, and says where a run recorded neither."""
    import pandas as pd

    from reports.text import made_on

    epyc, xeon = (
        "AMD EPYC x2 (Linux x86_64, AVX2 kernels)",
        "Xeon x2 (Linux x86_64, AVX512 kernels)",
    )
    runs = pd.DataFrame(
        {"profile": ["smoke", "smoke", "real", "real", "real"],
         "hardware": [epyc, epyc, epyc, xeon, ""],
         "torch": ["2.13.0+cpu", "2.13.0+cpu", "2.13.0+cpu", "2.13.0+cpu", ""]}
    )  # fmt: skip
    assert made_on(runs).startswith(
        f"Runs on: smoke: 2 on {epyc}, torch 2.13.0+cpu; real: 1 on {epyc}, torch 2.13.0+cpu "
        f"and 1 on {xeon}, torch 2.13.0+cpu and 1 on an unrecorded machine. "
    )
    assert "kernels for another instruction set round differently" in made_on(runs)
    old = pd.DataFrame({"profile": ["smoke"], "code": ["a" * 40]})  # stored before the columns
    assert made_on(old).startswith("Runs on: smoke: 1 on an unrecorded machine.")
    assert made_on(runs.iloc[:0]) == ""


def test_hardware_names_the_cpu_kernels_torch_runs() -> None:
    import torch

    from suite.tracking import hardware

    kernels = torch.backends.cpu.get_cpu_capability()
    assert kernels and f", {kernels} kernels)" in hardware()


def test_a_report_names_the_host_speed_its_simulated_times_rest_on() -> None:
    """Simulated times replay compute measured on the host: the header gives that host's
    reference step per profile (median and range), and says where runs never timed it."""
    import pandas as pd

    from reports.text import host_speed

    runs = pd.DataFrame(
        {"profile": ["smoke", "smoke", "smoke", "real", "full"],
         "reference_step_ms": [0.3, 0.5, 0.35, 2.0, float("nan")]}
    )  # fmt: skip
    text = host_speed(runs)
    assert "smoke: 0.35 ms, median of 3 runs (0.3-0.5); real: 2 ms (1 run); " in text
    assert "full: not recorded (runs made before suite.hostspeed)." in text
    assert "compare them across reports only at like speed" in text
    old = pd.DataFrame({"profile": ["smoke"], "code": ["a" * 40]})  # stored before the column
    assert "smoke: not recorded" in host_speed(old)
    assert host_speed(runs.iloc[:0]) == ""


def _failed_under_one_torchrun(tmp_path: Path, target: str, *args: str) -> Any:
    """``suite run TARGET ARGS`` as one torchrun agent with two ranks, which must fail: its
    FAILED MLflow run."""
    port = _free_port()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
        "-m", "suite", "run", target, "--quiet", *args,
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("baseline").experiment_id])
    assert run.info.status == "FAILED", done.stderr[-3000:]
    return run


@pytest.mark.timeout(300)
def test_a_rank_crashing_beside_rank_0_under_one_torchrun_leaves_its_traceback(
    tmp_path: Path,
) -> None:
    """One torchrun agent, two ranks: when rank 1 dies the agent stops rank 0 with SIGTERM.
    Rank 0 trains on its own meanwhile (Local SGD, no collective for a long while), so the
    SIGTERM, not a broken collective, is what it hears. The run's error.txt holds rank 1's
    traceback, not only "interrupted (SIGTERM)"."""
    crash = ["--set", "fault.kind=crash", "--set", "fault.rank=1", "--set", "fault.step=5"]
    alone = ["--set", "algorithm.period=1000000", "--set", "log_every=1000000",
             "--set", "eval_every=0", "--set", "eval_per_rank=false"]  # fmt: skip
    run = _failed_under_one_torchrun(tmp_path, "local_sgd", "--steps", "2000000", *crash, *alone)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    error = Path(client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path)))
    assert "injected fault: rank 1 crashes at step 5" in error.read_text(), error.read_text()


@pytest.mark.timeout(300)
def test_a_rank_diverging_under_torchrun_tags_the_run_diverged(tmp_path: Path) -> None:
    """Rank 1 alone sees a non-finite loss: rank 0 hears of it only as a broken collective (or
    torchrun's SIGTERM), yet the run is tagged diverged as a local run is, so reproduce and
    sweeps treat it as a result, and resume refuses it."""
    blow = ["--set", "fault.kind=diverge", "--set", "fault.rank=1", "--set", "fault.step=5"]
    tags = _failed_under_one_torchrun(tmp_path, "allreduce_sgd", "--steps", "200", *blow).data.tags
    assert tags.get("suite.diverged") == "true", tags
    assert tags["suite.diverged_rank"] == "1" and tags["suite.diverged_step"] == "5"
    assert tags["suite.hosts"]  # where it ran, as any torchrun run says
