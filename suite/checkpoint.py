"""Checkpoints: everything a run needs to continue exactly, written so that a kill never
leaves a broken one.

What a rank's checkpoint holds (see :meth:`suite.loop.Trainer.checkpoint_state`): its model,
optimizer and lr schedule; the algorithm's state (:meth:`Algorithm.state_dict`: residuals,
thresholds, neighbour copies, push-sum weights, virtual clocks, generators, counters); the data
position (epoch, batch within it, augmentation generator); the Python, NumPy and torch RNG
states; the transport's counters; and the loop's own counters. A run restarted from it on CPU
ends bit for bit where the uninterrupted run ends.

Layout, one folder per run::

    DIR/manifest.json            the latest complete checkpoint: step, world size, config, ...
    DIR/step-000000200/rank0.pt  rank 0's state after 200 steps (one file per rank)

Every file is written to a temporary name, fsynced and renamed over the old one
(:func:`atomic_write`). Every rank writes its file, the ranks meet at a barrier, and only then
does rank 0 replace the manifest and delete older step folders: a kill at any moment leaves the
manifest naming a complete folder. Files are read back with ``torch.load(weights_only=True)``:
the state is encoded (:func:`capture`) into plain dicts, lists, tuples, numbers, strings and
tensors, so loading runs no code from the file.

Where: ``--checkpoint-dir DIR``, else ``checkpoints/<key>/`` next to the MLflow store (the folder
of a SQLite file, or the working directory for a server URI), its path in the run's
``suite.checkpoint_dir`` tag. How often: ``--checkpoint-every STEPS``, or ``auto`` (the
default): after the first ``log_every`` steps the ranks agree (one harness all-reduce of their
seconds per step, the max) on the projected run time; under :data:`AUTO_MIN_SECONDS` nothing
is checkpointed, else every :func:`auto_interval` steps, about every
:data:`AUTO_PERIOD_SECONDS` of wall time. Checkpointing never changes the result, so it is not
part of the run config (nor of its hash).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from suite.algorithms.flat import FlatGrads
from suite.transport import Transport

FORMAT = 1
MANIFEST = "manifest.json"
AUTO_MIN_SECONDS = 300.0  # "auto": runs projected shorter than this are not checkpointed
AUTO_PERIOD_SECONDS = 600.0  # "auto": else one checkpoint about every this many seconds
# Classes the codec may rebuild from a checkpoint (by module name): the suite's own only.
_PACKAGES = ("suite.", "baselines.", "reproduce.")
_KIND = "__ckpt__"


# ---------------------------------------------------------------------------------------------
# Policy


@dataclass(frozen=True)
class Checkpointing:
    """Where a job's checkpoints go and how often (none of this changes the result).

    every: steps between checkpoints; 0 = never; None = "auto" (decided after ``log_every``
        steps from the measured step time, the same on every rank).
    resume: start from the latest checkpoint in ``directory`` (``suite resume``).
    """

    directory: str
    every: int | None = None
    resume: bool = False


def auto_interval(seconds_per_step: float, total_steps: int) -> int:
    """Steps between checkpoints for ``every=None``: 0 (none) for a run projected to take under
    :data:`AUTO_MIN_SECONDS`, else about :data:`AUTO_PERIOD_SECONDS` of steps."""
    if not seconds_per_step > 0 or seconds_per_step * total_steps < AUTO_MIN_SECONDS:
        return 0
    return max(1, round(AUTO_PERIOD_SECONDS / seconds_per_step))


def store_directory(uri: str) -> Path:
    """The folder a tracking URI's store lives in (SQLite file's folder, file store itself);
    the working directory for a database or server URI."""
    for prefix in ("sqlite:///", "file://"):
        if uri.startswith(prefix):
            path = Path(uri[len(prefix) :]).resolve()
            return path.parent if prefix == "sqlite:///" else path
    return Path.cwd()


def new_directory(uri: str) -> str:
    """A fresh checkpoint folder for a new tracked run (created at its first checkpoint)."""
    return str(store_directory(uri) / "checkpoints" / uuid.uuid4().hex)


_HELD: dict[str, int] = {}  # folder -> the descriptor holding its lock, in this process


def hold(directory: str | Path) -> int:
    """Claim ``directory`` for this process's jobs (created if missing) until it ends: an open
    descriptor of the folder with an exclusive flock (one per folder; a later job of the same
    process holds it already). ValueError if another process holds it: two jobs checkpointing
    into one folder (two ``suite resume`` of a run, or one --checkpoint-dir twice) delete each
    other's checkpoints."""
    import fcntl

    path = Path(directory).resolve()
    if str(path) in _HELD:
        return _HELD[str(path)]
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(
            f"checkpoint folder {path} is in use by another job (resumed or running now); "
            "valid: wait for it to end, or name another --checkpoint-dir"
        ) from None
    _HELD[str(path)] = fd
    return fd


