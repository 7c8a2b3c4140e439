"""``suite reproduce PAPER``: run every recipe of a paper, check its claims, write its report.

``suite reproduce PAPER/LABEL`` runs one recipe (LABEL as in the registry: ``eventgrad/mnist``);
the report is still the paper's, the exit code that recipe's. A recipe whose data is missing
(a full profile without ``data_dir``, say) is reported once, with how to get the data, before any
run starts; the other recipes run, and the command exits 1. When no recipe at that profile has
its data (``--profile real`` without Fashion-MNIST, say), nothing can run: it stops there with
DataNotFoundError (the CLI's exit 2) before any run or rank starts.

Each run is its own ``suite run`` process (torch.distributed keeps global state, so repeated
jobs in one process are fragile), forked from a server process that has torch, the suite and
MLflow imported (multiprocessing's forkserver: a fresh interpreter would spend ~2 s importing
torch per run, and its MLflow writer ~2 s importing MLflow), tagged in MLflow with its recipe,
row, profile and a hash of its resolved config, and nested under one parent run per paper,
profile and code (``mlflow.parentRunId``), which holds the claims table and the report. A run
whose hash already has a FINISHED run in the store made by the same code (its ``suite.code``
fingerprint, see ``suite.tracking.code_state``), or a run that diverged (the same config
diverges again), is reused unless ``--force``; runs of other code are rerun unless
``--reuse-any-code``, and what was reused, from which commits, is said and written into the
report. One whose hash has a FAILED or KILLED run of the same code with a checkpoint is resumed
from it (``suite resume``) rather than started again. Reports go to ``out/reports/PAPER/``
(git-ignored) unless ``--out`` says otherwise, so the suite never dirties its own checkout;
``make reference-reports`` rebuilds the committed ones. A run that diverges is reported as such,
its claims fail, and the other runs go on. Every row's config is resolved before anything
starts, so a recipe naming an unknown algorithm or key fails at once (exit 2) with the valid
choices.

Stopping: an interrupted driver (Ctrl-C, SIGTERM, SIGHUP: the CLI sets :data:`STOP`) stops every
child it is running, whichever thread started it: SIGTERM (the child stops its ranks and ends its
run FAILED), SIGKILL after ``STOP_GRACE`` seconds. A child also gets SIGTERM if its driver dies
without a word (kill -9): it watches the driver itself (SUITE_DRIVER_PID, see
``cli._die_with_driver``).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite.config import RunConfig
from suite.errors import ConfigError
from suite.preflight import preflight_all
from suite.recipes import Recipe, Row, config_hash, recipes_of
from suite.registry import UnknownNameError
from suite.tasks.data import DataNotFoundError
from suite.tracking import WRITER_MODULES, mlflow_environment

REPORTS_DIR = Path("out") / "reports"  # in the working directory, next to ./mlflow.db
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
    """Run one tracked job as a ``suite run`` child and return its summary (the JSON line)."""
    cmd = ["run", target, "--json", "--quiet"]
    cmd += ["--tracking-uri", uri, "--experiment", experiment, "--run-name", run_name]
    for item in overrides:
        cmd += ["--set", item]
    for key, value in tags.items():
        cmd += ["--tag", f"{key}={value}"]
    cmd += list(extra_args)
    return _run_cli(cmd)


def resume_job(run_id: str, *, uri: str) -> dict[str, Any]:
    """Continue a FAILED or KILLED run from its checkpoint (``suite resume``); its summary."""
    cmd = ["resume", run_id, "--json", "--quiet"]
    return _run_cli([*cmd, "--tracking-uri", uri])


def _run_cli(argv: list[str]) -> dict[str, Any]:
    """Run the command ``suite ARGV`` as a child to its end (stopping it if the driver is
    interrupted meanwhile) and return its JSON line; JobFailed if it failed."""
    with tempfile.TemporaryDirectory(prefix="suite-child-") as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        out.touch()
        err.touch()
        env = {**os.environ, "SUITE_DRIVER_PID": str(os.getpid())}
        proc = _children().Process(target=_child_main, args=(argv, env, str(out), str(err)))
        proc.start()
        try:
            while proc.exitcode is None:
                proc.join(0.5)
                if proc.exitcode is None and STOP.is_set():  # interrupted (in another thread)
                    raise KeyboardInterrupt
        except BaseException:
            _stop_child(proc)
            raise
        code = proc.exitcode
        stdout, stderr = out.read_text(), err.read_text()
        proc.close()
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        raise JobFailed(code, stderr, _last_json(stdout))
    return json.loads(stdout.strip().splitlines()[-1])


# Children are forked from a server process that has torch, the suite and MLflow imported
# (multiprocessing's forkserver), not started as fresh interpreters: each would import torch
# again, about 2 s of CPU per run of a reproduction or a sweep, and its MLflow writer would
# import MLflow, 2 s more (the writer is forked from the run: tracking.WRITER_MODULES).
_PRELOAD = ["suite.cli", "suite.loop", "torch._dynamo", *WRITER_MODULES]


def _children() -> Any:
    if "forkserver" not in mp.get_all_start_methods():  # Windows: fresh interpreters
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    mlflow_environment()  # the server inherits it, and imports MLflow
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def start_children() -> None:
    """Start the fork server now, so its imports overlap the driver's own start (MLflow's)."""
    from multiprocessing import forkserver

    if _children().get_start_method() == "forkserver":
        forkserver.ensure_running()


def _child_main(argv: list[str], env: dict[str, str], out: str, err: str) -> None:
    """A ``suite`` command in a process forked from the server: the driver's environment, its
    output to the files the driver reads."""
    os.environ.clear()
    os.environ.update(env)  # SUITE_DRIVER_PID among them: see cli._die_with_driver
    for path, fd in ((out, 1), (err, 2)):
        opened = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = ["suite", *argv]
    from suite.cli import exit_now, main

    exit_now(main(argv))


def _stop_child(proc: Any) -> None:
    """SIGTERM (the child ends its run FAILED and exits 130), SIGKILL after ``STOP_GRACE``."""
    if proc.exitcode is None:
        proc.terminate()
    proc.join(STOP_GRACE)
    if proc.exitcode is None:
        proc.kill()
        proc.join()


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
    setup: str  # what actually runs: "digits/mlp, 4 ranks, 300 steps" (_setup)
    config: RunConfig  # resolved: the preflight's input

    @property
    def tags(self) -> dict[str, str]:
        return {
            "paper": self.recipe.paper,  # the reproduced paper, not the target's own
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


def _setup(cfg: RunConfig) -> str:
    """What a run trains, in a few words: the data and model may be a profile's stand-ins for
    the paper's (a recipe's label names the paper's task)."""
    ranks = f"{cfg.nproc} rank" + ("s" if cfg.nproc != 1 else "")
    return f"{cfg.dataset.name}/{cfg.model.name}, {ranks}, {cfg.length}"


