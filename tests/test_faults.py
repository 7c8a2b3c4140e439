"""The fault matrix: whatever kills what, no run is left RUNNING, no process of the job is left
running, no job folder is left behind, and a finished job's summary is never lost.

Each case drives the real CLI in its own scratch directory (its cwd, and TMPDIR for the job
folders) and injects one fault: the MLflow writer killed, the store locked past MLflow's own
20 s wait, SIGHUP to the process group (a closed terminal), the launcher killed -9 with or
without its writer, and SIGTERM/SIGHUP/SIGKILL to the drivers of ``suite reproduce`` and
``suite sweep``. A process "of the job" is any whose working directory is the scratch
directory (ranks, writers and ``suite run`` children all inherit it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, suite_cmd

LONG = ["--nproc", "2", "--steps", "100000", "--set", "eval_every=0"]  # stopped by the fault
SHORT = ["--nproc", "2", "--steps", "3000", "--set", "eval_every=0"]  # ends by itself


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow store, built once: each case starts from a copy (building one runs
    dozens of migrations, seconds of CPU a case would otherwise spend)."""
    from suite.tracking import open_client

    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    open_client(f"sqlite:///{db}")
    return db


@pytest.fixture(autouse=True)
def _scratch(tmp_path: Path, empty_store: Path) -> Iterator[None]:
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    yield
    for pid in _job_pids(tmp_path):  # a failed case must not leave its orphans training on
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Helpers: processes through /proc, the store through sqlite3 (no MLflow import, no locks held)


def _start(args: list[str], tmp: Path, *, new_session: bool = False) -> subprocess.Popen:
    (tmp / "tmp").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(TMPDIR=str(tmp / "tmp"), PYTHONUNBUFFERED="1")
    with open(tmp / "out.txt", "w") as out, open(tmp / "err.txt", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "suite", *args],
            cwd=tmp,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=new_session,
        )


