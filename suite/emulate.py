"""Real shaped links for local runs (``suite run ... --emulate NETWORK``).

Each rank runs in a network namespace of its own, ``suite-<owner pid>-r<rank>``, holding one
interface, ``emu0`` (address 10.213.x.y/16, rank r at host number r + 1), and ``lo``. ``emu0``
is one end of a veth pair whose other end, ``p<rank>``, is a port of the bridge ``br0`` in the
namespace ``suite-<owner pid>-br``. Both ends are shaped with tbf at the spec's rate: egress of
``emu0`` is the rank's uplink, egress of ``p<rank>`` its downlink. A spec with a latency > 0
adds netem below each tbf, half the one-way latency per direction; a kernel without sch_netem
(this project's CI machine) cannot hold packets back, so such a spec is refused rather than
faked. Gloo runs over ``emu0`` (GLOO_SOCKET_IFNAME); the rendezvous is the launcher's FileStore,
a file, so nothing listens anywhere.

Nothing changes in the host's own namespace: no interface, address, route or firewall rule is
made there, the run's namespaces have no route to anything but each other, so no traffic can
leave the machine. Deleting a namespace deletes its veth ends (and so their peers), the bridge
and every qdisc: :meth:`Emulation.unwire` deletes the run's namespaces whatever the ending
(the launcher calls it in its ``finally``); a launcher killed with SIGKILL leaves them, and the
next :meth:`Emulation.wire` deletes every ``suite-<pid>-*`` namespace whose pid is gone.

Before the ranks start, :meth:`Emulation.wire` measures every rank's uplink and downlink (rank
k sends to rank k+1 in turn, ring order): a bounded TCP transfer for throughput and a ping-pong
of one-byte messages for the round trip, from threads that enter the namespaces (setns is
per-thread for network namespaces), so the launcher itself never leaves the host namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import socket
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from suite import liveness, trace
from suite.errors import ConfigError
from suite.network import NetworkSpec, format_spec

NETNS_DIR = "/run/netns"
PREFIX = "suite-"
RANK_IF = "emu0"
SUBNET = "10.213"  # a /16 that exists only inside a run's namespaces
MAX_RANKS = 1024  # a Linux bridge takes at most 1024 ports (BR_MAX_PORTS)
CLONE_NEWNET = 0x40000000
PROBE_SECONDS = 0.3  # target length of each link's throughput transfer
PROBE_TIMEOUT = 3.0  # hard bound on one link's measurement
PING_ROUNDS = 20
_STALE = re.compile(rf"{PREFIX}(\d+)-(?:br|probe|r\d+)$")


@dataclass(frozen=True)
class LinkFigures:
    """One measured path: ``src``'s uplink and ``dst``'s downlink."""

    src: int
    dst: int
    throughput_bps: float
    rtt_s: float


def namespace(owner: int, rank: int) -> str:
    return f"{PREFIX}{owner}-r{rank}"


def address(rank: int) -> str:
    host = rank + 1
    return f"{SUBNET}.{host // 256}.{host % 256}"


# ---------------------------------------------------------------------------------------------
# Checks, before anything starts


def _tool(name: str) -> str | None:
    return shutil.which(name)


def check(spec: NetworkSpec, nproc: int, *, device: str, torchrun: bool) -> None:
    """ConfigError saying what is missing if this run cannot be emulated here: torchrun,
    CUDA, too many ranks, no root, no iproute2, or a qdisc (or the bridge) the kernel lacks.
    Probes the kernel in a throwaway namespace, removed before returning."""
    if torchrun:
        raise ConfigError(
            "--emulate needs the local launcher (it puts each local rank in its own network "
            "namespace); under torchrun shape the real hosts' links instead"
        )
    if device == "cuda":
        raise ConfigError(
            "--emulate shapes gloo's TCP links; CUDA ranks talk over NCCL, which these links "
            "do not carry; valid: --device cpu"
        )
    if nproc > MAX_RANKS:
        raise ConfigError(
            f"--emulate wires at most {MAX_RANKS} ranks (one bridge port each, and a Linux "
            f"bridge takes at most {MAX_RANKS}); got nproc={nproc}"
        )
    if os.geteuid() != 0:
        raise ConfigError(
            f"--emulate needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN, to make network "
            f"namespaces, veth pairs and qdiscs); running as uid {os.geteuid()}"
        )
    missing = [name for name in ("ip", "tc") if _tool(name) is None]
    if missing:
        raise ConfigError(
            f"--emulate needs iproute2 ({' and '.join(missing)} not found on PATH); "
            "install it, e.g. apt-get install iproute2"
        )
    problem = _probe_kernel(needs_delay=bool(spec.latency_s))
    if problem:
        raise ConfigError(f"--emulate {spec}: {problem}")


def _probe_kernel(needs_delay: bool) -> str | None:
    """What the kernel lacks for the wiring (None: nothing), tried in a throwaway namespace."""
    ns = f"{PREFIX}{os.getpid()}-probe"
    try:
        _ip("netns", "add", ns)
    except RuntimeError as err:
        return f"cannot create a network namespace: {err}"
    try:
        try:
            _ip("-n", ns, "link", "add", "b0", "type", "bridge")
        except RuntimeError as err:
            return f"the kernel has no bridge support (module bridge): {err}"
        try:
            _ip("-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        except RuntimeError as err:
            return f"the kernel has no veth support (module veth): {err}"
        try:
            _tc("-n", ns, "qdisc", "add", "dev", "v0", "root", "handle", "1:", *_tbf(1e8))
        except RuntimeError as err:
            return f"the kernel has no tbf qdisc (module sch_tbf): {err}"
        if needs_delay:
            try:
                _tc("-n", ns, "qdisc", "add", "dev", "v0", "parent", "1:1", "netem", "delay", "1ms")
            except RuntimeError:
                return (
                    "a latency > 0 needs the kernel's netem qdisc (module sch_netem), which this "
                    "kernel lacks, and nothing else here can hold packets back; valid: a "
                    "rate-only spec such as "
                    f"{format_spec(NetworkSpec(1e8, 0.0))} or {format_spec(NetworkSpec(1e9))}"
                )
        return None
    finally:
        _remove_namespaces([ns])


# ---------------------------------------------------------------------------------------------
# ip and tc


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}")


def _ip(*args: str) -> None:
    _run([_tool("ip") or "ip", *args])


def _tc(*args: str) -> None:
    _run([_tool("tc") or "tc", *args])


def _tbf(rate_bps: float) -> list[str]:
    """tbf at ``rate_bps``: a bucket of at least one 64 KiB GSO packet (else tbf splits them)
    or 1 ms at the rate, and a queue of 50 ms at the rate (at least 1 MB) before drops."""
    rate = int(rate_bps)
    burst = max(65536 + 1514, rate // 8 // 1000)
    limit = max(1 << 20, rate // 8 // 20) + burst
    return ["tbf", "rate", f"{rate}bit", "burst", str(burst), "limit", str(limit)]


def _shape(ns: str, dev: str, spec: NetworkSpec, delay_s: float) -> None:
    """Rate (and, with ``delay_s`` > 0, netem delay under it) on ``dev``'s egress."""
    _tc("-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", *_tbf(spec.bandwidth_bps))
    if delay_s > 0:
        # Enough netem queue for the bytes in flight over the delay at the rate.
        packets = max(1000, int(spec.bandwidth_bps / 8 * delay_s / 1500) * 2)
        delay = f"{delay_s * 1e6:.0f}us"
        _tc("-n", ns, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:",
            "netem", "delay", delay, "limit", str(packets))  # fmt: skip


