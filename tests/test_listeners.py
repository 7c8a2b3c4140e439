"""Nothing a local job opens listens beyond loopback (issue 14, item 2).

The rendezvous is a FileStore in the job's private folder and gloo (NCCL too) is pinned to
``lo``; this checks it the way an administrator would, with ``ss -ltnp`` while a real ``suite
run`` trains.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

LOOPBACK = ("127.", "[::1]", "::1")
ROOT = Path(__file__).resolve().parents[1]


def _session_pids(sid: int) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 of /proc/PID/stat: the session id
            pids.add(int(entry.name))
    return pids


def _listeners(pids: set[int]) -> list[tuple[str, int]]:
    """(local address, pid) of every listening TCP socket owned by ``pids``."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        cols = line.split()
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            if pid in pids:
                found.append((cols[3], pid))
    return found


def test_a_local_run_listens_on_loopback_only(tmp_path: Path) -> None:
    cmd = ["run", "allreduce_sgd", "--nproc", "3", "--steps", "100000", "--no-track", "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "suite", *cmd],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        listening: list[tuple[str, int]] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            pids = _session_pids(proc.pid)
            listening = _listeners(pids)
            # three ranks up (each gloo rank listens once), launcher included in pids
            if len({pid for _, pid in listening}) >= 3:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert len({pid for _, pid in listening}) >= 3, f"ranks did not come up: {listening}"
        time.sleep(1.0)  # anything opened a little later (a store, a late rank) shows too
        listening = _listeners(_session_pids(proc.pid))
        exposed = [(addr, pid) for addr, pid in listening if not addr.startswith(LOOPBACK)]
        assert exposed == [], f"sockets listening beyond loopback: {exposed}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_make_dashboard_listens_on_loopback_only(tmp_path: Path) -> None:
    """`make dashboard` (optuna-dashboard on the sweeps' studies) is reachable from this machine
    only: the address it actually listens on, as ``ss`` shows it, is loopback."""
    with socket.socket() as probe:  # a free port, so a dashboard already running is no matter
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(storage=storage, study_name="a study")  # the dashboard needs a store
    make = [
        "make",
        "-s",
        "-C",
        str(ROOT),
        "dashboard",
        f"BIN={Path(sys.executable).parent}",
        f"OPTUNA_STORAGE={storage}",
        f"DASHBOARD_PORT={port}",
    ]
    proc = subprocess.Popen(
        make, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        listening: list[tuple[str, int]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            listening = [
                (a, p) for a, p in _listeners(_session_pids(proc.pid)) if a.endswith(f":{port}")
            ]
            if listening:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert listening, f"the dashboard never listened on port {port}"
        assert {addr for addr, _ in listening} == {f"127.0.0.1:{port}"}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_make_dashboard_without_studies_says_so_and_creates_nothing(tmp_path: Path) -> None:
    """Before the first sweep there is no optuna.db: optuna-dashboard would crash creating it
    (and leave an empty file); the target says what to run first instead."""
    db = tmp_path / "optuna.db"
    done = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "dashboard", f"BIN={Path(sys.executable).parent}",
         f"OPTUNA_STORAGE=sqlite:///{db}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert f"no Optuna studies in {db} yet" in done.stderr and "suite sweep" in done.stderr
    assert not db.exists()


def test_both_backends_are_pinned_to_loopback_unless_the_user_names_an_interface(
    monkeypatch,
) -> None:
    """NCCL (CUDA runs: no GPU here to run one) skips loopback unless told, and would open its
    bootstrap sockets on the LAN interface; gloo's default follows the hostname."""
    from suite import launcher

    for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        monkeypatch.delenv(name, raising=False)
    launcher.pin_to_loopback("nccl")
    launcher.pin_to_loopback("gloo")
    assert os.environ["NCCL_SOCKET_IFNAME"] == os.environ["GLOO_SOCKET_IFNAME"] == "lo"
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")  # the user's choice stands
    launcher.pin_to_loopback("nccl")
    assert os.environ["NCCL_SOCKET_IFNAME"] == "ib0"
