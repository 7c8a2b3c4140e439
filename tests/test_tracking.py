"""What lands in MLflow: one run per job, from rank 0, complete, and never left RUNNING."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import last_json, suite_cmd
from mlflow.tracking import MlflowClient
from test_launcher import _children, _wait_gone

from suite.tracking import open_client, tracking_uri


def _client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def _only_run(client: MlflowClient):
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    return runs[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("tracked")
    proc = suite_cmd(
        "run",
        "local_sgd",
        "--nproc",
        "2",
        "--steps",
        "30",
        "--json",
        "--set",
        "algorithm.period=5",
        "--set",
        "eval_every=10",
        "--set",
        "log_every=7",
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr
    return tmp, last_json(proc.stdout)


def test_run_is_finished_with_params_and_tags(finished: tuple[Path, dict]) -> None:
    tmp, summary = finished
    assert (tmp / "mlflow.db").exists()  # the default store: SQLite in the working directory
    run = _only_run(_client(tmp))
    assert run.info.status == "FINISHED"
    assert run.info.run_id == summary["run_id"]
    params = run.data.params
    assert params["algorithm"] == "local_sgd" and params["algorithm.period"] == "5"
    assert (
        params["optim.lr"] == "0.05" and params["nproc"] == "2" and params["target"] == "local_sgd"
    )
    tags = run.data.tags
    for key in ("git_sha", "git_dirty", "torch_version", "hardware"):
        assert tags[key]
    assert tags["target"] == "local_sgd" and tags["paper"] == "baseline"
    assert tags["world_size"] == "2"
    assert "suite.stand_in" not in tags  # local_sgd is no stand-in
    experiment = _client(tmp).get_experiment(run.info.experiment_id)
    assert experiment.name == "baseline"


def test_metrics_cover_every_step_and_the_evaluations(finished: tuple[Path, dict]) -> None:
    tmp, summary = finished
    client = _client(tmp)
    run_id = summary["run_id"]
    loss = client.get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in loss) == list(range(30))
    sent = sorted(client.get_metric_history(run_id, "bytes_sent"), key=lambda m: m.step)
    assert sent[-1].value == summary["bytes_sent"]
    assert all(a.value <= b.value for a, b in itertools.pairwise(sent))  # cumulative
    acc = client.get_metric_history(run_id, "test_accuracy")
    assert sorted(m.step for m in acc) == [9, 19, 29]
    assert {m.step: m.value for m in acc}[29] == pytest.approx(summary["test_accuracy"])
    assert {"comm_seconds", "compute_seconds", "messages", "algo.averaged"} <= set(
        client.get_run(run_id).data.metrics
    )


def test_artifacts_hold_config_summary_and_comm(finished: tuple[Path, dict]) -> None:
    tmp, summary = finished
    client = _client(tmp)
    run_id = summary["run_id"]
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "summary.json", "comm.json"} <= names
    local = client.download_artifacts(run_id, "summary.json", str(tmp / "dl"))
    stored = json.loads(Path(local).read_text())
    assert stored["bytes_sent"] == summary["bytes_sent"] and stored["run_id"] == run_id
    config = json.loads(
        Path(client.download_artifacts(run_id, "config.json", str(tmp))).read_text()
    )
    assert config["algorithm.period"] == 5


def test_a_failed_run_ends_failed(tmp_path: Path) -> None:
    proc = suite_cmd(
        "run",
        "allreduce_sgd",
        "--nproc",
        "2",
        "--steps",
        "20",
        "--set",
        "fault.kind=crash",
        "--set",
        "fault.rank=1",
        "--set",
        "fault.step=8",
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    client = _client(tmp_path)
    run = _only_run(client)
    assert run.info.status == "FAILED"
    assert run.data.params["fault.kind"] == "crash"
    error = Path(client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path))).read_text()
    assert "injected fault: rank 1 crashes at step 8" in error


def test_a_killed_rank_zero_still_ends_failed(tmp_path: Path) -> None:
    # rank 0 dies without running any cleanup: the launcher ends the run through the writer
    proc = suite_cmd(
        "run",
        "allreduce_sgd",
        "--nproc",
        "2",
        "--steps",
        "200",
        "--set",
        "fault.kind=exit",
        "--set",
        "fault.rank=0",
        "--set",
        "fault.step=150",
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert _only_run(_client(tmp_path)).info.status == "FAILED"


_HALF_BUILD = """
import os, sys
import mlflow.store.db.utils as db_utils
from suite.tracking import open_client

def die(engine):  # the initial tables exist, the migrations never run: a half-built store
    os._exit(9)