def check_extra(extra: Sequence[str], instead: str) -> None:
    """Refuse a ``--set`` of the seed: a recipe sets each run's seed after ``extra``, so it
    would be ignored; ``instead`` says how the command chooses seeds."""
    for item in extra:
        if item.partition("=")[0].strip() == "seed":
            raise ConfigError(f"--set {item}: a recipe sets each run's seed itself; {instead}")


def plan(
    target: str, profile: str, seeds: Sequence[int] | None, extra: Sequence[str]
) -> list[PlannedRun]:
    """Every run of ``target`` (``PAPER`` or ``PAPER/LABEL``) at ``profile``, configs resolved
    (bad input raises here)."""
    check_extra(extra, "choose seeds with --seeds")
    if seeds and len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds {' '.join(map(str, seeds))} repeats a seed; give each once")
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
                runs.append(
                    PlannedRun(recipe, row, profile, seed, overrides, key, _setup(cfg), cfg)
                )
    return runs


def finished_runs(uri: str, experiment: str, code: str | None) -> dict[str, str]:
    """Config hash -> the code fingerprint of a FINISHED run in the store with that hash, or of
    one that diverged (a result too: the same config would diverge again); only runs of code
    ``code`` (all runs when None; runs stored before fingerprints count as code "unknown")."""
    from suite.tracking import open_client

    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = []
    for where in ("attributes.status = 'FINISHED'", "tags.`suite.diverged` = 'true'"):
        runs += client.search_runs([exp.experiment_id], filter_string=where, max_results=50000)
    found = {}
    for r in runs:
        key, made_by = (
            r.data.tags.get("suite.config_hash"),
            r.data.tags.get("suite.code", "unknown"),
        )
        if key is not None and (code is None or made_by == code):
            found[key] = made_by
    return found


def finished_hashes(uri: str, experiment: str, code: str | None = None) -> set[str]:
    """Config hashes with a reusable run (:func:`finished_runs`)."""
    return set(finished_runs(uri, experiment, code))


def resumable_runs(uri: str, experiment: str, code: str | None = None) -> dict[str, str]:
    """Config hash -> id of a FAILED or KILLED run with a checkpoint to resume (the newest),
    made by code ``code`` (any when None)."""
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
        if code is not None and r.data.tags.get("suite.code", "unknown") != code:
            continue  # other code: its checkpoint would mix two programs in one run
        if read_manifest(r.data.tags.get("suite.checkpoint_dir")) is not None:
            found[key] = r.info.run_id  # newer runs replace older ones
    return found