def _job_pids(tmp: Path) -> list[int]:
    """Live processes working in ``tmp`` (zombies excluded: they are only waiting to be reaped)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/cwd") != str(tmp):
                continue
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            pids.append(int(entry))
    return pids


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live children of ``pid``."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append((int(entry), cmdline))
    return kids


def _writer(pid: int, limit: float = 60) -> int:
    return _wait_for(
        lambda: next((k for k, cmd in _children(pid) if "suite.tracking" in cmd), None),
        limit,
        "the MLflow writer never started",
    )


def _wait_for(probe: Callable[[], object], limit: float, what: str) -> object:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(what)


def _query(tmp: Path, sql: str, *args: object) -> list[tuple]:
    db = tmp / "mlflow.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=60)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # the schema is not there yet
        return []
    finally:
        conn.close()


def _runs(tmp: Path) -> dict[str, str]:
    """run id -> status, in creation order."""
    return dict(_query(tmp, "select run_uuid, status from runs order by start_time"))


def _tags(tmp: Path, run_id: str) -> dict[str, str]:
    return dict(_query(tmp, "select key, value from tags where run_uuid = ?", run_id))


def _running(tmp: Path, n: int = 1, limit: float = 90) -> list[str]:
    """Wait until ``n`` runs are RUNNING; their ids."""

    def probe() -> list[str]:
        ids = [r for r, status in _runs(tmp).items() if status == "RUNNING"]
        return ids if len(ids) >= n else []

    return _wait_for(probe, limit, f"fewer than {n} RUNNING run(s) appeared")


def _finish(proc: subprocess.Popen, tmp: Path, limit: float = 120) -> int:
    code = proc.wait(limit)
    print((tmp / "err.txt").read_text()[-3000:])  # shown if the test fails
    return code


def _suite(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return suite_cmd(*args, cwd=tmp, env={"TMPDIR": str(tmp / "tmp")})


def _assert_nothing_left(tmp: Path) -> None:
    """The matrix's invariants: no RUNNING run, no live process, no job folder."""
    deadline = time.monotonic() + 40  # a writer may still be ending its run
    while _job_pids(tmp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _job_pids(tmp), "processes of the job survived"
    runs = _runs(tmp)
    assert runs and "RUNNING" not in runs.values(), runs
    assert not list((tmp / "tmp").glob("suite-job-*")), "a job folder was left behind"


def _assert_summary_kept(tmp: Path, run_id: str) -> None:
    """The finished run holds summary.json and final.* metrics in MLflow (its artifacts next
    to the store, not in ./mlruns), and the summary is also in suite-summaries/."""
    stored = tmp / "mlartifacts" / run_id / "artifacts" / "summary.json"
    assert json.loads(stored.read_text())["run_id"] == run_id
    finals = _query(tmp, "select key from latest_metrics where run_uuid = ?", run_id)
    assert ("final.bytes_sent",) in finals
    local = json.loads((tmp / "suite-summaries" / f"{run_id}.json").read_text())
    assert local["run_id"] == run_id and local["steps"] == 3000
    assert not (tmp / "mlruns").exists()


# ---------------------------------------------------------------------------------------------
# `suite run`: each fault, then the invariants


def _writer_killed_mid_run(tmp: Path) -> tuple[int, str]:
    proc = _start(["run", "allreduce_sgd", *SHORT], tmp)
    writer = _writer(proc.pid)
    _running(tmp)
    os.kill(writer, signal.SIGKILL)
    return _finish(proc, tmp), "FINISHED"


def _writer_killed_at_start(tmp: Path) -> tuple[int, str]:
    proc = _start(["run", "allreduce_sgd", *SHORT], tmp)
    os.kill(_writer(proc.pid), signal.SIGKILL)  # before it could create the run
    return _finish(proc, tmp), "FINISHED"


def _writer_killed_then_rank_crashes(tmp: Path) -> tuple[int, str]:
    crash = ["--set", "fault.kind=crash", "--set", "fault.rank=1", "--set", "fault.step=2500"]
    proc = _start(["run", "allreduce_sgd", *SHORT, *crash], tmp)
    writer = _writer(proc.pid)
    _running(tmp)
    os.kill(writer, signal.SIGKILL)
    code = _finish(proc, tmp)
    (run_id, _), *_ = _runs(tmp).items()
    error = tmp / "mlartifacts" / run_id / "artifacts" / "error.txt"
    assert "injected fault: rank 1 crashes at step 2500" in error.read_text()
    return code, "FAILED"


def _store_locked(tmp: Path) -> tuple[int, str]:
    proc = _start(["run", "allreduce_sgd", *SHORT], tmp)
    _running(tmp)
    conn = sqlite3.connect(tmp / "mlflow.db", isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")  # longer than MLflow's own 20 s busy wait
    time.sleep(25)
    conn.execute("ROLLBACK")
    conn.close()
    return _finish(proc, tmp), "FINISHED"


def _terminal_closed(tmp: Path) -> tuple[int, str]:
    proc = _start(["run", "allreduce_sgd", *LONG], tmp, new_session=True)
    _running(tmp)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGHUP)  # launcher, ranks and writer at once
    code = _finish(proc, tmp)
    assert "interrupted (SIGHUP)" in (tmp / "err.txt").read_text()
    return code, "FAILED"


def _process_group_killed(tmp: Path) -> tuple[int, str]:
    """How torchrun stops a worker that outstays SIGTERM: SIGKILL to its whole process group.
    The writer, in a session of its own, outlives it and ends the run itself."""
    proc = _start(["run", "allreduce_sgd", *LONG], tmp, new_session=True)
    _running(tmp)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its ranks
    code = proc.wait(30)
    _wait_for(lambda: "RUNNING" not in _runs(tmp).values(), 30, "the run was left RUNNING")
    nxt = _suite(tmp, "run", "single", "--steps", "5", "--no-track")  # removes the job folder
    assert nxt.returncode == 0, nxt.stderr
    return code, "FAILED"


def _launcher_and_writer_killed(tmp: Path) -> tuple[int, str]:
    proc = _start(["run", "allreduce_sgd", *LONG], tmp)
    writer = _writer(proc.pid)
    _running(tmp)
    os.kill(writer, signal.SIGKILL)
    os.kill(proc.pid, signal.SIGKILL)  # a crashed machine, as far as the run can tell
    code = proc.wait(30)
    _wait_for(lambda: not _job_pids(tmp), 30, "ranks outlived their launcher")
    assert "RUNNING" in _runs(tmp).values()
    nxt = _suite(tmp, "run", "single", "--steps", "5")  # the next command ends it
    assert nxt.returncode == 0, nxt.stderr
    (run_id, _), *_ = _runs(tmp).items()
    assert "are gone" in _tags(tmp, run_id)["suite.orphaned"]
    error = tmp / "mlartifacts" / run_id / "artifacts" / "error.txt"
    assert "Marked FAILED" in error.read_text()
    return code, "FAILED"


def _launcher_killed(tmp: Path) -> tuple[int, str]:
    proc = _start(["run", "allreduce_sgd", *LONG], tmp)
    _running(tmp)
    os.kill(proc.pid, signal.SIGKILL)
    code = proc.wait(30)
    assert list((tmp / "tmp").glob("suite-job-*")), "no job folder to clean up"
    nxt = _suite(tmp, "run", "single", "--steps", "5", "--no-track")  # removes it
    assert nxt.returncode == 0, nxt.stderr
    return code, "FAILED"  # ended by its writer, which saw the launcher die


RUN_FAULTS = {
    "writer SIGKILL mid-run": (_writer_killed_mid_run, 0),
    "writer SIGKILL before the run exists": (_writer_killed_at_start, 0),
    "writer SIGKILL, then a rank crashes": (_writer_killed_then_rank_crashes, 1),
    "SQLite store locked for 25 s": (_store_locked, 0),
    "SIGHUP to the process group": (_terminal_closed, 130),
    "launcher and writer SIGKILL": (_launcher_and_writer_killed, -signal.SIGKILL),
    "launcher SIGKILL": (_launcher_killed, -signal.SIGKILL),
    "SIGKILL to the process group": (_process_group_killed, -signal.SIGKILL),
}


@pytest.mark.parametrize("fault", list(RUN_FAULTS))
def test_run_fault_matrix(tmp_path: Path, fault: str) -> None:
    inject, expected_code = RUN_FAULTS[fault]
    code, status = inject(tmp_path)
    assert code == expected_code
    _assert_nothing_left(tmp_path)
    (run_id, got), *_ = _runs(tmp_path).items()  # the faulted run came first
    assert got == status
    if status == "FINISHED":
        _assert_summary_kept(tmp_path, run_id)
    else:
        assert (tmp_path / "mlartifacts" / run_id / "artifacts" / "error.txt").exists()


# ---------------------------------------------------------------------------------------------
# Drivers: `suite reproduce` and `suite sweep` stop every child and end every run

REPRODUCE = ["reproduce", "baseline", "--seeds", "0", "--set", "nproc=2"]
# steps no run can finish before the fault arrives (a digits step is ~1 ms: 100,000 steps once
# finished in 108 s while a slow start held the fault back)
FOREVER = "steps=100000000"
REPRODUCE += ["--set", FOREVER, "--set", "eval_every=0", "--out", "report"]
SWEEP = ["sweep", "baseline/periods", "--space", "lr", "--trials", "4", "--set", "nproc=2"]
SWEEP += ["--set", FOREVER, "--set", "eval_every=0"]

DRIVER_FAULTS = {
    "SIGTERM to suite reproduce": (REPRODUCE, signal.SIGTERM, 1, 130),
    "SIGKILL to suite reproduce": (REPRODUCE, signal.SIGKILL, 1, -9),
    "SIGTERM to suite sweep --n-jobs 2": ([*SWEEP, "--n-jobs", "2"], signal.SIGTERM, 2, 130),
    "SIGHUP to suite sweep": (SWEEP, signal.SIGHUP, 1, 130),
    # the second cuts short the wait for the trials' threads: they are ended by the driver
    "two Ctrl-C to suite sweep --n-jobs 2": (
        [*SWEEP, "--n-jobs", "2"],
        (signal.SIGINT, signal.SIGINT),
        2,
        130,
    ),
}


@pytest.mark.parametrize("fault", list(DRIVER_FAULTS))
def test_driver_fault_matrix(tmp_path: Path, fault: str) -> None:
    args, sig, jobs, expected_code = DRIVER_FAULTS[fault]
    proc = _start(args, tmp_path)
    try:  # the sweep's and the reproduction's parent run is RUNNING too
        _running(tmp_path, jobs + 1, limit=240)
    except AssertionError:  # say why, and leave no driver running into the next tests
        proc.kill()
        runs = _runs(tmp_path)
        why = {r: _tags(tmp_path, r).get("suite.writer_error") for r, s in runs.items()
               if s == "FAILED"}  # fmt: skip
        print((tmp_path / "err.txt").read_text()[-3000:], runs, why)
        raise
    time.sleep(1.0)
    for i, one in enumerate(sig if isinstance(sig, tuple) else (sig,)):
        if i:  # the next signal while the driver is still stopping its jobs
            time.sleep(0.3)
        proc.send_signal(one)
    assert _finish(proc, tmp_path) == expected_code
    _assert_nothing_left(tmp_path)
    if args[0] == "sweep":  # no trial left RUNNING in the study either
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
        trials = storage.get_all_trials(storage.get_all_studies()[0]._study_id)
        assert len(trials) >= jobs and {t.state.name for t in trials} == {"FAIL"}, trials
    runs = _runs(tmp_path)
    kinds = ("study", "reproduce")
    parents = [r for r in runs if _tags(tmp_path, r).get("suite.kind") in kinds]
    # ended by its driver (KILLED), or by its last child after a kill -9 (FAILED, orphaned)
    assert len(parents) == 1 and runs[parents[0]] == ("FAILED" if expected_code == -9 else "KILLED")
    jobs_ended = [s for r, s in runs.items() if r not in parents]
    assert len(jobs_ended) >= jobs and set(jobs_ended) == {"FAILED"}


# ---------------------------------------------------------------------------------------------
# The rule for runs of other hosts, and a run of a live process


def test_orphans_of_other_hosts_go_by_heartbeat(tmp_path: Path) -> None:
    from suite.tracking import STALE_SECONDS, open_client, owner_tags

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_client(uri)
    exp = client.create_experiment("e")
    now = time.time()
    other = {"suite.owner.host": "elsewhere", "suite.owner.pids": "1:1"}
    stale = client.create_run(exp, tags={**other, "suite.heartbeat": f"{now - STALE_SECONDS - 60}"})
    fresh = client.create_run(exp, tags={**other, "suite.heartbeat": f"{now - 60}"})
    mine = client.create_run(exp, tags=owner_tags([os.getpid()]))  # alive: this test
    untagged = client.create_run(exp)  # not the suite's: never touched
    client = open_client(uri)  # the next command
    ended = client.get_run(stale.info.run_id)
    assert ended.info.status == "FAILED"
    assert "no heartbeat from host elsewhere" in ended.data.tags["suite.orphaned"]
    for run in (fresh, mine, untagged):
        assert client.get_run(run.info.run_id).info.status == "RUNNING"


def test_a_process_of_another_pid_namespace_is_judged_as_another_hosts() -> None:
    """Containers sharing a host name and a kernel (host networking) number processes in their
    own PID namespaces: a pid from another one says nothing here. Its runs go by heartbeat,
    its job folders are never taken for dead."""
    from suite import liveness
    from suite.tracking import STALE_SECONDS, orphan_note

    dead = _a_dead_pid()
    mine = liveness.identity(os.getpid())
    assert mine.endswith(f":{liveness.NAMESPACE}") and liveness.NAMESPACE
    assert liveness.alive(mine) and not liveness.alive(f"{dead}::{liveness.NAMESPACE}")
    assert not liveness.alive(f"{dead}:")  # an identity written before namespaces: checked
    foreign = f"{dead}:1:{int(liveness.NAMESPACE) + 1}"
    assert not liveness.checkable(foreign) and liveness.alive(foreign)  # never judged dead
    now = time.time()
    tags = {"suite.owner.host": liveness.HOST, "suite.owner.boot": liveness.boot_id(),
            "suite.owner.pids": foreign}  # fmt: skip
    assert orphan_note({**tags, "suite.heartbeat": f"{now - 60}"}, now) is None
    note = orphan_note({**tags, "suite.heartbeat": f"{now - STALE_SECONDS - 60}"}, now)
    assert note is not None and "no heartbeat" in note
    here = {**tags, "suite.owner.pids": f"{dead}::{liveness.NAMESPACE}"}  # this namespace
    assert "are gone" in (orphan_note(here, now) or "")


def test_a_parent_run_shared_by_drivers_is_orphaned_only_when_all_are_gone(
    tmp_path: Path,
) -> None:
    """Two sweep drivers share a study's parent run; the newer one stops first and leaves it
    to the other. It was the only owner named, so the next command marked the run FAILED
    (orphaned) under the feet of the driver still working."""
    from suite.tracking import driver_parent_run, open_client, orphan_note

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_client(uri)
    exp = client.create_experiment("e")
    query, tags = "tags.`suite.kind` = 'study'", {"suite.kind": "study"}
    first = driver_parent_run(client, exp, query, "parent", tags)  # this process: still alive
    newer = (
        "from suite.tracking import driver_parent_run, open_client\n"
        f"print(driver_parent_run(open_client({uri!r}), {exp!r}, {query!r}, 'parent', {tags!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", newer], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == first, done.stderr
    owners = client.get_run(first).data.tags
    assert len(owners["suite.owner.pids"].split(",")) == 2  # both drivers, the newer one gone
    assert orphan_note(owners) is None
    open_client(uri)  # the next command's housekeeping leaves it alone
    assert client.get_run(first).info.status == "RUNNING"


def _a_dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_the_writer_refreshes_its_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import queue
    import threading

    from suite import tracking

    monkeypatch.setattr(tracking, "HEARTBEAT_SECONDS", 0.5)
    writer = tracking._Writer(queue.Queue(), os.getppid(), 0.2, None)  # owned by our parent
    writer._open(f"sqlite:///{tmp_path / 'mlflow.db'}", "e", "r", {}, {})
    beat = lambda: float(writer.client.get_run(writer.run_id).data.tags["suite.heartbeat"])  # noqa: E731
    first = beat()
    threading.Timer(3.5, writer.inbox.put, args=(("end",),)).start()
    assert writer._next() == ("end",)  # idles, beating, until the owner speaks
    assert beat() >= first + 2


def test_a_busy_writer_still_beats_and_flushes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metrics faster than the inbox's wait (a small model's steps): the heartbeat and the
    flushes still fall due. (They ran only when the inbox was empty: a fast run looked dead to
    other hosts after 10 minutes, and its metrics reached the store only at its end.)"""
    import queue
    import threading

    from suite import tracking

    monkeypatch.setattr(tracking, "HEARTBEAT_SECONDS", 0.5)
    writer = tracking._Writer(queue.Queue(), os.getppid(), 0.2, None)
    writer._open(f"sqlite:///{tmp_path / 'mlflow.db'}", "e", "r", {}, {})
    first = float(writer.client.get_run(writer.run_id).data.tags["suite.heartbeat"])

    def feed() -> None:
        for step in range(150):  # 3 s, never a pause of a second
            writer.inbox.put(("metrics", step, int(time.time() * 1000), {"loss": 1.0}))
            time.sleep(0.02)
        writer.inbox.put(("end",))

    threading.Thread(target=feed, daemon=True).start()
    while (item := writer._next()) != ("end",):
        writer._take_metrics(item)
    tags = writer.client.get_run(writer.run_id).data.tags
    assert float(tags["suite.heartbeat"]) >= first + 2
    logged = writer.client.get_metric_history(writer.run_id, "loss")
    assert len(logged) >= 100  # flushed along the way, not left for the end
