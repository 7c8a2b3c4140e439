"""Store to frames: the recipe runs of an MLflow experiment as tidy pandas frames, and the
numbers computed from them alone (communication saved, time to a target, Pareto fronts).

``runs``: one row per run, its tags and ``final.*`` metrics; ``curves``: the per-step histories
in long form. Nothing here draws or writes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from suite.config import split_override
from suite.recipes import Recipe
from suite.tracking import open_client

CURVE_METRICS = (
    "train_loss", "bytes_sent", "wire_bytes", "messages", "step_seconds",
    "compute_seconds", "comm_seconds", "test_accuracy", "test_loss",
)  # fmt: skip


FINAL_METRICS = (
    "test_accuracy", "train_loss", "bytes_sent", "wire_bytes", "messages", "train_seconds",
    "wall_seconds",
    "steps", "epochs", "world_size", "compute_seconds", "comm_seconds", "network_seconds",
    "reference_step_ms",
)  # fmt: skip


RUN_COLUMNS = (
    "run_id", "status", "start", "recipe", "row", "profile", "seed", "target", "diverged", "code",
    "hardware", "torch",
)  # fmt: skip


CURVE_COLUMNS = ("run_id", "recipe", "row", "profile", "seed", "step", "metric", "value")


# Wire bytes (suite.wire: what each primitive's algorithm puts on the links) compare methods
# across primitives; payload bytes (what ranks hand to the backend) stand beside them.
BYTES_LABELS = {"wire_bytes": "wire bytes (all ranks)", "bytes_sent": "payload bytes (all ranks)"}


AXIS_NAMES = {
    "test_accuracy": "final test accuracy",
    "wire_bytes": "wire bytes (all ranks) (B)",
    "bytes_sent": "payload bytes (all ranks) (B)",
}


def load_runs(uri: str, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) of the recipe runs in ``experiment``.

    runs: one row per FINISHED or KILLED run tagged ``suite.recipe``, and per FAILED one that
    diverged (tag ``suite.diverged``; study parents and runs started by hand are left out):
    run_id, status, start, recipe, row, profile, seed, target, diverged, code, hardware, torch
    (the code, machine and torch version that made it), study, trial, and the ``final.*``
    metrics without the prefix (NaN where not logged). Outside sweeps only the latest run of
    each (recipe, row, profile, seed) is kept, preferring FINISHED, so a ``--force`` rerun
    replaces what it reran. curves: the per-step histories in long form; sweep trials get none
    (no figure needs them, and fetching them is the slow part)."""
    runs, curves, _ = _load(open_client(uri), experiment)
    return runs, curves


def _load(
    client: Any, experiment: str, extra: tuple[str, ...] = ()
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict]]:
    """load_runs's frames plus ``{study name: its parent run's tags}``; ``extra`` names more
    per-step metrics to fetch (the recipes' :class:`Curve` metrics)."""
    exp = client.get_experiment_by_name(experiment)
    records, parents = [], {}
    for run in _search(client, exp.experiment_id) if exp is not None else ():
        tags, info = run.data.tags, run.info
        if tags.get("suite.kind") == "study" and "suite.study" in tags:
            parents[tags["suite.study"]] = tags
            continue
        if "suite.recipe" not in tags or "suite.row" not in tags:
            continue  # started by hand with `suite run`: not part of any recipe
        diverged = tags.get("suite.diverged") == "true"
        if info.status not in ("FINISHED", "KILLED") and not diverged:
            continue
        seed = run.data.params.get("seed", "")
        record = {
            "run_id": info.run_id,
            "status": info.status,
            "start": info.start_time,
            "recipe": tags["suite.recipe"],
            "row": tags["suite.row"],
            "profile": tags.get("suite.profile", ""),
            "seed": int(seed) if seed.lstrip("-").isdigit() else -1,  # -1: not recorded
            "target": tags.get("target", ""),
            "diverged": diverged,
            "code": tags.get("suite.code", "unknown"),  # the code that made it (tracking)
            "hardware": tags.get("hardware", ""),  # and the machine, torch (run_tags)
            "torch": tags.get("torch_version", ""),
            "study": tags.get("suite.study"),
            "trial": int(tags["suite.trial"]) if "suite.trial" in tags else None,
            "_logged": set(run.data.metrics),
        }
        for key, value in run.data.metrics.items():
            if key.startswith("final."):
                record[key[len("final.") :]] = value
        records.append(record)
    runs = pd.DataFrame(records)
    # every column present even when nothing logged it: missing metrics read as NaN downstream
    columns = [*RUN_COLUMNS, "study", "trial", "_logged", *FINAL_METRICS, *runs.columns]
    runs = runs.reindex(columns=list(dict.fromkeys(columns)))
    text = ("run_id", "status", "recipe", "row", "profile", "target", "code", "hardware", "torch")
    runs = runs.astype({c: str for c in text} | {"seed": int, "diverged": bool})  # when empty
    # consolidated: with a column per final metric of many algorithms the frame is otherwise
    # left in hundreds of blocks (pandas' PerformanceWarning at every column added later)
    runs = runs.copy()
    runs["trial"] = runs["trial"].astype("Int64")
    plain = runs[runs["study"].isna()].assign(_done=lambda f: f["status"] == "FINISHED")
    plain = plain.sort_values(["_done", "start"]).drop(columns="_done")
    plain = plain.drop_duplicates(["recipe", "row", "profile", "seed"], keep="last")
    history = [
        (run_id, m.step, metric, m.value)
        for run_id, logged in zip(plain["run_id"], plain["_logged"], strict=True)
        for metric in dict.fromkeys((*CURVE_METRICS, *extra))
        if metric in logged  # a metric never logged has no history: skip the query
        for m in client.get_metric_history(run_id, metric)
    ]
    runs = pd.concat([plain, runs[runs["study"].notna()]], ignore_index=True)
    runs = runs.drop(columns="_logged")
    curves = pd.DataFrame(history, columns=["run_id", "step", "metric", "value"])
    curves = curves.astype({"run_id": str, "step": int, "metric": str, "value": float})
    curves = curves.merge(runs[["run_id", "recipe", "row", "profile", "seed"]], on="run_id")
    return runs, curves[list(CURVE_COLUMNS)], parents


