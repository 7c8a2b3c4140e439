"""Figures specific to one paper, drawn only for the recipes that declare them by name
(``Recipe(figures=("firing",))``): each name in ``FIGURES`` is a caption and a function from
the store and one profile's runs to a figure (or None when the runs left nothing to draw)."""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from suite.recipes import Recipe
from suite.tracking import open_client


@dataclass(frozen=True)
class PaperFigure:
    caption: str
    draw: Callable[[str, pd.DataFrame, Recipe], Figure | None]  # (store uri, runs, recipe)


def _artifact(uri: str, runs: pd.DataFrame, name: str) -> list[tuple[str, str]]:
    """(row, text) of the artifact ``name`` of each run that left one."""
    client, out = open_client(uri), []
    for run in runs.itertuples():
        if name not in {a.path for a in client.list_artifacts(run.run_id)}:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run.run_id, name, tmp)
            out.append((run.row, Path(path).read_text()))
    return out


def firing_rates(uri: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Long frame (row, tensor, rate) from the ``firing.json`` artifacts event-triggered
    algorithms leave (rank 0's fraction of steps each parameter tensor fired)."""
    rows = [
        {"row": row, "tensor": k, "rate": v}
        for row, text in _artifact(uri, runs, "firing.json")
        for k, v in json.loads(text).items()
    ]
    return pd.DataFrame(rows, columns=["row", "tensor", "rate"])


def _heatmap(table: pd.DataFrame, label: str, title: str, xlabel: str, **kw) -> Figure:
    width = max(6.4, 0.45 * table.shape[1] + 3)
    fig, ax = plt.subplots(figsize=(width, 0.5 * len(table) + 2))
    sns.heatmap(table, cmap="viridis", annot=table.shape[1] <= 12, fmt=".2f",
                cbar_kws={"label": label}, ax=ax, **kw)  # fmt: skip
    ax.set(xlabel=xlabel, ylabel="", title=title)
    return fig


def fig_firing_heatmap(rates: pd.DataFrame, recipe: Recipe) -> Figure | None:
    if rates.empty:
        return None
    order = [r.label for r in recipe.rows if r.label in set(rates["row"])]
    table = rates.pivot_table(index="row", columns="tensor", values="rate", sort=False)
    return _heatmap(table.reindex(order), "fraction of steps the tensor was sent",
                    "Firing rate per tensor (rank 0, mean over seeds)", "parameter tensor",
                    vmin=0, vmax=1)  # fmt: skip


def backup_counts(uri: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Long frame (row, rank, backups) from the ``backups.csv`` artifacts of the backup-worker
    algorithms (baselines.consensus_backup, dybw): every rank's b at every step."""
    frames = [
        pd.read_csv(io.StringIO(text))[["rank", "backups"]].assign(row=row)
        for row, text in _artifact(uri, runs, "backups.csv")
    ]
    return pd.concat(frames) if frames else pd.DataFrame(columns=["row", "rank", "backups"])


def fig_backup_counts(counts: pd.DataFrame, recipe: Recipe) -> Figure | None:
    if counts.empty:
        return None
    order = [r.label for r in recipe.rows if r.label in set(counts["row"])]
    table = counts.pivot_table(index="row", columns="rank", values="backups", aggfunc="mean")
    return _heatmap(table.reindex(order), "mean backup workers b (neighbours not waited for)",
                    "Backup workers per rank (mean over steps and seeds)", "rank",
                    vmin=0)  # fmt: skip


FIGURES: dict[str, PaperFigure] = {
    "firing": PaperFigure(
        "How often each parameter tensor was sent, per method (event-triggered methods "
        "only; rank 0, mean over seeds).",
        lambda uri, runs, recipe: fig_firing_heatmap(firing_rates(uri, runs), recipe),
    ),
    "backups": PaperFigure(
        "How many neighbours each rank did not wait for (its backup workers b), per method: "
        "mean over steps and seeds, from each run's backups.csv (backup-worker methods only).",
        lambda uri, runs, recipe: fig_backup_counts(backup_counts(uri, runs), recipe),
    ),
}
