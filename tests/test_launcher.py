"""A dead or hung rank ends the whole run, with its traceback, in bounded time, no orphans."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from suite.launcher import RankFailure, beating, heartbeat, launch
from suite.transport import Transport


def _work(fault: str, victim: int) -> int:
    t = Transport()
    x = torch.ones(3)
    for step in range(5):
        heartbeat()
        if step == 2 and t.rank == victim:
            if fault == "raise":
                raise ValueError("injected failure in _work")
            if fault == "exit":
                os._exit(7)
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if fault == "hang":
                time.sleep(3600)
        t.all_reduce(x)
    return t.rank * 10


def _pids() -> int:
    return os.getpid()


def test_results_come_back_in_rank_order() -> None:
    assert launch(_work, 3, ("none", -1)) == [0, 10, 20]


@pytest.mark.parametrize(
    ("fault", "reason", "detail"),
    [
        ("raise", "exited with code 1", "ValueError: injected failure in _work"),
        ("exit", "exited with code 7", "through os._exit"),
        ("kill", "was killed by SIGKILL", "by a signal"),
    ],
)
def test_a_dead_rank_is_blamed_with_its_traceback(fault: str, reason: str, detail: str) -> None:
    start = time.monotonic()
    with pytest.raises(RankFailure) as info:
        launch(_work, 3, (fault, 1))
    elapsed = time.monotonic() - start
    failure = info.value
    assert failure.rank == 1
    assert reason in failure.reason
    assert detail in failure.details
    assert elapsed < 15, f"took {elapsed:.1f} s to notice a dead rank"


def _long_local_work(beat: bool) -> int:
    """Rank 0's end of a run: the others have returned, and it works alone for a while (the
    trace's replay), longer than the hang timeout."""
    Transport()
    if torch.distributed.get_rank() == 0:
        with beating() if beat else contextlib.nullcontext():
            time.sleep(4)
    return torch.distributed.get_rank()


def test_long_local_work_that_beats_is_not_taken_for_a_hang() -> None:
    assert launch(_long_local_work, 2, (True,), hang_timeout=2) == [0, 1]
    with pytest.raises(RankFailure, match="hung"):  # the control: without beats, it is
        launch(_long_local_work, 2, (False,), hang_timeout=2)


def test_a_hung_rank_is_found_and_its_stack_dumped() -> None:
    start = time.monotonic()
    with pytest.raises(RankFailure) as info:
        launch(_work, 3, ("hang", 2), hang_timeout=3)
    elapsed = time.monotonic() - start
    failure = info.value
    assert failure.rank == 2
    assert "hung" in failure.reason
    assert "in _work" in failure.details  # the hung rank's own stack, where it sleeps
    assert elapsed < 3 + 10
    # the others are shown by the frame they wait in, not by the bottom of their stacks
    assert sorted(failure.others) == [0, 1]
    others = failure.report().split("--- rank 0:")[1]
    assert others.count("in all_reduce") == 2


# -- a world that cannot join its process group is started once more ---------------------------


def _flaky_rendezvous(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fails: int) -> Path:
    """Rank 1's first ``fails`` rendezvous raise as gloo's did in a flaky CI run (the ranks are
    forked: they inherit the patch); each start of rank 1 is counted in a file."""
    import torch.distributed as dist

    starts = tmp_path / "starts"
    join = dist.init_process_group

    def init(*args, **kwargs):
        if kwargs.get("rank") == 1:
            with open(starts, "a") as f:
                f.write("x")
            if len(starts.read_text()) <= fails:
                raise RuntimeError("Gloo connectFullMesh failed with Connection closed by peer")
        return join(*args, **kwargs)

    monkeypatch.setattr(dist, "init_process_group", init)
    return starts


def test_a_failed_rendezvous_starts_the_world_again(monkeypatch, tmp_path, capsys) -> None:
    starts = _flaky_rendezvous(monkeypatch, tmp_path, fails=1)
    assert launch(_work, 3, ("none", -1)) == [0, 10, 20]
    assert starts.read_text() == "xx"
    err = capsys.readouterr().err
    assert "could not join their process group (rank 1: RuntimeError: Gloo connectFullMesh" in err


def test_a_rendezvous_that_fails_again_is_the_ranks_failure(monkeypatch, tmp_path) -> None:
    starts = _flaky_rendezvous(monkeypatch, tmp_path, fails=2)
    with pytest.raises(RankFailure) as info:
        launch(_work, 3, ("none", -1))
    assert info.value.rank == 1 and "connectFullMesh" in info.value.details
    assert starts.read_text() == "xx"  # RENDEZVOUS_TRIES starts, no more


