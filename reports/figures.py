"""Frames to figures: the generic figures every recipe gets, one function each. Each returns
its figure, or None when there is no data to draw; the caller saves and closes it."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI machines or clusters
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from reports.frames import (
    BYTES_LABELS,
    bytes_column,
    reference_row,
    saved_table,
    target_accuracy,
    time_to_target,
)
from reports.simtime import REACHED, SWEEP_LATENCY_S
from suite.recipes import Curve, Recipe

MAX_POINTS = 400  # loss curves are binned to about this many steps per line


def axes() -> tuple[Figure, Any]:
    with sns.axes_style("whitegrid"):
        return plt.subplots(figsize=(7.0, 4.4))


def hue(recipe: Recipe, frame: pd.DataFrame) -> dict[str, Any]:
    """Row colours fixed by the recipe's row order, so a row looks the same in every figure."""
    labels = [r.label for r in recipe.rows]
    colors = dict(zip(labels, sns.color_palette("colorblind", len(labels)), strict=True))
    order = [r.label for r in recipe.rows if r.label in set(frame["row"])]
    return {"hue": "row", "hue_order": order, "palette": colors}


def fig_accuracy_vs_bytes(curves: pd.DataFrame, recipe: Recipe, profile: str) -> Figure | None:
    # wire bytes where every run logged them (older runs have payload bytes only)
    logged = curves.groupby("metric")["run_id"].nunique()
    column = "bytes_sent"
    if logged.get("wire_bytes", 0) and logged.get("wire_bytes") == curves["run_id"].nunique():
        column = "wire_bytes"
    wanted = curves[curves["metric"].isin(["test_accuracy", column])]
    wide = wanted.pivot_table(index=["row", "seed", "step"], columns="metric", values="value")
    if not {"test_accuracy", column} <= set(wide.columns):
        return None
    wide = wide.dropna().reset_index()  # evaluation steps only: accuracy joined with bytes
    wide["MB"] = wide[column] / 1e6
    mean = wide.groupby(["row", "step"], as_index=False)[["MB", "test_accuracy"]].mean()
    fig, ax = axes()
    sns.lineplot(
        mean.sort_values("step"),
        x="MB",
        y="test_accuracy",
        **hue(recipe, mean),
        estimator=None,
        sort=False,
        marker="o",
        ax=ax,
    )
    positive = mean.loc[mean["MB"] > 0, "MB"]
    if len(positive) and positive.max() / positive.min() > 100:
        ax.set_xscale("log")  # a method that saves 100x would sit on the y axis otherwise
    ax.set(
        xlabel=f"cumulative {BYTES_LABELS[column]} (MB)",
        ylabel="test accuracy",
        title=f"{recipe.key} ({profile}): accuracy against communication, mean of seeds",
    )
    ax.legend(title=None)
    return fig


