"""Network specs and real shaped links (``suite run --emulate``).

The emulated runs need root and iproute2 (ip, tc), as CI has; they are not skipped without
them. Each checks the host's own network namespace is left as it was."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import last_json, suite_cmd

from suite import cli, emulate
from suite.errors import ConfigError
from suite.network import PRESETS, NetworkSpec, format_spec, parse_network

RUN = ("run", "allreduce_sgd", "--nproc", "2", "--no-track")


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def _host_network() -> tuple[str, str, str, str]:
    """What a run must leave alone: the namespaces, and the host's links, addresses, routes."""
    return _ip("netns", "list"), _ip("-o", "link"), _ip("-o", "addr"), _ip("route")


def _has_netem() -> bool:
    """Whether this kernel has sch_netem, asked independently of suite.emulate."""
    ns = f"test-netem-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "a", "type", "veth", "peer", "name", "b"])
        done = subprocess.run(
            ["tc", "-n", ns, "qdisc", "add", "dev", "a", "root", "netem", "delay", "1ms"],
            capture_output=True,
        )
        return done.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "delete", ns])


# ---------------------------------------------------------------------------------------------
# The spec parser (pure)


def test_presets_and_specs_parse() -> None:
    assert parse_network("datacenter") == NetworkSpec(100e9, 5e-6, "datacenter")
    assert parse_network("wan") == NetworkSpec(100e6, 20e-3, "wan")
    assert parse_network("1gbit:0") == NetworkSpec(1e9, 0.0, "1gbit:0")
    assert parse_network("1gbit:0.5ms").latency_s == pytest.approx(0.5e-3)
    assert parse_network("100mbit").latency_s is None  # unset: the measured one is used
    assert parse_network("10Gbit:20us").bandwidth_bps == 10e9
    assert parse_network("10gbit:0").latency_s == 0.0
    assert {"datacenter", "10g", "1g", "wan"} <= set(PRESETS)
    for spec in PRESETS.values():  # the printed form parses back to the same figures
        again = parse_network(format_spec(spec))
        assert (again.bandwidth_bps, again.latency_s) == (spec.bandwidth_bps, spec.latency_s)