db_utils._upgrade_db = die
open_client(sys.argv[1])
"""


def test_a_process_killed_while_creating_the_store_leaves_no_broken_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run([sys.executable, "-c", _HALF_BUILD, uri], cwd=tmp_path)
    assert proc.returncode == 9
    assert not (tmp_path / "mlflow.db").exists()
    client = open_client(uri)  # a later run builds the store afresh and can use it
    exp_id = client.create_experiment("after")
    assert client.create_run(exp_id).info.status == "RUNNING"


# An owner of a writer: a fresh interpreter ("exec"), or forked from the owner where MLflow is
# imported already ("fork": a reproduction's runs); it says which it got.
_OWNER_START = """
import os, sys, time
from suite import tracking

if sys.argv[2] == "fork":
    for name in tracking.WRITER_MODULES:
        __import__(name)
writer = tracking.RunWriter().start()
print("forked" if isinstance(writer._process, tracking._ForkedWriter) else "exec", flush=True)
writer.open(sys.argv[1], "exp", "run", {"seed": 0}, {"target": "t"})
for step in range(5):
    writer.sink.log(step, {"train_loss": 1.0 / (step + 1)})
"""
_OWNER = (
    _OWNER_START
    + """
time.sleep(0.5)
os._exit(0)  # the owner vanishes without ending the run (as under kill -9)
"""
)
_FINISHER = (
    _OWNER_START
    + """
