"""MLflow tracking: one run per job, holding rank 0's metrics, written by one process.

Importing MLflow and opening a SQLite store cost seconds of CPU, more than a smoke run's training
takes to start. So every MLflow call happens in a :class:`RunWriter`: a process of its own,
started first thing by ``suite run`` (on rank 0's host, by the launcher or by rank 0 itself under
torchrun), which imports MLflow while the job is still importing torch and loading data. Its
owner opens and ends the run over a control pipe; rank 0 streams its per-step metrics down a
second pipe (:class:`MetricsSink`) and never waits on MLflow. Metrics go out with ``log_batch``
every ``flush_seconds`` and at the end, never one write per value.

A run always ends FINISHED or FAILED: the owner ends it with rank 0's summary and artifacts, or
FAILED with the error (a rank's traceback, Ctrl-C); if the owner itself dies (kill -9), the
writer notices and ends the run FAILED on its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from suite.divergence import json_safe

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
_MAX_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call
_MAX_PARAMS_PER_BATCH = 100


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
    """Reject a tracking URI MLflow cannot use, before any process starts."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else "file"
    if scheme not in _SCHEMES:
        raise ValueError(f"unsupported tracking URI {uri!r}; valid schemes: {', '.join(_SCHEMES)}")


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


def hardware() -> str:
    """One line naming the machine: CPU model and count, and GPUs if any."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = f"{cpu} x{os.cpu_count()} ({platform.system()} {platform.machine()})"
    import torch

    if torch.cuda.is_available():
        names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
        text += f"; {torch.cuda.device_count()} x {', '.join(sorted(names))}"
    return text


def run_tags(
    target: str, paper: str, world_size: int, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    import torch

    sha, dirty = git_state()
    return {
        "target": target,
        "paper": paper,
        "git_sha": sha,
        "git_dirty": str(dirty).lower() if dirty is not None else "unknown",
        "torch_version": torch.__version__,
        "hardware": hardware(),
        "world_size": str(world_size),
        **(extra or {}),
    }


def quiet_mlflow() -> None:
    """MLflow logs database migrations at INFO into the progress bar; keep only warnings.

    Importing MLflow resets its loggers' level, so import it first, then lower them. Its usage
    telemetry is off unless the user turns it on: ranks should not phone home mid-run, and
    many clusters are offline."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # reports read many
    import mlflow  # noqa: F401

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def open_client(uri: str) -> Any:
    """An MlflowClient for ``uri``, its SQLite database created atomically if it is new.

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
    return MlflowClient(tracking_uri=uri)


class MetricsSink:
    """Rank 0's end of the metrics pipe: ``log`` hands a step's metrics over and returns.

    The writer drains the pipe from a thread of its own from the moment it starts, so a send
    blocks only if the writer has fallen 64 KiB behind."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._broken = False

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._send(("metrics", step, int(time.time() * 1000), dict(metrics)))

    def close(self) -> None:
        """Say that every metric has been sent (the run finished on rank 0)."""
        self._send(("metrics_end",))

    def _send(self, message: tuple) -> None:
        # A dead writer must not take the training run down with it; its owner reports it.
        if not self._broken:
            try:
                self._conn.send(message)
            except OSError:
                self._broken = True


