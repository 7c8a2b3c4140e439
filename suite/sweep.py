"""``suite sweep RECIPE --space NAME``: an Optuna study over a recipe's search space (one knob or
several).

The driver (this process) owns the study; every trial is its own ``suite run`` job, tagged in
MLflow with the study and trial number and nested under one parent run that summarises the
study. Storage persists (a SQLite file by default; any database URL lets several machines share
a study), so an interrupted study resumes, and several drivers may work on one study at once.
Every driver runs trials until the study has ``--trials`` finished (complete or pruned) trials;
when the rest are running in other drivers it waits for them, so it can take over any whose
driver dies.

A driver shows it is alive through Optuna's storage heartbeats: while a trial runs, a thread
of its driver records a heartbeat every ``SUITE_SWEEP_HEARTBEAT`` seconds (default 10). A
RUNNING trial with no heartbeat for ``SUITE_SWEEP_GRACE`` seconds (default 60) has lost its
driver (killed, crashed, machine gone): the next driver that looks (before each trial, and while
it waits) marks it FAIL, marks its MLflow run FAILED with a note, and queues the same point again
as a new trial (Optuna's ``RetryHeartbeatStaleTrialCallback``), which gets its own MLflow run. So
after ``kill -9`` of a driver, resuming the study recovers its trial within the grace period. A
driver whose own trial was failed that way (its heartbeats stalled for longer than the grace
period) logs it, drops the result and carries on. Drivers of one study should share the settings.
A ``suite run`` job that outlives its killed driver is refused by the study at its next pruning
report; if it still ends its MLflow run FINISHED, the next driver (at start and at its end) sets
every run of a FAIL trial that is RUNNING or FINISHED to FAILED, so MLflow follows Optuna.

The study's parent MLflow run is set RUNNING by every driver and ended (FINISHED, or KILLED on
Ctrl-C) by a driver that stops when no trial of the study is RUNNING; a driver that stops while
another still runs a trial only logs its summary and leaves the ending to that one.

Drivers starting trials at the same moment may overshoot ``--trials`` by a trial each: Optuna has
no atomic "ask if fewer than N", and an extra finished trial does no harm.

A single-objective space prunes: rank 0 of the trial reports test accuracy to the study at each
evaluation (:class:`OptunaPruner`) and the whole job stops when Optuna's median pruner says so.
Two objectives (accuracy, bytes) give a Pareto study; Optuna does not prune those.

Optuna's conventions: the study names its objectives (``set_metric_names``: optuna-dashboard
shows ``test_accuracy``, not "Objective 0"), each trial's user attribute ``mlflow_run_id`` names
its MLflow run and the study's ``mlflow_parent_run_id`` its parent run. A trial that draws the
parameters of a finished trial (small discrete spaces do) is not run again: it takes that trial's
values (or is pruned like it), with user attribute ``duplicate_of`` (Optuna's FAQ way).

A trial whose run diverges (non-finite loss or parameters; its MLflow run is FAILED with tag
``suite.diverged``) ends PRUNED, with user attribute ``diverged_step``: Optuna's TPE sampler then
counts it among the worst trials and steers away from its settings, whereas it would ignore a
FAIL trial. Any other failed run leaves its trial FAIL and the study goes on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite.errors import ConfigError, unwritable_folder
from suite.periodic import repeating
from suite.preflight import preflight
from suite.recipes import Recipe, Space, config_hash
from suite.reproduce import JobFailed, check_extra, run_job, start_children
from suite.tracking import (
    driver_parent_run,
    ensure_experiment,
    open_client,
    patiently,
    sql_dialect,
    without_password,
)

DEFAULT_STORAGE = "sqlite:///optuna.db"
OWNER_ATTR = "suite.space"  # the study's RECIPE:SPACE:PROFILE
STORAGE_FORMS = (
    "sqlite:///PATH (a file; sqlite:////ABS/PATH), postgresql://USER:PASSWORD@HOST/DB, "
    "mysql://USER:PASSWORD@HOST/DB (any SQLAlchemy database URL whose driver is installed)"
)
# Seconds between a running trial's heartbeats, and without one before its driver counts as gone.
HEARTBEAT_S, GRACE_S = 10, 60
MAX_RETRY = 3  # a trial whose driver died is run again at most this many times
OPTUNA_STORE = "the Optuna storage"  # in lock warnings
FAILED_NOTE = "Optuna holds this trial as FAIL (its result is not in the study); so does its run."


def median_pruner() -> Any:
    """The pruner of single-objective studies: below the median of earlier trials at the same
    step, after two finished trials. (Optuna keeps no pruner in storage, so the driver and the
    trial's rank 0 both build it here.)"""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


@dataclass(frozen=True)
class OptunaPruner:
    """Rank 0's link to its trial: report accuracy at a step, learn whether to stop."""

    storage: str
    study: str
    trial_id: int

    def __call__(self, step: int, accuracy: float) -> bool:
        """Report; True to prune. A storage that stays locked (drivers sharing a SQLite file)
        or fails is a warning and no pruning: losing one report costs less than the run. The
        retries stop well within the launcher's hang timeout (the other ranks wait on rank 0
        meanwhile). A trial ended already (failed by another driver) stops the job."""
        import optuna

        try:
            return patiently(self._report, step, accuracy, store=OPTUNA_STORE, within=15.0)
        except optuna.exceptions.UpdateFinishedTrialError:
            raise
        except Exception as err:
            print(
                f"warning: trial {self.trial_id}: step {step} not reported to Optuna "
                f"({type(err).__name__}: {err}); training goes on",
                file=sys.stderr,
            )
            return False

    def _report(self, step: int, accuracy: float) -> bool:
        import optuna

        study = optuna.load_study(
            study_name=self.study, storage=self.storage, pruner=median_pruner()
        )
        trial = optuna.trial.Trial(study, self.trial_id)
        trial.report(accuracy, step)
        return bool(trial.should_prune())

    def to_arg(self) -> str:
        return f"{self.storage}|{self.study}|{self.trial_id}"

    @classmethod
    def from_arg(cls, text: str) -> OptunaPruner:
        storage, study, trial_id = text.rsplit("|", 2)
        return cls(storage, study, int(trial_id))


def storage_url(storage: str | None) -> str:
    """The checked storage URL (ConfigError naming the valid forms if SQLAlchemy cannot use it),
    relative SQLite paths made absolute so trial processes find the same file."""
    url = storage or DEFAULT_STORAGE
    bad = f"--storage {without_password(url)!r}"
    try:
        dialect = sql_dialect(url, bad, STORAGE_FORMS)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    prefix = "sqlite:///"
    if dialect.name == "sqlite":
        path = url[len(prefix) :] if url.startswith(prefix) else ""
        if path in ("", ":memory:") or path.startswith("file:"):
            raise ConfigError(f"{bad}: trials need a shared file; valid forms: {STORAGE_FORMS}")
        file = Path(path).resolve()
        if not file.parent.is_dir():
            raise ConfigError(f"{bad}: folder {file.parent} does not exist")
        why = unwritable_folder(file.parent)
        if why is None and file.is_dir():
            why = f"{file} is a folder, not a database file"
        elif why is None and file.exists() and not os.access(file, os.R_OK | os.W_OK):
            why = f"{file} is not writable by this user"
        if why is not None:  # else SQLAlchemy's traceback after seconds of retries
            raise ConfigError(f"{bad}: {why}")
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        url = prefix + str(Path(url[len(prefix) :]).resolve())
    return url


def sample_overrides(space: Space) -> list[str]:
    """The ``--set`` overrides of one trial of ``space``, drawn from an in-memory study (nothing
    stored): what the checks before the first trial resolve with the user's ``--set``."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return list(space.suggest(study.ask()))


def check_space_keys(extra: Sequence[str], chosen: Sequence[str], space_name: str) -> None:
    """Refuse a ``--set`` of a key the space sets in every trial, or of a key under one: the
    trial's value comes after ``--set`` and replaces it (a compressor's knob then belongs to
    another compressor)."""
    tuned = [item.partition("=")[0].strip() for item in chosen]
    for item in extra:
        key = item.partition("=")[0].strip()
        clash = next((t for t in tuned if key == t or key.startswith(t + ".")), None)
        if clash is not None:
            raise ConfigError(
                f"--set {item}: space {space_name!r} sets {clash} in every trial, after --set; "
                f"valid: drop it, or --set keys the space leaves alone (it sets "
                f"{', '.join(tuned)})"
            )


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds: SUITE_SWEEP_HEARTBEAT and SUITE_SWEEP_GRACE,
    else the defaults. Tests shorten them; every driver of a study should use the same."""
    values = []
    for name, default in (("SUITE_SWEEP_HEARTBEAT", HEARTBEAT_S), ("SUITE_SWEEP_GRACE", GRACE_S)):
        text = os.environ.get(name, str(default))
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"{name}={text!r}: expected a whole number of seconds, at least 1")
        values.append(int(text))
    interval, grace = values
    if grace <= interval:
        raise ConfigError(
            f"SUITE_SWEEP_GRACE={grace} must exceed SUITE_SWEEP_HEARTBEAT={interval}: "
            "a live driver would be taken for dead between two heartbeats"
        )
    return interval, grace


