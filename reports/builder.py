"""Reports from the MLflow store alone: runs -> tidy pandas frames -> figures -> README + HTML.

``build_report(paper, uri, out_dir)`` reads every run a recipe of ``paper`` left in the store
(tags ``suite.recipe``, ``suite.row``, ``suite.profile``; final numbers as ``final.*`` metrics;
per-step histories), checks each recipe's claims per profile on the mean over seeds, draws the
figures and writes ``README.md`` plus a self-contained ``report.html``. Nothing is recomputed
from training: the store is the single source, so a report can be rebuilt anywhere it is copied.
The directory is built aside and swapped in whole, so a failed build never leaves half a report.

Simulated time: each run's stored communication trace (``trace.npz.b64``, :mod:`suite.trace`)
is downloaded once per build and replayed (:mod:`suite.netmodel`) once per network it is asked
about (:class:`Replays`), giving the time to the target accuracy on the ``NETWORKS`` presets
(a table and a ranking per profile), on a sweep of link rates (``SWEEP_BPS`` at
``SWEEP_LATENCY_S``, a figure), and the ``FIELD@NETWORK`` metrics of simulated-time claims
(:func:`suite.recipes.simulated_metric`). Runs stored without a trace read "n/a".
"""

from __future__ import annotations

import base64
import datetime
import html
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI machines or clusters
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from suite import netmodel
from suite import trace as tracing
from suite.netmodel import Timeline
from suite.network import NetworkSpec, format_spec, parse_network
from suite.recipes import (
    FAILS,
    HOLDS,
    UNTESTABLE,
    Curve,
    Recipe,
    Verdict,
    aggregate,
    recipes_of,
    simulated_metric,
    slug,
)
from suite.tracking import METRIC_CONVENTION, code_state, open_client, store_label

