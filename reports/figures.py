"""Frames to figures: the generic figures every recipe gets, one function each. Each returns
its figure, or None when there is no data to draw; the caller saves and closes it."""

from __future__ import annotations

import textwrap
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI machines or clusters
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from reports.frames import (
    BYTES_LABELS,
    bytes_column,
    pareto_front,
    reference_row,
    row_means,
    saved_table,
    spans_orders,
    target_accuracy,
    time_to_target,
)
from reports.simtime import REACHED, SWEEP_LATENCY_S
from suite.recipes import Curve, Recipe

MAX_POINTS = 400  # loss curves are binned to about this many steps per line
CROWDED_POINTS = 60  # ... and to this many where more than CROWDED rows share the axes


def axes() -> tuple[Figure, Any]:
    with sns.axes_style("whitegrid"):
        return plt.subplots(figsize=(7.0, 4.4))


CROWDED = 6  # legend entries past which the legend goes beside the axes, not over the lines


def legend(ax: Any, fontsize: float | None = None) -> None:
    """The axes' legend, untitled: inside them where it has few entries, beside them (right of
    the axes; the figure is saved with a tight bounding box) where it has many, so that it
    never covers the lines of a many-method figure."""
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) > CROWDED:
        ax.legend(handles, labels, title=None, fontsize=fontsize or 7, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # fmt: skip
    else:
        ax.legend(handles, labels, title=None, fontsize=fontsize, loc="best")


# no "X": it marks crossings in the bandwidth sweep
MARKERS = ("o", "s", "^", "D", "v", "P", "h", "<", ">", "*")
DASHES = ((), (5, 2), (1, 1.5), (6, 2, 1, 2), (3, 3), (8, 2, 2, 2, 2, 2))


def styles(recipe: Recipe) -> dict[str, tuple[Any, str, tuple]]:
    """Per row of the recipe: (colour, marker, dashes), fixed by the row order so a row looks
    the same in every figure, and distinct so rows that coincide stay visible."""
    labels = [r.label for r in recipe.rows]
    # the colorblind palette has 10 colours and MARKERS 10 markers: more rows (the cross-method
    # benchmark) would repeat both at once, so they take a 20-colour palette
    colors = sns.color_palette("colorblind" if len(labels) <= 10 else "tab20", len(labels))
    return {
        label: (colors[i], MARKERS[i % len(MARKERS)], DASHES[i % len(DASHES)])
        for i, label in enumerate(labels)
    }


def hue(recipe: Recipe, frame: pd.DataFrame, markers: bool = False) -> dict[str, Any]:
    """seaborn keywords: colour and line style by row (markers too where lines are sparse)."""
    style = styles(recipe)
    order = [r.label for r in recipe.rows if r.label in set(frame["row"])]
    out = {"hue": "row", "hue_order": order, "palette": {k: v[0] for k, v in style.items()}}
    out |= {"style": "row", "style_order": order, "dashes": {k: style[k][2] for k in order}}
    if markers:
        out["markers"] = {k: style[k][1] for k in order}
    return out


def row_ticks(ax: Any, labels: list[str]) -> None:
    """Row names as x tick labels that never collide: each wrapped onto lines no wider than
    its share of the axis (about 80 characters of 8 pt text across a 7 inch figure); past
    ``CROWDED`` rows that share is a few letters, so the names are slanted, whole."""
    if len(labels) > CROWDED:
        ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=40, ha="right",
                      rotation_mode="anchor")  # fmt: skip
        return
    width = max(6, 80 // max(1, len(labels)))
    wrapped = [textwrap.fill(label, width, break_long_words=True) for label in labels]
    ax.set_xticks(range(len(labels)), wrapped, fontsize=8)


def heading(recipe: Recipe, profile: str) -> str:
    """``KEY (PROFILE: DATASET/MODEL)``, a figure title's start: the paper's table or figure
    the recipe is keyed by, and what this profile trains (at smoke, stand-ins for the paper's
    task: "MNIST (smoke: digits/mlp)")."""
    cfg = recipe.resolve(recipe.rows_at(profile)[0], profile, 0)
    return f"{recipe.key} ({profile}: {cfg.dataset.name}/{cfg.model.name})"


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
    stats = wide.groupby(["row", "step"])[["MB", "test_accuracy"]].agg(["mean", "std"])
    style = styles(recipe)
    fig, ax = axes()
    for row in hue(recipe, wide)["hue_order"]:
        line = stats.loc[row].sort_index()
        color, marker, dashes = style[row]
        ax.errorbar(line[("MB", "mean")], line[("test_accuracy", "mean")],
                    yerr=line[("test_accuracy", "std")].fillna(0), color=color, marker=marker,
                    dashes=dashes or (None, None), capsize=2, elinewidth=0.8, markersize=5,
                    label=row)  # fmt: skip
    if spans_orders(wide.groupby("row")["MB"].max()):
        log_x(ax)  # a method that saves 10x would sit on the y axis otherwise
    ax.set(
        xlabel=f"cumulative {BYTES_LABELS[column]} (MB)",
        ylabel="test accuracy",
        title=f"{heading(recipe, profile)}: accuracy against communication,\nmean ± std over "
        "seeds at each evaluation",
    )
    legend(ax, fontsize=8)
    return fig


def _binned(data: pd.DataFrame, points: int = MAX_POINTS) -> tuple[pd.DataFrame, int]:
    """Long runs' per-step values as means over bins of ``width`` steps (about ``points`` per
    line), per run; the binned frame and the width."""
    width = max(1, int(data["step"].max()) // points)
    data = data.assign(step=data["step"] // width * width)
    keys = ["run_id", "row", "seed", "step"]
    return data.groupby(keys, as_index=False)["value"].mean(), width


def fig_loss_vs_step(curves: pd.DataFrame, recipe: Recipe, profile: str) -> Figure | None:
    loss = curves[curves["metric"] == "train_loss"]
    if loss.empty:
        return None
    # many methods: wider bins and no bands, or their step-to-step noise and bands hide them
    crowded = loss["row"].nunique() > CROWDED
    loss, width = _binned(loss, CROWDED_POINTS if crowded else MAX_POINTS)
    fig, ax = axes()
    sns.lineplot(loss, x="step", y="value", **hue(recipe, loss),
                 errorbar=None if crowded else "sd", ax=ax)  # fmt: skip
    if (loss["value"] > 0).all():
        ax.set_yscale("log")
    binned = f", means of {width}-step bins" if width > 1 else ""
    spread = "mean over seeds" if crowded else "band ±1 std over seeds"
    ax.set(
        xlabel="training step",
        ylabel="training loss (mean over ranks)",
        title=f"{heading(recipe, profile)}: training loss, {spread}{binned}",
    )
    legend(ax)
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
    data, width = _binned(data)
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
        title=f"{heading(recipe, profile)}: {ylabel}, band ±1 std over seeds{binned}",
    )
    legend(ax)
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
    ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{heading(recipe, profile)}: {ylabel}, one line "
           "per seed")  # fmt: skip
    legend(ax)
    return fig


def fig_tradeoff(runs: pd.DataFrame, recipe: Recipe, profile: str) -> Figure | None:
    """Final accuracy against total bytes: each seed a faint point, each row its mean ± std
    over seeds (labelled with the bytes it saves), the Pareto frontier of the row means, the
    reference row's accuracy and the tolerance band of the recipe's accuracy claims against
    it. The byte axis is logarithmic where rows differ by an order of magnitude or more."""
    column = bytes_column(runs)
    data = runs.dropna(subset=["test_accuracy", column])
    if data.empty:
        return None
    data = data.assign(MB=data[column] / 1e6)
    means = row_means(data, "MB")
    ref = reference_row(runs, recipe)
    saved = saved_table(runs, recipe)["saved"]
    style = styles(recipe)
    fig, ax = axes()
    for row in [r.label for r in recipe.rows if r.label in means.index]:
        color, marker, _ = style[row]
        mine, m = data[data["row"] == row], means.loc[row]
        ax.scatter(mine["MB"], mine["test_accuracy"], color=color, marker=marker, alpha=0.3,
                   s=18)  # fmt: skip
        share = saved.get(row)
        share = None if pd.isna(share) else round(100 * share, 1) + 0.0  # no "-0.0%"
        label = row if row == ref or share is None else f"{row} ({share:.1f}% saved)"
        # hollow: a row whose mean lies on another's still shows as a ring around it
        ax.errorbar(m["MB"], m["test_accuracy"], xerr=_nz(m["bytes_std"]),
                    yerr=_nz(m["acc_std"]), fmt=marker, color=color, capsize=4, markersize=9,
                    markerfacecolor="none", markeredgewidth=1.8, label=label)  # fmt: skip
    front = pareto_front(means.reset_index(), "MB")
    ax.plot(front["MB"], front["test_accuracy"], color="0.4", linestyle=":", zorder=1,
            label="Pareto frontier (row means)")  # fmt: skip
    if ref is not None and ref in means.index:
        base = float(means.loc[ref, "test_accuracy"])
        ax.axhline(base, color="0.25", linewidth=0.9, label=f"{ref}'s accuracy")
        for (low, high), rows in tolerance_bands(recipe, profile, ref).items():
            label = f"tolerance -{low:g}/+{high:g} claimed for {', '.join(rows)}"
            ax.axhspan(base - low, base + high, color="0.5", alpha=0.12, label=label)
    if spans_orders(means["MB"]):
        log_x(ax)
    ax.set(
        xlabel=f"{BYTES_LABELS[column]} per run (MB)",
        ylabel="final test accuracy",
        title=f"{heading(recipe, profile)}: accuracy cost of the communication saved,\n"
        "each seed and mean ± std over seeds",
    )
    legend(ax, fontsize=7)
    return fig


def tolerance_bands(recipe: Recipe, profile: str, ref: str) -> dict[tuple[float, float], list]:
    """{(below, above): rows}: how far from the reference row's accuracy the recipe's accuracy
    claims against it accept at ``profile`` (``>=``: that much below; ``within``: both
    sides; ``<=``: above), for the claims with a tolerance."""
    bands: dict[tuple[float, float], list] = {}
    for c in recipe.claims:
        if c.metric != "test_accuracy" or c.other != ref or profile not in c.profiles:
            continue
        if c.tolerance and c.scale == 1.0:
            low = c.tolerance if c.op in (">=", "within") else 0.0
            high = c.tolerance if c.op in ("<=", "within") else 0.0
            bands.setdefault((low, high), []).extend(c.rows)
    return bands


def log_x(ax: Any) -> None:
    """A logarithmic x axis with plain numbers (0.5, 20) rather than powers of ten."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    plain = mticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(mticker.NullFormatter())


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
    ref = reference_row(runs, recipe)
    kinds = {
        "measured": "measured on this machine",
        "model": "network model: the run's trace replayed on its network",
    }
    colors = sns.color_palette("colorblind", 4)[2:]
    spread = times.groupby("row")[list(kinds)].agg(lambda v: v.mean() + _nz(v.std()))
    top = float(spread.max().max()) if spread.notna().any().any() else 1.0  # bars' tops
    crowded = len(order) > CROWDED  # notes above the bars turned upright: side by side they overlap
    upright = 90 if crowded else 0
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
        seeds = f"{reached}/{len(mine)} seeds reached" if 0 < reached < len(mine) else ""
        if reached == 0:
            ax.text(i, 0.02 * top, "not reached", ha="center", va="bottom", color="0.3",
                    rotation=upright)  # fmt: skip
        elif seeds and not crowded:
            ax.text(i, 1.02 * top, seeds, ha="center", fontsize=8)
        ratio = _against(times, row, ref)
        if ratio is not None:  # said plainly: a method that gets there later is slower
            word = "same" if abs(ratio - 1) < 0.02 else "slower" if ratio > 1 else "faster"
            color = {"same": "0.3", "slower": "#cf222e", "faster": "#1a7f37"}[word]
            # upright, one line: the seeds' note joins it (two notes would overlap)
            note = f"{ratio:.2f}x ({word}){', ' + seeds if seeds else ''}"
            if not crowded:
                note = f"{ratio:.2f}x {ref}\n({word})"
            ax.text(i, 1.08 * top, note, ha="center", va="bottom", fontsize=7, color=color,
                    rotation=upright)  # fmt: skip
        elif seeds and crowded:
            ax.text(i, 1.08 * top, seeds, ha="center", va="bottom", fontsize=7, rotation=upright)
    row_ticks(ax, order)
    ax.set_ylim(0, (1.55 if crowded else 1.35) * top)  # room for the notes above the bars
    handles, labels = ax.get_legend_handles_labels()
    if handles:  # one legend entry per kind, not per bar
        unique = dict(zip(labels, handles, strict=True))
        where: dict[str, Any] = {"loc": "upper left"}
        if crowded:  # the notes fill the top of the axes: the legend goes on top of them
            where = {"loc": "lower left", "bbox_to_anchor": (0.0, 1.0), "ncol": 2,
                     "frameon": False, "borderaxespad": 0.2}  # fmt: skip
        ax.legend(unique.values(), unique.keys(), fontsize=7, **where)
    title = (
        f"{heading(recipe, profile)}: seconds until test accuracy first reaches {target:.3f} "
        f"(target: {how}); above the bars: measured time against {ref}"
    )
    ax.set_ylabel("seconds to the target (mean ± std over seeds)")
    ax.set_title(textwrap.fill(title, 80), fontsize=10, pad=18 if crowded else 6)
    return fig


def _against(times: pd.DataFrame, row: str, ref: str | None) -> float | None:
    """Row's mean measured time to the target over the reference row's; None if either is
    missing or the row is the reference."""
    if ref is None or row == ref:
        return None
    mean = times.groupby("row")["measured"].mean()
    mine, theirs = mean.get(row), mean.get(ref)
    if mine is None or theirs is None or pd.isna(mine) or pd.isna(theirs) or theirs <= 0:
        return None
    return float(mine / theirs)


def fig_bandwidth_sweep(
    sweep: pd.DataFrame, marks: list[dict[str, Any]], recipe: Recipe, profile: str, title: str
) -> Figure | None:
    """Time to the target against the link rate, a line per row, crosses where a row's line
    crosses a baseline's, each filled in that row's colour. Where more rows share the axes than
    ``CROWDED`` (the cross-method benchmark), the seeds' bands are left out and only crossings
    with the reference row are marked: thirty crosses and seventeen bands hid the lines (the
    report's text lists every crossing)."""
    data = sweep[sweep["status"] == REACHED]
    if data.empty:
        return None
    data = data.assign(Mbps=data["bps"] / 1e6)
    crowded = data["row"].nunique() > CROWDED
    fig, ax = axes()
    sns.lineplot(data, x="Mbps", y="seconds", **hue(recipe, data, markers=True),
                 errorbar=None if crowded else "sd", ax=ax)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    if recipe.reference in set(data["row"]):  # the yardstick: a grey halo under its line
        ref = data[data["row"] == recipe.reference].groupby("Mbps")["seconds"].mean()
        ax.plot(ref.index, ref.to_numpy(), color="black", linewidth=6, alpha=0.15, zorder=1,
                solid_capstyle="round")  # fmt: skip
    shown = marks
    if crowded and recipe.reference:
        shown = [m for m in marks if m["other"] == recipe.reference]
    colours = styles(recipe)
    for mark in shown:
        ax.plot(mark["bps"] / 1e6, mark["seconds"], "X", markersize=10, markeredgecolor="black",
                markerfacecolor=colours[mark["row"]][0], zorder=5)  # fmt: skip
    if shown:  # one legend entry for all crosses
        against = recipe.reference if shown is not marks else "a baseline"
        ax.plot([], [], "X", markersize=10, markeredgecolor="black", markerfacecolor="white",
                linestyle="none", label=f"crossing with {against}")  # fmt: skip
    ax.set(
        xlabel=f"link bandwidth per rank, up and down (Mbit/s; latency {SWEEP_LATENCY_S * 1e6:g} "
        "µs)",
        ylabel="simulated seconds to the target",
        title=f"{heading(recipe, profile)}: {title}",
    )
    legend(ax, fontsize=8)
    return fig