def _space(recipe: Recipe, name: str) -> Space:
    if name not in recipe.spaces:
        raise ConfigError(
            f"recipe {recipe.name} has no search space {name!r}; valid choices: "
            + (", ".join(recipe.spaces) or "(none)")
        )
    return recipe.spaces[name]


def _check_owner(study: Any, key: str, space: Space, url: str) -> None:
    """Refuse to add trials to a study another recipe, space or profile made (a reused
    ``--study`` name): its trials tune other knobs, or other objectives. The study records
    its owner when first swept (``suite.space``); an older one is judged by its metrics."""
    owner = study.user_attrs.get(OWNER_ATTR)
    metrics = [metric for metric, _ in space.objectives]
    known = getattr(study, "metric_names", None)
    if owner is None and known is not None and list(known) != metrics:
        owner = f"the objectives {', '.join(known)}"
    if owner is not None and owner != key:
        raise ConfigError(
            f"study {study.study_name!r} in {without_password(url)} was made for {owner}, "
            f"not {key}; valid: "
            "another --study name, or the recipe, space and profile that made it"
        )
    study.set_user_attr(OWNER_ATTR, key)


def sweep(
    recipe: Recipe,
    space_name: str,
    *,
    trials: int,
    uri: str,
    storage: str | None = None,
    study_name: str | None = None,
    n_jobs: int = 1,
    profile: str = "smoke",
    extra: Sequence[str] = (),
) -> int:
    """Run the study until it has ``trials`` finished trials; returns the exit code."""
    import optuna
    from optuna.trial import TrialState

    space = _space(recipe, space_name)
    row = recipe.row(space.row)
    if row not in recipe.rows_at(profile):
        valid = [p for p in recipe.profiles if row in recipe.rows_at(p)]
        raise ConfigError(
            f"space {space_name!r} tunes row {row.label!r}, which {recipe.name} does not run at "
            f"profile {profile!r}; valid profiles: {', '.join(valid)}"
        )
    seed = recipe.profile(profile).seeds[0]
    check_extra(extra, f"every trial runs the profile's first seed ({seed})")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    chosen = sample_overrides(space)
    check_space_keys(extra, chosen, space_name)
    # bad recipe or --set, one that does not fit the space's own overrides, missing data, a
    # batch too large: fail before any trial
    preflight(recipe.resolve(row, profile, seed, [*extra, *chosen]))
    url = storage_url(storage)  # and a bad --storage before the fork server (seconds of imports)
    interval, grace = heartbeat_settings()
    start_children()
    name = study_name or f"{recipe.name}:{space_name}:{profile}"
    multi = len(space.objectives) > 1
    stale = _StaleTrial(uri, recipe.paper, name, grace)
    rdb = _storage(url, interval, grace, stale)
    study = optuna.create_study(
        storage=rdb,
        study_name=name,
        directions=[d for _, d in space.objectives],
        load_if_exists=True,
        pruner=optuna.pruners.NopPruner() if multi else median_pruner(),
    )
    _check_owner(study, f"{recipe.name}:{space_name}:{profile}", space, url)
    with warnings.catch_warnings():  # ExperimentalWarning in some Optuna versions
        warnings.simplefilter("ignore")
        study.set_metric_names([metric for metric, _ in space.objectives])
    _fail_stale(study)
    finished = _count_finished(study)
    left = max(0, trials - finished)
    goals = ", ".join(f"{metric} ({direction})" for metric, direction in space.objectives)
    print(
        f"study {name!r} in {without_password(url)}: {finished} finished trial(s), running "
        f"{left} more; each trial runs row {row.label!r} ({row.target}) of {recipe.name} at "
        f"profile {profile}, seed {seed}; objectives: {goals}",
        file=sys.stderr,
    )
    parent = _parent_run(uri, recipe, space_name, name, url)
    study.set_user_attr("mlflow_parent_run_id", parent)
    study.set_user_attr("mlflow_experiment", recipe.paper)
    client = open_client(uri)
    _close_runs(client, recipe.paper, name, _failed_numbers(study), FAILED_NOTE)

    def objective(trial: Any) -> float | tuple[float, ...]:
        chosen = list(space.suggest(trial))
        twin = _finished_twin(study, trial, chosen)
        trial.set_user_attr("overrides", chosen)
        if twin is not None:  # this configuration already ran: its result, not a new run
            trial.set_user_attr("duplicate_of", twin.number)
            trial.set_user_attr("mlflow_run_id", twin.user_attrs.get("mlflow_run_id"))
            print(
                f"trial {trial.number}: {dict(trial.params)} already ran as trial {twin.number}"
                " (its result is reused, nothing is run)",
                file=sys.stderr,
            )
            if twin.state != TrialState.COMPLETE:
                raise optuna.TrialPruned()
            return tuple(twin.values) if multi else twin.values[0]
        overrides = recipe.overrides(row, profile, seed, [*extra, *chosen])
        cfg = recipe.resolve(row, profile, seed, [*extra, *chosen])
        tags = {
            "suite.recipe": recipe.name,
            "suite.row": row.label,
            "suite.profile": profile,
            "suite.config_hash": config_hash(f"{name}|{trial.number}", cfg),
            "suite.study": name,
            "suite.trial": str(trial.number),
            "suite.space": space_name,
            "mlflow.parentRunId": parent,
        }
        pruner = OptunaPruner(url, name, trial._trial_id)
        args = [] if multi else ["--optuna-trial", pruner.to_arg()]
        try:
            summary = run_job(
                row.target,
                overrides,
                uri=uri,
                experiment=recipe.paper,
                tags=tags,
                run_name=f"{name} #{trial.number}",
                extra_args=args,
            )
        except JobFailed as err:
            if not err.diverged:
                raise  # caught by optimize: the trial is FAIL
            trial.set_user_attr("mlflow_run_id", err.summary.get("run_id"))
            trial.set_user_attr("diverged_step", err.summary.get("diverged_step"))
            step = err.summary.get("diverged_step")
            print(
                f"trial {trial.number}: {dict(trial.params)} -> diverged at step {step}",
                file=sys.stderr,
            )
            raise optuna.TrialPruned() from None  # TPE ranks it worst; a FAIL it would ignore
        values = tuple(float(summary[m]) for m, _ in space.objectives)
        # the job ended and its MLflow run with it: a Ctrl-C from here on must not fail the trial
        ended[trial.number] = (
            (TrialState.PRUNED, None)
            if summary.get("pruned")
            else (TrialState.COMPLETE, values if multi else values[0])
        )
        trial.set_user_attr("mlflow_run_id", summary.get("run_id"))
        print(
            f"trial {trial.number}: {dict(trial.params)} -> "
            + ", ".join(f"{m} {v:.4g}" for (m, _), v in zip(space.objectives, values, strict=True))
            + (" (pruned)" if summary.get("pruned") else ""),
            file=sys.stderr,
        )
        if summary.get("pruned"):
            raise optuna.TrialPruned()
        return values if multi else values[0]

    ended: dict[int, tuple[Any, Any]] = {}  # trial number -> (state, values) of a finished job
    ended_here: set[int] = set()  # trials the driver itself ended on a second Ctrl-C

    def run_trial(trial: Any) -> None:
        """Run one trial with its heartbeat going and tell the study how it ended."""
        state, values = TrialState.FAIL, None
        with _heartbeat(rdb, trial._trial_id, interval):
            try:
                values = objective(trial)
                state = TrialState.COMPLETE
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # failed meanwhile by another driver: reported below
            except JobFailed as err:
                print(f"trial {trial.number} failed: {err}", file=sys.stderr)
            except BaseException:  # Ctrl-C, or a bug: the trial fails (not retried), as in optimize
                _tell(study, trial, *ended.get(trial.number, (TrialState.FAIL, None)))
                raise
        if not _tell(study, trial, state, values) and trial.number not in ended_here:
            print(
                f"trial {trial.number} was marked FAIL by another driver (no heartbeat from "
                f"this one for {grace} s) and queued again; its result is dropped",
                file=sys.stderr,
            )
            _close_runs(client, recipe.paper, name, {trial.number}, stale.note)
            claim.refund()  # not this driver's failure: its place is run again

    claim = _Slots(study, trials, left, interval, seed)

    def work() -> None:
        try:
            while (trial := claim.next()) is not None:
                try:
                    run_trial(trial)
                finally:
                    claim.done(trial.number)
        except BaseException:
            claim.stop()  # Ctrl-C (or a bug) in one thread: the others start no new trial
            raise

    status = "FAILED"  # whatever escapes the trials (a bug, a storage that gives up)
    try:
        if n_jobs == 1:
            work()
        else:
            with ThreadPoolExecutor(n_jobs) as pool:
                futures = [pool.submit(work) for _ in range(n_jobs)]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    claim.stop()
                    raise
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        # a second Ctrl-C cuts the wait for this driver's threads short: their trials are
        # ended here, or _summarise would take them for another driver's and leave it all open
        for number in sorted(claim.mine):
            ended_here.add(number)  # its thread, telling it later, is not told "another driver"
            with contextlib.suppress(Exception):  # a job that finished keeps its result
                _tell(study, study.trials[number], *ended.get(number, (TrialState.FAIL, None)))
        _close_runs(client, recipe.paper, name, _failed_numbers(study), FAILED_NOTE)
        _summarise(client, parent, study, space, status)
    finished = _count_finished(study)
    if finished < trials:  # this driver's budget went on failed trials
        failed = ", ".join(map(str, sorted(_failed_numbers(study)))) or "none"
        print(
            f"error: the study has {finished} of the {trials} finished trials asked for; "
            f"failed trial(s): {failed} (each run's error.txt in MLflow says why)",
            file=sys.stderr,
        )
        return 1
    return 0


