"""The communication trace of a run: every rank's ops in order, and the compute between them.

The transport appends one record per op (and one per wait on an async op) to a flat
``array('d')`` (:class:`Recorder`: no per-op objects beyond one tuple), the loop tells it the
current step, and at the end rank 0 gathers every rank's records (harness traffic, after the
summary's counters are taken) and stores them with the run as the text artifact
``trace.npz.b64``: a compressed NumPy ``.npz`` file, base64-encoded because the tracking writer
stores text artifacts. :func:`load` reads it back (the text, a path to it, or a path to the raw
``.npz``) as a :class:`Trace`.

Schema (one NumPy structured array per rank, ``Trace.ranks[r]``, records in issue order):

=========  =======  ==========================================================================
field      dtype    meaning
=========  =======  ==========================================================================
step       int32    the loop's step when the op ran (-1 before the first step)
kind       int8     index into ``KINDS``
group      int16    index into ``Trace.groups`` (global ranks in group order) of the op's group
peer       int32    root of broadcast/reduce/gather, dst of send, src of recv, else -1
payload    int64    payload bytes of one rank's contribution, as :mod:`suite.transport` counts
                    it (padded for ragged gathers; the received size for recv)
tag        int32    tag of send/recv, else 0
channel    int8     index into ``Trace.channels`` ("algorithm", "harness", ...)
gap        float64  host seconds from the end of this rank's previous record to the start of
                    this one: compute and other time outside communication (>= 0)
seconds    float64  host seconds inside the op (for send/recv the issue; its wait is its own
                    record)
ref        int32    for ``wait``: the index of the awaited send/recv record, else -1
cpu        float64  CPU seconds of the rank's main thread from the end of its previous record
                    to the end of this one: the gap's compute, plus the op's own main-thread
                    work (small: gloo runs a collective in its own threads). Where ranks share
                    processors, ``gap`` includes time spent waiting for one and ``cpu`` does
                    not.
other_cpu  float64  CPU seconds of the rank's other threads over the same span, and the
                    kernel's work charged to them: gloo's threads moving and reducing the bytes
                    of this op (a collective) or of async ops in flight (sends, receives, a DDP
                    bucket's all-reduce). Where ranks share processors this work competes with
                    their compute.
                    ``cpu`` and ``other_cpu`` are measured only where ``CPU_CLOCK`` is on
                    (emulated runs, whose predicted time shares the host's processors:
                    :mod:`suite.netmodel`), as the clocks cost system calls (~2 us each, more
                    than the rest of a record); NaN elsewhere, in traces of version 1 (neither)
                    and 2 (no ``other_cpu``). Meaningful for CPU ranks only (a CUDA rank's
                    compute is on the GPU)
=========  =======  ==========================================================================

Beside the records, each rank's ``tail``: host seconds from the end of its last record to the
end of the training loop (its compute after its last op: the last step's optimizer step, or the
whole run of a rank that communicated nothing, a one-worker run's). The loop starts the
recorder's clock when training starts (:meth:`Recorder.begin`) and reads the tail when it ends
(:meth:`Recorder.end`). NaN where unknown: traces written before it, or a rank whose records
stopped at ``MAX_RECORDS``.

A wait made in a background thread (``Work.wait(background=True)``: consensus_backup's real
clock) leaves no wait record; its send/recv record stands alone.

Wire bytes are not stored: :meth:`Trace.links` derives a record's per-link bytes from
(kind, group, peer, payload) through :func:`suite.wire.wire_links`, the function the transport
counts with, so a replay and the summary's ``wire_bytes`` agree by construction.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import struct
import time
import zipfile
import zlib
from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from suite.wire import Links, wire_links

KINDS = (
    "all_reduce",
    "reduce",
    "broadcast",
    "all_gather",
    "gather",
    "send",
    "recv",
    "barrier",
    "wait",
)
KIND = {name: i for i, name in enumerate(KINDS)}
FIELDS = (
    "step", "kind", "group", "peer", "payload", "tag", "channel", "gap", "seconds", "ref", "cpu",
    "other_cpu",
)  # fmt: skip
DTYPE = np.dtype(
    [
        ("step", "<i4"),
        ("kind", "i1"),
        ("group", "<i2"),
        ("peer", "<i4"),
        ("payload", "<i8"),
        ("tag", "<i4"),
        ("channel", "i1"),
        ("gap", "<f8"),
        ("seconds", "<f8"),
        ("ref", "<i4"),
        ("cpu", "<f8"),
        ("other_cpu", "<f8"),
    ]
)
WIDTH = len(FIELDS)
# one record's bytes, as the array holds them: packing and appending them is 4x faster than
# extending the array by a tuple (which converts and appends item by item)
_PACK = struct.Struct(f"{WIDTH}d").pack
ARTIFACT = "trace.npz.b64"
VERSION = 3  # 2 added ``cpu``, 3 ``other_cpu``; older traces load with them NaN
# Records kept per rank (96 bytes each in memory, about 18 in the artifact): a bound on what a
# long run with many ops per step (eventgrad on ResNet-20: ~280 a step) holds and ships at the
# end. Past it a rank stops recording and its trace says so (``Trace.truncated``).
MAX_RECORDS = 2_000_000
# Record each op's CPU seconds (``cpu``, ``other_cpu``); set in a rank before its transport is
# made (suite.emulate.Emulation.enter does).
CPU_CLOCK = False


class Recorder:
    """One rank's records, appended flat (``WIDTH`` doubles each) to an ``array('d')``, and
    what the next record needs: the step, the channel id, when the previous record ended."""

    def __init__(self, limit: int | None = None, cpu: bool | None = None) -> None:
        self.data = array("d")
        self.cpu_clock = CPU_CLOCK if cpu is None else cpu
        self.count = 0
        self.enabled = True
        self.limit = MAX_RECORDS if limit is None else limit
        self.truncated = False  # the limit was reached: later ops are not recorded
        self.step = -1
        self.channel = 0
        self.begin()  # until the loop says training starts: from now
        self.tail = math.nan  # seconds after the last record, to the loop's end (see end)

    def begin(self) -> None:
        """Training starts now: the next record's gap (or the tail) counts from here, not from
        setup (model building, data loading, a checkpoint's load)."""
        self.last_end = time.perf_counter()
        self.last_cpu = time.thread_time() if self.cpu_clock else math.nan
        self.last_process_cpu = time.process_time() if self.cpu_clock else math.nan

    def end(self) -> None:
        """Training ended now: keep the time since the last record as the rank's ``tail``
        (unknown once the records stopped at the limit: the gap would span unrecorded ops),
        and record nothing more: the trace is training's, as the summary's counters are (the
        end-of-run gathers that ship it are not in either)."""
        self.tail = math.nan if self.truncated else time.perf_counter() - self.last_end
        self.enabled = False

    def __len__(self) -> int:
        return self.count

    def note(
        self,
        kind: int,
        group: int,
        peer: int,
        payload: int,
        tag: int,
        t0: float,
        t1: float,
        ref: int = -1,
    ) -> int:
        """Append the record of an op that ran from ``t0`` to ``t1``; its index (-1: off).
        Kept lean: it runs on every op."""
        if not self.enabled:
            return -1
        cpu = other = math.nan
        if self.cpu_clock:  # two system calls
            thread, process = time.thread_time(), time.process_time()
            cpu = thread - self.last_cpu
            other = process - self.last_process_cpu - cpu
            self.last_cpu, self.last_process_cpu = thread, process
        self.data.frombytes(
            _PACK(self.step, kind, group, peer, payload, tag, self.channel, t0 - self.last_end,
                  t1 - t0, ref, cpu, other)
        )  # fmt: skip
        self.last_end = t1
        self.count += 1
        if self.count >= self.limit:
            self.enabled, self.truncated = False, True
        return self.count - 1

    def append(self, rows: bytes, last_end: float) -> None:
        """Append records packed as this recorder packs them (``WIDTH`` doubles each, in
        ``FIELDS`` order), the last of them ending at ``last_end``: what an op counted outside
        Python did (DDP's compiled hook, as baselines/ddp_hook.cpp's ``take`` packs it).
        Records past the limit are dropped as :meth:`note` drops them."""
        if not self.enabled:
            return
        if self.cpu_clock:
            raise ValueError("packed records carry no CPU seconds; note each op instead")
        size = 8 * WIDTH
        count, room = len(rows) // size, self.limit - self.count
        if count >= room:
            rows, count = rows[: room * size], room
            self.enabled, self.truncated = False, True
        self.data.frombytes(rows)
        self.count += count
        self.last_end = last_end

    def records(self) -> np.ndarray:
        """The records as a structured array (see the module docstring)."""
        flat = np.frombuffer(self.data, dtype=np.float64).reshape(-1, WIDTH)
        out = np.empty(len(flat), dtype=DTYPE)
        for i, name in enumerate(FIELDS):
            out[name] = flat[:, i]
        return out

    def load(self, records: np.ndarray) -> None:
        """Replace the records (a resumed run goes on from its checkpoint's)."""
        records = upgrade(records)
        flat = np.stack([records[name].astype(np.float64) for name in FIELDS], axis=1)
        self.data = array("d", flat.reshape(-1).tobytes())
        self.count = len(records)
        if self.count >= self.limit:
            self.enabled, self.truncated = False, True


def upgrade(records: np.ndarray) -> np.ndarray:
    """Records of an older schema (a subset of ``FIELDS``) as ``DTYPE``, a missing ``cpu`` or
    ``other_cpu`` NaN (unknown)."""
    if records.dtype == DTYPE:
        return records
    out = np.zeros(len(records), dtype=DTYPE)
    out["cpu"] = out["other_cpu"] = np.nan
    for name in records.dtype.names or ():
        out[name] = records[name]
    return out


def dtype_of(fields: list[str] | tuple[str, ...]) -> np.dtype:
    """The record dtype of a schema's fields (e.g. a checkpoint's, written before ``cpu``)."""
    return np.dtype([(name, DTYPE[name]) for name in fields])


@dataclass(frozen=True)
class Trace:
    """Every rank's records of one run (see the module docstring for the schema)."""

    world_size: int
    groups: tuple[tuple[int, ...], ...]
    channels: tuple[str, ...]
    ranks: tuple[np.ndarray, ...]
    # per rank: records stop at MAX_RECORDS, before the run's end (empty: none truncated)
    truncated: tuple[bool, ...] = ()
    # per rank: seconds after its last record to the end of training (NaN or empty: unknown)
    tail: tuple[float, ...] = ()

    def tail_of(self, rank: int) -> float:
        """``rank``'s tail (NaN where unknown)."""
        return self.tail[rank] if rank < len(self.tail) else math.nan

    def kind(self, record: np.void) -> str:
        return KINDS[int(record["kind"])]

    def links(self, rank: int, record: np.void) -> Links:
        """The (src, dst) -> wire bytes that ``rank`` puts on its links for ``record``."""
        kind = KINDS[int(record["kind"])]
        if kind == "send":
            return {(rank, int(record["peer"])): int(record["payload"])}
        if kind in ("recv", "barrier", "wait"):
            return {}
        group = self.groups[int(record["group"])]
        links = wire_links(kind, group, int(record["peer"]), int(record["payload"]))
        return {link: b for link, b in links.items() if link[0] == rank}

    def link_wire_bytes(self, channel: str = "algorithm") -> dict[tuple[int, int], int]:
        """Wire bytes per (src, dst) link over the whole run, on one channel."""
        if channel not in self.channels:
            return {}
        c = self.channels.index(channel)
        out: dict[tuple[int, int], int] = {}
        for rank, records in enumerate(self.ranks):
            for record in records[records["channel"] == c]:
                for link, b in self.links(rank, record).items():
                    out[link] = out.get(link, 0) + b
        return out

    def wire_bytes(self, channel: str = "algorithm") -> int:
        """Wire bytes of every rank on one channel (the summary's ``wire_bytes``)."""
        return sum(self.link_wire_bytes(channel).values())


def encode(
    world_size: int,
    groups: list[tuple[int, ...]],
    channels: list[str],
    ranks: list[np.ndarray],
    truncated: list[bool] | None = None,
    tail: list[float] | None = None,
) -> str:
    """The ``trace.npz.b64`` artifact text (``truncated``: per rank, default none; ``tail``:
    per rank, default unknown)."""
    truncated = truncated if truncated is not None else [False] * len(ranks)
    tail = tail if tail is not None else [math.nan] * len(ranks)
    meta = {
        "version": VERSION,
        "world_size": world_size,
        "groups": [list(g) for g in groups],
        "channels": list(channels),
        "kinds": list(KINDS),
        "truncated": [bool(t) for t in truncated],
        "tail": [float(t) if math.isfinite(t) else None for t in tail],  # JSON has no NaN
    }
    buffer = io.BytesIO()
    arrays = {f"rank{r}": records for r, records in enumerate(ranks)}
    np.savez_compressed(buffer, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def load(source: str | bytes | os.PathLike[str]) -> Trace:
    """A :class:`Trace` from the artifact text, its bytes, or a path to either (or to the raw
    ``.npz``)."""
    data: bytes
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, os.PathLike) or (len(source) < 4096 and os.path.exists(source)):
        with open(source, "rb") as f:
            data = f.read()
    else:
        data = source.encode("ascii")
    if not data.startswith(b"PK"):  # not a zip: base64 text (line breaks allowed)
        try:
            data = base64.b64decode(b"".join(data.split()), validate=True)
        except ValueError:
            data = b""
        if not data.startswith(b"PK"):
            raise ValueError("neither a .npz archive nor its base64 text")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            meta: dict[str, Any] = json.loads(npz["meta"].tobytes().decode())
            if meta.get("version") not in (1, 2, VERSION) or tuple(meta["kinds"]) != KINDS:
                raise ValueError(f"unsupported trace version or kinds: {meta}")
            ranks = tuple(upgrade(npz[f"rank{r}"]) for r in range(meta["world_size"]))
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        KeyError,
        TypeError,
        UnicodeDecodeError,
    ) as err:
        raise ValueError(f"a damaged or foreign .npz ({err})") from None
    return Trace(
        world_size=meta["world_size"],
        groups=tuple(tuple(g) for g in meta["groups"]),
        channels=tuple(meta["channels"]),
        ranks=ranks,
        truncated=tuple(meta.get("truncated", [False] * meta["world_size"])),
        tail=tuple(math.nan if t is None else float(t) for t in meta.get("tail", ())),
    )
