"""Launcher: one process per rank, and a run that ends cleanly whatever a rank does.

``launch(fn, nproc, args)`` starts ``nproc`` local workers (fork on Linux CPU runs: torch is
imported once; spawn where CUDA is used), each with one thread, joined into one process group
(gloo, or NCCL on CUDA) through a FileStore in the job's private folder (mode 0700, made by
``tempfile.mkdtemp``). Nothing listens for the rendezvous, and gloo is pinned to the loopback
interface, so a local job opens no socket beyond 127.0.0.1 (with ``emulate``, none beyond
its ranks' own private network namespaces: see :mod:`suite.emulate`). Each worker runs
``fn(*args)`` and its return value comes back in a list ordered by rank.

At scale (tests/benchmarks/test_bench_scale.py measures it at 4, 16 and 64 ranks): ranks fork
after torch and the suite are imported, with the launcher's objects frozen out of the garbage
collector (``gc.freeze``) so a rank's collections never write to, and so copy, the pages it
shares with the others; each rank computes on one thread. A rank holds about 3 file
descriptors per peer (gloo's pairs), so ``launch`` raises the soft ``ulimit -n`` to what N ranks
need, within the hard limit; :func:`check_capacity` (``suite run``'s preflight) refuses, before
any rank starts, a world whose ranks cannot fit in memory or under that hard limit.

Failure handling (the guarantees ``suite run`` relies on):
- A rank that raises writes its traceback and exits non-zero; a rank that dies without one
  (os._exit, a signal) is seen by its exit code. The launcher then stops every other rank
  (SIGTERM, then SIGKILL after a grace period) and raises :class:`RankFailure` with the
  culprit's traceback (and its exception, when it pickles), within a second or two.
- A hang is a stall of the whole job: no rank has reported progress (:func:`heartbeat`, called
  by the training loop each micro-batch and by the transport on entering an op) for
  ``hang_timeout`` seconds. The culprit is a rank stuck in its own code rather than waiting in a
  communication op (:func:`communicating` marks those), the longest-silent first; every rank
  dumps its Python stacks (faulthandler on SIGUSR1) before it is killed. The backend's own
  collective timeout is set beyond the launcher's, so the launcher always decides first.
- Ctrl-C (SIGINT) reaches the launcher only (workers ignore it); it stops every rank and
  re-raises KeyboardInterrupt. Workers die with the launcher (PR_SET_PDEATHSIG on Linux, and a
  watchdog thread elsewhere), so no orphans are left even if the launcher is killed -9.
  Workers ignore SIGHUP too (a closed terminal): the launcher's owner decides what it means.
- A world whose ranks fail to join their process group (a rank's rendezvous fails or hangs
  before every rank has joined: none has run ``fn`` yet) is started again, once
  (``RENDEZVOUS_TRIES``), with a warning naming the error; a second failure is raised as any
  other. Once a rank has joined, a failure is never retried: ``fn`` may have started.
- The job's temporary folder (``$TMPDIR/suite-job-PID-*``, PID the launcher's) is removed
  however the launch ends; one left by a launcher killed -9 is removed by the next launch on
  this machine, once its owner (pid and start time, in the folder's ``owner`` file) is gone.

Under torchrun the same worker code runs without this launcher (:func:`init_from_env`); there
the collective timeout is the hang bound.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import faulthandler
import gc
import importlib
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from suite.divergence import Diverged
from suite.periodic import repeating

# Imported once in the launcher before forking, so ranks inherit them rather than each paying
# for the import (torch.optim's first optimizer imports torch._dynamo: seconds of CPU).
FORK_PRELOAD = ("torch._dynamo",)
HANG_TIMEOUT = 40.0  # seconds without progress on any rank before the job is declared hung
RENDEZVOUS_TRIES = 2  # starts of the whole world when a rank fails to join it (see launch)
TERMINATE_GRACE = 3.0  # seconds between SIGTERM and SIGKILL when stopping ranks
COLLECTIVE_MARGIN = 30.0  # backend timeout = hang_timeout + this, so the launcher decides first
# What one forked rank needs of its own, beyond what it shares with the others. Measured on the
# digits MLP (tests/benchmarks/test_bench_scale.py): ~20 MB unique memory (USS) at any N, and
# the launcher's open files (inherited) + 16 + 3 (N - 1) file descriptors (N = 4, 16, 64; the
# launcher itself holds its own + 2 N). The budget is a margin above: per rank, RANK_MEMORY plus
# MODEL_COPIES copies of the model's parameters (weights, gradients, the averaged model,
# optimizer and algorithm state); RANK_FDS + FDS_PER_PEER per peer beyond the inherited files.
RANK_MEMORY = 40e6
MODEL_COPIES = 8
RANK_FDS, FDS_PER_PEER = 24, 3

# Set in each worker: shared arrays (last progress time, inside-a-communication-op flag per
# rank) and this worker's rank.
_beats: Any = None
_waiting: Any = None
_rank: int = -1


def heartbeat() -> None:
    """Report progress to the launcher (cheap; a no-op outside a launched worker)."""
    if _beats is not None:
        _beats[_rank] = time.time()


@contextlib.contextmanager
def beating(every: float = 1.0) -> Iterator[None]:
    """Heartbeats from a thread while the body runs: for a rank's local work that can take
    longer than the hang timeout and cannot wait on a peer (rank 0's replay of the run's trace
    at its end). Not around collectives: a rank stuck in one must still look hung."""
    if _beats is None:  # not a launched worker
        yield
        return
    with repeating(heartbeat, every, "heartbeat"):
        yield
    heartbeat()


class _Communicating:
    """The context :func:`communicating` returns. A class, not a generator: it is entered
    twice per op of every step (a generator context costs ~1.5 us more each time)."""

    __slots__ = ()

    def __enter__(self) -> None:
        if _waiting is not None:
            heartbeat()
            _waiting[_rank] = 1

    def __exit__(self, *exc: object) -> None:
        if _waiting is not None:
            _waiting[_rank] = 0


_COMMUNICATING = _Communicating()


def communicating_flag() -> int:
    """The address of the byte :func:`communicating` sets (shared memory the launcher reads:
    1 while this rank waits on its peers), for compiled code that waits out of Python's sight
    and marks the wait itself (baselines/ddp_hook.cpp); 0 outside a launched worker."""
    return 0 if _waiting is None else ctypes.addressof(_waiting) + _rank


def communicating() -> contextlib.AbstractContextManager[None]:
    """Mark this rank as waiting on its peers (in a collective or a receive) while inside."""
    return _COMMUNICATING


class RankFailure(RuntimeError):
    """A rank crashed, died or hung; carries its traceback (or why there is none) and, when the
    culprit raised a picklable exception, that exception itself as ``error`` (so callers can
    tell one kind of failure from another: ``isinstance(failure.error, Diverged)``)."""

    def __init__(
        self,
        rank: int,
        reason: str,
        details: str,
        others: dict[int, str],
        error: BaseException | None = None,
    ) -> None:
        self.rank, self.reason, self.details, self.others = rank, reason, details, others
        self.error = error
        super().__init__(f"rank {rank} {reason}")

    def __str__(self) -> str:
        return self.report()

    def report(self) -> str:
        """What a user needs to see: the culprit's traceback first."""
        text = f"error: rank {self.rank} {self.reason}\n--- rank {self.rank} ---\n"
        text += self.details.rstrip() + "\n"
        for rank, other in sorted(self.others.items()):
            text += f"--- rank {rank}: {_headline(other)}\n"
        return text