def _namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except OSError:
        return []


def _remove_namespaces(names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(RuntimeError):
            _ip("netns", "delete", name)


def remove_stale() -> list[str]:
    """Delete the namespaces of runs whose launcher is gone (killed with SIGKILL); their names."""
    stale = [
        name
        for name in _namespaces()
        if (m := _STALE.match(name)) and int(m[1]) != os.getpid() and not liveness.alive(m[1])
    ]
    _remove_namespaces(stale)
    return stale


# ---------------------------------------------------------------------------------------------
# A run's wiring


class Emulation:
    """The shaped network of one launch: :meth:`wire` before the ranks start (it measures the
    links too), :meth:`enter` in each rank right after fork, :meth:`unwire` when the run ends.
    Only the names travel to the ranks (the object is picklable)."""

    def __init__(self, spec: NetworkSpec) -> None:
        self.spec = spec
        self.owner = os.getpid()
        self.nproc = 0
        self.links: list[LinkFigures] = []

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.owner}-br"

    def names(self) -> list[str]:
        return [self.bridge] + [namespace(self.owner, r) for r in range(self.nproc)]

    def wire(self, nproc: int) -> None:
        """Make the namespaces, bridge, veth pairs and qdiscs, then measure every link. On any
        error what was made is removed before it propagates."""
        remove_stale()
        self.owner, self.nproc = os.getpid(), nproc
        delay = (self.spec.latency_s or 0.0) / 2  # half the one-way latency each direction
        try:
            br = self.bridge
            _ip("netns", "add", br)
            _ip("-n", br, "link", "add", "br0", "type", "bridge")
            _ip("-n", br, "link", "set", "br0", "addrgenmode", "none", "up")
            for rank in range(nproc):
                ns, port = namespace(self.owner, rank), f"p{rank}"
                _ip("netns", "add", ns)
                _ip("-n", br, "link", "add", port, "type", "veth",
                    "peer", "name", RANK_IF, "netns", ns)  # fmt: skip
                _ip("-n", br, "link", "set", port, "addrgenmode", "none", "master", "br0", "up")
                _ip("-n", ns, "link", "set", RANK_IF, "addrgenmode", "none")
                _ip("-n", ns, "addr", "add", f"{address(rank)}/16", "dev", RANK_IF)
                _ip("-n", ns, "link", "set", RANK_IF, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _shape(ns, RANK_IF, self.spec, delay)  # uplink
                _shape(br, port, self.spec, delay)  # downlink
            self.links = self._measure() if nproc > 1 else []
        except BaseException:
            self.unwire()
            raise

    def unwire(self) -> None:
        """Delete every namespace of this run (and so its links, bridge and qdiscs)."""
        if self.nproc or os.path.exists(os.path.join(NETNS_DIR, self.bridge)):
            _remove_namespaces([n for n in self.names() if n in set(_namespaces())])

    def enter(self, rank: int) -> None:
        """In a forked rank, before it makes any socket: move into its namespace and have gloo
        use its link; its trace records CPU seconds (the model's shared processors)."""
        _setns(namespace(self.owner, rank))
        os.environ["GLOO_SOCKET_IFNAME"] = RANK_IF
        trace.CPU_CLOCK = True

    # -----------------------------------------------------------------------------------------

    def _measure(self) -> list[LinkFigures]:
        out = []
        for src in range(self.nproc):
            dst = (src + 1) % self.nproc
            out.append(_measure_link(self.owner, src, dst, self.spec.bandwidth_bps))
        return out

    def summary(self) -> dict[str, Any]:
        """The spec and the measured figures, for the run's summary (medians over links)."""
        figures: dict[str, Any] = {
            "emulate": str(self.spec),
            "emulated_rate_bps": self.spec.bandwidth_bps,
            "emulated_latency_s": self.spec.latency_s,
            # the processors every rank of the run shares (the network model's ``cpus``)
            "emulated_cpus": len(os.sched_getaffinity(0)),
        }
        if self.links:
            figures["measured_throughput_bps"] = statistics.median(
                link.throughput_bps for link in self.links
            )
            figures["measured_rtt_s"] = statistics.median(link.rtt_s for link in self.links)
            figures["measured_links"] = [asdict(link) for link in self.links]
        return figures


def describe(summary: dict[str, Any]) -> str:
    """The summary's emulation figures as text: each link's measured rate beside the set one."""
    rate = summary["emulated_rate_bps"]
    lines = [f"emulated network {summary['emulate']} (set rate {rate / 1e6:,.1f} Mbit/s each way):"]
    if not summary.get("measured_links"):
        lines.append("  (one rank: no link to measure)")
    for link in summary.get("measured_links", ()):
        lines.append(
            f"  link {link['src']}->{link['dst']}: measured {link['throughput_bps'] / 1e6:,.1f}"
            f" Mbit/s ({link['throughput_bps'] / rate:.2f}x the set rate), round trip"
            f" {link['rtt_s'] * 1e3:.3f} ms"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Namespaces from Python


def _setns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (setns(2))."""
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
    try:
        if hasattr(os, "setns"):  # Python 3.12+
            os.setns(fd, CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _in_namespace(name: str, fn: Any) -> Any:
    """``fn()`` run by a fresh thread that first enters namespace ``name``: sockets it makes
    live there; the calling thread stays where it is."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            _setns(name)
            box["value"] = fn()
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _measure_link(owner: int, src: int, dst: int, rate_bps: float) -> LinkFigures:
    """Round trip (median of one-byte ping-pongs) and throughput (a transfer of about
    PROBE_SECONDS at the set rate, timed at the receiver from its first byte to the last)
    from rank ``src`` to rank ``dst``."""

    def listen() -> socket.socket:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind((address(dst), 0))
        server.listen(1)
        return server

    server = _in_namespace(namespace(owner, dst), listen)
    port = server.getsockname()[1]

    def connect() -> socket.socket:
        return socket.create_connection((address(dst), port), timeout=PROBE_TIMEOUT)

    with server:
        server.settimeout(PROBE_TIMEOUT)
        client = _in_namespace(namespace(owner, src), connect)
        peer, _ = server.accept()
    with client, peer:
        for s in (client, peer):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(PROBE_TIMEOUT)
        rtts = []
        for _ in range(PING_ROUNDS):
            start = time.perf_counter()
            client.sendall(b"p")
            peer.recv(1)
            peer.sendall(b"q")
            client.recv(1)
            rtts.append(time.perf_counter() - start)
        total = int(min(max(rate_bps / 8 * PROBE_SECONDS, 1 << 18), 1 << 28))
        got: dict[str, float] = {}
        receiver = threading.Thread(target=_receive, args=(peer, got), daemon=True)
        receiver.start()
        chunk = b"\0" * (1 << 16)
        deadline = time.monotonic() + PROBE_TIMEOUT
        sent = 0
        while sent < total and time.monotonic() < deadline:
            client.sendall(chunk)
            sent += len(chunk)
        client.shutdown(socket.SHUT_WR)
        receiver.join(PROBE_TIMEOUT)
    seconds = got.get("last", 0.0) - got.get("first", 0.0)
    throughput = got.get("bytes", 0.0) * 8 / seconds if seconds > 0 else 0.0
    return LinkFigures(src, dst, throughput, statistics.median(rtts))


def _receive(sock: socket.socket, got: dict[str, float]) -> None:
    """Count what arrives after the first read (its bytes are the clock's start) until EOF."""
    first = sock.recv(1 << 20)
    got["first"] = time.perf_counter()
    count = 0
    with contextlib.suppress(OSError):
        while data := sock.recv(1 << 20):
            count += len(data)
            got["last"] = time.perf_counter()
    got["bytes"] = count if first else 0
