"""Shared helpers: run the CLI as a user would, in a scratch directory."""

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