def fig_loss_vs_step(curves: pd.DataFrame, recipe: Recipe, profile: str) -> Figure | None:
    loss = curves[curves["metric"] == "train_loss"]
    if loss.empty:
        return None
    width = max(1, int(loss["step"].max()) // MAX_POINTS)  # long runs: mean over step bins
    loss = loss.assign(step=loss["step"] // width * width)
    loss = loss.groupby(["row", "seed", "step"], as_index=False)["value"].mean()
    fig, ax = axes()
    sns.lineplot(loss, x="step", y="value", **hue(recipe, loss), errorbar="sd", ax=ax)
    if (loss["value"] > 0).all():
        ax.set_yscale("log")
    binned = f", means of {width}-step bins" if width > 1 else ""
    ax.set(
        xlabel="training step",
        ylabel="training loss (mean over ranks)",
        title=f"{recipe.key} ({profile}): training loss, band ±1 std over seeds{binned}",
    )
    ax.legend(title=None)
    return fig


def fig_curve(
    curves: pd.DataFrame, runs: pd.DataFrame, recipe: Recipe, profile: str, curve: Curve
) -> Figure | None:
    """One recipe :class:`Curve`: the metric per row against step or epoch (±1 std band), or
    against another logged metric (one line per seed)."""
    data = curves[curves["metric"] == curve.metric]
    if data.empty:
        return None
    if curve.x not in ("step", "epoch"):
        return _curve_against_metric(curves, data, recipe, profile, curve)
    width = max(1, int(data["step"].max()) // MAX_POINTS)  # long runs: mean over step bins
    data = data.assign(step=data["step"] // width * width)
    data = data.groupby(["run_id", "row", "seed", "step"], as_index=False)["value"].mean()
    x = "step"
    if curve.x == "epoch":  # steps per epoch of each run, from its final steps and epochs
        per_epoch = (runs["steps"] / runs["epochs"]).where(runs["epochs"] > 0)
        scale = dict(zip(runs["run_id"], per_epoch, strict=True))
        data = data.assign(epoch=(data["step"] + 1) / data["run_id"].map(scale))
        data = data.dropna(subset=["epoch"])
        x = "epoch"
        if data.empty:
            return None
    fig, ax = axes()
    sns.lineplot(data, x=x, y="value", **hue(recipe, data), errorbar="sd", ax=ax)
    if curve.log and (data["value"] > 0).all():
        ax.set_yscale("log")
    ylabel = curve.label or curve.metric
    binned = f", means of {width}-step bins" if width > 1 else ""
    ax.set(
        xlabel="epoch" if x == "epoch" else "training step",
        ylabel=ylabel,
        title=f"{recipe.key} ({profile}): {ylabel}, band ±1 std over seeds{binned}",
    )
    ax.legend(title=None)
    return fig


def _curve_against_metric(
    curves: pd.DataFrame, data: pd.DataFrame, recipe: Recipe, profile: str, curve: Curve
) -> Figure | None:
    x, xlabel = curve.x, curve.x_label or curve.x
    has = curves.loc[curves["metric"] == x, "run_id"].nunique()
    if x == "wire_bytes" and has < data["run_id"].nunique():  # runs stored before wire bytes
        x, xlabel = "bytes_sent", f"cumulative {BYTES_LABELS['bytes_sent']}"
    xs = curves[curves["metric"] == x][["run_id", "step", "value"]]
    data = data.merge(xs.rename(columns={"value": "x"}), on=["run_id", "step"]).dropna()
    if data.empty:
        return None
    fig, ax = axes()
    sns.lineplot(data.sort_values("step"), x="x", y="value", **hue(recipe, data), units="seed",
                 estimator=None, sort=False, alpha=0.8, ax=ax)  # fmt: skip
    if curve.log and (data["value"] > 0).all():
        ax.set_yscale("log")
    ylabel = curve.label or curve.metric
    ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{recipe.key} ({profile}): {ylabel}, one line "
           "per seed")  # fmt: skip
    ax.legend(title=None)
    return fig


def fig_saved_vs_accuracy(runs: pd.DataFrame, recipe: Recipe, profile: str) -> Figure | None:
    table = saved_table(runs, recipe).dropna(subset=["saved", "acc"])
    if table.empty:
        return None
    colors = hue(recipe, runs)["palette"]
    fig, ax = axes()
    for row, r in table.iterrows():
        ax.errorbar(
            100 * r["saved"],
            r["acc"],
            xerr=100 * _nz(r["saved_std"]),
            yerr=_nz(r["acc_std"]),
            fmt="o",
            capsize=4,
            color=colors.get(row),
            label=row,
        )
    ax.set(
        xlabel=f"communication saved vs {reference_row(runs, recipe)} "
        f"(% of {BYTES_LABELS[bytes_column(runs)]})",
        ylabel="final test accuracy",
        title=f"{recipe.key} ({profile}): bytes saved against accuracy, ±1 std over seeds",
    )
    ax.legend()
    return fig


def _nz(x: float) -> float:
    return 0.0 if pd.isna(x) else float(x)


def fig_time_to_target(
    runs: pd.DataFrame, curves: pd.DataFrame, recipe: Recipe, profile: str
) -> Figure | None:
    chosen = target_accuracy(runs, recipe)
    if chosen is None:
        return None
    target, how = chosen
    times = time_to_target(runs, curves, target)
    order = hue(recipe, times)["hue_order"]
    kinds = {
        "measured": "measured on this machine",
        "model": "network model: the run's trace replayed on its network",
    }
    colors = sns.color_palette("colorblind", 4)[2:]
    top = float(times[list(kinds)].max().max()) if times[list(kinds)].notna().any().any() else 1.0
    fig, ax = axes()
    for i, row in enumerate(order):
        mine = times[times["row"] == row]
        for j, (col, label) in enumerate(kinds.items()):
            if mine[col].notna().any():
                ax.bar(
                    i + (j - 0.5) * 0.38,
                    mine[col].mean(),
                    0.38,
                    yerr=_nz(mine[col].std()),
                    capsize=3,
                    color=colors[j],
                    label=label,
                )
        reached = int(mine["steps"].notna().sum())
        if reached == 0:
            ax.text(i, 0.02 * top, "not reached", ha="center", va="bottom", color="0.3")
        elif reached < len(mine):
            ax.text(i, 1.02 * top, f"{reached}/{len(mine)} seeds reached", ha="center", fontsize=8)
    ax.set_xticks(range(len(order)), order, rotation=10)
    handles, labels = ax.get_legend_handles_labels()
    if handles:  # one legend entry per kind, not per bar
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys())
    ax.set(
        ylabel="seconds to reach the target (mean ± std over seeds)",
        title=f"{recipe.key} ({profile}): time to test accuracy {target:.3f} ({how})",
    )
    return fig


def fig_bandwidth_sweep(
    sweep: pd.DataFrame, marks: list[dict[str, Any]], recipe: Recipe, profile: str, title: str
) -> Figure | None:
    data = sweep[sweep["status"] == REACHED]
    if data.empty:
        return None
    data = data.assign(Mbps=data["bps"] / 1e6)
    fig, ax = axes()
    sns.lineplot(data, x="Mbps", y="seconds", **hue(recipe, data), errorbar="sd", marker="o",
                 ax=ax)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    for i, mark in enumerate(marks):
        label = "crossing with a baseline" if i == 0 else None
        ax.plot(mark["bps"] / 1e6, mark["seconds"], "kX", markersize=9, label=label)
    ax.set(
        xlabel=f"link bandwidth per rank, up and down (Mbit/s; latency {SWEEP_LATENCY_S * 1e6:g} "
        "µs)",
        ylabel="simulated seconds to the target",
        title=f"{recipe.key} ({profile}): {title}",
    )
    ax.legend(title=None, fontsize=8)
    return fig