def _finished_twin(study: Any, trial: Any, chosen: list[str]) -> Any | None:
    """The first finished (complete or pruned) trial of ``study`` that ran ``chosen``, the
    overrides ``trial`` would run (its configuration: a space may derive values from more than
    the sampled parameters); for trials stored without them, the same non-empty parameters."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED)
    for other in study.get_trials(deepcopy=False, states=done):
        if other.number == trial.number:
            continue
        ran = other.user_attrs.get("overrides")
        if ran == chosen if ran is not None else trial.params and other.params == trial.params:
            return other
    return None


def _storage(url: str, interval: int, grace: int, stale: _StaleTrial) -> Any:
    """Optuna's storage with heartbeats on. Drivers started together on a new database race
    to create its tables (Optuna does not guard that): the loser tries again."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    def make() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=stale,
            )

    for _ in range(2):
        try:
            return make()
        except SQLAlchemyError:
            time.sleep(1)
    return make()


def _tell(study: Any, trial: Any, state: Any, values: Any) -> bool:
    """Tell the study how ``trial`` ended; False if it had already been ended (marked FAIL by
    another driver that took this one for dead)."""
    if patiently(study._storage.get_trial, trial._trial_id, store=OPTUNA_STORE).state.is_finished():
        return False
    patiently(
        study.tell, trial.number, values, state=state, skip_if_finished=True, store=OPTUNA_STORE
    )
    return True


