"""``suite reproduce PAPER``: run every recipe of a paper, check its claims, write its report.

Each run is its own ``suite run`` process (torch.distributed keeps global state, so repeated jobs
in one process are fragile), tagged in MLflow with its recipe, row, profile and a hash of its
resolved config. A run whose hash already has a FINISHED run in the store is skipped unless
``--force``. Every row's config is resolved before anything starts, so a recipe naming an
unknown algorithm or key fails at once (exit 2) with the valid choices.

Stopping: an interrupted driver (Ctrl-C, SIGTERM, SIGHUP: the CLI sets :data:`STOP`) stops every
child it is running, whichever thread started it: SIGTERM (the child stops its ranks and ends its
run FAILED), SIGKILL after ``STOP_GRACE`` seconds. A child also gets SIGTERM if its driver dies
without a word (kill -9): it asks for that itself (SUITE_DRIVER_PID, see ``cli._die_with_driver``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite.recipes import Recipe, Row, config_hash, recipes_of

REPORTS_DIR = Path(__file__).resolve().parents[1] / "reports"
STOP = threading.Event()  # set when the driver is interrupted: every run_job stops its child
STOP_GRACE = 30.0  # seconds a stopped child gets to end its run before it is killed


class JobFailed(RuntimeError):
    """A ``suite run`` child exited non-zero; carries its exit code and the end of its stderr."""

    def __init__(self, code: int, stderr: str) -> None:
        self.code = code
        tail = "\n".join(stderr.strip().splitlines()[-25:])
        super().__init__(f"run exited with code {code}:\n{tail}")


def run_job(
    target: str,
    overrides: Sequence[str],
    *,
    uri: str,
    experiment: str,
    tags: Mapping[str, str],
    run_name: str,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Run one tracked job as ``python -m suite run`` and return its summary (the JSON line)."""
    cmd = [sys.executable, "-m", "suite", "run", target, "--json", "--quiet"]
    cmd += ["--tracking-uri", uri, "--experiment", experiment, "--run-name", run_name]
    for item in overrides:
        cmd += ["--set", item]
    for key, value in tags.items():
        cmd += ["--tag", f"{key}={value}"]
    cmd += list(extra_args)
    env = {**os.environ, "SUITE_DRIVER_PID": str(os.getpid())}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while True:
            try:
                stdout, stderr = proc.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if STOP.is_set():  # the driver was interrupted (in another thread)
                    raise KeyboardInterrupt from None
    except BaseException:
        _stop_child(proc)
        raise
    if proc.returncode == 130:
        raise KeyboardInterrupt
    if proc.returncode != 0:
        raise JobFailed(proc.returncode, stderr)
    return json.loads(stdout.strip().splitlines()[-1])


def _stop_child(proc: subprocess.Popen) -> None:
    """SIGTERM (the child ends its run FAILED and exits 130), SIGKILL after ``STOP_GRACE``."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.communicate(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


@dataclass(frozen=True)
class PlannedRun:
    recipe: Recipe
    row: Row
    profile: str
    seed: int
    overrides: tuple[str, ...]
    hash: str

    @property
    def tags(self) -> dict[str, str]:
        return {
            "suite.recipe": self.recipe.name,
            "suite.row": self.row.label,
            "suite.profile": self.profile,
            "suite.config_hash": self.hash,
        }


def plan(
    paper: str, profile: str, seeds: Sequence[int] | None, extra: Sequence[str]
) -> list[PlannedRun]:
    """Every run of ``paper`` at ``profile``, configs resolved (bad input raises here)."""
    runs = []
    recipes = recipes_of(paper)
    if not any(profile in r.profiles for r in recipes):
        recipes[0].profile(profile)  # ConfigError naming the profiles there are
    for recipe in recipes:
        if profile not in recipe.profiles:
            continue  # e.g. a full-only recipe at smoke: its claims are not testable there
        chosen = tuple(seeds) if seeds else recipe.profile(profile).seeds
        for row in recipe.rows_at(profile):
            for seed in chosen:
                cfg = recipe.resolve(row, profile, seed, extra)
                key = config_hash(f"{recipe.name}|{row.label}|{profile}|{row.target}", cfg)
                overrides = tuple(recipe.overrides(row, profile, seed, extra))
                runs.append(PlannedRun(recipe, row, profile, seed, overrides, key))
    return runs


def finished_hashes(uri: str, experiment: str) -> set[str]:
    """Config hashes with a FINISHED run in the store."""
    from suite.tracking import open_client

    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return set()
    runs = client.search_runs(
        [exp.experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=50000
    )
    return {r.data.tags["suite.config_hash"] for r in runs if "suite.config_hash" in r.data.tags}


def reproduce(
    paper: str,
    *,
    profile: str,
    uri: str,
    seeds: Sequence[int] | None = None,
    force: bool = False,
    extra: Sequence[str] = (),
    out_dir: Path | None = None,
) -> int:
    """Run what is missing, check the claims, write the report; the exit code (0: all hold)."""
    runs = plan(paper, profile, seeds, extra)
    done = set() if force else finished_hashes(uri, paper)
    todo = [r for r in runs if r.hash not in done]
    print(
        f"{paper} ({profile}): {len(runs)} runs in {len({r.recipe.name for r in runs})} "
        f"recipe(s); {len(runs) - len(todo)} already finished in {uri}, {len(todo)} to run",
        file=sys.stderr,
    )
    failed = 0
    for i, run in enumerate(todo, 1):
        label = f"[{i}/{len(todo)}] {run.recipe.key} | {run.row.label} | seed {run.seed}"
        print(f"{label} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            summary = run_job(
                run.row.target,
                run.overrides,
                uri=uri,
                experiment=paper,
                tags=run.tags,
                run_name=f"{run.row.label} s{run.seed}",
            )
        except JobFailed as err:
            failed += 1
            print(f"{label} FAILED\n{err}", file=sys.stderr)
            continue
        acc = summary.get("test_accuracy")
        print(
            f"{label}: accuracy {acc:.4f}, {summary['bytes_sent'] / 1e6:.2f} MB sent, "
            f"{time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
    from reports.builder import build_report

    report = build_report(paper, uri, out_dir or REPORTS_DIR / paper)
    print(f"report: {report.out_dir / 'README.md'} (and report.html)", file=sys.stderr)
    for (recipe, prof), verdicts in sorted(report.verdicts.items()):
        if prof != profile:
            continue
        for v in verdicts:
            measured = "" if v.mean is None else f" (measured {v.mean:.4g})"
            print(f"  {v.verdict:>12}: {recipe}: {v.claim.describe()}{measured}")
    if failed:
        print(f"{failed} run(s) failed", file=sys.stderr)
        return 1
    return 0 if report.all_hold(profile) else 1