def _fail_once_joined(starts: str) -> int:
    with open(starts, "a") as f:
        f.write(str(torch.distributed.get_rank()))
    raise ValueError("failed after joining")


def test_a_failure_after_joining_is_never_retried(tmp_path) -> None:
    starts = tmp_path / "starts"
    with pytest.raises(RankFailure) as info:
        launch(_fail_once_joined, 2, (str(starts),))
    assert "failed after joining" in info.value.details
    ran = starts.read_text()  # the ranks that ran it (one may be stopped before it writes)
    assert ran and len(set(ran)) == len(ran), ran  # no rank ran it twice: no second start


def _spin_forever() -> None:
    Transport()
    while True:
        heartbeat()
        time.sleep(0.05)


LAUNCHER_SCRIPT = textwrap.dedent(
    """
    import faulthandler, os, signal, sys, time
    faulthandler.register(signal.SIGUSR1)  # a hung launcher's stack, for the test's message
    from suite.launcher import launch
    sys.path.insert(0, {here!r})
    from test_launcher import _spin_forever
    print(os.getpid(), flush=True)
    launch(_spin_forever, 2)
    """
)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill 0; it is dead for our purpose
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def _as_a_shell_starts_it() -> None:
    """Ctrl-C at its default and unblocked in the launcher, as a shell starts a command: an
    ignored or blocked SIGINT survives exec, and this test process may have inherited one."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _signal_state(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return " ".join(line.strip() for line in f if line.startswith(("SigBlk", "SigIgn")))


def _start_launcher() -> tuple[subprocess.Popen, list[int]]:
    here = os.path.dirname(__file__)
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER_SCRIPT.format(here=here)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_a_shell_starts_it,
    )
    deadline = time.monotonic() + 60
    kids: list[int] = []
    while time.monotonic() < deadline:
        kids = [k for k in _children(proc.pid) if _alive(k)]
        if len(kids) >= 2:
            break
        time.sleep(0.2)
    assert len(kids) >= 2, "workers did not start"
    return proc, kids


def _wait_gone(pids: list[int], limit: float) -> list[int]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_ctrl_c_stops_every_rank() -> None:
    proc, kids = _start_launcher()
    state = _signal_state(proc.pid)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # faulthandler: where it hangs
        time.sleep(1)
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"launcher still running 30 s after SIGINT ({state}); stderr:\n{err[-4000:]}")
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in proc.stderr.read()
    assert _wait_gone(kids, 10) == []


def test_workers_die_with_a_killed_launcher() -> None:
    proc, kids = _start_launcher()
    proc.kill()
    proc.wait(timeout=10)
    assert _wait_gone(kids, 10) == [], "orphaned workers outlived the launcher"


def test_stale_job_folders_go_but_a_live_launchers_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another launcher's clean-up must not take a live job's folder, even one whose owner file
    is still empty (being written), and must take a dead launcher's."""
    from suite import launcher

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = tmp_path / f"suite-job-{os.getpid()}-live"
    gone = tmp_path / f"suite-job-{dead.pid}-gone"
    for folder in (live, gone):
        folder.mkdir()
        (folder / "owner").write_text("")  # created, not yet written
    launcher._remove_stale_jobdirs()
    assert live.exists()
    assert not gone.exists()


# -- ranks that fail together ----------------------------------------------------------------


class _Exited:
    """A rank process that has already exited with ``exitcode``."""

    def __init__(self, exitcode: int) -> None:
        self.exitcode, self.sentinel = exitcode, None

    def join(self, timeout: float | None = None) -> None:
        pass


def test_ranks_that_all_failed_before_the_monitor_looked_are_a_failure(tmp_path: Path) -> None:
    # Both ranks raise at once and exit 1 between two of the monitor's looks: it must not take
    # "no rank is running" for success (a flaky CI run then read a missing result file).
    from suite import launcher

    job = launcher._Job(2, "gloo", str(tmp_path), 60.0, os.getpid())
    beats = [time.time()] * 2
    with pytest.raises(RankFailure) as caught:
        launcher._monitor([_Exited(1), _Exited(1)], beats, [0, 0], job, 0.01)
    assert caught.value.rank in (0, 1)
    launcher._monitor([_Exited(0), _Exited(0)], beats, [0, 0], job, 0.01)  # all done: returns
