"""What MLflow tracking costs a smoke run: `suite run` with tracking against `--no-track`.

The same 300-step smoke job (the README's main job: allreduce_sgd, 4 ranks, digits) runs as a
user would run it, as a whole `python -m suite` process, alternating tracked and untracked so
machine noise hits both alike. The store is created before the first timed run, so the figure is
the steady cost of every tracked run, not the one-time creation of a new database (reported
apart as ``first_run_extra_s``). Target: tracked / untracked <= 1.05.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
from conftest import suite_cmd

TARGET = 1.05
ROUNDS = 3
JOB = ("run", "allreduce_sgd", "--nproc", "4", "--steps", "300", "--quiet")


def _timed(cwd: Path, *extra: str) -> float:
    start = time.perf_counter()
    proc = suite_cmd(*JOB, *extra, cwd=cwd)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    return elapsed


@pytest.mark.bench
def test_tracking_overhead_on_a_smoke_run(benchmark, tmp_path: Path) -> None:
    def measure() -> dict[str, object]:
        untracked = [_timed(tmp_path, "--no-track")]  # also warms the OS file cache
        first = _timed(tmp_path)  # creates mlflow.db
        tracked = []
        for _ in range(ROUNDS):
            tracked.append(_timed(tmp_path))
            untracked.append(_timed(tmp_path, "--no-track"))
        return {"tracked": tracked, "untracked": untracked[1:], "first": first}

    result = benchmark.pedantic(measure, rounds=1)
    tracked = statistics.median(result["tracked"])
    untracked = statistics.median(result["untracked"])
    ratio = tracked / untracked
    benchmark.extra_info.update(
        {
            "tracked_s": tracked,
            "untracked_s": untracked,
            "ratio": ratio,
            "first_run_extra_s": result["first"] - tracked,
        }
    )
    print(
        f"\nsmoke run: tracked {tracked:.2f} s, --no-track {untracked:.2f} s, ratio {ratio:.3f}"
        f" (target <= {TARGET}); creating a new store adds {result['first'] - tracked:.2f} s"
    )
    assert ratio <= TARGET