def _heartbeat(
    storage: Any, trial_id: int, interval: int
) -> contextlib.AbstractContextManager[None]:
    """Record the trial's heartbeat every ``interval`` s while the block runs. (Optuna's own
    thread dies at the first storage error; a locked SQLite file must not make a live trial
    look dead, so errors here are reported and the next beat tries again.)"""

    def beat() -> None:
        try:
            storage.record_heartbeat(trial_id)
        except Exception as err:  # any storage error (a locked file): try again next beat
            print(f"warning: trial heartbeat not recorded: {err}", file=sys.stderr)

    return repeating(beat, interval, f"heartbeat-{trial_id}")


class _Slots:
    """Hands this driver's threads their next trial while the study needs one.

    A new trial starts while the finished and running trials of the study (all drivers) are
    fewer than ``wanted``, and this driver has started fewer than ``budget`` (so a job that
    always fails cannot loop forever). When the rest are running elsewhere it waits, looking for
    trials whose driver has died (Optuna fails them and queues them again; ``ask`` takes those
    first)."""

    def __init__(self, study: Any, wanted: int, budget: int, poll: int, seed: int) -> None:
        self.study, self.wanted, self.budget, self.poll = study, wanted, budget, poll
        self.seed = seed
        self.lock = threading.Lock()
        self.waiting_for: tuple[int, ...] = ()
        self.stopped = False
        self.mine: set[int] = set()  # trials this driver's threads are running

    def refund(self) -> None:
        with self.lock:
            self.budget += 1

    def stop(self) -> None:
        self.stopped = True

    def done(self, number: int) -> None:
        with self.lock:
            self.mine.discard(number)

    def next(self) -> Any | None:
        import optuna
        from optuna.trial import TrialState

        while True:
            with self.lock:
                if self.budget <= 0 or self.stopped:
                    return None
                _fail_stale(self.study)
                trials = self.study.get_trials(deepcopy=False)
                finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
                running = tuple(t.number for t in trials if t.state == TrialState.RUNNING)
                if finished >= self.wanted:
                    return None
                if finished + len(running) < self.wanted:
                    self.budget -= 1
                    # Seeded for repeatability, by the trials already there: a resumed study,
                    # or a second driver, does not draw the same points again.
                    self.study.sampler = optuna.samplers.TPESampler(seed=self.seed + len(trials))
                    with warnings.catch_warnings():  # "heartbeat ... used with Study.optimize"
                        warnings.simplefilter("ignore", UserWarning)
                        trial = self.study.ask()  # not retried: a retry could make two
                    self.mine.add(trial.number)
                    _first_beat(self.study, trial)
                    return trial
                running = tuple(n for n in running if n not in self.mine)
                if not running:
                    return None  # the last trials are this driver's own, run by other threads
                if running != self.waiting_for:
                    self.waiting_for = running
                    print(
                        f"waiting for trial(s) {', '.join(map(str, running))} running in "
                        "another driver (one whose driver is gone is taken over after the "
                        "grace period)",
                        file=sys.stderr,
                    )
            time.sleep(self.poll)