def is_held(directory: str | Path) -> bool:
    """Whether this process holds ``directory`` (:func:`hold`)."""
    return str(Path(directory).resolve()) in _HELD


def release(directory: str | Path) -> None:
    """Let go of ``directory`` (:func:`hold`): a job refused before it started leaves the
    folder to whoever comes next, rather than to this process's exit."""
    fd = _HELD.pop(str(Path(directory).resolve()), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops its flock


# ---------------------------------------------------------------------------------------------
# Files


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` so that it is either its old content or the complete new one, whatever
    happens: to a temporary file, fsynced, renamed over it, and the rename fsynced."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
            os.fsync(fd)
    finally:
        os.close(fd)


def step_folder(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step-{step:09d}"


def rank_file(directory: str | Path, step: int, rank: int) -> Path:
    return step_folder(directory, step) / f"rank{rank}.pt"


def save_rank(directory: str | Path, step: int, rank: int, state: dict[str, Any]) -> Path:
    """Write one rank's (already encoded) state for ``step``."""
    path = rank_file(directory, step, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(state, f))
    return path


def load_rank(directory: str | Path, step: int, rank: int) -> dict[str, Any]:
    """One rank's encoded state (tensors on the CPU), read without running code from it."""
    path = rank_file(directory, step, rank)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file {path} is missing") from None


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> None:
    """Point the folder at a complete checkpoint, then delete the older step folders."""
    directory = Path(directory)
    text = json.dumps({"format": FORMAT, **manifest}, indent=2, sort_keys=True)
    atomic_write(directory / MANIFEST, lambda f: f.write(text.encode()))
    keep = step_folder(directory, manifest["step"]).name
    for old in directory.glob("step-*"):
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def read_manifest(directory: str | Path | None) -> dict[str, Any] | None:
    """The folder's latest complete checkpoint, or None if it holds none."""
    if not directory:
        return None
    try:
        with open(Path(directory) / MANIFEST) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if manifest.get("format") != FORMAT:
        return None
    return manifest


def remove(directory: str | Path | None) -> None:
    """Delete what checkpointing wrote in ``directory`` (the folder too, if that empties it)."""
    if not directory:
        return
    directory = Path(directory)
    for old in directory.glob("step-*"):
        shutil.rmtree(old, ignore_errors=True)
    for name in [MANIFEST, *(p.name for p in directory.glob(f".{MANIFEST}.*.tmp"))]:
        (directory / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty (the user's own folder) or gone
        directory.rmdir()


class Timer:
    """Seconds spent checkpointing on this rank, and how many checkpoints."""

    def __init__(self) -> None:
        self.seconds, self.count = 0.0, 0

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.count += 1


# ---------------------------------------------------------------------------------------------
# RNG states


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's global RNG states (CUDA's too, if it is in use)."""
    state: dict[str, Any] = {
        "python": _random().getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    _random().setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _random() -> Any:
    import random

    return random


# ---------------------------------------------------------------------------------------------
# The codec: live Python state <-> what torch.load(weights_only=True) reads back


def capture(obj: Any) -> Any:
    """Encode ``obj`` (numbers, strings, tensors, generators, containers and the suite's own
    objects, recursively) as plain containers and CPU tensors.

    Objects shared between several places are encoded once and referenced after, so
    :func:`restore` keeps them shared. The loop's own objects met on the way (the model and any
    module, the optimizer, parameters, transports, gradient buffers) are not encoded: the loop
    restores them.
    Anything else (a thread, a file, a function) is a TypeError naming where it was found: an
    algorithm holding such a thing overrides ``state_dict``. (Tensors that are views of one
    another are saved as separate copies; an algorithm relying on such aliasing restores it in
    its own ``load_state_dict``.)"""
    return _Encoder().encode(obj, "state")


def restore(encoded: Any, live: Any = None, device: torch.device | str = "cpu") -> Any:
    """Decode :func:`capture` output; where ``live`` has a matching object (a tensor of the
    same shape, a list, a dict, one of the suite's objects) it is restored in place and
    returned, so references others hold to it stay valid. New tensors go to ``device`` if they
    were on an accelerator."""
    return _Decoder(torch.device(device)).decode(encoded, live)


def capture_attrs(obj: Any, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """:func:`capture` of an object's attributes, but those named in ``exclude``."""
    return capture({k: v for k, v in vars(obj).items() if k not in exclude})


def restore_attrs(obj: Any, encoded: dict[str, Any], device: torch.device | str = "cpu") -> None:
    """Restore attributes of ``obj`` from :func:`capture_attrs` output, in place."""
    values = restore(encoded, dict(vars(obj)), device)
    for name, value in values.items():
        vars(obj)[name] = value


def _live(obj: Any) -> bool:
    """The loop's own objects: the model (and module copies derived from it), the optimizer,
    parameters, transports and gradient buffers (the loop zeroes them every step). Not part of
    an algorithm's state."""
    return isinstance(obj, (nn.Module, nn.Parameter, torch.optim.Optimizer, Transport, FlatGrads))


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _find_class(path: str) -> type:
    """The class a checkpoint names, if it is one of the suite's own, defined where the name
    says, in a module this job has loaded already. Nothing is imported on a file's say-so (an
    import runs code: a folder from a shared store could name any module), and no class from
    elsewhere, re-exported by a suite module, is built with attributes from a file."""
    module, _, qualname = path.partition(":")
    if not module.startswith(_PACKAGES):
        raise ValueError(f"checkpoint names class {path!r}, outside the suite's packages")
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):  # by vars(), not getattr: no lazy __getattr__ imports
        obj = vars(obj).get(part) if obj is not None else None
    if not (isinstance(obj, type) and obj.__module__ == module and obj.__qualname__ == qualname):
        raise ValueError(
            f"checkpoint names class {path!r}, which is not a class of the suite's that this "
            "job has loaded; was the checkpoint written by another version of the code?"
        )
    return obj


class _Encoder:
    def __init__(self) -> None:
        self.ids: dict[int, int] = {}
        self.alive: list[Any] = []  # keeps encoded objects alive, so no id() is reused

    def _memo(self, obj: Any) -> int | None:
        """The id of an object already encoded, or None (and it gets one now)."""
        key = id(obj)
        if key in self.ids:
            return self.ids[key]
        self.ids[key] = len(self.ids)
        self.alive.append(obj)
        return None

    def encode(self, obj: Any, path: str) -> Any:
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, (np.integer, np.floating, np.bool_)):
            return obj.item()
        if _live(obj):
            return {_KIND: "live"}
        if isinstance(obj, torch.dtype):
            return {_KIND: "dtype", "name": str(obj).removeprefix("torch.")}
        if isinstance(obj, torch.device):
            return {_KIND: "device", "name": str(obj)}
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return tuple(self.encode(x, f"{path}[{i}]") for i, x in enumerate(obj))
        if isinstance(obj, frozenset):
            return {_KIND: "frozenset", "items": [self.encode(x, path) for x in obj]}
        ref = self._memo(obj)
        if ref is not None:
            return {_KIND: "ref", "id": ref}
        n = self.ids[id(obj)]
        if isinstance(obj, torch.Tensor):
            data = obj.detach().to("cpu", copy=True)
            return {_KIND: "tensor", "id": n, "data": data, "device": str(obj.device)}
        if isinstance(obj, np.ndarray):
            return {_KIND: "ndarray", "id": n, "data": torch.from_numpy(obj.copy())}
        if isinstance(obj, torch.Generator):
            state = obj.get_state()
            return {_KIND: "generator", "id": n, "device": str(obj.device), "state": state}
        if isinstance(obj, list):
            items = [self.encode(x, f"{path}[{i}]") for i, x in enumerate(obj)]
            return {_KIND: "list", "id": n, "items": items}
        if isinstance(obj, collections.deque):
            items = [self.encode(x, f"{path}[{i}]") for i, x in enumerate(obj)]
            return {_KIND: "deque", "id": n, "maxlen": obj.maxlen, "items": items}
        if isinstance(obj, set):
            return {_KIND: "set", "id": n, "items": [self.encode(x, path) for x in obj]}
        if isinstance(obj, dict):
            items = [
                (self.encode(k, path), self.encode(v, f"{path}[{k!r}]")) for k, v in obj.items()
            ]
            return {_KIND: "dict", "id": n, "items": items}
        cls = type(obj)
        if hasattr(obj, "__dict__") and cls.__module__.startswith(_PACKAGES):
            attrs = {k: self.encode(v, f"{path}.{k}") for k, v in vars(obj).items()}
            return {_KIND: "object", "id": n, "class": _class_path(cls), "attrs": attrs}
        raise TypeError(
            f"cannot checkpoint {path}: a {cls.__module__}.{cls.__qualname__}; the algorithm "
            "holding it must override state_dict() and load_state_dict()"
        )


class _Decoder:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.memo: dict[int, Any] = {}

    def _device(self, name: str) -> torch.device:
        saved = torch.device(name)
        return saved if saved.type == "cpu" else self.device

    def decode(self, enc: Any, live: Any) -> Any:
        if isinstance(enc, tuple):
            same = isinstance(live, tuple) and len(live) == len(enc)
            lives = live if same else (None,) * len(enc)
            return tuple(self.decode(e, x) for e, x in zip(enc, lives, strict=True))
        if not isinstance(enc, dict):
            return enc
        kind = enc[_KIND]
        if kind == "live":
            return live
        if kind == "dtype":
            return getattr(torch, enc["name"])
        if kind == "device":
            return torch.device(enc["name"])
        if kind == "frozenset":
            return frozenset(self.decode(e, None) for e in enc["items"])
        if kind == "ref":
            return self.memo[enc["id"]]
        decode = getattr(self, f"_{kind}")
        return decode(enc, live)

    def _keep(self, enc: dict, value: Any) -> Any:
        self.memo[enc["id"]] = value
        return value

    def _tensor(self, enc: dict, live: Any) -> Any:
        data: torch.Tensor = enc["data"]
        if (
            isinstance(live, torch.Tensor)
            and not isinstance(live, nn.Parameter)
            and live.shape == data.shape
            and live.dtype == data.dtype
        ):
            with torch.no_grad():
                live.copy_(data)
            return self._keep(enc, live)
        return self._keep(enc, data.to(self._device(enc["device"])))

    def _ndarray(self, enc: dict, live: Any) -> Any:
        return self._keep(enc, enc["data"].numpy().copy())

    def _generator(self, enc: dict, live: Any) -> Any:
        gen = live if isinstance(live, torch.Generator) else None
        if gen is None:
            gen = torch.Generator(device=self._device(enc["device"]))
        gen.set_state(enc["state"])
        return self._keep(enc, gen)

    def _list(self, enc: dict, live: Any) -> Any:
        out = live if isinstance(live, list) else []
        self._keep(enc, out)
        old = list(out)
        items = [
            self.decode(e, old[i] if i < len(old) else None) for i, e in enumerate(enc["items"])
        ]
        out[:] = items
        return out

    def _deque(self, enc: dict, live: Any) -> Any:
        if isinstance(live, collections.deque) and live.maxlen == enc["maxlen"]:
            out = live
        else:
            out = collections.deque(maxlen=enc["maxlen"])
        self._keep(enc, out)
        old = list(out)
        items = [
            self.decode(e, old[i] if i < len(old) else None) for i, e in enumerate(enc["items"])
        ]
        out.clear()
        out.extend(items)
        return out

    def _set(self, enc: dict, live: Any) -> Any:
        out = live if isinstance(live, set) else set()
        self._keep(enc, out)
        items = [self.decode(e, None) for e in enc["items"]]
        out.clear()
        out.update(items)
        return out

    def _dict(self, enc: dict, live: Any) -> Any:
        out = live if isinstance(live, dict) else {}
        self._keep(enc, out)
        old = dict(out)
        items = []
        for k_enc, v_enc in enc["items"]:
            key = self.decode(k_enc, None)
            items.append((key, self.decode(v_enc, old.get(key))))
        out.clear()
        out.update(items)
        return out

    def _object(self, enc: dict, live: Any) -> Any:
        cls = _find_class(enc["class"])
        frozen = dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        if type(live) is cls and not frozen:
            obj = live  # restored in place: whoever holds it sees the restored state
        else:
            obj = cls.__new__(cls)  # frozen values are rebuilt, never changed in place
            live = None
        self._keep(enc, obj)
        current = vars(live) if live is not None else {}
        for name, value in enc["attrs"].items():
            vars(obj)[name] = self.decode(value, current.get(name))  # frozen ones too
        return obj
