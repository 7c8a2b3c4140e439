"""Reports from the MLflow store alone: runs -> tidy pandas frames -> figures -> README + HTML.

``build_report(paper, uri, out_dir)`` reads every run a recipe of ``paper`` left in the store
(tags ``suite.recipe``, ``suite.row``, ``suite.profile``; final numbers as ``final.*`` metrics;
per-step histories), checks each recipe's claims per profile on the mean over seeds, draws the
figures and writes ``README.md`` plus a self-contained ``report.html``. Nothing is recomputed
from training: the store is the single source, so a report can be rebuilt anywhere it is copied.
The directory is built aside and swapped in whole, so a failed build never leaves half a report.

The pipeline, one module each: :mod:`reports.frames` (store to frames),
:mod:`reports.simtime` (traces replayed on simulated networks), :mod:`reports.figures`,
:mod:`reports.sweeps` and :mod:`reports.paper_figures` (frames to figures),
:mod:`reports.text` (frames to tables and text) and :mod:`reports.render` (README.md and
report.html). This module runs them in order.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from reports.figures import (
    fig_accuracy_vs_bytes,
    fig_bandwidth_sweep,
    fig_curve,
    fig_loss_vs_step,
    fig_time_to_target,
    fig_tradeoff,
)
from reports.frames import (
    AXIS_NAMES,
    _load,
    finals,
    identical_rows,
    reference_row,
    target_accuracy,
    time_to_target,
)
from reports.paper_figures import FIGURES
from reports.render import Doc, markdown, swap, to_html
from reports.simtime import (
    NETWORKS,
    TIED,
    Replays,
    bandwidth_sweep,
    crossings,
    network_table,
    network_times,
    ranking_table,
    rate_text,
    simulated_finals,
)
from reports.sweeps import fig_sweep_pareto, optuna_figures
from reports.text import (
    CAPTIONS,
    card,
    claims_table,
    definitions,
    header,
    identical_note,
    results_table,
    tally,
    time_notes,
    verdict_line,
)
from suite.errors import ConfigError
from suite.network import parse_network
from suite.recipes import Recipe, Verdict, aggregate, recipes_of, slug
from suite.tracking import open_client

DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"


def run_links(base: str | None, experiment_id: str) -> Callable[[str], str]:
    """A run id's page in the MLflow UI at ``base`` (its single-page route)."""
    base = (base or os.environ.get("SUITE_MLFLOW_UI") or DEFAULT_MLFLOW_UI).rstrip("/")
    return lambda run_id: f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


@dataclass(frozen=True)
class Report:
    paper: str
    out_dir: Path
    verdicts: dict[tuple[str, str], list[Verdict]]  # (recipe name, profile) -> verdicts
    figures: list[Path]

    def all_hold(self, profile: str) -> bool:
        """No claim checked at ``profile`` fails (known deviations aside), and some recipe has
        finished runs there."""
        ran = [vs for (_, p), vs in self.verdicts.items() if p == profile]
        return bool(ran) and not any(v.counts_as_failure for vs in ran for v in vs)