@pytest.mark.parametrize("text", ["lan", "100mb", "1gbit:5", "0mbit", "1gbit:-1ms", "gbit", ""])
def test_bad_specs_list_presets_and_grammar(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_network(text)
    message = str(err.value)
    assert all(name in message for name in PRESETS)
    assert "RATE[:LATENCY]" in message


# ---------------------------------------------------------------------------------------------
# Refusals: exit 2, nothing started


def test_bad_spec_exits_2(tmp_path: Path) -> None:
    before = _host_network()
    done = suite_cmd(*RUN, "--steps", "2", "--emulate", "100mb", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "datacenter" in done.stderr and "RATE[:LATENCY]" in done.stderr
    assert _host_network() == before


def test_delay_needs_netem(tmp_path: Path) -> None:
    """A latency > 0 is netem's to add; without sch_netem it is refused, naming the module."""
    before = _host_network()
    done = suite_cmd(*RUN, "--steps", "2", "--emulate", "100mbit:1ms", "--json", cwd=tmp_path)
    if _has_netem():
        assert done.returncode == 0, done.stderr
        assert last_json(done.stdout)["measured_rtt_s"] >= 1.5e-3  # 1 ms each way
    else:
        assert done.returncode == 2, done.stderr
        assert "sch_netem" in done.stderr
        wan = suite_cmd(*RUN, "--steps", "2", "--emulate", "wan", cwd=tmp_path)
        assert wan.returncode == 2 and "sch_netem" in wan.stderr
    assert _host_network() == before


@pytest.mark.parametrize(
    ("flags", "env", "says"),
    [
        (("--device", "cuda"), {}, "NCCL"),
        (("--nproc", "1025"), {}, "at most 1024"),
        ((), {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}, "torchrun"),
        ((), {"PATH": "/nonexistent"}, "iproute2"),
    ],
)
def test_cannot_emulate_exits_2(tmp_path: Path, flags: tuple, env: dict, says: str) -> None:
    before = _host_network()
    done = suite_cmd(*RUN, "--steps", "2", "--emulate", "100mbit", *flags, cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert _host_network() == before


def test_not_root_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(emulate.os, "geteuid", lambda: 1000)
    rc = cli.main([*RUN, "--steps", "2", "--emulate", "1gbit"])
    assert rc == 2
    assert "needs root" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Emulated runs


def _emulated(tmp_path: Path, spec: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return suite_cmd(*RUN, "--steps", "20", "--emulate", spec, "--json", *extra, cwd=tmp_path)


def test_emulated_run_measures_the_set_rate(tmp_path: Path) -> None:
    before = _host_network()
    done = _emulated(tmp_path, "100mbit")
    assert done.returncode == 0, done.stderr
    summary = last_json(done.stdout)
    assert summary["steps"] == 20 and summary["test_accuracy"] > 0.3
    assert summary["emulate"] == "100mbit" and summary["emulated_rate_bps"] == 100e6
    assert 0.7 <= summary["measured_throughput_bps"] / 100e6 <= 1.1
    assert 0 < summary["measured_rtt_s"] < 0.05
    assert [(link["src"], link["dst"]) for link in summary["measured_links"]] == [(0, 1), (1, 0)]
    assert "link 0->1: measured" in done.stderr  # beside the set rate in the printed summary
    assert _host_network() == before


def test_low_rate_is_slower(tmp_path: Path) -> None:
    """The ranks' traffic really crosses the shaped links: at 10 Mbit/s each step's all-reduce
    takes at least the time its bytes need at that rate, and far longer than at 1 Gbit/s."""
    slow = _emulated(tmp_path, "10mbit")
    fast = _emulated(tmp_path, "1gbit")
    assert slow.returncode == 0 and fast.returncode == 0, slow.stderr + fast.stderr
    slow, fast = last_json(slow.stdout), last_json(fast.stdout)
    rank0 = slow["per_rank"][0]
    floor = rank0["bytes_sent"] * 8 / 10e6  # 2 ranks: a rank's wire bytes are its payload
    assert rank0["comm_seconds"] >= 0.7 * floor, (rank0, floor)
    assert slow["comm_seconds"] > 5 * fast["comm_seconds"], (slow, fast)


def test_crash_leaves_nothing_behind(tmp_path: Path) -> None:
    before = _host_network()
    faults = ("--set", "fault.kind=crash", "--set", "fault.rank=1", "--set", "fault.step=5")
    done = _emulated(tmp_path, "100mbit", *faults)
    assert done.returncode == 1, done.stderr
    assert "rank 1" in done.stderr
    assert _host_network() == before  # no namespace, veth or bridge left


def test_killed_launcher_is_cleaned_at_next_start(tmp_path: Path) -> None:
    before = _host_network()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    argv = [sys.executable, "-m", "suite", *RUN, "--steps", "100000", "--emulate", "1gbit"]
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    mine = re.compile(rf"^suite-{proc.pid}-(br|r0|r1)\b", re.M)
    try:
        deadline = time.monotonic() + 60
        while len(mine.findall(_ip("netns", "list"))) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "never wired"
            time.sleep(0.2)
        time.sleep(1.0)  # the measurement and the ranks' start
        during = _host_network()
        assert during[1:] == before[1:]  # links, addresses and routes of the host untouched
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(mine.findall(_ip("netns", "list"))) == 3  # left behind by the SIGKILL
    done = suite_cmd(*RUN, "--steps", "2", "--emulate", "1gbit", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not mine.findall(_ip("netns", "list"))
    assert _host_network() == before


def test_interrupted_run_leaves_nothing_behind(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the launcher) mid-training: exit 130, the namespaces are gone."""
    before = _host_network()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    argv = [sys.executable, "-m", "suite", *RUN, "--steps", "100000", "--emulate", "1gbit"]
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while f"suite-{proc.pid}-br" not in _ip("netns", "list"):
            assert proc.poll() is None and time.monotonic() < deadline, "never wired"
            time.sleep(0.2)
        time.sleep(2.0)  # into training
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert _host_network() == before