def reuse_note(reused: Mapping[str, int], code: str, any_code: bool) -> str:
    """What the report says about runs it did not run now: how many, from which code."""
    if not reused:
        return "Every run this command needed was run now, by this code."
    parts = [f"{n} by {'this code' if c == code else _short(c)}" for c, n in reused.items()]
    text = f"{sum(reused.values())} run(s) reused from the store: " + ", ".join(parts) + "."
    if any_code and any(c != code for c in reused):
        text += (
            " **Reused across code changes (`--reuse-any-code`)**: runs of other code are "
            f"reported as if this code ({_short(code)}) had made them."
        )
    return text


def _short(code: str) -> str:
    """A fingerprint for people: the commit's first 10 hex digits, plus any changes' hash."""
    sha, _, changes = code.partition("+")
    return f"commit {sha[:10]}" + (f" with local changes {changes}" if changes else "")


def reproduce(
    target: str,
    *,
    profile: str,
    uri: str,
    seeds: Sequence[int] | None = None,
    force: bool = False,
    extra: Sequence[str] = (),
    out_dir: Path | None = None,
    reuse_any_code: bool = False,
) -> int:
    """Run what is missing, check the claims, write the report; the exit code (0: every claim
    of ``target`` (``PAPER`` or ``PAPER/LABEL``) holds or fails as known, and no data is missing).
    """
    from reports.render import check_out_dir
    from suite.tracking import code_state

    paper, recipes = select(target)
    out_dir = out_dir or REPORTS_DIR / paper
    check_out_dir(out_dir)  # not after an hour of runs
    runs = plan(target, profile, seeds, extra)
    missing = missing_data(recipes, profile, extra)
    if missing and all(r.recipe.name in missing for r in runs):  # nothing can run: bad input
        raise DataNotFoundError(
            "\n".join(f"{name}: cannot run, its data is missing.\n{why}" for name, why in
                      missing.items())
            + f"\nno recipe of {target} at profile {profile!r} has its data; nothing was run"
        )  # fmt: skip
    for name, why in missing.items():  # once per recipe, before anything runs
        print(f"{name}: not run, its data is missing.\n{why}", file=sys.stderr)
    runs = [r for r in runs if r.recipe.name not in missing]
    preflight_all(r.config for r in runs)  # a batch too large, say: exit 2 before any run
    if runs:
        start_children()
    _, code = code_state()
    only = None if reuse_any_code else code
    done = {} if force else finished_runs(uri, paper, only)
    todo = [r for r in runs if r.hash not in done]
    reused: dict[str, int] = {}
    for r in runs:
        if r.hash in done:
            reused[done[r.hash]] = reused.get(done[r.hash], 0) + 1
    resumable = {} if force else resumable_runs(uri, paper, only)
    resumes = sum(r.hash in resumable for r in todo)
    print(
        f"{paper} ({profile}): {len(runs)} runs in {len({r.recipe.name for r in runs})} "
        f"recipe(s); {len(runs) - len(todo)} reused from the store"
        + (f" ({', '.join(f'{n} by {_short(c)}' for c, n in reused.items())})" if reused else "")
        + f", {len(todo)} to run"
        + (f" ({resumes} resumed from a checkpoint)" if resumes else ""),
        file=sys.stderr,
    )
    parent = _parent_run(uri, paper, profile, code)
    failed = 0
    status = "FAILED"
    try:
        announced = set()
        for i, run in enumerate(todo, 1):
            if (run.recipe.name, run.setup) not in announced:  # the task, once per recipe
                announced.add((run.recipe.name, run.setup))
                print(f"{run.recipe.key} at {profile}: {run.setup}", file=sys.stderr)
            if _run_one(i, len(todo), run, resumable, uri, paper, parent):
                failed += 1
        from reports.builder import build_report

        note = reuse_note(reused, code, reuse_any_code)
        report = build_report(paper, uri, out_dir, note=note)
        print(f"report: {report.out_dir / 'README.md'} (and report.html)", file=sys.stderr)
        chosen = {r.name for r in recipes}
        checked = {k: vs for k, vs in report.verdicts.items() if k[1] == profile and k[0] in chosen}
        for (recipe, _), verdicts in sorted(checked.items()):
            for v in verdicts:
                measured = f" ({v.detail})" if v.mean is None else f" (measured {v.mean:.4g})"
                print(f"  {v.label:>12}: {recipe}: {v.claim.describe()}{measured}")
                if v.known is not None and (v.is_known_failure or v.is_unexpected_pass):
                    print(f"{'':>16}known deviation: {v.known.reason} ({v.known.evidence})")
        _log_report(uri, parent, report, profile)
        if failed:
            print(f"{failed} run(s) failed", file=sys.stderr)
        if missing:
            print(f"{len(missing)} recipe(s) not run, data missing: {', '.join(missing)}",
                  file=sys.stderr)  # fmt: skip
        status = "FINISHED"
        if failed or missing:
            return 1
        # as Report.all_hold, over the chosen recipes: some ran, none fails (known aside)
        hold = checked and not any(v.counts_as_failure for vs in checked.values() for v in vs)
        return 0 if hold else 1
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _end_parent(uri, parent, status)