def _first_beat(study: Any, trial: Any) -> None:
    """The new trial's first heartbeat, before anything else: Optuna never fails a RUNNING
    trial that has none, so a driver killed before its heartbeat thread's first beat left a
    trial every later driver waited for, forever. A storage that stays locked, or fails, fails
    the trial (no heartbeat could follow either)."""
    from optuna.trial import TrialState

    try:
        patiently(study._storage.record_heartbeat, trial._trial_id, store=OPTUNA_STORE, within=5)
    except Exception:
        _tell(study, trial, TrialState.FAIL, None)
        raise


def _fail_stale(study: Any) -> None:
    """Optuna's check: RUNNING trials with no heartbeat within the grace period are marked FAIL
    and handed to the storage's callback (:class:`_StaleTrial`)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@dataclass(frozen=True)
class _StaleTrial:
    """Called by Optuna for a trial it just failed because its driver stopped heartbeating:
    end the trial's MLflow run FAILED with a note, and queue the same point as a new trial."""

    uri: str
    experiment: str
    study: str
    grace: int

    @property
    def note(self) -> str:
        return (
            f"Its sweep driver stopped (no heartbeat for {self.grace} s), so Optuna marked the "
            "trial FAIL and queued its parameters again as a new trial with its own run."
        )

    def __call__(self, study: Any, trial: Any) -> None:
        import optuna

        print(
            f"trial {trial.number}: its driver sent no heartbeat for {self.grace} s; "
            "marked FAIL and queued again",
            file=sys.stderr,
        )
        _close_runs(open_client(self.uri), self.experiment, self.study, {trial.number}, self.note)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        retry(study, trial)


