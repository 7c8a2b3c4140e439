"""``suite sweep RECIPE --space NAME``: an Optuna study over one paper knob.

The driver (this process) owns the study; every trial is its own ``suite run`` job, tagged in
MLflow with the study and trial number and nested under one parent run that summarises the
study. Storage persists (a SQLite file by default; any database URL lets several machines share
a study), so an interrupted study resumes: trials it left RUNNING are marked FAIL and the study
runs until it has ``--trials`` finished (complete or pruned) trials.

A single-objective space prunes: rank 0 of the trial reports test accuracy to the study at each
evaluation (:class:`OptunaPruner`) and the whole job stops when Optuna's median pruner says so.
Two objectives (accuracy, bytes) give a Pareto study; Optuna does not prune those.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite.config import ConfigError
from suite.recipes import Recipe, Space, config_hash
from suite.reproduce import JobFailed, run_job
from suite.tracking import ensure_experiment, open_client, owner_tags

DEFAULT_STORAGE = "sqlite:///optuna.db"


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
    """Relative SQLite paths made absolute, so trial processes find the same file."""
    url = storage or DEFAULT_STORAGE
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        url = prefix + str(Path(url[len(prefix) :]).resolve())
    return url


def _space(recipe: Recipe, name: str) -> Space:
    if name not in recipe.spaces:
        raise ConfigError(
            f"recipe {recipe.name} has no search space {name!r}; valid choices: "
            + (", ".join(recipe.spaces) or "(none)")
        )
    return recipe.spaces[name]


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

    space = _space(recipe, space_name)
    row = recipe.row(space.row)
    if row not in recipe.rows_at(profile):
        valid = [p for p in recipe.profiles if row in recipe.rows_at(p)]
        raise ConfigError(
            f"space {space_name!r} tunes row {row.label!r}, which {recipe.name} does not run at "
            f"profile {profile!r}; valid profiles: {', '.join(valid)}"
        )
    seed = recipe.profile(profile).seeds[0]
    recipe.resolve(row, profile, seed, extra)  # bad recipe or --set: fail before any trial
    url = storage_url(storage)
    name = study_name or f"{recipe.name}:{space_name}:{profile}"
    multi = len(space.objectives) > 1
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=url,
        study_name=name,
        directions=[d for _, d in space.objectives],
        load_if_exists=True,
        pruner=optuna.pruners.NopPruner() if multi else median_pruner(),
    )
    # Seeded for repeatability, offset by the trials already there so a resumed study does not
    # draw the same first points again.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    _fail_stale(study)
    finished = _count_finished(study)
    left = max(0, trials - finished)
    print(
        f"study {name!r} in {url}: {finished} finished trial(s), running {left} more",
        file=sys.stderr,
    )
    parent = _parent_run(uri, recipe, space_name, name, url)
    client = open_client(uri)

    def objective(trial: Any) -> float | tuple[float, ...]:
        chosen = list(space.suggest(trial))
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
        summary = run_job(
            row.target,
            overrides,
            uri=uri,
            experiment=recipe.paper,
            tags=tags,
            run_name=f"{name} #{trial.number}",
            extra_args=args,
        )
        trial.set_user_attr("mlflow_run_id", summary.get("run_id"))
        values = tuple(float(summary[m]) for m, _ in space.objectives)
        print(
            f"trial {trial.number}: {dict(trial.params)} -> "
            + ", ".join(f"{m} {v:.4g}" for (m, _), v in zip(space.objectives, values, strict=True))
            + (" (pruned)" if summary.get("pruned") else ""),
            file=sys.stderr,
        )
        if summary.get("pruned"):
            raise optuna.TrialPruned()
        return values if multi else values[0]

    status = "FINISHED"
    try:
        study.optimize(objective, n_trials=left, n_jobs=n_jobs, catch=(JobFailed,))
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _summarise(client, parent, study, space, status)
    return 0


def _fail_stale(study: Any) -> None:
    """Trials an interrupted driver left RUNNING will never finish: mark them FAIL."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)


def _count_finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _parent_run(uri: str, recipe: Recipe, space: str, study: str, storage: str) -> str:
    """The study's MLflow parent run: found again on resume, else created."""
    client = open_client(uri)
    exp_id = ensure_experiment(client, recipe.paper, uri)
    # Owned by this driver (no heartbeat: judged orphaned only from this host, by its pid).
    owner = owner_tags([os.getpid()], heartbeat=False)
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`suite.kind` = 'study' and tags.`suite.study` = '{study}'"
    )
    if found:
        run_id = found[0].info.run_id
        for key, value in owner.items():
            client.set_tag(run_id, key, value)
        client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {
        "suite.kind": "study",
        "suite.study": study,
        "suite.storage": storage,
        "suite.recipe": recipe.name,
        "suite.space": space,
        "paper": recipe.paper,
        **owner,
    }
    return client.create_run(exp_id, run_name=f"study {study}", tags=tags).info.run_id


def _summarise(client: Any, run_id: str, study: Any, space: Space, status: str) -> None:
    """The parent run's summary: trials table, best trial(s), final status."""
    from mlflow.entities import Metric

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
    client.set_terminated(run_id, status)
