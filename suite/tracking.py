"""MLflow tracking: one run per job, holding rank 0's metrics, written by one process.

Importing MLflow and opening a SQLite store cost seconds of CPU, more than a smoke run's training
takes to start. So every MLflow call happens in a :class:`RunWriter`: a process of its own,
started first thing by ``suite run`` (on rank 0's host, by the launcher or by rank 0 itself under
torchrun), which imports MLflow while the job is still importing torch and loading data. Its
owner opens and ends the run over a control pipe; rank 0 streams its per-step metrics down a
second pipe (:class:`MetricsSink`) and never waits on MLflow. Metrics go out with ``log_batch``
every ``flush_seconds`` and at the end, never one write per value.

A run always ends FINISHED or FAILED, whoever dies:
- the owner ends it with rank 0's summary and artifacts, or FAILED with the error (a rank's
  traceback, Ctrl-C, SIGTERM, SIGHUP); the writer ignores those signals (they reach the whole
  process group, a closed terminal sends SIGHUP) and leaves the ending to the owner;
- if the owner dies (kill -9), the writer notices within a second and ends the run FAILED;
- if the writer dies, the owner records the run at the end itself, in-process
  (:func:`record_run`): final metrics, ``summary.json`` and artifacts, or FAILED with
  ``error.txt``; per-step metrics rank 0 sent after the writer died are lost. The writer sends
  the run id back as soon as the run exists, so the owner ends that same run;
- if both die (a crashed machine), the next command that opens the store (:func:`open_client`,
  used by every command) ends the run FAILED with a ``suite.orphaned`` tag saying why, an
  ``error.txt`` and the run's description. Runs carry their owner's host, boot and processes
  (pid and start time, so a reused pid is not mistaken for the owner) as ``suite.owner.*``
  tags: on the same host a run whose processes are all gone is orphaned at once; from another
  host, a run whose ``suite.heartbeat`` tag (refreshed by the writer every
  ``HEARTBEAT_SECONDS``, 30 s) is older than ``STALE_SECONDS`` (10 min) is.
Every MLflow call retries "database is locked" (another process holding a SQLite write
transaction past MLflow's own 20 s wait) with backoff for up to ``LOCK_RETRY_SECONDS`` (60 s).
Finished runs' summaries are also kept in ``suite-summaries/RUN_ID.json`` next to the store
(:func:`keep_summary`), and artifacts go to ``mlartifacts/`` next to a SQLite store, not to
``./mlruns`` of whatever directory the command ran in (:func:`ensure_experiment`).

MLflow's own conventions: runs carry the standard source tags (``mlflow.source.git.commit``,
``mlflow.source.name``, ``mlflow.user``) and ``suite.code``, the fingerprint of the code that
produced them (:func:`code_state`: the commit, plus a hash of the local changes to the suite's
own sources if any), which ``suite reproduce`` matches before it reuses a run. A run's start
time is when its command started (the owner stamps it; the writer creates the run later, once
MLflow is imported) and its end time when the job ended, so MLflow's duration is the job's.
The writer records system metrics (MLflow's ``SystemMetricsMonitor``; needs psutil; off with
``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false``) and the dataset as the run's input. A run that
does not finish is renamed with its status (``... [failed]``), so failed runs stand out by name.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import json
import logging
import multiprocessing as mp
import os
import platform
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from suite import liveness
from suite.divergence import json_safe

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
_MAX_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call
_MAX_PARAMS_PER_BATCH = 100
LOCK_RETRY_SECONDS = 60.0  # how long MLflow calls retry "database is locked"
HEARTBEAT_SECONDS = 30.0  # the writer refreshes the run's suite.heartbeat tag this often
STALE_SECONDS = 600.0  # a run of another host whose heartbeat is older than this is orphaned
SUMMARY_DIR = "suite-summaries"  # next to the store: every finished run's summary, as JSON
# What a run's code fingerprint covers: the suite's own sources (not reports it wrote, not docs).
CODE_PATHS = ("suite", "baselines", "reproduce", "reports/*.py", "pyproject.toml")
SYSTEM_METRICS_SECONDS = 2.0  # system metrics sampling (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL)


# How metric names say their unit and how they combine the ranks (README, and every report).
METRIC_CONVENTION = (
    "Metric names: `*bytes*` are bytes, `*seconds*` seconds, `messages` a count, accuracies a "
    "fraction in [0, 1]. Byte and message counts (`bytes_sent`, `bytes_recv`, `wire_bytes`, "
    "`messages`, per step and `final.*`) are summed over all ranks; a `_max` suffix is the "
    "busiest rank (`link_*_max`: the busiest link); `compute_seconds` and `comm_seconds` are "
    "means over ranks, other per-step values (`train_loss`, `lr`, ...) means over ranks too "
    "(`step_seconds_max`: the slowest rank); `train_seconds` and `wall_seconds` are the job's "
    "wall clock on rank 0; `_rank_mean`/`_rank_min`/`_rank_max` spread over ranks' own models. "
    "`final.*` holds each run's summary; `system/*` are MLflow's system metrics."
)


def tracking_uri(explicit: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else a SQLite file in the working directory.

    Relative SQLite paths are made absolute so every process agrees on the file."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def check_uri(uri: str) -> None:
    """Reject a tracking URI MLflow cannot use, before any process starts (the messages name
    it without its password)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else "file"
    shown = without_password(uri)
    if scheme not in _SCHEMES:
        raise ValueError(
            f"unsupported tracking URI {shown!r}; valid schemes: {', '.join(_SCHEMES)}"
        )
    if scheme == "sqlite":
        path = local_store(uri)
        if path is None or not path.name:
            raise ValueError(
                f"tracking URI {uri!r} names no SQLite file; valid forms: sqlite:///relative.db, "
                "sqlite:////absolute/path.db"
            )
        if path.is_dir():
            raise ValueError(f"tracking URI {uri!r}: {path} is a directory, not a SQLite file")
    if scheme in ("postgresql", "mysql", "mssql"):  # opened through SQLAlchemy
        sql_dialect(uri, f"tracking URI {shown!r}", "postgresql://USER:PASSWORD@HOST/DB")


