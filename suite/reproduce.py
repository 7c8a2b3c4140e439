"""``suite reproduce PAPER``: run every recipe of a paper, check its claims, write its report.

``suite reproduce PAPER/LABEL`` runs one recipe (LABEL as in the registry: ``eventgrad/mnist``);
the report is still the paper's, the exit code that recipe's. A recipe whose data is missing
(a full profile without ``data_dir``, say) is reported once, with how to get the data, before any
run starts; the other recipes run, and the command exits 1.

Each run is its own ``suite run`` process (torch.distributed keeps global state, so repeated jobs
in one process are fragile), tagged in MLflow with its recipe, row, profile and a hash of its
resolved config. A run whose hash already has a FINISHED run in the store (or a run that
diverged: the same config diverges again) is skipped unless ``--force``; one whose hash has a
FAILED or KILLED run with a checkpoint is resumed from it (``suite resume``) rather than started
again. A run that diverges is reported as such, its claims fail, and the other runs go on. Every
row's config is resolved before anything starts, so a recipe naming an unknown algorithm or key
fails at once (exit 2) with the valid choices.

Stopping: an interrupted driver (Ctrl-C, SIGTERM, SIGHUP: the CLI sets :data:`STOP`) stops every
child it is running, whichever thread started it: SIGTERM (the child stops its ranks and ends its
run FAILED), SIGKILL after ``STOP_GRACE`` seconds. A child also gets SIGTERM if its driver dies
without a word (kill -9): it asks for that itself (SUITE_DRIVER_PID, see ``cli._die_with_driver``).
"""

from __future__ import annotations

import json
import math
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
from suite.registry import UnknownNameError
from suite.tasks.data import DataNotFoundError

REPORTS_DIR = Path(__file__).resolve().parents[1] / "reports"
STOP = threading.Event()  # set when the driver is interrupted: every run_job stops its child
STOP_GRACE = 30.0  # seconds a stopped child gets to end its run before it is killed


class JobFailed(RuntimeError):
    """A ``suite run`` child exited non-zero; carries its exit code, the end of its stderr and
    its JSON line if it printed one (a run that diverged does: ``diverged_step`` ...)."""

    def __init__(self, code: int, stderr: str, summary: dict[str, Any] | None = None) -> None:
        self.code, self.summary = code, summary or {}
        tail = "\n".join(stderr.strip().splitlines()[-25:])
        super().__init__(f"run exited with code {code}:\n{tail}")

    @property
    def diverged(self) -> bool:
        """The run stopped on a non-finite loss or parameter (a result, not a crash)."""
        return self.summary.get("diverged") is True


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
    return _run_cli(cmd)


def resume_job(run_id: str, *, uri: str) -> dict[str, Any]:
    """Continue a FAILED or KILLED run from its checkpoint (``suite resume``); its summary."""
    cmd = [sys.executable, "-m", "suite", "resume", run_id, "--json", "--quiet"]
    return _run_cli([*cmd, "--tracking-uri", uri])


def _run_cli(cmd: list[str]) -> dict[str, Any]:
    """Run a ``suite`` child to its end (stopping it if the driver is interrupted meanwhile)
    and return its JSON line; JobFailed if it failed."""
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
        raise JobFailed(proc.returncode, stderr, _last_json(stdout))
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


def _last_json(stdout: str) -> dict[str, Any] | None:
    """The JSON line a failed run may still have printed, else None."""
    lines = stdout.strip().splitlines()
    try:
        line = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return line if isinstance(line, dict) else None


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


def select(target: str) -> tuple[str, list[Recipe]]:
    """``(paper, recipes)`` of ``PAPER`` (all its recipes) or ``PAPER/LABEL`` (that one);
    an unknown label raises UnknownNameError listing the paper's recipes."""
    paper, _, label = target.partition("/")
    recipes = recipes_of(paper)
    if not label:
        return paper, recipes
    chosen = [r for r in recipes if r.name == target]
    if not chosen:
        raise UnknownNameError(f"recipe of {paper}", target, [r.name for r in recipes])
    return paper, chosen


def missing_data(recipes: Sequence[Recipe], profile: str, extra: Sequence[str]) -> dict[str, str]:
    """Recipe name -> why its data is missing and how to get it, for the recipes at
    ``profile`` whose datasets' checks fail (the launcher's check, run before any process)."""
    from suite.registry import DATASETS

    missing = {}
    for recipe in recipes:
        if profile not in recipe.profiles:
            continue
        for row in recipe.rows_at(profile):
            cfg = recipe.resolve(row, profile, 0, extra)
            check = DATASETS.get(cfg.dataset.name).meta.get("check")
            try:
                if check is not None:
                    check(cfg.data_dir)
            except DataNotFoundError as err:
                missing[recipe.name] = str(err)
                break
    return missing