class RunWriter:
    """The process that owns one MLflow run; this object is its owner's handle.

    ``start()`` as early as possible, ``open()`` once the config is known, give ``sink`` to rank
    0, and ``end()`` with the outcome. Not picklable: only ``sink`` travels to rank 0."""

    def __init__(self, flush_seconds: float = 2.0) -> None:
        self._control, control_end = mp.Pipe()
        metrics_end, metrics_send = mp.Pipe(duplex=False)
        self.sink = MetricsSink(metrics_send)
        # A fresh interpreter with the two pipe ends as inherited descriptors: it starts at
        # once, and nothing of this process (threads, locks, the main module) comes along.
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
        self._process: subprocess.Popen | None = None
        self.run_id: str | None = None

    def start(self) -> RunWriter:
        fds = tuple(end.fileno() for end in self._child_ends)
        self._process = subprocess.Popen(self._args, pass_fds=fds, stdin=subprocess.DEVNULL)
        for end in self._child_ends:
            end.close()
        return self

    def open(
        self,
        uri: str,
        experiment: str,
        run_name: str | None,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        run_id: str | None = None,
    ) -> None:
        """Create the run (in the writer, asynchronously); with ``run_id``, reopen that existing
        run instead (``suite resume``: it is set RUNNING again, and ``params`` are not logged
        again), so what follows lands in it."""
        self._control.send(("open", uri, experiment, run_name, dict(params), dict(tags), run_id))

    def discard(self) -> None:
        """Stop a writer that was never given a run to open (the job did not start)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()

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
        ``status``; returns the run id once it is all written. Raises RuntimeError if the
        writer failed."""
        try:
            message = ("end", status, dict(summary or {}), dict(artifacts or {}), dict(tags or {}))
            self._control.send(message)
            if not self._control.poll(timeout):
                raise RuntimeError(f"the MLflow writer did not finish within {timeout:g} s")
            run_id, error = self._control.recv()
        except (EOFError, OSError):
            raise RuntimeError("the MLflow writer died before ending the run") from None
        finally:
            try:
                self._process.wait(5.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self.run_id = run_id
        if error:
            raise RuntimeError(f"MLflow tracking failed: {error}")
        return run_id


def _writer_main(control: Any, metrics: Any, owner: int, flush_seconds: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's; it ends the run
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so is SIGTERM (it reaches the group)
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

    def __init__(self, inbox: queue.Queue, owner: int, flush_seconds: float, reply: Any) -> None:
        self.inbox, self.owner, self.flush_seconds, self.reply = inbox, owner, flush_seconds, reply
        self.client: Any = None
        self.run_id: str | None = None
        self.pending: list[tuple] = []
        self.last_flush = time.monotonic()
        self.metrics_done = False

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
                    self._open(*item[1:])
                elif item[0] == "metrics":
                    self.pending.append(item[1:])
                elif item[0] == "metrics_end":
                    self.metrics_done = True
                elif item[0] == "end":
                    end = item
                if end and end[1] == "FINISHED" and not self.metrics_done:
                    # the two pipes are read apart: rank 0's last metrics may still be in
                    # flight behind the owner's "end"; they are all sent, so wait for them
                    self._drain_metrics()
                if self.client is not None and (
                    len(self.pending) >= 200
                    or time.monotonic() - self.last_flush >= self.flush_seconds
                ):
                    self._flush()
            _, status, summary, artifacts, tags = end
            if self.client is not None:
                self._finish(status, summary, artifacts, tags)
        except BaseException as err:  # report it, and never leave the run RUNNING
            error = f"{type(err).__name__}: {err}"
            if self.client is not None and self.run_id is not None:
                with contextlib.suppress(Exception):
                    self.client.set_terminated(self.run_id, "FAILED")
        with contextlib.suppress(OSError):  # the owner may be gone
            self.reply.send((self.run_id, error))

    def _next(self) -> tuple:
        """The next message; an owner that died without ending the run ends it FAILED."""
        while True:
            wait = max(0.05, self.flush_seconds - (time.monotonic() - self.last_flush))
            try:
                return self.inbox.get(timeout=min(wait, 1.0))
            except queue.Empty:
                if os.getppid() != self.owner:
                    error = "the process running the job died (killed?) before it ended"
                    return ("end", "FAILED", {}, {"error.txt": error}, {})
                if self.client is not None and self.pending and wait <= 1.0:
                    self._flush()

    def _drain_metrics(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.metrics_done and time.monotonic() < deadline:
            try:
                item = self.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if item[0] == "metrics":
                self.pending.append(item[1:])
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
    ) -> None:
        from mlflow.entities import Param

        self.client = client = open_client(uri)
        if run_id is not None:  # reopen (suite resume)
            client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
            return
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
        self.run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        items = [Param(k, str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])

    def _flush(self) -> None:
        from mlflow.entities import Metric

        rows = [
            Metric(k, float(v), stamp, step)
            for step, stamp, values in self.pending
            for k, v in values.items()
        ]
        for i in range(0, len(rows), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=rows[i : i + _MAX_METRICS_PER_BATCH])
        self.pending, self.last_flush = [], time.monotonic()

    def _finish(self, status: str, summary: dict, artifacts: dict, tags: dict) -> None:
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
        self._flush()
        if summary:
            summary = json_safe({**summary, "run_id": self.run_id})  # NaN is not JSON
            text = json.dumps(summary, indent=2, allow_nan=False)
            self.client.log_text(self.run_id, text, "summary.json")
        for name, text in artifacts.items():
            self.client.log_text(self.run_id, text, name)
        if tags:
            from mlflow.entities import RunTag

            items = [RunTag(k, str(v)) for k, v in tags.items()]
            self.client.log_batch(self.run_id, tags=items)
        self.client.set_terminated(self.run_id, status)


if __name__ == "__main__":  # the writer process: python -m suite.tracking CONTROL METRICS OWNER S
    from multiprocessing.connection import Connection

    _writer_main(
        Connection(int(sys.argv[1])),
        Connection(int(sys.argv[2]), writable=False),
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
