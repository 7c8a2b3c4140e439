"""Figures specific to one paper, drawn only for the recipes that declare them
(``Recipe(figures=(...))``, by the names in ``FIGURES``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from suite.recipes import Recipe
from suite.tracking import open_client


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