def check_writable(uri: str) -> None:
    """For a command that writes runs: a local store this user cannot write (a read-only
    folder or file) fails in the writer and at the summary kept beside it, after training:
    ValueError now instead."""
    from suite.errors import unwritable_folder

    path = local_store(uri)
    if path is None:
        return
    why = unwritable_folder(path if uri.startswith("file:") or ":" not in uri else path.parent)
    if why is None and path.is_file() and not os.access(path, os.W_OK):
        why = f"{path} is not writable by this user"
    if why is not None:
        raise ValueError(f"tracking URI {uri!r}: {why}; valid: a store in a folder you can write")


def sql_dialect(url: str, name: str, forms: str) -> Any:
    """SQLAlchemy's dialect for the database URL ``url``, its driver imported. A database whose
    driver is not installed fails only when first opened (for a run: in the writer, after
    training), so ValueError now, naming the URL as ``name`` and the valid ``forms``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise ValueError(f"{name} is not a database URL; valid forms: {forms}") from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        raise ValueError(
            f"{name} needs the Python module {err.name!r} (its database driver), which is not "
            f"installed; install it, or name an installed driver: {dialect.name}+DRIVER://..."
        ) from None
    return dialect


def local_store(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store (the folder of a ``file:`` or plain-path one); None
    for a remote store, or a SQLite URI without a path."""
    if uri.startswith("sqlite:"):
        return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
    if uri.startswith("file:"):
        return Path(uri[len("file://") :] if uri.startswith("file://") else uri[len("file:") :])
    return None if ":" in uri else Path(uri)


def check_store_exists(uri: str) -> None:
    """For a command that only reads the store (report, replay, resume): ValueError if ``uri``
    is a local store that does not exist, rather than create an empty one and find nothing."""
    path = local_store(uri)
    if path is not None and not path.exists():
        raise ValueError(
            f"no MLflow store at {uri}; valid: the --tracking-uri a run was tracked in "
            "(default sqlite:///mlflow.db in the working directory, or $MLFLOW_TRACKING_URI)"
        )


