"""MLflow tracking: one run per job, written by rank 0 alone.

Rank 0 owns a :class:`Tracker`. A background thread does every MLflow call (importing MLflow
and opening a SQLite store take seconds), so the training loop only appends to a queue. Metrics
go out with ``log_batch`` every ``flush_seconds`` and at the end, never one write per value.

A run always ends FINISHED or FAILED. Rank 0 ends it itself in normal cases; the local launcher
(:func:`mark_failed`) closes a run rank 0 could not close (rank 0 killed, Ctrl-C), using the run id
rank 0 writes to ``run_id_path`` as soon as the run exists.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import queue
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def run_tags(target: str, paper: str, world_size: int, extra: Mapping[str, str]) -> dict[str, str]:
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
        **extra,
    }


def quiet_mlflow() -> None:
    """MLflow logs database migrations at INFO into the progress bar; keep only warnings."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    """Rank 0's writer of one MLflow run."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str | None,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        run_id_path: str | None = None,
        flush_seconds: float = 10.0,
    ) -> None:
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.params, self.tags = dict(params), dict(tags)
        self.run_id_path, self.flush_seconds = run_id_path, flush_seconds
        self.run_id: str | None = None
        self._queue: queue.Queue[tuple] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="mlflow-writer", daemon=True)

    def start(self) -> Tracker:
        self._thread.start()
        return self

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Queue one step's metrics (returns at once)."""
        self._queue.put(("metrics", step, int(time.time() * 1000), dict(metrics)))

    def finish(
        self,
        status: str,
        summary: Mapping[str, Any] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> str | None:
        """Write what is queued, the artifacts, and end the run; returns the run id."""
        self._queue.put(("end", status, dict(summary or {}), dict(artifacts or {})))
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"MLflow tracking failed: {self._error}") from self._error
        return self.run_id

    # -- writer thread ---------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._serve()
        except BaseException as err:  # surfaced by finish(); the thread must not die silently
            self._error = err
            # Keep draining so finish() never blocks on a dead writer.
            while True:
                item = self._queue.get()
                if item[0] == "end":
                    break

    def _serve(self) -> None:
        quiet_mlflow()
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        exp = client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(self.experiment)
        run = client.create_run(exp_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run_id = run.info.run_id
        if self.run_id_path:
            Path(self.run_id_path).write_text(run_id)
        params = [Param(k, str(v)) for k, v in sorted(self.params.items())]
        for i in range(0, len(params), _MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[i : i + _MAX_PARAMS_PER_BATCH])

        pending: list[Any] = []
        last_flush = time.monotonic()

        def flush() -> None:
            nonlocal pending, last_flush
            for i in range(0, len(pending), _MAX_METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=pending[i : i + _MAX_METRICS_PER_BATCH])
            pending, last_flush = [], time.monotonic()

        status = "FAILED"
        try:
            while True:
                wait = max(0.05, self.flush_seconds - (time.monotonic() - last_flush))
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    item = None
                if item is not None and item[0] == "metrics":
                    _, step, stamp, metrics = item
                    pending.extend(Metric(k, float(v), stamp, step) for k, v in metrics.items())
                if item is not None and item[0] == "end":
                    _, status, summary, artifacts = item
                    flush()
                    if summary:
                        summary = {**summary, "run_id": run_id}
                        client.log_text(run_id, json.dumps(summary, indent=2), "summary.json")
                    for name, text in artifacts.items():
                        client.log_text(run_id, text, name)
                    break
                if pending and (
                    len(pending) >= _MAX_METRICS_PER_BATCH
                    or time.monotonic() - last_flush >= self.flush_seconds
                ):
                    flush()
        finally:
            client.set_terminated(run_id, status)


def close_failed(
    uri: str,
    run_id_path: str,
    error: str,
    *,
    experiment: str,
    run_name: str | None,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
) -> str:
    """After a failed job: end rank 0's run as FAILED if it is still RUNNING, or, if rank 0 died
    before creating it, record the run now (params, tags, FAILED). Either way the error text is
    stored as ``error.txt``. Returns the run id."""
    quiet_mlflow()
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        run_id = Path(run_id_path).read_text().strip()
    except OSError:
        run_id = ""
    if not run_id:
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
        run_id = client.create_run(exp_id, run_name=run_name, tags=dict(tags)).info.run_id
        items = [Param(k, str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])
    client.log_text(run_id, error, "error.txt")
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, "FAILED")
    return run_id