def plan(
    target: str, profile: str, seeds: Sequence[int] | None, extra: Sequence[str]
) -> list[PlannedRun]:
    """Every run of ``target`` (``PAPER`` or ``PAPER/LABEL``) at ``profile``, configs resolved
    (bad input raises here)."""
    runs = []
    _, recipes = select(target)
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
    """Config hashes with a FINISHED run in the store, or one that diverged (a result too:
    the same config would diverge again)."""
    from suite.tracking import open_client

    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return set()
    runs = []
    for where in ("attributes.status = 'FINISHED'", "tags.`suite.diverged` = 'true'"):
        runs += client.search_runs([exp.experiment_id], filter_string=where, max_results=50000)
    return {r.data.tags["suite.config_hash"] for r in runs if "suite.config_hash" in r.data.tags}


def resumable_runs(uri: str, experiment: str) -> dict[str, str]:
    """Config hash -> id of a FAILED or KILLED run with a checkpoint to resume (the newest)."""
    from suite.checkpoint import read_manifest
    from suite.tracking import open_client

    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="attributes.status != 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        max_results=50000,
    )
    found = {}
    for r in runs:
        key = r.data.tags.get("suite.config_hash")
        if r.info.status not in ("FAILED", "KILLED") or key is None:
            continue
        if r.data.tags.get("suite.diverged") == "true":
            continue  # it would diverge again
        if read_manifest(r.data.tags.get("suite.checkpoint_dir")) is not None:
            found[key] = r.info.run_id  # newer runs replace older ones
    return found


def reproduce(
    target: str,
    *,
    profile: str,
    uri: str,
    seeds: Sequence[int] | None = None,
    force: bool = False,
    extra: Sequence[str] = (),
    out_dir: Path | None = None,
) -> int:
    """Run what is missing, check the claims, write the report; the exit code (0: every claim
    of ``target`` (``PAPER`` or ``PAPER/LABEL``) holds or fails as known, and no data is missing).
    """
    paper, recipes = select(target)
    runs = plan(target, profile, seeds, extra)
    missing = missing_data(recipes, profile, extra)
    for name, why in missing.items():  # once per recipe, before anything runs
        print(f"{name}: not run, its data is missing.\n{why}", file=sys.stderr)
    runs = [r for r in runs if r.recipe.name not in missing]
    done = set() if force else finished_hashes(uri, paper)
    todo = [r for r in runs if r.hash not in done]
    resumable = {} if force else resumable_runs(uri, paper)
    resumes = sum(r.hash in resumable for r in todo)
    print(
        f"{paper} ({profile}): {len(runs)} runs in {len({r.recipe.name for r in runs})} "
        f"recipe(s); {len(runs) - len(todo)} already finished in {uri}, {len(todo)} to run"
        + (f" ({resumes} resumed from a checkpoint)" if resumes else ""),
        file=sys.stderr,
    )
    failed = 0
    for i, run in enumerate(todo, 1):
        label = f"[{i}/{len(todo)}] {run.recipe.key} | {run.row.label} | seed {run.seed}"
        print(f"{label} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            if run.hash in resumable:
                summary = resume_job(resumable[run.hash], uri=uri)
            else:
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
            if err.diverged:  # its claims fail in the report; the other rows still run
                s = err.summary
                print(
                    f"{label} DIVERGED at step {s.get('diverged_step')} on rank "
                    f"{s.get('diverged_rank')} (non-finite {s.get('diverged_what')})",
                    file=sys.stderr,
                )
            else:
                print(f"{label} FAILED\n{err}", file=sys.stderr)
            continue
        acc = summary.get("test_accuracy")
        print(
            f"{label}: accuracy {acc:.4f}, {summary.get('wire_bytes', math.nan) / 1e6:.2f} MB "
            f"on the wire ({summary['bytes_sent'] / 1e6:.2f} MB payload), "
            f"{time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
    from reports.builder import build_report

    report = build_report(paper, uri, out_dir or REPORTS_DIR / paper)
    print(f"report: {report.out_dir / 'README.md'} (and report.html)", file=sys.stderr)
    chosen = {r.name for r in recipes}
    checked = {k: vs for k, vs in report.verdicts.items() if k[1] == profile and k[0] in chosen}
    for (recipe, _), verdicts in sorted(checked.items()):
        for v in verdicts:
            measured = f" ({v.detail})" if v.mean is None else f" (measured {v.mean:.4g})"
            print(f"  {v.label:>12}: {recipe}: {v.claim.describe()}{measured}")
            if v.known is not None and (v.is_known_failure or v.is_unexpected_pass):
                print(f"{'':>16}known deviation: {v.known.reason} ({v.known.evidence})")
    if failed:
        print(f"{failed} run(s) failed", file=sys.stderr)
    if missing:
        print(f"{len(missing)} recipe(s) not run, data missing: {', '.join(missing)}",
              file=sys.stderr)  # fmt: skip
    if failed or missing:
        return 1
    # as Report.all_hold, over the chosen recipes: some ran, none fails (known deviations aside)
    return (
        0 if checked and not any(v.counts_as_failure for vs in checked.values() for v in vs) else 1
    )