def _run_one(
    i: int,
    n: int,
    run: PlannedRun,
    resumable: Mapping[str, str],
    uri: str,
    paper: str,
    parent: str | None,
) -> bool:
    """Run (or resume) one planned run, nested under ``parent``; True if it failed."""
    label = f"[{i}/{n}] {run.recipe.key} | {run.row.label} | seed {run.seed}"
    print(f"{label} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    tags = run.tags if parent is None else {**run.tags, "mlflow.parentRunId": parent}
    try:
        if run.hash in resumable:
            summary = resume_job(resumable[run.hash], uri=uri)
        else:
            summary = run_job(
                run.row.target,
                run.overrides,
                uri=uri,
                experiment=paper,
                tags=tags,
                run_name=f"{run.row.label} s{run.seed} local",
            )
    except JobFailed as err:
        if err.diverged:  # its claims fail in the report; the other rows still run
            s = err.summary
            print(
                f"{label} DIVERGED at step {s.get('diverged_step')} on rank "
                f"{s.get('diverged_rank')} (non-finite {s.get('diverged_what')})",
                file=sys.stderr,
            )
        else:
            print(f"{label} FAILED\n{err}", file=sys.stderr)
        return True
    acc = summary.get("test_accuracy")
    print(
        f"{label}: accuracy {acc:.4f}, {summary.get('wire_bytes', math.nan) / 1e6:.2f} MB "
        f"on the wire ({summary['bytes_sent'] / 1e6:.2f} MB payload), "
        f"{time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    return False


def _parent_run(uri: str, paper: str, profile: str, code: str) -> str | None:
    """The MLflow parent run of ``paper`` at ``profile`` for this code: found again (set
    RUNNING) or created. None, with a warning, if the store cannot take it (the runs go on)."""
    from suite.tracking import driver_parent_run, ensure_experiment, open_client, source_tags

    try:
        client = open_client(uri)
        exp_id = ensure_experiment(client, paper, uri)
        query = (
            f"tags.`suite.kind` = 'reproduce' and tags.`suite.profile` = '{profile}' "
            f"and tags.`suite.code` = '{code}'"
        )
        tags = {
            **source_tags(f"suite reproduce {paper}"),
            "suite.kind": "reproduce",
            "suite.profile": profile,
            "paper": paper,
        }
        return driver_parent_run(client, exp_id, query, f"{paper} {profile} reproduction", tags)
    except Exception as err:  # tracking trouble must not stop the reproduction
        print(f"warning: no MLflow parent run for {paper}: {err}", file=sys.stderr)
        return None


def _log_report(uri: str, parent: str | None, report: Any, profile: str) -> None:
    """The claims table (claims.csv) and the report (README.md, report.html, figures/) as
    the parent run's artifacts: the figures sit with the runs they describe."""
    if parent is None:
        return
    from suite.tracking import open_client

    rows = ["recipe,profile,claim,verdict,measured,detail"]
    for (recipe, prof), verdicts in sorted(report.verdicts.items()):
        for v in verdicts:
            cells = [recipe, prof, v.claim.describe(), v.label, v.mean, v.detail]
            rows.append(",".join(_csv(c) for c in cells))
    try:
        client = open_client(uri)
        client.log_text(parent, "\n".join(rows) + "\n", "claims.csv")
        for name in ("README.md", "report.html"):
            if (report.out_dir / name).is_file():
                client.log_artifact(parent, str(report.out_dir / name), "report")
        if (report.out_dir / "figures").is_dir():
            client.log_artifacts(parent, str(report.out_dir / "figures"), "report/figures")
        client.set_tag(parent, "suite.claims_hold", str(report.all_hold(profile)).lower())
    except Exception as err:
        print(f"warning: could not log the report to MLflow parent run: {err}", file=sys.stderr)


def _csv(value: Any) -> str:
    text = "" if value is None else str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _end_parent(uri: str, parent: str | None, status: str) -> None:
    if parent is None:
        return
    from suite.tracking import open_client

    try:
        open_client(uri).set_terminated(parent, status)
    except Exception as err:
        print(f"warning: could not end MLflow parent run {parent}: {err}", file=sys.stderr)