def build_report(
    paper: str,
    uri: str,
    out_dir: Path,
    *,
    experiment: str | None = None,
    mlflow_ui: str | None = None,
    note: str = "",
) -> Report:
    """Rebuild ``out_dir`` (README.md, report.html, figures/) for ``paper`` from the store.
    ``mlflow_ui``: the MLflow UI that each results row links its runs to (default
    ``$SUITE_MLFLOW_UI``, else ``DEFAULT_MLFLOW_UI``, where ``make ui`` serves it); ``note``
    (which runs were reused, from which code) goes into the header."""
    recipes = recipes_of(paper)  # an unknown paper raises ConfigError before anything is read
    for recipe in recipes:
        unknown = [name for name in recipe.figures if name not in FIGURES]
        if unknown:
            raise ConfigError(
                f"recipe {recipe.name}: unknown figures {unknown}; valid choices: "
                + ", ".join(FIGURES)
            )
    experiment = experiment or paper
    wanted = [m for r in recipes for c in r.curves for m in (c.metric, c.x)]
    extra = tuple(dict.fromkeys(m for m in wanted if m not in ("step", "epoch")))
    client = open_client(uri)
    runs, curves, parents = _load(client, experiment, extra)
    exp = client.get_experiment_by_name(experiment)
    run_url = run_links(mlflow_ui, exp.experiment_id if exp is not None else "0")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-new-", dir=out_dir.parent))
    ours = set(plt.get_fignums())
    verdicts: dict[tuple[str, str], list[Verdict]] = {}
    try:
        doc = Doc(work / "figures")
        doc.dir.mkdir()
        replays = Replays(client, work / ".traces")  # downloads, removed before the swap
        doc.md(header(paper, experiment, runs, uri, note))
        for recipe in recipes:
            doc.md(card(recipe))
            for profile in recipe.profiles:
                checked = _profile_section(
                    doc, recipe, profile, runs, curves, uri, replays, run_url
                )
                if checked is not None:
                    verdicts[(recipe.name, profile)] = checked
            _sweep_section(doc, recipe, runs, parents)
        shutil.rmtree(work / ".traces", ignore_errors=True)
        lines = [
            f"`{name}` at `{prof}`: {verdict_line(vs)}" for (name, prof), vs in verdicts.items()
        ]
        summary = "\n\n".join(lines) or "_No finished recipe runs: nothing was checked._"
        doc.sections[1:1] = [("md", f"## Summary\n\n{summary}\n"), ("md", definitions(recipes))]
        (work / "README.md").write_text(markdown(doc.sections), encoding="utf-8")
        (work / "report.html").write_text(to_html(paper, doc.sections), encoding="utf-8")
        swap(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        for num in set(plt.get_fignums()) - ours:  # left open by a figure function that failed
            plt.close(num)
    return Report(paper, out_dir, verdicts, [out_dir / "figures" / p.name for p in doc.figures])


def _profile_section(
    doc: Doc,
    recipe: Recipe,
    profile: str,
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    uri: str,
    replays: Replays,
    run_url: Callable[[str], str],
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
    doc.table(results_table(mine, recipe, profile, diverged, run_url))
    chosen = target_accuracy(mine, recipe) if not mine.empty else None
    if chosen is not None:
        _network_section(doc, recipe, profile, mine, mc, chosen, replays)
    doc.md(f"#### Claims ({tally(verdicts)})\n")
    doc.table(claims_table(verdicts))
    if mine.empty:  # every run diverged: nothing to draw
        return verdicts
    doc.md("#### Figures\n")
    base = f"{slug(recipe.name)}-{profile}"
    if recipe.reference is not None and reference_row(mine, recipe) is None:
        doc.md(f"_No finished runs of the reference row {recipe.reference}: no savings shown._\n")
    doc.md(identical_note(identical_rows(mine, mc)))
    for kind, draw in (
        ("accuracy-vs-bytes", lambda: fig_accuracy_vs_bytes(mc, recipe, profile)),
        ("loss", lambda: fig_loss_vs_step(mc, recipe, profile)),
        ("tradeoff", lambda: fig_tradeoff(mine, recipe, profile)),
        ("time-to-target", lambda: fig_time_to_target(mine, mc, recipe, profile)),
    ):
        doc.figure(draw(), f"{base}-{kind}", CAPTIONS[kind])
    if chosen is not None:  # said in words beside the time-to-target figure
        times = time_to_target(mine, mc, chosen[0])
        doc.md(time_notes(times, reference_row(mine, recipe)))
    for name in recipe.figures:  # declared by the recipe: checked in build_report
        extra = FIGURES[name]
        doc.figure(extra.draw(uri, mine, recipe), f"{base}-{name}", extra.caption)
    for curve in recipe.curves:
        name = f"{base}-{slug(curve.metric)}-vs-{slug(curve.x)}"
        doc.figure(fig_curve(mc, mine, recipe, profile, curve), name, curve.caption)
    return verdicts


def _network_section(
    doc: Doc,
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
        "measured here (the host's speed: see the header); mean ± std over the seeds that "
        "reached the target. _not reached_: no "
        "seed reached it; _n/a_: runs stored without a trace.\n"
    )
    doc.table(network_table(times, recipe, profile))
    doc.md(
        "Ranking per network, fastest to the target first; methods that never reached it are "
        "ranked last, marked _not reached_ (then those without a trace, _n/a_). "
        f"{TIED} marks a place these seeds do not separate from the one above: their mean "
        "times differ by no more than the sum of their standard deviations. Where compute "
        "dominates, times also move with the host's speed (header).\n"
    )
    doc.table(ranking_table(times))
    sweep = bandwidth_sweep(runs, curves, target, replays)
    marks = crossings(sweep, recipe)
    name = f"{slug(recipe.name)}-{profile}-bandwidth-sweep"
    title = f"time to accuracy {target:.3f} against link bandwidth"
    doc.figure(fig_bandwidth_sweep(sweep, marks, recipe, profile, title), name,
               CAPTIONS["bandwidth-sweep"])  # fmt: skip
    lines = [
        f"{m['row']} is faster than {m['other']} {'below' if m['faster_below'] else 'above'} "
        f"about {rate_text(m['bps'])}"
        for m in marks
    ]
    if lines:
        doc.md("Crossings in the sweep: " + "; ".join(lines) + ".\n")


def _sweep_section(doc: Doc, recipe: Recipe, runs: pd.DataFrame, parents: dict) -> None:
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