def git_state(root: Path = PROJECT_ROOT) -> tuple[str, bool | None]:
    """(commit sha, dirty flag) of the checkout the suite runs from; ("unknown", None) if none."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return sha, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout


@functools.lru_cache(maxsize=4)
def code_state(root: Path = PROJECT_ROOT) -> tuple[str, str]:
    """(commit sha, code fingerprint) of the checkout the suite runs from.

    The fingerprint is the commit when the suite's own sources (:data:`CODE_PATHS`) are as
    committed, else ``SHA+HASH`` with a hash of their local changes, so two runs share it only if
    they ran the same code. ("unknown", "unknown") outside a git checkout."""
    try:
        sha = _git(root, "rev-parse", "HEAD").strip()
        changed = _git(root, "status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS)
        if not changed.strip():
            return sha, sha
        digest = hashlib.sha256(_git(root, "diff", "HEAD", "--", *CODE_PATHS).encode())
        for line in sorted(changed.splitlines()):  # new files: their names and contents
            if line.startswith("??"):
                path = root / line[3:].strip()
                digest.update(line.encode())
                with contextlib.suppress(OSError):
                    digest.update(path.read_bytes())
        return sha, f"{sha}+{digest.hexdigest()[:12]}"
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"


def store_label(uri: str) -> str:
    """How a report names its store: relative to the working directory when it lies below it,
    else by its file name (never a machine's absolute path: reports are committed)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        with contextlib.suppress(ValueError):
            return f"sqlite:///{path.resolve().relative_to(Path.cwd().resolve())}"
        return f"sqlite:///.../{path.name}"
    parsed = urlparse(uri)
    if parsed.password:  # a database URL: never its password
        return uri.replace(f":{parsed.password}@", ":***@")
    return uri


def without_password(url: str) -> str:
    """A database URL with its password left out, to record or print: whoever opens it again
    authenticates through the driver's own means (PGPASSWORD or ~/.pgpass for PostgreSQL)."""
    parsed = urlparse(url)
    if not parsed.password:
        return url
    return url.replace(f":{parsed.password}@", "@", 1)


def hardware() -> str:
    """One line naming the machine: CPU model and count, the instruction set torch's CPU
    kernels use, and GPUs if any. The kernels round differently by instruction set (AVX2,
    AVX-512), so a CPU run reproduces bit for bit only where they match: the real profile's
    accuracies moved in the third or fourth digit between two hosts (reproduce/compare/NOTES.md)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import torch

    kernels = torch.backends.cpu.get_cpu_capability()
    text = f"{cpu} x{os.cpu_count()} ({platform.system()} {platform.machine()}, {kernels} kernels)"
    if torch.cuda.is_available():
        names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
        text += f"; {torch.cuda.device_count()} x {', '.join(sorted(names))}"
    return text


def run_tags(
    target: str, paper: str, world_size: int, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The run's tags known to its owner; the writer adds the code's (:func:`code_tags`), off
    the job's critical path."""
    import torch

    return {
        "target": target,
        "paper": paper,
        "torch_version": str(torch.__version__),
        "hardware": hardware(),
        "world_size": str(world_size),
        **(extra or {}),
    }


def code_tags(target: str) -> dict[str, str]:
    """The git tags of the checkout that runs ``target`` (:func:`source_tags` and the commit
    and dirty flag of the whole tree)."""
    sha, dirty = git_state()
    return {
        "git_sha": sha,
        "git_dirty": str(dirty).lower() if dirty is not None else "unknown",
        **source_tags(f"suite run {target}"),
    }


def source_tags(command: str) -> dict[str, str]:
    """MLflow's own source tags (the UI's Source, commit and user columns) and ``suite.code``,
    the fingerprint of the code that ran (:func:`code_state`)."""
    sha, code = code_state()
    return {
        "suite.code": code,
        "mlflow.source.git.commit": sha,
        "mlflow.source.name": command,
        "mlflow.source.type": "LOCAL",
        "mlflow.user": _user(),
    }


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def mlflow_environment() -> None:
    """What MLflow must see in the environment before it is imported: its usage telemetry off
    unless the user turns it on (ranks should not phone home mid-run, and many clusters are
    offline), and no progress bar for artifacts (reports read many)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def quiet_mlflow() -> None:
    """MLflow logs database migrations at INFO into the progress bar; keep only warnings.

    Importing MLflow resets its loggers' level, so import it first, then lower them."""
    mlflow_environment()
    import mlflow  # noqa: F401

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow logs each lock error with a traceback before raising it; patiently() retries
    # those and says so in one line.
    logging.getLogger("mlflow.store.db.utils").addFilter(_not_a_lock_error)


def _not_a_lock_error(record: logging.LogRecord) -> bool:
    return "database is locked" not in record.getMessage()


def open_client(uri: str) -> Any:
    """An MlflowClient for ``uri`` that retries a locked SQLite store, its database created
    atomically if it is new; runs whose owner is gone are ended FAILED here (every command
    opens the store through this).

    MLflow builds a new SQLite schema in dozens of migration steps; a process killed among
    them (a rank that crashes in its first seconds) would leave a store no later run can
    open. So a new database is built under a temporary name and linked into place whole."""
    quiet_mlflow()
    from mlflow.tracking import MlflowClient

    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = Path(uri[len(prefix) :])
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            MlflowClient(tracking_uri=prefix + str(tmp)).search_experiments(max_results=1)
            try:
                os.link(tmp, path)  # fails if another process got there first: use theirs
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
    client = PatientClient(MlflowClient(tracking_uri=uri))
    try:
        end_orphaned_runs(client)
    except Exception as err:  # housekeeping must not stop the command
        print(f"warning: could not check for orphaned MLflow runs: {err}", file=sys.stderr)
    return client


def _locked(err: BaseException) -> bool:
    """A SQLite lock error, however MLflow and SQLAlchemy wrapped it."""
    seen: BaseException | None = err
    while seen is not None:
        if "database is locked" in str(seen) or "database table is locked" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def patiently(
    call: Any,
    *args: Any,
    store: str = "the MLflow store",
    within: float = LOCK_RETRY_SECONDS,
    **kwargs: Any,
) -> Any:
    """``call(*args, **kwargs)``, retried with backoff while the ``store`` (a SQLite file) is
    locked (for up to ``within`` seconds); any other error, or a lock that outlasts that, is
    raised."""
    deadline = time.monotonic() + within
    pause = 0.2
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as err:
            if not _locked(err) or time.monotonic() + pause > deadline:
                raise
        if pause == 0.2:
            print(
                f"warning: {store} is locked by another process; retrying for up to {within:g} s",
                file=sys.stderr,
            )
        time.sleep(pause)
        pause = min(pause * 2, 5.0)


class PatientClient:
    """An MlflowClient whose every method retries "database is locked" (:func:`patiently`)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: patiently(attr, *args, **kwargs)


def store_dir(uri: str) -> Path:
    """The folder the store lives in: a SQLite file's folder, a file store's parent folder;
    the working directory for a server or database URL."""
    path = local_store(uri)
    return path.resolve().parent if path is not None else Path.cwd()


def ensure_experiment(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if missing, with its artifacts in
    ``mlartifacts/`` next to a SQLite store (MLflow's default is ./mlruns of the working
    directory, wherever the command happened to run). Every experiment the suite creates
    comes from here."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (store_dir(uri) / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it first: use theirs
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def owner_tags(pids: Sequence[int], heartbeat: bool = True) -> dict[str, str]:
    """Tags naming the processes a run lives by (see the module docstring)."""
    tags = {
        "suite.owner.host": liveness.HOST,
        "suite.owner.boot": liveness.boot_id(),
        "suite.owner.pids": ",".join(liveness.identity(p) for p in dict.fromkeys(pids)),
    }
    if heartbeat:
        tags["suite.heartbeat"] = f"{time.time():.0f}"
    return tags


def driver_parent_run(
    client: Any, exp_id: str, query: str, name: str, tags: Mapping[str, str]
) -> str:
    """The MLflow parent run of a driver (a sweep's study, a paper's reproduction): the oldest
    run of ``exp_id`` matching ``query``, taken over by this driver (its owner tags, RUNNING),
    else one created with ``tags``. Owned by the driver's pid, without a heartbeat (judged
    orphaned only from this host). Drivers creating one at once all keep the oldest."""
    owner = owner_tags([os.getpid()], heartbeat=False)
    oldest = ["attributes.start_time ASC"]
    found = client.search_runs([exp_id], filter_string=query, order_by=oldest)
    if found:
        run_id = found[0].info.run_id
        before = found[0].data.tags
        if before.get("suite.owner.host") == liveness.HOST and found[0].info.status == "RUNNING":
            # drivers sharing it on this host: it is orphaned only once all of them are gone
            # (the newest may stop first, leaving the run to another that is still working)
            others = [i for i in before.get("suite.owner.pids", "").split(",") if i]
            live = [i for i in others if liveness.checkable(i) and liveness.alive(i)]
            idents = [*live, owner["suite.owner.pids"]]
            owner["suite.owner.pids"] = ",".join(dict.fromkeys(idents))
        from mlflow.entities import RunTag

        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in owner.items()])  # one write
        client.update_run(run_id, status="RUNNING")
        return run_id
    run_id = client.create_run(exp_id, run_name=name, tags={**tags, **owner}).info.run_id
    first = client.search_runs([exp_id], filter_string=query, order_by=oldest)[0].info.run_id
    if first != run_id:
        client.delete_run(run_id)
    return first


def orphan_note(tags: Mapping[str, str], now: float | None = None) -> str | None:
    """Why a RUNNING run with these tags can never end, or None if it may still be running
    (or carries no owner tags to tell)."""
    host = tags.get("suite.owner.host")
    if host is None:
        return None
    now = time.time() if now is None else now
    idents = [i for i in tags.get("suite.owner.pids", "").split(",") if i]
    # another container with this host name (its own PID namespace) counts as another host
    if host == liveness.HOST and all(liveness.checkable(i) for i in idents):
        if tags.get("suite.owner.boot", "") != liveness.boot_id():
            return f"host {host} has restarted since the run started"
        if any(liveness.alive(i) for i in idents):
            return None
        pids = ", ".join(i.split(":")[0] for i in idents)
        return f"its processes (pid {pids}) on host {host} are gone (killed or crashed)"
    beat = tags.get("suite.heartbeat")
    try:
        age = now - float(beat) if beat is not None else None
    except ValueError:
        age = None
    if age is None or age <= STALE_SECONDS:
        return None
    return (
        f"no heartbeat from host {host} for {age:.0f} s (limit {STALE_SECONDS:.0f} s): "
        "the machine or its processes are gone"
    )


def end_orphaned_runs(client: Any) -> list[str]:
    """End FAILED every RUNNING run whose owner is gone (:func:`orphan_note`); their ids."""
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    if not exp_ids:
        return []
    running = client.search_runs(
        exp_ids, filter_string="attributes.status = 'RUNNING'", max_results=10000
    )
    ended = []
    for run in running:
        note = orphan_note(run.data.tags)
        if note is None:
            continue
        text = (
            f"Marked FAILED by pid {os.getpid()} on {liveness.HOST} at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: the run was still RUNNING but {note}, "
            "so it can never end by itself. Its metrics up to then are kept."
        )
        run_id = run.info.run_id
        client.set_tag(run_id, "suite.orphaned", note)
        client.set_tag(run_id, "mlflow.note.content", text)
        client.log_text(run_id, text + "\n", "error.txt")
        client.set_terminated(run_id, "FAILED")
        ended.append(run_id)
    return ended


def keep_summary(uri: str, summary: Mapping[str, Any], previous: Path | None = None) -> Path:
    """Write ``summary`` to ``suite-summaries/RUN_ID.json`` next to the store (a timestamped
    name while the run id is unknown), atomically, so a finished job's result survives
    whatever happens to MLflow; ``previous`` (an earlier call's path) is replaced."""
    folder = store_dir(uri) / SUMMARY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    run_id = summary.get("run_id")
    if run_id:
        path = folder / f"{run_id}.json"
    else:
        path = previous or folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # strict JSON: a target never reached is NaN in the summary, null here
    tmp.write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    if previous is not None and previous != path:
        previous.unlink(missing_ok=True)
    return path


class MetricsSink:
    """Rank 0's end of the metrics pipe: ``log`` hands a step's metrics over and returns.

    The writer drains the pipe from a thread of its own from the moment it starts, so a send
    blocks only if the writer has fallen 64 KiB behind."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._broken = False

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._send(("metrics", step, int(time.time() * 1000), dict(metrics)))

    def log_steps(self, steps: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Several steps' metrics in one message (the loop's rows, every ``log_every`` steps)."""
        stamp = int(time.time() * 1000)
        self._send(("metrics_steps", [(step, stamp, dict(m)) for step, m in steps]))

    def close(self) -> None:
        """Say that every metric has been sent (the run finished on rank 0)."""
        self._send(("metrics_end",))

    def release(self) -> None:
        """Close this end of the pipe without a word: a forked writer's copy of it, so the
        writer sees the pipe close when rank 0's end does."""
        self._conn.close()

    def _send(self, message: tuple) -> None:
        # A dead writer must not take the training run down with it; its owner reports it.
        if not self._broken:
            try:
                self._conn.send(message)
            except OSError:
                self._broken = True


# The modules the writer imports before anything else (``_Writer.serve``): about 2 s of CPU.
# A process that has them already (a reproduction's or a sweep's run, forked from a server
# that preloads them: suite.reproduce) forks its writer instead of starting an interpreter.
WRITER_MODULES = ("mlflow.store.tracking.sqlalchemy_store", "mlflow.tracking")


class RunWriter:
    """The process that owns one MLflow run; this object is its owner's handle.

    ``start()`` as early as possible, ``open()`` once the config is known, give ``sink`` to rank
    0, and ``end()`` with the outcome. Not picklable: only ``sink`` travels to rank 0."""

    def __init__(self, flush_seconds: float = 2.0) -> None:
        self._control, control_end = mp.Pipe()
        metrics_end, metrics_send = mp.Pipe(duplex=False)
        self.sink = MetricsSink(metrics_send)
        self._flush_seconds = flush_seconds
        # A fresh interpreter with the two pipe ends as inherited descriptors: it starts at
        # once, and nothing of this process (threads, locks, the main module) comes along.
        # Where MLflow is imported already, a fork instead (start).
        self._args = [
            sys.executable,
            "-m",
            "suite.tracking",
            str(control_end.fileno()),
            str(metrics_end.fileno()),
            str(os.getpid()),
            str(flush_seconds),
        ]
        self._child_ends = (control_end, metrics_end)
        self._process: subprocess.Popen | _ForkedWriter | None = None
        self._opened: tuple | None = None  # open()'s arguments, for recording it ourselves
        self._ended: tuple | None = None  # the writer's final reply: (run_id, error)
        self._dead = False  # the control pipe is closed: the writer is gone
        self._reopened: str | None = None  # the existing run open() was asked to continue
        self._start_ms: int | None = None  # when the job started: the run's start time
        self.run_id: str | None = None

    def start(self) -> RunWriter:
        """Start the writer, in a session of its own: whoever stops the owner by its process
        group (torchrun stops a worker with killpg, SIGKILL 30 s after SIGTERM) would kill the
        writer with it, mid-way through ending the run, and leave the run RUNNING."""
        self._start_ms = int(time.time() * 1000)
        if hasattr(os, "fork") and all(m in sys.modules for m in WRITER_MODULES):
            self._process = self._fork()
        else:
            fds = tuple(end.fileno() for end in self._child_ends)
            self._process = subprocess.Popen(
                self._args, pass_fds=fds, stdin=subprocess.DEVNULL, start_new_session=True
            )
        for end in self._child_ends:
            end.close()
        return self

    def _fork(self) -> _ForkedWriter:
        """The writer as a fork of this process, which has MLflow imported already."""
        sys.stdout.flush()  # or the writer would write this process's buffered output again
        sys.stderr.flush()
        owner = os.getpid()
        pid = os.fork()
        if pid:
            return _ForkedWriter(pid)
        try:  # the writer: without the owner's ends of the pipes, so each sees the other go
            os.setsid()  # out of the owner's process group (see start)
            self._control.close()
            self.sink.release()
            _writer_main(*self._child_ends, owner, self._flush_seconds)  # exits by itself
        except BaseException:
            traceback.print_exc()  # as an interpreter would say why, before its exit code
        finally:
            os._exit(1)

    def open(
        self,
        uri: str,
        experiment: str,
        run_name: str | None,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        run_id: str | None = None,
        dataset: Mapping[str, str] | None = None,
    ) -> None:
        """Create the run (in the writer, asynchronously; its id comes back by ``run_id``),
        started when :meth:`start` was called, with ``dataset`` (name, digest, source) as its
        input; with ``run_id``, reopen that existing run instead (``suite resume``: it is set
        RUNNING again, and ``params`` are not logged again), so what follows lands in it."""
        # Plain strings only: unpickling anything else in the writer imports its module there
        # (torch.__version__ is a torch class: torch's import, a CPU-second taken from the
        # ranks, delayed the run's creation until after training).
        params = {str(k): str(v) for k, v in params.items()}
        tags = {str(k): str(v) for k, v in tags.items()}
        self._opened = (uri, experiment, run_name, params, tags)
        self._reopened = run_id
        self._dataset = {str(k): str(v) for k, v in dataset.items()} if dataset else None
        message = ("open", *self._opened, run_id, self._start_ms, self._dataset)
        with contextlib.suppress(OSError):  # a dead writer: end() records the run itself
            self._control.send(message)

    def discard(self) -> None:
        """Stop a writer that was never given a run to open (the job did not start)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()

    def poll(self, timeout: float = 0.0) -> None:
        """Read what the writer has sent back (the run id once created), waiting at most
        ``timeout`` seconds for something."""
        try:
            while not self._dead and self._control.poll(timeout):
                message = self._control.recv()
                if message[0] == "opened":
                    self.run_id = message[1]
                elif message[0] == "ended":
                    self._ended = message[1:]
                    return
                timeout = 0.0
        except (EOFError, OSError):
            self._dead = True

    def end(
        self,
        status: str,
        summary: Mapping[str, Any] | None = None,
        artifacts: Mapping[str, str] | None = None,
        timeout: float = 300.0,
        *,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Flush, store the artifacts (and ``summary.json``) and ``tags``, end the run with
        ``status``; returns the run id once it is all written. If the writer died, hung or
        failed, the run is recorded from this process instead (:func:`record_run`);
        RuntimeError if that fails too."""
        summary, artifacts = dict(summary or {}), dict(artifacts or {})
        end_ms = int(time.time() * 1000)  # the job's end, not when MLflow is done writing
        with contextlib.suppress(OSError):
            self._control.send(("end", status, summary, artifacts, dict(tags or {}), end_ms))
        deadline = time.monotonic() + timeout
        while self._ended is None and not self._dead and time.monotonic() < deadline:
            self.poll(min(1.0, max(0.0, deadline - time.monotonic())))
        try:
            self._process.wait(5.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._ended is not None and not self._ended[1]:
            self.run_id = self._ended[0]
            return self.run_id
        if self._ended is not None:
            why = f"failed ({self._ended[1]})"
        elif self._dead:
            code = self._process.returncode
            why = f"died ({_exit_text(code)})"
        else:
            why = f"did not finish within {timeout:g} s"
        print(
            f"warning: the MLflow writer {why}; recording the run from this process",
            file=sys.stderr,
        )
        if self._opened is None:
            raise RuntimeError(f"the MLflow writer {why} before a run was opened")
        try:
            known = self.run_id or self._reopened
            self.run_id = record_run(
                *self._opened,
                known,
                status,
                summary,
                artifacts,
                dict(tags or {}),
                start_ms=self._start_ms,
                end_ms=end_ms,
            )
        except Exception as err:
            raise RuntimeError(
                f"the MLflow writer {why}, and recording the run here failed too: "
                f"{type(err).__name__}: {err}"
            ) from None
        return self.run_id


class _ForkedWriter:
    """What RunWriter uses of ``subprocess.Popen`` (wait, kill, returncode) for a writer forked
    from this process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, 0 if deadline is None else os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"MLflow writer (pid {self.pid})", timeout or 0)
            else:
                time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def record_run(
    uri: str,
    experiment: str,
    run_name: str | None,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    run_id: str | None,
    status: str,
    summary: Mapping[str, Any],
    artifacts: Mapping[str, str],
    end_tags: Mapping[str, str] | None = None,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> str:
    """What the writer does at the end, done in this process (the writer died): create the
    run if it never was, then final metrics, ``summary.json``, artifacts and ``status``."""
    writer = _Writer(queue.Queue(), os.getpid(), 0.0, None)
    if run_id is None:
        writer._open(uri, experiment, run_name, dict(params), dict(tags), None, start_ms)
    else:
        writer.client, writer.run_id = open_client(uri), run_id
    writer.client.set_tag(writer.run_id, "suite.recorded_by", "owner (the MLflow writer died)")
    writer._finish(status, dict(summary), dict(artifacts), dict(end_tags or {}), end_ms)
    return writer.run_id


def _writer_main(control: Any, metrics: Any, owner: int, flush_seconds: float) -> None:
    # Ctrl-C, SIGTERM and SIGHUP (a closed terminal) reach the whole process group: they are
    # the owner's to handle, and it ends the run; if they killed the owner, _next notices.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    inbox: queue.Queue[tuple] = queue.Queue()

    def pump(conn: Any) -> None:
        while True:
            try:
                inbox.put(conn.recv())
            except (EOFError, OSError):
                return

    for conn in (control, metrics):
        threading.Thread(target=pump, args=(conn,), daemon=True).start()
    _Writer(inbox, owner, flush_seconds, control).serve()
    # Everything is committed; skip tearing down MLflow's thousands of objects (about a second).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _Writer:
    """The writer process's loop: a run's whole life, from ``open`` to ``end``."""

    def __init__(
        self, inbox: queue.Queue, owner: int, flush_seconds: float, reply: Any | None
    ) -> None:
        self.inbox, self.owner, self.flush_seconds, self.reply = inbox, owner, flush_seconds, reply
        self.client: Any = None
        self.run_id: str | None = None
        self.pending: list[tuple] = []
        self.last_flush = time.monotonic()
        self.last_beat = time.monotonic()
        self.metrics_done = False
        self.monitor: Any = None  # MLflow's system metrics monitor, while the run is open

    def serve(self) -> None:
        quiet_mlflow()  # the slow imports, overlapped with the job's own start-up
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
        from mlflow.tracking import MlflowClient  # noqa: F401

        end: tuple = ()
        error = None
        try:
            while not end:
                item = self._next()
                if item[0] == "open":
                    self._open(*item[1:])  # says "opened" as soon as the run exists
                elif item[0] == "end":
                    end = item
                else:
                    self._take_metrics(item)
                if end and end[1] == "FINISHED" and not self.metrics_done:
                    # the two pipes are read apart: rank 0's last metrics may still be in
                    # flight behind the owner's "end"; they are all sent, so wait for them
                    self._drain_metrics()
            _, status, summary, artifacts, tags, *end_ms = end
            if self.client is not None:
                self._finish(status, summary, artifacts, tags, *end_ms)
        except BaseException as err:  # report it, and never leave the run RUNNING
            error = f"{type(err).__name__}: {err}"
            if self.client is not None and self.run_id is not None:
                with contextlib.suppress(Exception):  # in the run too: the owner may never read it
                    self.client.set_tag(self.run_id, "suite.writer_error", error[:5000])
                with contextlib.suppress(Exception):
                    self.client.set_terminated(self.run_id, "FAILED")
        self._send(("ended", self.run_id, error))

    def _send(self, message: tuple) -> None:
        if self.reply is None:  # record_run: the owner itself
            return
        with contextlib.suppress(OSError):  # the owner may be gone
            self.reply.send(message)

    def _next(self) -> tuple:
        """The next message; an owner that died without ending the run ends it FAILED.

        Flushes and heartbeats fall due by the clock, not when the inbox runs dry: a fast run's
        metrics arrive faster than once a second, and a run whose heartbeat stops is taken for
        an orphan on another host (orphan_note) and ended FAILED while it trains."""
        while True:
            self._housekeeping()
            wait = max(0.05, self.flush_seconds - (time.monotonic() - self.last_flush))
            try:
                return self.inbox.get(timeout=min(wait, 1.0))
            except queue.Empty:
                if os.getppid() != self.owner:
                    error = "the process running the job died (killed?) before it ended"
                    return ("end", "FAILED", {}, {"error.txt": error}, {})

    def _housekeeping(self) -> None:
        """Flush the pending metrics (every flush_seconds, or 200 steps' worth) and refresh the
        heartbeat, each when it is due."""
        if self.client is None:
            return
        now = time.monotonic()
        if self.pending and (
            len(self.pending) >= 200 or now - self.last_flush >= self.flush_seconds
        ):
            self._flush()
        if now - self.last_beat >= HEARTBEAT_SECONDS:
            self.last_beat = now
            with contextlib.suppress(Exception):  # a missed beat is not an error
                self.client.set_tag(self.run_id, "suite.heartbeat", f"{time.time():.0f}")

    def _drain_metrics(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.metrics_done and time.monotonic() < deadline:
            try:
                item = self.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            self._take_metrics(item)

    def _take_metrics(self, item: tuple) -> None:
        """Rank 0's metrics: one step's, a flush's worth of steps, or the end of them."""
        if item[0] == "metrics":
            self.pending.append(item[1:])
        elif item[0] == "metrics_steps":
            self.pending.extend(item[1])
        elif item[0] == "metrics_end":
            self.metrics_done = True

    def _open(
        self,
        uri: str,
        experiment: str,
        run_name: str | None,
        params: dict,
        tags: dict,
        run_id: str | None = None,
        start_ms: int | None = None,
        dataset: dict | None = None,
    ) -> None:
        from mlflow.entities import Param

        self.client = client = open_client(uri)
        tags = {**tags, **owner_tags([self.owner, os.getpid()])}
        if "target" in tags and run_id is None:  # a `suite run` job: where its code came from
            tags = {**code_tags(tags["target"]), **tags}
        if run_id is not None:  # reopen (suite resume): now owned by this job
            from mlflow.entities import RunTag

            name = client.get_run(run_id).info.run_name or ""
            # the new owner first: RUNNING under the dead owner's tags, the run would look
            # orphaned to a command opening the store in between, and be ended FAILED again
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
            client.update_run(run_id, status="RUNNING", name=_STATUS_SUFFIX.split(name)[0])
            self.run_id = run_id
            self._send(("opened", self.run_id))
            self._watch_system(uri, resume=True)
            return
        exp_id = ensure_experiment(client, experiment, uri)
        self.run_id = client.create_run(
            exp_id, start_time=start_ms, run_name=run_name, tags=tags
        ).info.run_id
        # the owner learns the id at once: if this process dies now, it ends this same run
        self._send(("opened", self.run_id))
        self._watch_system(uri)
        items = [Param(k, str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])
        if dataset:
            self._log_dataset(dataset)

    def _watch_system(self, uri: str, resume: bool = False) -> None:
        """MLflow's system metrics (CPU, memory, disk, network; GPU with pynvml) for the run,
        sampled by a thread of this process, unless psutil is missing or the user turned them
        off with MLflow's own MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false."""
        if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() in ("false", "0"):
            return
        try:
            import psutil  # noqa: F401
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
            self.monitor = SystemMetricsMonitor(
                self.run_id,
                sampling_interval=SYSTEM_METRICS_SECONDS,
                resume_logging=resume,
                tracking_uri=uri,
            )
            self.monitor.start()
        except Exception:  # no psutil, or MLflow without the monitor: the run goes on without
            self.monitor = None

    def _log_dataset(self, dataset: dict) -> None:
        """The run's training data as an MLflow dataset input (name, digest, source)."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        meta = MetaDataset(
            CodeDatasetSource({"source": dataset.get("source", "")}),
            name=dataset["name"],
            digest=dataset["digest"],
        )
        context = InputTag("mlflow.data.context", "train")
        inputs = [DatasetInput(meta._to_mlflow_entity(), [context])]
        # MLflow looks the dataset up, then inserts it: two runs starting at once in a fresh
        # experiment (a sweep's --n-jobs 2) both insert, and the second fails on the table's
        # unique key (seen: 5 in 6 simultaneous starts). Again, it finds the first's and links it.
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, inputs)
                return
            except Exception:
                if attempt == 2:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _flush(self, tags: Mapping[str, str] | None = None) -> None:
        from mlflow.entities import Metric, RunTag

        rows = [
            Metric(k, float(v), stamp, step)
            for step, stamp, values in self.pending
            for k, v in values.items()
        ]
        items = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i in range(0, max(len(rows), 1), _MAX_METRICS_PER_BATCH):
            chunk = rows[i : i + _MAX_METRICS_PER_BATCH]
            if chunk or items:  # the tags go with the first batch
                self.client.log_batch(self.run_id, metrics=chunk, tags=items)
            items = []
        self.pending, self.last_flush = [], time.monotonic()

    def _finish(
        self, status: str, summary: dict, artifacts: dict, tags: dict, end_ms: int | None = None
    ) -> None:
        if self.monitor is not None:
            with contextlib.suppress(Exception):  # system metrics must not fail the run
                self.monitor.finish()
        # The summary's numbers also go in as final.* metrics: reports and run comparisons
        # then come straight from MLflow's run table.
        step = int(summary.get("steps", 0) or 0)
        stamp = int(time.time() * 1000)
        self.pending.append(
            (
                step,
                stamp,
                {
                    f"final.{k}": v
                    for k, v in summary.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                },
            )
        )
        self._flush(tags)  # one write for the last metrics and the end's tags
        files = dict(artifacts)
        if summary:
            summary = json_safe({**summary, "run_id": self.run_id})  # NaN is not JSON
            files["summary.json"] = json.dumps(summary, indent=2, allow_nan=False)
        if files:  # one upload for all of them (the job waits for the end)
            with tempfile.TemporaryDirectory(prefix="suite-artifacts-") as folder:
                for name, text in files.items():
                    path = Path(folder, name)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text, encoding="utf-8")
                self.client.log_artifacts(self.run_id, folder)
        if status != "FINISHED":  # failed and killed runs stand out by name in the run list
            name = _STATUS_SUFFIX.split(self.client.get_run(self.run_id).info.run_name or "")[0]
            self.client.update_run(self.run_id, name=f"{name} [{status.lower()}]")
        self.client.set_terminated(self.run_id, status, end_time=end_ms)
        if status == "FAILED":  # e.g. the job's driver was killed: end its parent run too
            with contextlib.suppress(Exception):
                end_orphaned_runs(self.client)


_STATUS_SUFFIX = re.compile(r" \[(?:failed|killed)\]$")


if __name__ == "__main__":  # the writer process: python -m suite.tracking CONTROL METRICS OWNER S
    from multiprocessing.connection import Connection

    _writer_main(
        Connection(int(sys.argv[1])),
        Connection(int(sys.argv[2]), writable=False),
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
