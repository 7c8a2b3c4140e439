"""Figures of an Optuna sweep: the trials' accuracy against bytes with the Pareto-optimal ones
joined, and Optuna's own plots of the study."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from reports.figures import axes, log_x
from reports.frames import BYTES_LABELS, bytes_column, pareto_front, spans_orders
from suite.recipes import Recipe


def fig_sweep_pareto(trials: pd.DataFrame, study: str, recipe: Recipe) -> Figure | None:
    column = bytes_column(trials.dropna(subset=["test_accuracy"]))
    trials = trials.dropna(subset=["test_accuracy", column])
    trials = trials.assign(MB=trials[column] / 1e6)
    done, pruned = trials[trials["status"] == "FINISHED"], trials[trials["status"] == "KILLED"]
    if done.empty:
        return None
    front = pareto_front(done, column)
    fig, ax = axes()
    ax.scatter(done["MB"], done["test_accuracy"], color="0.55", label="finished trial")
    if not pruned.empty:
        ax.scatter(
            pruned["MB"],
            pruned["test_accuracy"],
            marker="x",
            color="0.7",
            label="pruned trial (stopped early)",
        )
    ax.plot(front["MB"], front["test_accuracy"], "o-", color="C3", label="Pareto-optimal trials")
    for _, p in front.iterrows():
        ax.annotate(
            f"#{p['trial']}",
            (p["MB"], p["test_accuracy"]),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize=8,
        )
    if spans_orders(done["MB"]):
        log_x(ax)
    ax.set(
        xlabel=f"{BYTES_LABELS[column]} (MB)",
        ylabel="final test accuracy",
        title=f"{recipe.key}: accuracy against bytes over {len(done)} trials\nsweep {study}",
    )
    ax.legend()
    return fig


def optuna_figures(
    study_name: str, storage: str | None, target_names: list[str]
) -> tuple[list[tuple[str, Figure]], list[str]]:
    """Optuna's own plots of a study: (kind, figure) pairs, and notes on what was skipped."""
    import optuna

    if not storage:
        return [], ["no Optuna storage recorded on the study's parent run"]
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///") :]).exists():
        return [], [f"Optuna storage `{storage}` not found"]  # opening it would create it
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception as err:  # moved, renamed, another schema: the MLflow figure remains
        return [], [f"could not load the study from `{storage}` ({type(err).__name__})"]
    plot, notes = optuna.visualization.matplotlib, []
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    names = {k for t in done for k in t.params}
    varied = [k for k in names if len({t.params.get(k) for t in done}) > 1]
    if len(study.directions) > 1:
        drawers = [("pareto", plot.plot_pareto_front, {"target_names": target_names})]
    else:
        kwargs = {"target_name": target_names[0]}
        drawers = [("history", plot.plot_optimization_history, kwargs)]
    if len(done) >= 2 and len(varied) > 1:  # importances rank knobs: one knob has no ranking
        drawers.append(("importance", plot.plot_param_importances, {}))
    else:
        notes.append("parameter importances need 2+ finished trials varying 2+ parameters")
    out = []
    # Optuna's plots switch the global style to ggplot: keep that change inside rc_context
    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for kind, draw, kwargs in drawers:
            try:
                ax = draw(study, **kwargs)
            except Exception as err:  # e.g. no finished trial yet: skip this plot only
                notes.append(f"{kind} plot skipped ({type(err).__name__}: {err})")
                continue
            ax = ax if hasattr(ax, "figure") else ax.flat[0]
            ax.set_title(f"{ax.get_title()}: study {study_name}")
            out.append((kind, ax.figure))
    return out, notes
