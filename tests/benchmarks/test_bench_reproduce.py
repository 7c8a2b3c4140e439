"""A reproduction's runs: each is a ``suite run`` child forked from the driver's fork server
(torch, the suite and MLflow already imported, ``suite.reproduce._run_cli``), not a fresh
interpreter, and forks its MLflow writer. Measured side by side against the same ``suite run``
as a fresh ``python -m suite`` process, whose writer is a fresh interpreter too."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from suite import reproduce


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


RUN_JOB_TARGET = 0.7  # a reproduction's run, forked from its server / as a fresh interpreter


@pytest.mark.bench
def test_a_reproductions_run_forks_from_its_server_faster_than_a_fresh_process(
    benchmark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One tracked run the size of a smoke reproduction's (4 ranks, 300 steps, an evaluation
    every 25) as ``suite reproduce`` starts it (``run_job``: forked from the fork server that has
    torch imported) and as a fresh
    ``python -m suite run`` with the same arguments, in alternate rounds; the ratio of their
    median wall times. Measured: 0.72 (4.05 s against 5.66 s) when the forked run still started
    its MLflow writer as a fresh interpreter, 0.58 (3.19 s against 5.54 s) since it forks it
    (a808f74). Each run ends by ``exit_now`` either way."""
    monkeypatch.chdir(tmp_path)  # the forked child's working directory is the driver's
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = ["nproc=4", "steps=300", "eval_every=25"]  # a smoke reproduction's run
    common = dict(uri=uri, experiment="bench", tags={}, run_name="bench")
    fresh_argv = [sys.executable, "-m", "suite", "run", "allreduce_sgd", "--json", "--quiet"]
    fresh_argv += ["--tracking-uri", uri, "--experiment", "bench"]
    for item in sets:
        fresh_argv += ["--set", item]
    reproduce.start_children()
    times: dict[str, list[float]] = {"forked": [], "fresh": []}

    def both() -> None:
        for name in ("forked", "fresh") if len(times["forked"]) % 2 else ("fresh", "forked"):
            t0 = time.perf_counter()
            if name == "forked":
                assert reproduce.run_job("allreduce_sgd", sets, **common)["steps"] == 300
            else:
                done = subprocess.run(fresh_argv, cwd=tmp_path, env=_env(), capture_output=True)
                assert done.returncode == 0, done.stderr
            times[name].append(time.perf_counter() - t0)

    benchmark.pedantic(both, rounds=6, warmup_rounds=1)
    forked, fresh = (statistics.median(times[n][1:]) for n in ("forked", "fresh"))
    ratio = forked / fresh
    benchmark.extra_info.update(forked_s=forked, fresh_s=fresh, ratio=ratio)
    print(f"\nrun_job forked {forked:.2f} s, fresh process {fresh:.2f} s: ratio {ratio:.2f}")
    assert ratio <= RUN_JOB_TARGET