def _failed_numbers(study: Any) -> set[int]:
    from optuna.trial import TrialState

    return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}


def _close_runs(client: Any, experiment: str, study: str, numbers: set[int], note: str) -> None:
    """MLflow agrees with Optuna: a FAIL trial's run still RUNNING or FINISHED (its driver died,
    or the trial was failed while its job ran on) is ended FAILED, with ``note`` saying why."""
    if not numbers:
        return
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`suite.study` = '{study}' and attributes.status != 'FAILED'",
        max_results=50000,
    )
    for run in runs:
        number = run.data.tags.get("suite.trial")
        if number is None or int(number) not in numbers:
            continue
        if run.info.status in ("RUNNING", "FINISHED"):
            client.set_tag(run.info.run_id, "mlflow.note.content", note)
            client.set_terminated(run.info.run_id, "FAILED")


def _count_finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _parent_run(uri: str, recipe: Recipe, space: str, study: str, storage: str) -> str:
    """The study's MLflow parent run: found again on resume, else created."""
    client = open_client(uri)
    exp_id = ensure_experiment(client, recipe.paper, uri)
    query = f"tags.`suite.kind` = 'study' and tags.`suite.study` = '{study}'"
    tags = {
        "suite.kind": "study",
        "suite.study": study,
        "suite.storage": without_password(storage),  # MLflow tags are for all to read
        "suite.recipe": recipe.name,
        "suite.space": space,
        "paper": recipe.paper,
    }
    run_id = driver_parent_run(client, exp_id, query, f"study {study}", tags)
    # a parent run made before passwords were left out holds one: no longer
    client.set_tag(run_id, "suite.storage", tags["suite.storage"])
    return run_id


def _summarise(client: Any, run_id: str, study: Any, space: Space, status: str) -> None:
    """The parent run's summary: trials table, best trial(s), and its final status, unless a
    trial is still RUNNING in another driver (which then ends it)."""
    from mlflow.entities import Metric
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = study.trials_dataframe()
    client.log_text(run_id, frame.to_csv(index=False), "trials.csv")
    metrics = [Metric("trials_finished", _count_finished(study), 0, 0)]
    try:
        best = study.best_trials if len(space.objectives) > 1 else [study.best_trial]
    except ValueError:  # no complete trial yet
        best = []
    for i, trial in enumerate(best):
        for (name, _), value in zip(space.objectives, trial.values, strict=True):
            metrics.append(Metric(f"best.{name}", value, 0, i))
    client.log_batch(run_id, metrics=metrics)
    if len(best) == 1:
        client.log_text(run_id, repr(best[0].params), "best_params.txt")
    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if running:
        print(
            f"trial(s) {', '.join(map(str, running))} still running in another driver: the "
            "study's parent run stays RUNNING until that driver ends it",
            file=sys.stderr,
        )
        return
    client.set_terminated(run_id, status)
