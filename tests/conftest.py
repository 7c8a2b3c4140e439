"""Shared helpers: run the CLI as a user would, in a scratch directory; keep what a run logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def suite_cmd(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``python -m suite ARGS`` in ``cwd``; returns the finished process (never raises on rc).

    The caller's MLFLOW_TRACKING_URI is dropped so runs land in ``cwd`` unless ``env`` says."""
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", "suite", *args],
        cwd=cwd,
        env={**base, "PYTHONUNBUFFERED": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json(stdout: str) -> dict:
    """The final JSON line of ``suite run --json`` output."""
    return json.loads(stdout.strip().splitlines()[-1])


class KeptMetrics:
    """Stands in for rank 0's MetricsSink (suite.tracking): keeps what the loop logs, in order."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log(self, step: int, metrics: dict) -> None:
        self.logged.append((step, dict(metrics)))

    def log_steps(self, steps: list[tuple[int, dict]]) -> None:
        for step, metrics in steps:
            self.log(step, metrics)

    def close(self) -> None:
        pass

    def by_step(self) -> dict[int, dict]:
        """Every metric logged at each step (rows and evaluations merged)."""
        rows: dict[int, dict] = {}
        for step, metrics in self.logged:
            rows.setdefault(step, {}).update(metrics)
        return rows

    def series(self, name: str) -> dict[int, float]:
        """One metric by step."""
        return {step: m[name] for step, m in self.by_step().items() if name in m}