CURVE_METRICS = (
    "train_loss", "bytes_sent", "wire_bytes", "messages", "step_seconds",
    "compute_seconds", "comm_seconds", "test_accuracy", "test_loss",
)  # fmt: skip
FINAL_METRICS = (
    "test_accuracy", "train_loss", "bytes_sent", "wire_bytes", "messages", "train_seconds",
    "wall_seconds",
    "steps", "epochs", "world_size", "compute_seconds", "comm_seconds", "network_seconds",
)  # fmt: skip
RUN_COLUMNS = (
    "run_id", "status", "start", "recipe", "row", "profile", "seed", "target", "diverged",
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
MAX_POINTS = 400  # loss curves are binned to about this many steps per line
# Time to the target beyond the run's own network: every run's trace replayed on these presets
# (suite.network), and on a sweep of link rates with the latency held at one switched LAN hop
# (the 1g preset's), so the sweep shows the effect of bandwidth alone.
NETWORKS = ("datacenter", "1g", "wan")
SWEEP_BPS = tuple(float(b) for b in np.logspace(7, 11, 12))  # 10 Mbit/s .. 100 Gbit/s
SWEEP_LATENCY_S = 50e-6
# rows the bandwidth sweep marks crossings against (besides the recipe's reference row)
BASELINE_TARGETS = ("allreduce_sgd", "dpsgd")


@dataclass(frozen=True)
class Report:
    paper: str
    out_dir: Path
    verdicts: dict[tuple[str, str], list[Verdict]]  # (recipe name, profile) -> verdicts
    figures: list[Path]

    def all_hold(self, profile: str) -> bool:
        """No claim checked at ``profile`` fails, and some recipe has finished runs there."""
        ran = [vs for (_, p), vs in self.verdicts.items() if p == profile]
        return bool(ran) and all(v.verdict != FAILS for vs in ran for v in vs)


# -- frames ------------------------------------------------------------------------------------


def load_runs(uri: str, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) of the recipe runs in ``experiment``.

    runs: one row per FINISHED or KILLED run tagged ``suite.recipe``, and per FAILED one that
    diverged (tag ``suite.diverged``; study parents and runs started by hand are left out):
    run_id, status, start, recipe, row, profile, seed, target, diverged, study, trial, and the
    ``final.*`` metrics without the prefix (NaN where not logged). Outside
    sweeps only the latest run of each (recipe, row, profile, seed) is kept, preferring FINISHED,
    so a ``--force`` rerun replaces what it reran. curves: the per-step histories in long form;
    sweep trials get none (no figure needs them, and fetching them is the slow part)."""
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
    text = ("run_id", "status", "recipe", "row", "profile", "target")
    runs = runs.astype({c: str for c in text} | {"seed": int, "diverged": bool})  # when empty
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


def _reference(runs: pd.DataFrame, recipe: Recipe) -> str | None:
    """The row others save communication against: the recipe's, else the most bytes."""
    column = bytes_column(runs)
    sent = runs.dropna(subset=[column]).groupby("row")[column].mean()
    if recipe.reference is not None:
        return recipe.reference if recipe.reference in sent.index else None
    return str(sent.idxmax()) if not sent.empty else None


def saved(runs: pd.DataFrame, recipe: Recipe) -> tuple[str | None, pd.Series]:
    """(reference row, per run: 1 - bytes / the reference row's mean bytes; NaN without one).
    Wire bytes where every run has them (:func:`bytes_column`), else payload bytes."""
    ref, column = _reference(runs, recipe), bytes_column(runs)
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
    """(target, how it was chosen): the recipe's, else 95% of the worst row's mean accuracy."""
    if recipe.target_accuracy is not None:
        return recipe.target_accuracy, "the recipe's target"
    means = runs.groupby("row")["test_accuracy"].mean().dropna()
    return (0.95 * float(means.min()), "95% of the worst row's mean") if len(means) else None


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


class Replays:
    """Each run's stored trace, downloaded once into ``cache``, and its replays on networks
    (:func:`suite.netmodel.replay`), each done once per (run, network). None for a run stored
    without a trace (or with one the model cannot read)."""

    def __init__(self, client: Any, cache: Path) -> None:
        self.client, self.cache = client, Path(cache)
        self._traces: dict[str, tracing.Trace | None] = {}
        self._timelines: dict[tuple[str, NetworkSpec], Timeline | None] = {}
        self.replayed = 0  # replays done, for tests: none is repeated

    def trace(self, run_id: str) -> tracing.Trace | None:
        if run_id not in self._traces:
            found = None
            if tracing.ARTIFACT in {a.path for a in self.client.list_artifacts(run_id)}:
                where = self.cache / run_id
                where.mkdir(parents=True, exist_ok=True)
                path = self.client.download_artifacts(run_id, tracing.ARTIFACT, str(where))
                try:
                    found = tracing.load(Path(path))
                except (ValueError, KeyError, OSError) as err:  # another version, truncated file
                    warnings.warn(f"run {run_id}: unreadable trace ({err})", stacklevel=2)
            self._traces[run_id] = found
        return self._traces[run_id]

    def timeline(self, run_id: str, network: NetworkSpec, steps: int | None) -> Timeline | None:
        """The run's trace replayed on ``network``; ``steps``: the run's step count."""
        key = (run_id, network)
        if key not in self._timelines:
            trace, timeline = self.trace(run_id), None
            if trace is not None:
                try:
                    timeline = netmodel.replay(trace, network, steps=steps)
                    self.replayed += 1
                except ValueError as err:  # a trace the model cannot replay: n/a, not a crash
                    warnings.warn(f"run {run_id}: replay failed ({err})", stacklevel=2)
            self._timelines[key] = timeline
        return self._timelines[key]


REACHED, NOT_REACHED, NO_TRACE = "reached", "not reached", "n/a"


def network_times(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    target: float,
    replays: Replays,
    networks: list[NetworkSpec],
) -> pd.DataFrame:
    """Per run and network: simulated seconds to the run's first evaluation at ``target``
    accuracy, its trace replayed on that network. ``status`` is "reached", "not reached"
    (seconds inf) or "n/a" (no trace: seconds NaN)."""
    reached = steps_to_target(curves, target)
    out = []
    for run in runs.itertuples():
        steps = reached.get(run.run_id)
        total = int(run.steps) if pd.notna(run.steps) and run.steps > 0 else None
        for net in networks:
            status, seconds = NO_TRACE, float("nan")
            if steps is None:  # never reached: no replay needed, only whether a trace exists
                if replays.trace(run.run_id) is not None:
                    status, seconds = NOT_REACHED, float("inf")
            elif (timeline := replays.timeline(run.run_id, net, total)) is not None:
                seconds = timeline.seconds_to_step(int(steps))
                status = NO_TRACE if np.isnan(seconds) else REACHED  # steps past the trace
            out.append(
                {"run_id": run.run_id, "row": run.row, "seed": run.seed, "network": str(net),
                 "bps": net.bandwidth_bps, "seconds": seconds, "status": status}
            )  # fmt: skip
    columns = ["run_id", "row", "seed", "network", "bps", "seconds", "status"]
    return pd.DataFrame(out, columns=columns)


def simulated_finals(
    runs: pd.DataFrame, curves: pd.DataFrame, recipe: Recipe, replays: Replays
) -> pd.DataFrame:
    """``runs`` with a column per simulated-time metric its recipe's claims name
    (``network_seconds_to_target@wan``: suite.recipes.simulated_metric), from replays of each
    run's trace: inf where the run never reached the target, NaN without a trace (or, for
    ``..._to_target``, without a target accuracy)."""
    wanted = {c.metric: simulated_metric(c.metric) for c in recipe.claims}
    wanted = {metric: parsed for metric, parsed in wanted.items() if parsed is not None}
    if not wanted or runs.empty:
        return runs
    chosen = target_accuracy(runs, recipe)
    columns = {}
    for metric, (field, name) in wanted.items():
        net = parse_network(name)
        if field == "network_seconds_to_target":
            if chosen is None:
                columns[metric] = float("nan")
                continue
            times = network_times(runs, curves, chosen[0], replays, [net])
            columns[metric] = times["seconds"].to_numpy()
            continue
        values = []
        for run in runs.itertuples():
            total = int(run.steps) if pd.notna(run.steps) and run.steps > 0 else None
            timeline = replays.timeline(run.run_id, net, total)
            seconds = timeline.network_seconds if timeline is not None else float("nan")
            per = seconds / max(timeline.steps, 1) if timeline is not None else float("nan")
            values.append(seconds if field == "network_seconds" else per)
        columns[metric] = values
    return runs.assign(**columns)


def network_table(times: pd.DataFrame, recipe: Recipe, profile: str) -> pd.DataFrame:
    """Rows x networks: simulated seconds to the target, mean ± std over the seeds that
    reached it; "not reached" where none did, "n/a" where no run has a trace."""
    lines = []
    for row in recipe.rows_at(profile):
        line = {"row": row.label}
        for network, group in times[times["row"] == row.label].groupby("network", sort=False):
            line[f"{network} ({format_spec(parse_network(network))})"] = _time_cell(group)
        lines.append(line)
    return pd.DataFrame(lines).fillna(NO_TRACE)


def _time_cell(group: pd.DataFrame) -> str:
    traced = group[group["status"] != NO_TRACE]
    hit = traced.loc[traced["status"] == REACHED, "seconds"]
    if traced.empty:
        return NO_TRACE
    if hit.empty:
        return NOT_REACHED
    cell = _pm(hit, "{:.4g}") + " s"
    return cell if len(hit) == len(group) else f"{cell} ({len(hit)}/{len(group)} seeds reached)"


def network_ranking(times: pd.DataFrame) -> list[str]:
    """Per network, one line: rows from fastest to slowest to the target (mean over the seeds
    that reached it), then those that did not reach it and those without a trace."""
    lines = []
    for network, group in times.groupby("network", sort=False):
        hit = group[group["status"] == REACHED].groupby("row", sort=False)["seconds"].mean()
        ranked = [f"{i}. {row} ({sec:.4g} s)" for i, (row, sec) in
                  enumerate(hit.sort_values().items(), 1)]  # fmt: skip
        rest = []
        for status in (NOT_REACHED, NO_TRACE):
            rows = [r for r in dict.fromkeys(group.loc[group["status"] == status, "row"])
                    if r not in hit.index]  # fmt: skip
            if rows:
                rest.append(f"{status}: {', '.join(rows)}")
        lines.append(f"**{network}**: " + "; ".join([", ".join(ranked) or "none reached", *rest]))
    return lines


def bandwidth_sweep(
    runs: pd.DataFrame, curves: pd.DataFrame, target: float, replays: Replays
) -> pd.DataFrame:
    """:func:`network_times` on ``SWEEP_BPS`` links at ``SWEEP_LATENCY_S``."""
    nets = [NetworkSpec(bps, SWEEP_LATENCY_S) for bps in SWEEP_BPS]
    return network_times(runs, curves, target, replays, nets)


def crossings(sweep: pd.DataFrame, recipe: Recipe) -> list[dict[str, Any]]:
    """Where a row's mean time to the target crosses a baseline row's (the recipe's reference
    and rows of ``BASELINE_TARGETS``) between two swept rates: the rate and time at the
    crossing (interpolated on log-log axes), and whether the row is faster below it."""
    hit = sweep[sweep["status"] == REACHED]
    mean = hit.pivot_table(index="bps", columns="row", values="seconds", aggfunc="mean")
    bases = [r.label for r in recipe.rows if r.target in BASELINE_TARGETS]
    bases = list(dict.fromkeys([*([recipe.reference] if recipe.reference else []), *bases]))
    out, seen = [], set()
    for base in [b for b in bases if b in mean]:
        for row in [r.label for r in recipe.rows if r.label in mean and r.label != base]:
            if frozenset((row, base)) in seen:  # two baselines: their crossing once
                continue
            seen.add(frozenset((row, base)))
            pair = mean[[row, base]].dropna()
            x, a, b = np.log(pair.index.to_numpy()), np.log(pair[row]), np.log(pair[base])
            d = (a - b).to_numpy()
            for i in range(len(d) - 1):
                if d[i] * d[i + 1] < 0:  # strictly opposite signs: a crossing between them
                    t = d[i] / (d[i] - d[i + 1])
                    at = x[i] + t * (x[i + 1] - x[i])
                    secs = a.iloc[i] + t * (a.iloc[i + 1] - a.iloc[i])
                    out.append({"row": row, "other": base, "bps": float(np.exp(at)),
                                "seconds": float(np.exp(secs)),
                                "faster_below": bool(d[i] < 0)})  # fmt: skip
    return out


def _rate(bps: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.3g} bit/s"


def firing_rates(uri: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Long frame (row, tensor, rate) from the ``firing.json`` artifacts event-triggered
    algorithms leave (rank 0's fraction of steps each parameter tensor fired)."""
    import json

    client = open_client(uri)
    rows = []
    for run in runs.itertuples():
        if "firing.json" not in {a.path for a in client.list_artifacts(run.run_id)}:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run.run_id, "firing.json", tmp)
            rates = json.loads(Path(path).read_text())
        rows += [{"row": run.row, "tensor": k, "rate": v} for k, v in rates.items()]
    return pd.DataFrame(rows, columns=["row", "tensor", "rate"])


def fig_firing_heatmap(rates: pd.DataFrame, recipe: Recipe) -> plt.Figure | None:
    if rates.empty:
        return None
    order = [r.label for r in recipe.rows if r.label in set(rates["row"])]
    table = rates.pivot_table(index="row", columns="tensor", values="rate", sort=False)
    table = table.reindex(order)
    width = max(6.4, 0.45 * table.shape[1] + 3)
    fig, ax = plt.subplots(figsize=(width, 0.5 * len(order) + 2))
    sns.heatmap(table, vmin=0, vmax=1, cmap="viridis", annot=table.shape[1] <= 12, fmt=".2f",
                cbar_kws={"label": "fraction of steps the tensor was sent"}, ax=ax)  # fmt: skip
    title = "Firing rate per tensor (rank 0, mean over seeds)"
    ax.set(xlabel="parameter tensor", ylabel="", title=title)
    return fig


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


# -- figures: one function each; each returns its figure, or None when there is no data -------


def _axes() -> tuple[Figure, Any]:
    with sns.axes_style("whitegrid"):
        return plt.subplots(figsize=(7.0, 4.4))


def _hue(recipe: Recipe, frame: pd.DataFrame) -> dict[str, Any]:
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
    fig, ax = _axes()
    sns.lineplot(
        mean.sort_values("step"),
        x="MB",
        y="test_accuracy",
        **_hue(recipe, mean),
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
    fig, ax = _axes()
    sns.lineplot(loss, x="step", y="value", **_hue(recipe, loss), errorbar="sd", ax=ax)
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
    fig, ax = _axes()
    sns.lineplot(data, x=x, y="value", **_hue(recipe, data), errorbar="sd", ax=ax)
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
    fig, ax = _axes()
    sns.lineplot(data.sort_values("step"), x="x", y="value", **_hue(recipe, data), units="seed",
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
    colors = _hue(recipe, runs)["palette"]
    fig, ax = _axes()
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
        xlabel=f"communication saved vs {_reference(runs, recipe)} "
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
    order = _hue(recipe, times)["hue_order"]
    kinds = {
        "measured": "measured on this machine",
        "model": "network model: the run's trace replayed on its network",
    }
    colors = sns.color_palette("colorblind", 4)[2:]
    top = float(times[list(kinds)].max().max()) if times[list(kinds)].notna().any().any() else 1.0
    fig, ax = _axes()
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
    fig, ax = _axes()
    sns.lineplot(data, x="Mbps", y="seconds", **_hue(recipe, data), errorbar="sd", marker="o",
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


def fig_sweep_pareto(trials: pd.DataFrame, study: str, recipe: Recipe) -> Figure | None:
    column = bytes_column(trials.dropna(subset=["test_accuracy"]))
    trials = trials.dropna(subset=["test_accuracy", column])
    trials = trials.assign(MB=trials[column] / 1e6)
    done, pruned = trials[trials["status"] == "FINISHED"], trials[trials["status"] == "KILLED"]
    if done.empty:
        return None
    front = pareto_front(done, column)
    fig, ax = _axes()
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


# -- tables and text ---------------------------------------------------------------------------


def _num(x: float | None) -> str:
    if x is None or pd.isna(x):
        return "—"
    return f"{x:,.0f}" if abs(x) >= 1e4 else f"{x:.4g}"


def _pm(values: pd.Series, fmt: str = "{:.4f}") -> str:
    """mean ± sample std; no std for a single value, "—" for none."""
    values = values.dropna()
    if values.empty:
        return "—"
    mean = fmt.format(values.mean())
    return mean if len(values) == 1 else f"{mean} ± {fmt.format(values.std())}"


def results_table(
    runs: pd.DataFrame, recipe: Recipe, profile: str, diverged: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One line per row of the recipe at ``profile`` (rows without finished runs too: zero
    seeds is a result). Runs in ``diverged`` count as seeds; their row reads "diverged"."""
    ref, fraction = saved(runs, recipe)
    runs = runs.assign(saved=100 * fraction)
    kind = "wire bytes" if bytes_column(runs) == "wire_bytes" else "payload bytes"
    has_wire = "wire_bytes" in runs
    lines = []
    for row in recipe.rows_at(profile):
        mine = runs[runs["row"] == row.label]
        lost = 0 if diverged is None else int((diverged["row"] == row.label).sum())
        accuracy = _pm(mine["test_accuracy"])
        if lost:
            accuracy = "diverged" if mine.empty else f"{accuracy}; {lost} seed(s) diverged"
        lines.append(
            {
                "row": row.label,
                "seeds": len(mine) + lost,
                "final test accuracy": accuracy,
                # wire bytes head, payload beside; n/a for runs stored before wire bytes
                "MB on the wire (all ranks)": _pm(mine["wire_bytes"] / 1e6, "{:.3f}")
                if has_wire and mine["wire_bytes"].notna().any()
                else "n/a",
                "MB payload (all ranks)": _pm(mine["bytes_sent"] / 1e6, "{:.3f}"),
                "messages": _pm(mine["messages"], "{:,.0f}"),
                f"{kind} saved vs {ref or '(no reference run)'}": _pm(mine["saved"], "{:.1f}%"),
                **{
                    header: _pm(mine[metric], "{:.4g}") if metric in mine else "n/a"
                    for metric, header in recipe.columns
                },
            }
        )
    return pd.DataFrame(lines)


def claims_table(verdicts: list[Verdict]) -> pd.DataFrame:
    def measured(v: Verdict) -> str:
        if v.mean is None:
            return "—"
        if v.mean == float("inf"):  # a simulated time to a target some seed never reached
            return f"not reached ({v.detail})"
        return f"{_num(v.mean)}{f' ± {_num(v.std)}' if v.std else ''} ({v.detail})"

    return pd.DataFrame(
        [
            {
                "claim": v.claim.describe(),
                "source": v.claim.source or "—",
                "paper value": _num(v.claim.paper_value),
                "measured (mean ± std)": measured(v),
                "compared with": _num(v.reference),
                # with no measurement (not testable, or a row diverged) the reason is the verdict
                "verdict": f"{v.verdict} ({v.detail})" if v.mean is None else v.verdict,
            }
            for v in verdicts
        ]
    )


def _tally(verdicts: list[Verdict]) -> str:
    n = {k: sum(v.verdict == k for v in verdicts) for k in (HOLDS, FAILS, UNTESTABLE)}
    return f"{n[HOLDS]} hold, {n[FAILS]} fail, {n[UNTESTABLE]} not testable"


def _header(paper: str, experiment: str, uri: str, runs: int, note: str = "") -> str:
    sha, code = code_state()  # the suite's own sources: reports it wrote are not local changes
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"# Reproduction report: {paper}\n\nBuilt {stamp} from experiment `{experiment}` of "
        f"the MLflow store `{store_label(uri)}` ({runs} recipe runs), code {sha[:10]}"
        f"{' with local changes' if code != sha else ''}.{' ' + note if note else ''}"
        f"\n\n{METRIC_CONVENTION}\n\nClaims are checked on the mean over "
        "seeds of the finished runs: **holds** and **fails** are measured outcomes; *not "
        "testable* means the claim is not checked at that profile or a row it needs has no "
        "finished run; a claim on a row whose run diverged fails. Only claims marked holds "
        "are borne out by this report.\n"
    )


def _card(recipe: Recipe) -> str:
    parts = [f"## {recipe.key}: {recipe.title}", f"Recipe `{recipe.name}`."]
    stand_ins = [r for r in recipe.rows if _is_stand_in(r.target)]
    if stand_ins:
        rows = ", ".join(f"{r.label} (`{r.target}`)" for r in stand_ins)
        parts.append(
            f"**Stand-in:** {rows}: our documented substitute for a rule the paper text did not "
            "let us build faithfully (see its docstring); results are the stand-in's, not the "
            "paper's."
        )
    command = f"`{recipe.command}`" if recipe.command else ""
    for label, text in (
        ("Command", command),
        ("Expected runtime", recipe.runtime),
        ("Deviations from the paper", recipe.deviations),
    ):
        if text:
            parts.append(f"**{label}:** {text}")
    return "\n\n".join(parts) + "\n"


def _is_stand_in(target: str) -> bool:
    from suite.registry import ALGORITHMS

    return target in ALGORITHMS and ALGORITHMS.get(target).stand_in


CAPTIONS = {
    "accuracy-vs-bytes": "Test accuracy at each evaluation against the wire bytes sent up to it "
    "(payload bytes for runs stored before wire bytes were counted).",
    "loss": "Training loss per step; the band is ±1 standard deviation over seeds.",
    "saved-vs-accuracy": "Up and to the right is better: fewer wire bytes (payload for older "
    "runs) for the same accuracy.",
    "time-to-target": "Seconds to the first evaluation at the target accuracy: as measured "
    "here, and as the network model predicts them (suite.netmodel: the run's trace replayed on "
    "its config's network, 1 Gbit/s and 50 µs unless set).",
    "bandwidth-sweep": "Simulated seconds to the target accuracy against the link rate of "
    "every rank (log-log; latency fixed, see the x axis): each run's stored trace replayed by "
    "the network model (suite.netmodel) with its measured compute; mean ±1 std over the seeds "
    "that reached the target. Crosses mark where a method's line crosses a baseline's (the "
    "reference row, all-reduce, D-PSGD).",
    "firing": "How often each parameter tensor was sent, per method (event-triggered methods "
    "only; rank 0, mean over seeds).",
}

# -- the build ---------------------------------------------------------------------------------


class _Doc:
    """The report as ordered sections, written out twice: as markdown and as HTML."""

    def __init__(self, figures_dir: Path) -> None:
        self.dir = figures_dir
        self.sections: list[tuple] = []  # ("md", text) | ("table", frame) | ("fig", path, text)
        self.figures: list[Path] = []

    def md(self, text: str) -> None:
        self.sections.append(("md", text))

    def table(self, frame: pd.DataFrame) -> None:
        self.sections.append(("table", frame))

    def figure(self, fig: Figure | None, name: str, caption: str) -> None:
        if fig is None:  # nothing to draw (no such metric logged): no figure, no link
            return
        path = self.dir / f"{name}.png"
        try:
            fig.tight_layout()
            fig.savefig(path, dpi=150)
        finally:
            plt.close(fig)
        self.figures.append(path)
        self.sections.append(("fig", path, caption))


def build_report(
    paper: str, uri: str, out_dir: Path, *, experiment: str | None = None, note: str = ""
) -> Report:
    """Rebuild ``out_dir`` (README.md, report.html, figures/) for ``paper`` from the store;
    ``note`` (which runs were reused, from which code) goes into its header."""
    recipes = recipes_of(paper)  # an unknown paper raises ConfigError before anything is read
    experiment = experiment or paper
    wanted = [m for r in recipes for c in r.curves for m in (c.metric, c.x)]
    extra = tuple(dict.fromkeys(m for m in wanted if m not in ("step", "epoch")))
    client = open_client(uri)
    runs, curves, parents = _load(client, experiment, extra)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-new-", dir=out_dir.parent))
    ours = set(plt.get_fignums())
    verdicts: dict[tuple[str, str], list[Verdict]] = {}
    try:
        doc = _Doc(work / "figures")
        doc.dir.mkdir()
        replays = Replays(client, work / ".traces")  # downloads, removed before the swap
        doc.md(_header(paper, experiment, uri, len(runs), note))
        for recipe in recipes:
            doc.md(_card(recipe))
            for profile in recipe.profiles:
                checked = _profile_section(doc, recipe, profile, runs, curves, uri, replays)
                if checked is not None:
                    verdicts[(recipe.name, profile)] = checked
            _sweep_section(doc, recipe, runs, parents)
        shutil.rmtree(work / ".traces", ignore_errors=True)
        lines = [f"`{name}` at `{prof}`: {_tally(vs)}." for (name, prof), vs in verdicts.items()]
        summary = "\n\n".join(lines) or "_No finished recipe runs: nothing was checked._"
        doc.sections.insert(1, ("md", f"## Summary\n\n{summary}\n"))
        (work / "README.md").write_text(_markdown(doc.sections), encoding="utf-8")
        (work / "report.html").write_text(_html(paper, doc.sections), encoding="utf-8")
        _swap(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        for num in set(plt.get_fignums()) - ours:  # left open by a figure function that failed
            plt.close(num)
    return Report(paper, out_dir, verdicts, [out_dir / "figures" / p.name for p in doc.figures])


def _profile_section(
    doc: _Doc,
    recipe: Recipe,
    profile: str,
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    uri: str,
    replays: Replays,
) -> list[Verdict] | None:
    """Results, claims and figures of one recipe at one profile; None if it has no runs."""
    note = recipe.profiles[profile].note
    doc.md(f"### Profile `{profile}`\n" + (f"\n{note}\n" if note else ""))
    mine = runs[(runs["recipe"] == recipe.name) & (runs["profile"] == profile)]
    mine = mine[mine["study"].isna()]  # never sweep trials
    diverged = mine[mine["diverged"]]
    mine = mine[mine["status"] == "FINISHED"]
    if mine.empty and diverged.empty:
        doc.md("_No finished runs at this profile._\n")
        return None
    mc = curves[curves["run_id"].isin(mine["run_id"])]
    mine = simulated_finals(mine, mc, recipe, replays)  # FIELD@NETWORK metrics of the claims
    verdicts = recipe.check(aggregate(finals(mine)), profile, set(diverged["row"]))
    doc.md("#### Results\n")
    doc.table(results_table(mine, recipe, profile, diverged))
    chosen = target_accuracy(mine, recipe) if not mine.empty else None
    if chosen is not None:
        _network_section(doc, recipe, profile, mine, mc, chosen, replays)
    doc.md(f"#### Claims ({_tally(verdicts)})\n")
    doc.table(claims_table(verdicts))
    if mine.empty:  # every run diverged: nothing to draw
        return verdicts
    doc.md("#### Figures\n")
    base = f"{slug(recipe.name)}-{profile}"
    if recipe.reference is not None and _reference(mine, recipe) is None:
        doc.md(f"_No finished runs of the reference row {recipe.reference}: no savings shown._\n")
    for kind, draw in (
        ("accuracy-vs-bytes", lambda: fig_accuracy_vs_bytes(mc, recipe, profile)),
        ("loss", lambda: fig_loss_vs_step(mc, recipe, profile)),
        ("saved-vs-accuracy", lambda: fig_saved_vs_accuracy(mine, recipe, profile)),
        ("time-to-target", lambda: fig_time_to_target(mine, mc, recipe, profile)),
        ("firing", lambda: fig_firing_heatmap(firing_rates(uri, mine), recipe)),
    ):
        doc.figure(draw(), f"{base}-{kind}", CAPTIONS[kind])
    for curve in recipe.curves:
        name = f"{base}-{slug(curve.metric)}-vs-{slug(curve.x)}"
        doc.figure(fig_curve(mc, mine, recipe, profile, curve), name, curve.caption)
    return verdicts


def _network_section(
    doc: _Doc,
    recipe: Recipe,
    profile: str,
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    chosen: tuple[float, str],
    replays: Replays,
) -> None:
    """Time to the target on the ``NETWORKS`` presets (table and ranking) and against link
    bandwidth (figure), from replays of each run's trace."""
    target, how = chosen
    times = network_times(runs, curves, target, replays, [parse_network(n) for n in NETWORKS])
    doc.md(
        f"#### Time to the target on simulated networks\n\nSimulated seconds to the first "
        f"evaluation at test accuracy {target:.3f} ({how}): each run's stored communication "
        "trace replayed by the network model (suite.netmodel) on each network, with the compute "
        "measured here; mean ± std over the seeds that reached the target. _not reached_: no "
        "seed reached it; _n/a_: runs stored without a trace.\n"
    )
    doc.table(network_table(times, recipe, profile))
    doc.md("Ranking, fastest first:\n\n" + "\n\n".join(network_ranking(times)) + "\n")
    sweep = bandwidth_sweep(runs, curves, target, replays)
    marks = crossings(sweep, recipe)
    name = f"{slug(recipe.name)}-{profile}-bandwidth-sweep"
    title = f"time to accuracy {target:.3f} against link bandwidth"
    doc.figure(fig_bandwidth_sweep(sweep, marks, recipe, profile, title), name,
               CAPTIONS["bandwidth-sweep"])  # fmt: skip
    lines = [
        f"{m['row']} is faster than {m['other']} {'below' if m['faster_below'] else 'above'} "
        f"about {_rate(m['bps'])}"
        for m in marks
    ]
    if lines:
        doc.md("Crossings in the sweep: " + "; ".join(lines) + ".\n")


def _sweep_section(doc: _Doc, recipe: Recipe, runs: pd.DataFrame, parents: dict) -> None:
    """Per study of ``recipe``: trial counts, the Pareto figure and Optuna's own plots."""
    trials = runs[(runs["recipe"] == recipe.name) & runs["study"].notna()]
    for (profile, study), group in trials.groupby(["profile", "study"]):
        done, pruned = (group["status"] == "FINISHED").sum(), (group["status"] == "KILLED").sum()
        lost = int(group["diverged"].sum())
        doc.md(
            f"### Sweep `{study}` (profile `{profile}`)\n\n{done} finished and {pruned} "
            f"pruned trial(s){f' ({lost} diverged)' if lost else ''}. Trials are single runs of "
            "searched settings; they never enter the claims above.\n"
        )
        # default study names repeat the recipe and profile: keep the file names short
        short = slug(str(study)).removeprefix(slug(recipe.name) + "-").removesuffix(f"-{profile}")
        base = f"{slug(recipe.name)}-{profile}-sweep-{short}"
        doc.figure(
            fig_sweep_pareto(group, str(study), recipe),
            f"{base}-pareto",
            "Each point is a trial; the Pareto-optimal ones (no trial has both higher "
            "accuracy and fewer bytes) are joined and labelled with their number.",
        )
        tags = parents.get(str(study))
        if tags is None:
            doc.md("_No parent run of this study in the store: Optuna's plots are skipped._\n")
            continue
        space = recipe.spaces.get(tags.get("suite.space", ""))
        metrics = [m for m, _ in space.objectives] if space else ["test_accuracy", "bytes_sent"]
        names = [AXIS_NAMES.get(m, m) for m in metrics]
        figs, notes = optuna_figures(str(study), tags.get("suite.storage"), names)
        for kind, fig in figs:
            doc.figure(fig, f"{base}-optuna-{kind}", f"Optuna's {kind} plot of study {study}.")
        if notes:
            doc.md("_Optuna: " + "; ".join(notes) + "._\n")


def _swap(work: Path, out_dir: Path) -> None:
    """Put the finished ``work`` where ``out_dir`` was; the old one goes only once it is in."""
    if not out_dir.exists():
        work.rename(out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-old-", dir=out_dir.parent))
    old.rmdir()  # only the unique name is wanted: rename needs it free
    out_dir.rename(old)
    try:
        work.rename(out_dir)
    except BaseException:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _markdown(sections: list[tuple]) -> str:
    parts = []
    for kind, item, *rest in sections:
        if kind == "md":
            parts.append(item)
        elif kind == "table":
            cells = [list(item.columns), *item.astype(str).values.tolist()]
            rows = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells]
            parts.append("\n".join([rows[0], "|" + "---|" * len(item.columns), *rows[1:]]) + "\n")
        else:
            parts.append(f"![{item.stem}](figures/{item.name})\n\n_{rest[0]}_\n")
    return "\n".join(parts)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;"
    "line-height:1.45}table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}"
    "td,th{padding:.3rem .6rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
    "img{max-width:100%}figcaption{color:#555;font-size:.9rem}code{background:#f4f4f4}"
    ".holds{color:#1a7f37;font-weight:600}.fails{color:#cf222e;font-weight:600}"
)


def _html(paper: str, sections: list[tuple]) -> str:
    """One self-contained page: tables inline, figures as base64 data URIs."""
    body = []
    for kind, item, *rest in sections:
        if kind == "md":
            body.append(_md_to_html(item))
        elif kind == "table":
            table = item.to_html(index=False, border=0, escape=True)
            body.append(
                re.sub(r"<td>(holds|fails)([^<]*)</td>", r'<td class="\1">\1\2</td>', table)
            )
        else:
            data = base64.b64encode(item.read_bytes()).decode()
            cap = html.escape(rest[0])
            body.append(
                f'<figure><img alt="{html.escape(item.stem)}" src="data:image/png;'
                f'base64,{data}"><figcaption>{cap}</figcaption></figure>'
            )
    title = f"Reproduction report: {html.escape(paper)}"
    return (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _md_to_html(text: str) -> str:
    """The little markdown this module writes: headings, paragraphs, `code`, **bold**, _em_."""
    out = []
    for block in text.strip().split("\n\n"):
        block = html.escape(block.strip(), quote=False)
        block = re.sub(r"`([^`]+)`", r"<code>\1</code>", block)
        block = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", block)
        block = re.sub(r"(?<![\w*])[*_]([^*_]+)[*_](?![\w*])", r"<em>\1</em>", block)
        level = len(block) - len(block.lstrip("#"))
        if 0 < level <= 6 and block[level : level + 1] == " ":
            out.append(f"<h{level}>{block[level + 1 :]}</h{level}>")
        elif block:
            out.append(f"<p>{block}</p>")
    return "\n".join(out)