writer.sink.close()
print(writer.end("FINISHED", {"test_accuracy": 0.5}, {}), flush=True)
"""
)


STARTED = {"exec": "exec", "fork": "forked"}  # how an owner script is asked, what it says


def _run_owner(script: str, tmp_path: Path, start: str) -> subprocess.CompletedProcess:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return subprocess.run(
        [sys.executable, "-c", script, uri, start],
        cwd=tmp_path,
        timeout=120,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("start", ["exec", "fork"])
def test_a_writer_records_a_finished_run_however_it_was_started(tmp_path: Path, start: str) -> None:
    proc = _run_owner(_FINISHER, tmp_path, start)
    assert proc.returncode == 0, proc.stderr
    how, run_id = proc.stdout.split()
    assert how == STARTED[start]
    client = _client(tmp_path)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["seed"] == "0"
    assert len(client.get_metric_history(run_id, "train_loss")) == 5
    assert "MLflow writer" not in proc.stderr  # recorded by the writer, not by the owner


@pytest.mark.parametrize("start", ["exec", "fork"])
def test_a_run_whose_owner_dies_is_ended_failed_by_the_writer(tmp_path: Path, start: str) -> None:
    owner = _run_owner(_OWNER, tmp_path, start)
    assert owner.returncode == 0
    assert owner.stdout.split() == [STARTED[start]]
    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline and status != "FAILED":
        time.sleep(0.5)
        # Only open the store once the writer has built it: a client of our own would build
        # it too, racing the writer's migrations.
        if not (tmp_path / "mlflow.db").exists():
            continue
        try:
            status = _only_run(_client(tmp_path)).info.status
        except Exception:  # not created yet
            continue
    client = _client(tmp_path)
    run = _only_run(client)
    assert run.info.status == "FAILED"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 5
    error = Path(client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path))).read_text()
    assert "died" in error


def test_bad_input_creates_no_run(tmp_path: Path) -> None:
    proc = suite_cmd("run", "allreduce_sgd", "--set", "optim.lr=fast", cwd=tmp_path)
    assert proc.returncode == 2
    assert "optim.lr" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_ctrl_c_ends_the_run_failed_and_stops_every_rank(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "suite",
            "run",
            "allreduce_sgd",
            "--nproc",
            "2",
            "--steps",
            "100000",
            "--set",
            "eval_every=0",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # wait until the run exists
        time.sleep(0.5)
        if (tmp_path / "mlflow.db").exists():  # built whole by the writer: open it only then
            try:
                client = _client(tmp_path)
                if client.search_experiments() and _only_run(client):
                    break
            except Exception:  # the run is not there yet
                continue
    kids: list[int] = []
    while time.monotonic() < deadline and len(kids) < 3:  # both ranks and the writer started
        time.sleep(0.2)
        kids = _descendants(proc.pid)
    assert len(kids) >= 3, kids
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert _only_run(client).info.status == "FAILED"
    assert _wait_gone(kids, 10) == []  # no rank (nor the writer) outlives the launcher


def _descendants(pid: int) -> list[int]:
    kids = _children(pid)
    return kids + [d for k in kids for d in _descendants(k)]


def test_tracking_uri_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"
    assert tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path / 'x.db'}"


def test_the_writer_is_sent_plain_strings_only() -> None:
    """Unpickling an object in the writer imports its class's module there: torch.__version__
    (a torch class) made the writer import torch, a CPU-second taken from the ranks, and
    delayed the run's creation until after training."""
    import pickle
    import pickletools
    from types import SimpleNamespace

    import torch

    from suite.tracking import RunWriter, run_tags

    writer = RunWriter()  # not started: its control pipe is replaced by a recorder
    sent: list[tuple] = []
    writer._control = SimpleNamespace(send=sent.append)
    writer.open(
        "sqlite:///unused.db",
        "baseline",
        "a run",
        params={"optim.lr": 0.05, "dtype": torch.float32, "steps": torch.tensor(3)},
        tags=run_tags("allreduce_sgd", "baseline", 2),
        dataset={"name": "digits", "digest": "abc", "source": "suite dataset digits"},
    )
    ops = {op.name for op, _, _ in pickletools.genops(pickle.dumps(sent[0]))}
    assert not ops & {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ"}
    assert writer._opened[4]["torch_version"] == torch.__version__


def test_a_writer_that_fails_ends_its_run_failed_and_says_why_in_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's own error reaches its owner only when the owner ends the run; one killed
    before then (a sweep's trial when its driver is stopped) would lose it: the run keeps it."""
    import queue

    from suite import tracking

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(tracking._Writer, "_finish", broken)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    inbox: queue.Queue[tuple] = queue.Queue()
    inbox.put(("open", uri, "e", "r", {"seed": 0}, {}))
    inbox.put(("metrics_end",))  # as the sink sends it: else the writer waits 30 s for metrics
    inbox.put(("end", "FINISHED", {}, {}, {}))
    tracking._Writer(inbox, os.getppid(), 0.0, None).serve()
    run = _only_run(_client(tmp_path))
    assert run.info.status == "FAILED"
    assert run.data.tags["suite.writer_error"] == "RuntimeError: disk full"


def test_a_dataset_that_another_run_logs_at_the_same_moment_is_linked_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow looks a dataset up, then inserts it; two runs starting at once (a sweep with
    --n-jobs 2) both insert it, and the second failed on the datasets table's unique key, which
    ended its run FAILED while it trained (5 in 6 simultaneous starts did, in a two-process
    trial). Here the other run's insert lands between the two, every time."""
    import queue

    from mlflow.exceptions import MlflowException

    from suite import tracking

    real = MlflowClient.log_inputs
    calls: list[str] = []

    def racing(self, run_id, datasets=None, models=None):
        calls.append(run_id)
        if len(calls) == 1:  # the other run inserts the dataset first; ours then collides
            exp = self.get_run(run_id).info.experiment_id
            real(self, self.create_run(exp).info.run_id, datasets)
            raise MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                "datasets.name, datasets.digest"
            )
        return real(self, run_id, datasets, models)

    monkeypatch.setattr(MlflowClient, "log_inputs", racing)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dataset = {"name": "digits", "digest": "abc123", "source": "sklearn"}
    inbox: queue.Queue[tuple] = queue.Queue()
    inbox.put(("open", uri, "e", "mine", {"seed": 0}, {}, None, None, dataset))
    inbox.put(("metrics_end",))
    inbox.put(("end", "FINISHED", {}, {}, {}))
    tracking._Writer(inbox, os.getppid(), 0.0, None).serve()
    client = _client(tmp_path)
    mine = next(r for r in client.search_runs(["1"]) if r.info.run_name == "mine")
    assert mine.info.status == "FINISHED", mine.data.tags.get("suite.writer_error")
    assert len(calls) == 2
    assert [d.dataset.digest for d in mine.inputs.dataset_inputs] == ["abc123"]


def test_the_kept_summary_is_strict_json(tmp_path: Path) -> None:
    from suite.tracking import keep_summary

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = keep_summary(uri, {"run_id": "abc", "steps_to_target": float("nan"), "steps": 3})

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    kept = json.loads(path.read_text(), parse_constant=refuse)  # NaN would raise here
    assert kept == {"run_id": "abc", "steps_to_target": None, "steps": 3}


def test_a_summary_the_disk_refuses_is_a_warning_not_a_lost_result(capsys) -> None:
    from suite import cli

    # the store's folder under a file: mkdir fails as on a full or read-only disk
    previous = Path("/dev/null/earlier.json")
    assert cli._keep_summary("sqlite:////dev/null/mlflow.db", {"run_id": "x"}, previous) == previous
    assert "warning: could not keep the summary beside the store" in capsys.readouterr().err
