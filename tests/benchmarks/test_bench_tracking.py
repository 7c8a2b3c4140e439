"""What MLflow tracking costs a smoke run: `suite run` with tracking against `--no-track`.

The same 300-step smoke job (the README's main job: allreduce_sgd, 4 ranks, digits) runs as a
user would run it, as a whole `python -m suite` process, alternating tracked and untracked so
machine noise hits both alike. The store is created before the first timed run, so the figure is
the steady cost of every tracked run, not the one-time creation of a new database (reported
apart as ``first_run_extra_s``). Target: tracked / untracked <= 1.05. It also reports the CPU
seconds of every process (the job, its ranks, the MLflow writer), which load distorts less.

Where a tracked run's extra seconds go: the writer's own CPU, about 2.2 s, of which importing
MLflow is 1.7-1.9 s (its package imports pandas, genai and the artifact stack, whatever is
used), opening the store and creating the run 0.3 s, system metrics and 300 steps of metrics
0.1 s; ending the run (final metrics, artifacts) takes 0.3 s of wall time after the ranks
finish. The import runs while the job imports torch and its ranks start, so on an idle 2-core
machine it can use capacity the job leaves idle (the job averages under one core); under load
every CPU-second counts, and the ratio follows the CPU seconds. Until the writer stopped
importing torch to unpickle the run's tags it spent 1.5 CPU-s more. Measured on the shared
2-core machine at load average 12-15 (five interleaved rounds, medians): tracked 22.3 s and
8.96 CPU-s against 14.5 s and 6.35 CPU-s untracked (ratio 1.54); with the torch import, 26.8 s
and 10.50 CPU-s (ratio 1.86). One interleaved pair at load 0.3, with the torch import: 7.08 s
tracked against 6.98 s.
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import pytest
from conftest import suite_cmd

TARGET = 1.05
ROUNDS = 3
JOB = ("run", "allreduce_sgd", "--nproc", "4", "--steps", "300", "--quiet")


def _cpu_seconds() -> float:
    """CPU seconds of every finished child process tree (the job, its ranks, the writer)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _timed(cwd: Path, *extra: str, cpu: list[float] | None = None) -> float:
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    proc = suite_cmd(*JOB, *extra, cwd=cwd)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    if cpu is not None:
        cpu.append(_cpu_seconds() - cpu_start)
    return elapsed


@pytest.mark.bench
def test_tracking_overhead_on_a_smoke_run(benchmark, tmp_path: Path) -> None:
    def measure() -> dict[str, object]:
        untracked = [_timed(tmp_path, "--no-track")]  # also warms the OS file cache
        first = _timed(tmp_path)  # creates mlflow.db
        tracked, cpu = [], {"tracked": [], "untracked": []}
        for _ in range(ROUNDS):
            tracked.append(_timed(tmp_path, cpu=cpu["tracked"]))
            untracked.append(_timed(tmp_path, "--no-track", cpu=cpu["untracked"]))
        return {"tracked": tracked, "untracked": untracked[1:], "first": first, "cpu": cpu}

    result = benchmark.pedantic(measure, rounds=1)
    tracked = statistics.median(result["tracked"])
    untracked = statistics.median(result["untracked"])
    ratio = tracked / untracked
    # CPU seconds, which the machine's load distorts less than wall time: MLflow's own cost
    cpu_tracked = statistics.median(result["cpu"]["tracked"])
    cpu_untracked = statistics.median(result["cpu"]["untracked"])
    benchmark.extra_info.update(
        {
            "tracked_s": tracked,
            "untracked_s": untracked,
            "ratio": ratio,
            "first_run_extra_s": result["first"] - tracked,
            "tracked_cpu_s": cpu_tracked,
            "untracked_cpu_s": cpu_untracked,
        }
    )
    print(
        f"\nsmoke run: tracked {tracked:.2f} s, --no-track {untracked:.2f} s, ratio {ratio:.3f}"
        f" (target <= {TARGET}); creating a new store adds {result['first'] - tracked:.2f} s;"
        f" CPU seconds tracked {cpu_tracked:.2f}, --no-track {cpu_untracked:.2f}"
    )
    assert ratio <= TARGET