def _search(client: Any, experiment_id: str) -> Iterator[Any]:
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def finals(runs: pd.DataFrame) -> list[tuple[str, dict[str, float]]]:
    """``(row, final metrics)`` per run for :func:`aggregate`; metrics a run lacks are left out
    (rather than averaged in as NaN)."""
    metrics = [c for c in runs.columns if c not in {*RUN_COLUMNS, "study", "trial"}]
    return [
        (r["row"], {k: float(r[k]) for k in metrics if pd.notna(r[k])}) for _, r in runs.iterrows()
    ]


def bytes_column(frame: pd.DataFrame) -> str:
    """``wire_bytes`` when every run in ``frame`` has it, else ``bytes_sent`` (payload): runs
    stored before wire bytes existed lack them, and a mix must not be compared."""
    if "wire_bytes" in frame and len(frame) and frame["wire_bytes"].notna().all():
        return "wire_bytes"
    return "bytes_sent"


def reference_row(runs: pd.DataFrame, recipe: Recipe) -> str | None:
    """The row others save communication against: the recipe's, else the most bytes."""
    column = bytes_column(runs)
    sent = runs.dropna(subset=[column]).groupby("row")[column].mean()
    if recipe.reference is not None:
        return recipe.reference if recipe.reference in sent.index else None
    return str(sent.idxmax()) if not sent.empty else None


def saved(runs: pd.DataFrame, recipe: Recipe) -> tuple[str | None, pd.Series]:
    """(reference row, per run: 1 - bytes / the reference row's mean bytes; NaN without one).
    Wire bytes where every run has them (:func:`bytes_column`), else payload bytes."""
    ref, column = reference_row(runs, recipe), bytes_column(runs)
    ref_bytes = runs.loc[runs["row"] == ref, column].mean() if ref else float("nan")
    return ref, 1.0 - runs[column] / (ref_bytes if ref_bytes > 0 else float("nan"))


def saved_table(runs: pd.DataFrame, recipe: Recipe) -> pd.DataFrame:
    """Per row: communication saved and final test accuracy, mean and std over seeds."""
    _, fraction = saved(runs, recipe)
    return (
        runs.assign(saved=fraction)
        .groupby("row", sort=False)
        .agg(
            saved=("saved", "mean"),
            saved_std=("saved", "std"),
            acc=("test_accuracy", "mean"),
            acc_std=("test_accuracy", "std"),
        )
    )


def target_accuracy(runs: pd.DataFrame, recipe: Recipe) -> tuple[float, str] | None:
    """(target, how it was chosen): the recipe's at the runs' profile, else the target the runs
    themselves were given (the profile's ``target_accuracy``), else 95% of the worst row's mean
    accuracy."""
    profiles = set(runs["profile"]) if "profile" in runs else set()
    profile = profiles.pop() if len(profiles) == 1 else None  # one profile's runs
    target = recipe.target_accuracy
    if isinstance(target, Mapping):  # one per profile
        target = recipe.target_at(profile) if profile is not None else None
    if target is not None:
        return target, "the recipe's target"
    given = _runs_target(recipe, profile)
    if given is not None:
        return given, "the runs' target_accuracy"
    means = runs.groupby("row")["test_accuracy"].mean().dropna()
    return (0.95 * float(means.min()), "95% of the worst row's mean") if len(means) else None