def _headline(text: str) -> str:
    """One line saying where a rank was: a traceback's error line, or the innermost frame of a
    stack dump (faulthandler prints the most recent call first)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "(no output)"
    if any("most recent call first" in line for line in lines):
        return next((line for line in lines if line.startswith("File ")), lines[-1])
    return lines[-1]


def placement(rank: int, device: str) -> torch.device:
    """The device of ``rank``: the one place rank placement is decided."""
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_device(device: str, local_ranks: int = 1) -> str:
    """'auto' means CUDA when there is a GPU for each of the ``local_ranks`` ranks on this host
    (NCCL allows one rank per GPU), else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() and _gpus() >= local_ranks else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    return device


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def backend_for(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


# ---------------------------------------------------------------------------------------------
# Worker side


def _die_with_parent(parent: int) -> None:
    """Make sure this worker never outlives the launcher."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(1)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@dataclass(frozen=True)
class _Job:
    nproc: int
    backend: str
    jobdir: str
    hang_timeout: float
    parent: int
    emulate: Any = None  # suite.emulate.Emulation: the rank's own namespace and link


def _worker(
    rank: int, job: _Job, beats: Any, waiting: Any, fn: Callable[..., Any], args: tuple
) -> None:
    global _beats, _waiting, _rank
    _die_with_parent(job.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # so is a closed terminal
    signal.signal(signal.SIGTERM, _on_sigterm)
    _beats, _waiting, _rank = beats, waiting, rank
    errpath = os.path.join(job.jobdir, f"rank{rank}.err")
    errfile = open(errpath, "w")  # noqa: SIM115  (kept open for faulthandler)
    faulthandler.enable(file=errfile, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=errfile, all_threads=True)
    os.environ["OMP_NUM_THREADS"] = "1"
    if job.emulate is not None:  # before any socket: into this rank's shaped namespace
        job.emulate.enter(rank)
    pin_to_loopback(job.backend)
    torch.set_num_threads(1)
    code = 0
    try:
        timeout = datetime.timedelta(seconds=job.hang_timeout + COLLECTIVE_MARGIN)
        # A file in the job's private folder, not a TCP listener: no port to reach from
        # another host, no unauthenticated key writes.
        store = dist.FileStore(os.path.join(job.jobdir, "store"), job.nproc)
        store.set_timeout(timeout)
        dist.init_process_group(
            job.backend, store=store, rank=rank, world_size=job.nproc, timeout=timeout
        )
        open(os.path.join(job.jobdir, f"rank{rank}.joined"), "w").close()
        result = fn(*args)
        tmp = os.path.join(job.jobdir, f"result{rank}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(result, f)
        os.replace(tmp, os.path.join(job.jobdir, f"result{rank}.pkl"))
        heartbeat()
        dist.destroy_process_group()
    except BaseException as err:  # every way out must leave a traceback
        code = err.code if isinstance(err, SystemExit) and isinstance(err.code, int) else 1
        code = code or 1
        errfile.write(f"@{time.time():.6f}\n")
        traceback.print_exc(file=errfile)
        if isinstance(err, Exception):
            _save_exception(job.jobdir, rank, err)
    finally:
        errfile.flush()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _save_exception(jobdir: str, rank: int, err: Exception) -> None:
    """Leave the rank's exception for the launcher (RankFailure.error), if it pickles."""
    try:
        data = pickle.dumps(err)
    except Exception:  # e.g. holds a lock or a tensor's storage: the traceback text is enough
        return
    tmp = os.path.join(jobdir, f"rank{rank}.exc.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.path.join(jobdir, f"rank{rank}.exc"))


def init_from_env(hang_timeout: float = HANG_TIMEOUT) -> None:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, ...)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    else:
        torch.cuda.set_device(placement(int(os.environ["RANK"]), "cuda"))
    dist.init_process_group(backend_for(device), timeout=datetime.timedelta(seconds=hang_timeout))
    with contextlib.suppress(Exception):  # the hosts are a record, not a need
        _store().set(f"{_SHARED}/host/{dist.get_rank()}", socket.gethostname())


# Under torchrun, ranks share what rank 0 records through the rendezvous store (torchrun's agent
# holds it, so it outlives a crashed rank): each rank's host, and a failed rank's traceback.
_SHARED = "suite"


def _store() -> Any:
    return dist.distributed_c10d._get_default_store()


def torchrun_tags() -> dict[str, str]:
    """Tags for a run under torchrun: nodes, rendezvous id, restarts (from torchrun's env)."""
    env = os.environ
    tags = {"suite.launcher": "torchrun"}
    for tag, var in (
        ("suite.nodes", "GROUP_WORLD_SIZE"),
        ("suite.procs_per_node", "LOCAL_WORLD_SIZE"),
        ("suite.rdzv_id", "TORCHELASTIC_RUN_ID"),
        ("suite.master_addr", "MASTER_ADDR"),
        ("suite.restart_count", "TORCHELASTIC_RESTART_COUNT"),
    ):
        if var in env:
            tags[tag] = env[var]
    return tags


def torchrun_hosts(wait: float = 2.0) -> dict[str, str]:
    """The ``suite.hosts`` tag: every rank's host, as the ranks told the store at start."""
    try:
        store, world = _store(), dist.get_world_size()
        keys = [f"{_SHARED}/host/{r}" for r in range(world)]
        store.wait(keys, datetime.timedelta(seconds=wait))
        hosts = [store.get(k).decode() for k in keys]
    except Exception:  # a rank that died before it said, or no store
        return {}
    return {"suite.hosts": ",".join(dict.fromkeys(hosts)), "suite.nodes_seen": str(len(set(hosts)))}


def publish_error(text: str, diverged: Diverged | None = None) -> None:
    """Tell rank 0 why this rank failed, so the run's error.txt holds the failing rank's own
    traceback, not rank 0's "Connection closed by peer" that followed it; and, for a
    divergence, where (:func:`peer_divergence`), so the run is tagged diverged."""
    with contextlib.suppress(Exception):
        store, rank = _store(), dist.get_rank()
        if diverged is not None:  # first: it is there once the error is
            store.set(f"{_SHARED}/diverged/{rank}", f"{diverged.step} {diverged.what}")
        store.set(f"{_SHARED}/error/{rank}", f"{socket.gethostname()}\n{text}")


def peer_divergence() -> Diverged | None:
    """The divergence another rank published with its error (rank 0, after
    :func:`peer_errors` waited for the errors), or None."""
    with contextlib.suppress(Exception):
        store = _store()
        for r in range(1, dist.get_world_size()):
            if store.check([f"{_SHARED}/diverged/{r}"]):
                step, what = store.get(f"{_SHARED}/diverged/{r}").decode().split(" ", 1)
                return Diverged(int(step), r, what)
    return None


def peer_errors(own: str, wait: float = 3.0) -> str:
    """Rank 0's error text: the tracebacks other ranks published (waiting up to ``wait`` s for
    the rank whose death broke rank 0's collective to say why), then rank 0's own."""
    parts = []
    try:
        store, world = _store(), dist.get_world_size()
        deadline = time.monotonic() + wait
        while True:
            found = [r for r in range(1, world) if store.check([f"{_SHARED}/error/{r}"])]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for r in found:
            host, _, text = store.get(f"{_SHARED}/error/{r}").decode().partition("\n")
            parts.append(f"rank {r} (host {host}) failed:\n{text}")
    except Exception:  # the store went with the failure: rank 0's own error is all there is
        pass
    if not parts:
        return own
    return "\n".join(parts) + f"\nthen rank 0 ({socket.gethostname()}):\n{own}"


# ---------------------------------------------------------------------------------------------
# Launcher side


def _read_error(jobdir: str, rank: int) -> tuple[float | None, str]:
    """(time the rank raised, its traceback text) from its error file."""
    try:
        with open(os.path.join(jobdir, f"rank{rank}.err")) as f:
            text = f.read()
    except OSError:
        return None, ""
    when = None
    if text.startswith("@"):
        first, _, text = text.partition("\n")
        try:
            when = float(first[1:])
        except ValueError:
            when = None
    return when, text


def _load_exception(jobdir: str, rank: int) -> BaseException | None:
    """The exception a rank saved (our own job folder, written by our own worker), or None."""
    try:
        with open(os.path.join(jobdir, f"rank{rank}.exc"), "rb") as f:
            err = pickle.load(f)
    except Exception:  # absent (the rank died without raising), or it does not unpickle
        return None
    return err if isinstance(err, BaseException) else None


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "was still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _stop(procs: list[Any], grace: float = TERMINATE_GRACE) -> None:
    """SIGTERM every live rank, then SIGKILL whatever is left after ``grace`` seconds."""
    for p in procs:
        if p.exitcode is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.exitcode is None:
            p.kill()
    for p in procs:
        p.join(5.0)


def _loopback_interface() -> str | None:
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((n for n in ("lo", "lo0") if n in names), None)


_LOOPBACK = _loopback_interface()
_SOCKET_IFNAME = {"gloo": "GLOO_SOCKET_IFNAME", "nccl": "NCCL_SOCKET_IFNAME"}


def pin_to_loopback(backend: str) -> None:
    """All local ranks are on this host: their backend talks over loopback, unless the user
    named an interface. Not whatever the hostname resolves to (a DNS lookup that can stall, an
    interface that is firewalled), and for NCCL, which skips loopback by default, not a socket
    that listens on the LAN."""
    name = _SOCKET_IFNAME.get(backend)
    if name is not None and _LOOPBACK and name not in os.environ:
        os.environ[name] = _LOOPBACK


def _start_method(device: str) -> str:
    if device == "cuda" or not sys.platform.startswith("linux"):
        return "spawn"  # CUDA cannot be forked into; fork is Linux-only
    return "fork"


def launch(
    fn: Callable[..., Any],
    nproc: int,
    args: tuple = (),
    *,
    device: str = "cpu",
    hang_timeout: float = HANG_TIMEOUT,
    poll: float = 0.2,
    emulate: Any = None,
) -> list[Any]:
    """Run ``fn(*args)`` on ``nproc`` local ranks and return their results in rank order.

    With ``emulate`` (a :class:`suite.emulate.Emulation`) each rank runs in its own network
    namespace behind a shaped link: wired (and measured) before the ranks start, removed after
    they stop, whatever the ending.

    Raises :class:`RankFailure` if a rank fails or the job hangs, KeyboardInterrupt on Ctrl-C;
    in every case all ranks are stopped before this returns.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    method = _start_method(device)
    if method == "fork":
        for module in FORK_PRELOAD:
            importlib.import_module(module)
    try:
        if emulate is not None:
            emulate.wire(nproc)
        _raise_fd_limit(nproc)
        for attempt in range(1, RENDEZVOUS_TRIES + 1):
            try:
                return _run_world(fn, nproc, args, device, hang_timeout, poll, emulate)
            except _NotJoined as failed:
                if attempt == RENDEZVOUS_TRIES:
                    raise failed.failure from None
                print(
                    f"warning: the {nproc} ranks could not join their process group (rank "
                    f"{failed.failure.rank}: {_headline(failed.failure.details)}); starting "
                    "them again",
                    file=sys.stderr,
                    flush=True,
                )
        raise AssertionError("unreachable")
    finally:
        if emulate is not None:
            emulate.unwire()


class _NotJoined(Exception):
    """A rank failed before every rank had joined the process group: no rank has run the
    job's function, so the world can be started again."""

    def __init__(self, failure: RankFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


def _run_world(
    fn: Callable[..., Any],
    nproc: int,
    args: tuple,
    device: str,
    hang_timeout: float,
    poll: float,
    emulate: Any,
) -> list[Any]:
    """One start of the ranks, in a fresh job folder (a fresh rendezvous store)."""
    method = _start_method(device)
    ctx = mp.get_context(method)
    jobdir = _make_jobdir()  # mode 0700: the rendezvous store lives here
    job = _Job(nproc, backend_for(device), jobdir, hang_timeout, os.getpid(), emulate)
    beats = ctx.Array("d", [time.time()] * nproc, lock=False)
    waiting = ctx.Array("b", nproc, lock=False)
    procs = [
        ctx.Process(target=_worker, args=(r, job, beats, waiting, fn, args), name=f"rank{r}")
        for r in range(nproc)
    ]
    try:
        if method == "fork":  # the ranks' garbage collections then leave the shared pages be
            gc.freeze()
        try:
            for p in procs:
                p.start()
        finally:
            gc.unfreeze()
        try:
            _monitor(procs, beats, waiting, job, poll)
        except RankFailure as failure:
            _stop(procs)  # before looking: a rank still starting could yet join
            joined = any(
                os.path.exists(os.path.join(jobdir, f"rank{r}.joined")) for r in range(nproc)
            )
            if joined:
                raise
            raise _NotJoined(failure) from None
        return [_load_result(jobdir, r) for r in range(nproc)]
    finally:
        _stop([p for p in procs if p.pid is not None])
        shutil.rmtree(jobdir, ignore_errors=True)


def _fds_needed(nproc: int) -> int:
    """File descriptors the busiest process of an ``nproc``-rank job may hold: a rank (what it
    inherits from this launcher, its own files, gloo's pairs to its peers) or this launcher (a
    pipe and a sentinel per rank)."""
    import psutil

    per_peer = max(FDS_PER_PEER * (nproc - 1), 2 * nproc)
    return psutil.Process().num_fds() + RANK_FDS + per_peer


def _raise_fd_limit(nproc: int) -> None:
    """Raise the soft ``ulimit -n`` (the ranks inherit it) to what ``nproc`` ranks need, within
    the hard limit (check_capacity refuses a world beyond that)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = _fds_needed(nproc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def check_capacity(nproc: int, param_bytes: int) -> None:
    """Refuse (ConfigError: exit 2) ``nproc`` local ranks of a model with ``param_bytes`` of
    parameters that cannot fit here: their memory beyond what is available now (the data, loaded
    before the fork, is shared and already counted there), or their file descriptors beyond the
    hard ``ulimit -n``. Both figures are estimates with a margin (see RANK_MEMORY)."""
    import resource

    import psutil

    from suite.errors import ConfigError

    per_rank = RANK_MEMORY + MODEL_COPIES * param_bytes
    available = psutil.virtual_memory().available
    if nproc * per_rank > available:
        fits = max(1, int(available // per_rank))
        raise ConfigError(
            f"nproc={nproc} local ranks need about {nproc * per_rank / 1e9:.2f} GB of memory "
            f"({per_rank / 1e6:.0f} MB per rank: {RANK_MEMORY / 1e6:.0f} MB of its own and "
            f"{MODEL_COPIES} copies of the model's {param_bytes / 1e6:.2f} MB), this machine has "
            f"{available / 1e9:.2f} GB available; valid: nproc <= {fits}, or a smaller model, "
            "or more nodes under torchrun"
        )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    needed = _fds_needed(nproc)
    if hard != resource.RLIM_INFINITY and needed > hard:
        own = psutil.Process().num_fds()
        fits = max(1, (hard - own - RANK_FDS) // FDS_PER_PEER + 1)
        while fits > 1 and _fds_needed(fits) > hard:
            fits -= 1
        raise ConfigError(
            f"nproc={nproc} local ranks need about {needed} open files per process "
            f"({FDS_PER_PEER} per peer), beyond the hard limit of {hard} (ulimit -Hn); "
            f"valid: nproc <= {fits}, or raise the hard limit (limits.conf, or "
            "`ulimit -Hn` as root)"
        )


def _make_jobdir() -> str:
    """A private (0700) folder for this job, named and marked with its owner (this process),
    after removing the folders of launchers that were killed before they could."""
    from suite import liveness

    _remove_stale_jobdirs()
    jobdir = tempfile.mkdtemp(prefix=f"suite-job-{os.getpid()}-")
    # Written whole under a temporary name: another launcher's clean-up must never read a
    # half-written owner (an empty one would look dead and the live job's folder would go).
    tmp = os.path.join(jobdir, "owner.tmp")
    with open(tmp, "w") as f:
        f.write(liveness.identity(os.getpid()))
    os.replace(tmp, os.path.join(jobdir, "owner"))
    return jobdir


def _remove_stale_jobdirs() -> None:
    """Remove this user's job folders whose launcher is gone (killed -9: no cleanup ran)."""
    from suite import liveness

    root = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            parts = entry.name.split("-")  # suite-job-PID-RANDOM
            if entry.name.startswith("suite-job-") and len(parts) == 4 and parts[2].isdigit():
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                        continue
                    try:
                        with open(os.path.join(entry.path, "owner")) as f:
                            owner = f.read().strip() or f"{parts[2]}:"  # empty: judge by pid
                    except FileNotFoundError:  # being made right now, or very old
                        owner = f"{parts[2]}:"
                    if not liveness.alive(owner):
                        shutil.rmtree(entry.path, ignore_errors=True)


def _load_result(jobdir: str, rank: int) -> Any:
    with open(os.path.join(jobdir, f"result{rank}.pkl"), "rb") as f:
        return pickle.load(f)


def _monitor(procs: list[Any], beats: Any, waiting: Any, job: _Job, poll: float) -> None:
    while True:
        # checked before "all exited": ranks that fail together can all exit between two looks
        if any(p.exitcode not in (None, 0) for p in procs):
            time.sleep(0.2)  # let peers of a dead rank record their errors too
            codes = [p.exitcode for p in procs]  # before we stop anyone: only real failures
            _stop(procs)
            raise _failure(codes, job)
        live = [p for p in procs if p.exitcode is None]
        if not live:
            return
        mp.connection.wait([p.sentinel for p in live], timeout=poll)
        if time.time() - max(beats) > job.hang_timeout:
            raise _hang(procs, beats, waiting, job)


def _failure(codes: list[int | None], job: _Job) -> RankFailure:
    """Blame the rank that failed first: one that died without raising (a signal, os._exit)
    before any rank that raised, then the earliest raise."""
    errors = {r: _read_error(job.jobdir, r) for r in range(len(codes))}
    bad = [r for r, code in enumerate(codes) if code not in (None, 0)]
    hard = [r for r in bad if errors[r][0] is None]

    def raised_at(r: int) -> float:
        when = errors[r][0]
        return when if when is not None else float("inf")

    culprit = hard[0] if hard else min(bad, key=raised_at)
    code = codes[culprit] or 0
    details = errors[culprit][1] or (
        "(no Python traceback: the process ended without raising, "
        f"{'by a signal' if code < 0 else 'through os._exit'})"
    )
    others = {r: errors[r][1] for r in bad if r != culprit}
    error = _load_exception(job.jobdir, culprit)
    return RankFailure(culprit, _describe_exit(code), details, others, error)


def _hang(procs: list[Any], beats: Any, waiting: Any, job: _Job) -> RankFailure:
    # Stuck in its own code beats waiting on peers; then the longest silent.
    stale = min(range(len(procs)), key=lambda r: (waiting[r], beats[r]))
    idle = time.time() - beats[stale]
    for p in procs:
        if p.exitcode is None and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGUSR1)  # faulthandler dumps every thread's stack
    time.sleep(1.0)
    _stop(procs)
    errors = {r: _read_error(job.jobdir, r)[1] for r in range(len(procs))}
    details = errors[stale] or "(no stack dump: the process did not answer SIGUSR1)"
    others = {r: text for r, text in errors.items() if r != stale}
    reason = (
        f"hung: no progress for {idle:.0f} s (limit --hang-timeout {job.hang_timeout:g} s); "
        "its stack when stopped"
    )
    return RankFailure(stale, reason, details, others)
