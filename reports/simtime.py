"""Simulated time: each run's stored communication trace (``trace.npz.b64``, :mod:`suite.trace`)
downloaded once per build and replayed (:mod:`suite.netmodel`) once per network it is asked
about (:class:`Replays`), giving the time to the target accuracy on the ``NETWORKS`` presets (a
table and a ranking table per profile), on a sweep of link rates (``SWEEP_BPS`` at
``SWEEP_LATENCY_S``, a figure), and the ``FIELD@NETWORK`` metrics of simulated-time claims
(:func:`suite.recipes.simulated_metric`). Runs stored without a trace read "n/a"."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.frames import steps_to_target, target_accuracy
from reports.text import pm
from suite import netmodel
from suite import trace as tracing
from suite.netmodel import Timeline
from suite.network import NetworkSpec, format_spec, parse_network
from suite.recipes import Recipe, simulated_metric

# Time to the target beyond the run's own network: every run's trace replayed on these presets
# (suite.network), and on a sweep of link rates with the latency held at one switched LAN hop
# (the 1g preset's), so the sweep shows the effect of bandwidth alone.
NETWORKS = ("datacenter", "1g", "wan")


SWEEP_BPS = tuple(float(b) for b in np.logspace(7, 11, 12))  # 10 Mbit/s .. 100 Gbit/s


SWEEP_LATENCY_S = 50e-6


# rows the bandwidth sweep marks crossings against (besides the recipe's reference row)
BASELINE_TARGETS = ("allreduce_sgd", "dpsgd")


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
    from tqdm import tqdm

    reached = steps_to_target(curves, target)
    out = []
    # replays of many-rank traces take minutes: a bar on a terminal (none in logs and tests)
    bar = tqdm(
        runs.itertuples(),
        total=len(runs),
        desc=f"replaying traces on {len(networks)} network(s)",
        unit="run",
        disable=None,
        leave=False,
    )
    for run in bar:
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
    cell = pm(hit, "{:.4g}") + " s"
    return cell if len(hit) == len(group) else f"{cell} ({len(hit)}/{len(group)} seeds reached)"


TIED = "≈"  # a ranking place the seeds do not separate from the one above


def ranking_table(times: pd.DataFrame) -> pd.DataFrame:
    """One column per network, one line per place: rows from fastest to slowest to the target
    (mean over the seeds that reached it), then, ranked last and marked so, those that never
    reached it, then those without a trace. A place whose mean is within the seeds' spread of
    the one above (the two means differ by no more than the sum of their sample standard
    deviations) is marked :data:`TIED`: those runs do not order the two (a place of one seed,
    whose spread is unknown, never is)."""
    columns = {}
    for network, group in times.groupby("network", sort=False):
        reached = group[group["status"] == REACHED].groupby("row", sort=False)["seconds"]
        hit, spread = reached.mean().sort_values(), reached.std()
        cells = []
        for place, (row, sec) in enumerate(hit.items()):
            tied = False
            if place:
                above = hit.index[place - 1]
                tied = abs(sec - hit[above]) <= spread[row] + spread[above]  # False if NaN
            cells.append(f"{TIED + ' ' if tied else ''}{row} ({sec:.4g} s)")
        for status, mark in ((NOT_REACHED, NOT_REACHED), (NO_TRACE, "n/a: no trace")):
            rows = dict.fromkeys(group.loc[group["status"] == status, "row"])
            cells += [f"{row} ({mark})" for row in rows if row not in hit.index]
        columns[f"{network} ({format_spec(parse_network(network))})"] = cells
    places = max((len(c) for c in columns.values()), default=0)
    table = {k: c + [""] * (places - len(c)) for k, c in columns.items()}
    return pd.DataFrame({"rank": range(1, places + 1), **table})


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


def rate_text(bps: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.3g} bit/s"