def _runs_target(recipe: Recipe, profile: str | None) -> float | None:
    """The ``target_accuracy`` every run of ``profile`` was given, if one (rows setting their
    own would make it ambiguous)."""
    if profile not in recipe.profiles:
        return None

    def targets(overrides: Sequence[str]) -> list[float]:
        pairs = (split_override(o) for o in overrides)
        return [float(value) for key, value in pairs if key == "target_accuracy"]

    if any(targets(row.overrides) for row in recipe.rows):
        return None
    given = targets(recipe.profiles[profile].overrides)
    return given[-1] if given and given[-1] > 0 else None


def time_to_target(runs: pd.DataFrame, curves: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per run: steps to the first evaluation at ``target`` accuracy or better, and the seconds
    it took, measured (sum of step_seconds) and from the network model (that fraction of the
    run's ``network_seconds``: its trace replayed on its ``network``, suite.netmodel). NaN where
    never reached, and the model's NaN for runs stored before the network model."""
    out = []
    for run in runs.itertuples():
        mine = curves[curves["run_id"] == run.run_id]
        acc = mine[mine["metric"] == "test_accuracy"].sort_values("step")
        hit = acc[acc["value"] >= target]
        steps = measured = model = float("nan")
        if not hit.empty:
            step = int(hit["step"].iloc[0])
            steps = step + 1  # metrics are logged at the 0-based index of the step just done
            secs = mine[(mine["metric"] == "step_seconds") & (mine["step"] <= step)]["value"]
            measured = float(secs.sum()) if not secs.empty else float("nan")
            if run.steps > 0:  # NaN compares False: a run without final.steps gets no model
                model = steps / run.steps * run.network_seconds
        out.append(
            {"row": run.row, "seed": run.seed, "steps": steps, "measured": measured, "model": model}
        )
    return pd.DataFrame(out, columns=["row", "seed", "steps", "measured", "model"])


def steps_to_target(curves: pd.DataFrame, target: float) -> pd.Series:
    """Per run id: steps (1-based) to its first evaluation at ``target`` accuracy or better;
    runs that never reached it are absent."""
    acc = curves[(curves["metric"] == "test_accuracy") & (curves["value"] >= target)]
    return acc.groupby("run_id")["step"].min() + 1  # logged at the 0-based index of the step


def pareto_front(points: pd.DataFrame, column: str = "bytes_sent") -> pd.DataFrame:
    """Trials no other trial beats on both accuracy (higher) and bytes (``column``, lower)."""
    acc, sent = points["test_accuracy"], points[column]
    keep = [
        i
        for i, p in points.iterrows()
        if not (
            (acc >= p["test_accuracy"])
            & (sent <= p[column])
            & ((acc > p["test_accuracy"]) | (sent < p[column]))
        ).any()
    ]
    return points.loc[keep].sort_values(column)


TRAINING = ("test_accuracy", "train_loss", "test_loss")  # what identical training leaves equal


def identical_rows(
    runs: pd.DataFrame, curves: pd.DataFrame, rtol: float = 1e-4
) -> list[tuple[str, str]]:
    """Pairs of rows that train identically: the same seeds, and for each seed the same final
    accuracy and loss and the same accuracy and loss at every logged step, to ``rtol`` (sums
    in another order differ in the last digits). EventGraD at threshold 0 fires every tensor
    every step: it trains as D-PSGD does, sending a little more. Such rows' lines would hide
    each other in every accuracy and loss figure."""
    metrics = [m for m in TRAINING if m in runs]
    logged = curves[curves["metric"].isin(TRAINING)]
    finals = runs.melt(id_vars=["run_id"], value_vars=metrics, var_name="metric").assign(step=-1)
    both = pd.concat([logged[["run_id", "metric", "step", "value"]], finals])
    both = both.merge(runs[["run_id", "row", "seed"]], on="run_id").dropna(subset=["value"])
    series = {
        str(row): group.set_index(["seed", "metric", "step"])["value"].sort_index()
        for row, group in both.groupby("row", sort=False)
    }
    rows = list(series)
    return [
        (a, b)
        for i, a in enumerate(rows)
        for b in rows[i + 1 :]
        if series[a].index.equals(series[b].index)
        and np.allclose(series[a].to_numpy(), series[b].to_numpy(), rtol=rtol, atol=0.0)
    ]


def row_means(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per row: mean and std over seeds of final test accuracy and of ``column`` (bytes)."""
    return runs.groupby("row", sort=False).agg(
        test_accuracy=("test_accuracy", "mean"),
        acc_std=("test_accuracy", "std"),
        **{column: (column, "mean")},
        bytes_std=(column, "std"),
    )


def spans_orders(values: pd.Series, ratio: float = 10.0) -> bool:
    """Positive values whose largest is at least ``ratio`` x the smallest: a linear axis would
    squeeze the small ones against zero, so the axis goes on a log scale."""
    positive = values[values > 0].dropna()
    return len(positive) > 1 and positive.max() / positive.min() >= ratio
