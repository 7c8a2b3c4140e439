"""Reports from the MLflow store alone: MLflow -> one tidy pandas frame -> seaborn -> markdown/HTML.

``build_report(paper, uri, out_dir)`` reads every run a recipe of ``paper`` left in the store
(tags ``suite.recipe``, ``suite.row``, ``suite.profile``; final numbers as ``final.*`` metrics;
per-step histories), checks each recipe's claims per profile on the mean over seeds, draws the
figures and writes ``README.md`` plus a self-contained ``report.html``. The directory is built
aside and swapped in whole, so a failed build never leaves a half-written report.
"""

from __future__ import annotations

import base64
import datetime
import html
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI machines or clusters
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from suite.recipes import FAILS, HOLDS, Recipe, Verdict, aggregate, recipes_of, slug
from suite.tracking import git_state, open_client

CURVES = ("train_loss", "test_accuracy", "bytes_sent", "messages", "step_seconds")


@dataclass(frozen=True)
class Report:
    paper: str
    out_dir: Path
    verdicts: dict[tuple[str, str], list[Verdict]]  # (recipe, profile) -> verdicts
    figures: list[Path]

    def all_hold(self, profile: str) -> bool:
        """True if every claim checked at ``profile`` holds (and some recipe ran there)."""
        checked = [v for (_, p), vs in self.verdicts.items() if p == profile for v in vs]
        return bool(checked) and not any(v.verdict == FAILS for v in checked)


# -- the frame ---------------------------------------------------------------------------------


def load_runs(uri: str, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) of the recipe runs in ``experiment``.

    runs: one row per FINISHED or KILLED (pruned) run with a ``suite.recipe`` tag: run_id,
    status, start, recipe, row, profile, seed, target, study, trial and the final metrics.
    Only the latest run of each (recipe, row, profile, seed) outside sweeps is kept, so a
    ``--force`` rerun replaces what it reran. curves: long frame of per-step histories."""
    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    records, histories = [], []
    if exp is not None:
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string="attributes.status != 'RUNNING'",
            max_results=50000,
        )
        for run in runs:
            tags = run.data.tags
            if "suite.recipe" not in tags or run.info.status not in ("FINISHED", "KILLED"):
                continue
            if tags.get("suite.kind") == "study":
                continue
            record = {
                "run_id": run.info.run_id,
                "status": run.info.status,
                "start": run.info.start_time,
                "recipe": tags["suite.recipe"],
                "row": tags.get("suite.row", ""),
                "profile": tags.get("suite.profile", ""),
                "seed": int(run.data.params.get("seed", 0)),
                "target": tags.get("target", ""),
                "study": tags.get("suite.study"),
                "trial": int(tags["suite.trial"]) if "suite.trial" in tags else None,
            }
            for key, value in run.data.metrics.items():
                if key.startswith("final."):
                    record[key[len("final.") :]] = value
            records.append(record)
            if record["study"] is None:
                for metric in CURVES:
                    for m in client.get_metric_history(run.info.run_id, metric):
                        histories.append((run.info.run_id, m.step, metric, m.value))
    runs_df = pd.DataFrame(records, columns=_RUN_COLUMNS if not records else None)
    if records:
        plain = runs_df[runs_df["study"].isna()].sort_values("start")
        plain = plain.drop_duplicates(["recipe", "row", "profile", "seed"], keep="last")
        runs_df = pd.concat([plain, runs_df[runs_df["study"].notna()]], ignore_index=True)
    curves = pd.DataFrame(histories, columns=["run_id", "step", "metric", "value"])
    keys = runs_df[["run_id", "recipe", "row", "profile", "seed"]]
    curves = curves.merge(keys, on="run_id", how="inner")
    return runs_df, curves


_RUN_COLUMNS = [
    "run_id", "status", "start", "recipe", "row", "profile", "seed", "target", "study", "trial",
]  # fmt: skip


# -- figures (one function each; every one returns its figure) --------------------------------


def _rows_palette(recipe: Recipe) -> dict[str, tuple]:
    colors = sns.color_palette("colorblind", len(recipe.rows))
    return {row.label: colors[i] for i, row in enumerate(recipe.rows)}


def fig_accuracy_vs_bytes(curves: pd.DataFrame, recipe: Recipe) -> plt.Figure | None:
    wide = curves.pivot_table(
        index=["row", "seed", "step"], columns="metric", values="value"
    ).reset_index()
    if "test_accuracy" not in wide or "bytes_sent" not in wide:
        return None
    wide = wide.dropna(subset=["test_accuracy", "bytes_sent"])
    wide["MB sent"] = wide["bytes_sent"] / 1e6
    mean = wide.groupby(["row", "step"], as_index=False)[["MB sent", "test_accuracy"]].mean()
    order = [r.label for r in recipe.rows if r.label in set(mean["row"])]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sns.lineplot(
        mean, x="MB sent", y="test_accuracy", hue="row", hue_order=order, marker="o", ax=ax,
        palette=_rows_palette(recipe),
    )  # fmt: skip
    ax.set(
        xlabel="cumulative bytes sent, all ranks (MB)",
        ylabel="test accuracy (averaged model)",
        title="Accuracy against communication (mean over seeds)",
    )
    ax.legend(title=None)
    return fig


def fig_loss_vs_step(curves: pd.DataFrame, recipe: Recipe) -> plt.Figure | None:
    loss = curves[curves["metric"] == "train_loss"]
    if loss.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sns.lineplot(
        loss, x="step", y="value", hue="row", errorbar="sd", ax=ax, palette=_rows_palette(recipe)
    )
    ax.set(
        xlabel="training step",
        ylabel="train loss (mean over ranks)",
        yscale="log",
        title="Training loss (band: ±1 std over seeds)",
    )
    ax.legend(title=None)
    return fig


def _reference_row(runs: pd.DataFrame, recipe: Recipe) -> str | None:
    if recipe.reference and recipe.reference in set(runs["row"]):
        return recipe.reference
    if runs.empty or "bytes_sent" not in runs:
        return None
    return str(runs.groupby("row")["bytes_sent"].mean().idxmax())


def _saved(runs: pd.DataFrame, recipe: Recipe) -> pd.DataFrame:
    ref = _reference_row(runs, recipe)
    if ref is None:
        return pd.DataFrame()
    ref_bytes = runs[runs["row"] == ref]["bytes_sent"].mean()
    out = runs.assign(saved=1.0 - runs["bytes_sent"] / ref_bytes if ref_bytes else float("nan"))
    return out.groupby("row").agg(
        saved=("saved", "mean"),
        saved_std=("saved", "std"),
        acc=("test_accuracy", "mean"),
        acc_std=("test_accuracy", "std"),
    )


def fig_saved_vs_accuracy(runs: pd.DataFrame, recipe: Recipe) -> plt.Figure | None:
    table = _saved(runs, recipe)
    if table.empty:
        return None
    palette = _rows_palette(recipe)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row, r in table.iterrows():
        ax.errorbar(
            r["saved"], r["acc"], xerr=_nz(r["saved_std"]), yerr=_nz(r["acc_std"]),
            fmt="o", capsize=3, color=palette.get(row), label=row,
        )  # fmt: skip
    ax.set(
        xlabel=f"communication saved vs {_reference_row(runs, recipe)} (fraction of bytes)",
        ylabel="final test accuracy",
        title="Communication saved against accuracy (±1 std over seeds)",
    )
    ax.legend()
    return fig


def _nz(x: float) -> float:
    return 0.0 if pd.isna(x) else float(x)


def time_to_target(runs: pd.DataFrame, curves: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per run: steps and seconds (measured, and cost model) to reach ``target`` accuracy."""
    rows = []
    for run in runs.itertuples():
        mine = curves[curves["run_id"] == run.run_id]
        acc = mine[mine["metric"] == "test_accuracy"].sort_values("step")
        hit = acc[acc["value"] >= target]
        if hit.empty:
            rows.append({"row": run.row, "measured": float("nan"), "model": float("nan")})
            continue
        step = int(hit["step"].iloc[0])
        secs = mine[(mine["metric"] == "step_seconds") & (mine["step"] <= step)]["value"].sum()
        steps = getattr(run, "steps", float("nan"))
        per_step = getattr(run, "compute_seconds", 0.0) + getattr(run, "model_comm_seconds", 0.0)
        model = (step + 1) / steps * per_step if steps == steps and steps else float("nan")
        rows.append({"row": run.row, "measured": secs, "model": model})
    return pd.DataFrame(rows, columns=["row", "measured", "model"])


def _target(runs: pd.DataFrame, recipe: Recipe) -> float:
    if recipe.target_accuracy is not None:
        return recipe.target_accuracy
    return 0.95 * float(runs.groupby("row")["test_accuracy"].mean().min())


def fig_time_to_target(
    runs: pd.DataFrame, curves: pd.DataFrame, recipe: Recipe
) -> plt.Figure | None:
    if runs.empty or "test_accuracy" not in runs:
        return None
    target = _target(runs, recipe)
    times = time_to_target(runs, curves, target)
    long = times.melt(id_vars="row", var_name="how", value_name="seconds")
    long["how"] = long["how"].map(
        {"measured": "measured (this machine)", "model": "cost model (10 Gbit/s, 50 µs)"}
    )
    order = [r.label for r in recipe.rows if r.label in set(times["row"])]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sns.barplot(long, x="row", y="seconds", hue="how", order=order, errorbar="sd", ax=ax)
    for i, row in enumerate(order):
        if times[times["row"] == row]["measured"].isna().all():
            ax.text(i, 0, "not reached", ha="center", va="bottom", rotation=90)
    ax.set(
        xlabel="",
        ylabel="seconds to reach the target",
        title=f"Time to {target:.3f} test accuracy (mean ± std over seeds)",
    )
    ax.tick_params(axis="x", labelrotation=15)
    ax.legend(title=None)
    return fig


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """Trials no other trial beats on both accuracy (higher) and bytes (lower)."""
    keep = []
    for i, p in points.iterrows():
        dominated = (
            (points["test_accuracy"] >= p["test_accuracy"])
            & (points["bytes_sent"] <= p["bytes_sent"])
            & (
                (points["test_accuracy"] > p["test_accuracy"])
                | (points["bytes_sent"] < p["bytes_sent"])
            )
        ).any()
        if not dominated:
            keep.append(i)
    return points.loc[keep].sort_values("bytes_sent")


def fig_sweep_pareto(trials: pd.DataFrame, study: str) -> plt.Figure | None:
    done = trials[trials["status"] == "FINISHED"].dropna(subset=["test_accuracy", "bytes_sent"])
    if done.empty:
        return None
    done = done.assign(mb=done["bytes_sent"] / 1e6)
    front = pareto_front(done)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter(done["mb"], done["test_accuracy"], color="0.6", label="trial")
    ax.plot(front["mb"], front["test_accuracy"], "o-", color="C3", label="Pareto front")
    ax.set(
        xlabel="bytes sent, all ranks (MB)",
        ylabel="final test accuracy",
        title=f"Sweep {study}: accuracy against bytes",
    )
    ax.legend()
    return fig


def optuna_figures(uri: str, experiment: str, recipe: Recipe) -> list[tuple[str, plt.Figure]]:
    """Optuna's own plots for each study of ``recipe`` whose storage can still be opened."""
    import optuna

    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    parents = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`suite.kind` = 'study' and tags.`suite.recipe` = '{recipe.name}'",
    )
    out = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for parent in parents:
        name, storage = parent.data.tags["suite.study"], parent.data.tags.get("suite.storage")
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except Exception:  # storage moved or gone: the MLflow runs still give the Pareto plot
            continue
        plot = optuna.visualization.matplotlib
        complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            drawers: list[tuple[str, Callable]] = [
                ("pareto", plot.plot_pareto_front)
                if len(study.directions) > 1
                else ("history", plot.plot_optimization_history)
            ]
            # importances rank several knobs; with one there is nothing to rank
            if len(complete) >= 2 and len({k for t in complete for k in t.params}) >= 2:
                drawers.append(("importance", plot.plot_param_importances))
            for kind, draw in drawers:
                try:
                    names = {"target_names": _OBJECTIVES} if kind == "pareto" else {}
                    ax = draw(study, **names)
                except Exception:  # e.g. importances need variation; skip that plot only
                    continue
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                out.append((f"optuna-{slug(name)}-{kind}", fig))
    return out


_OBJECTIVES = ["test accuracy", "bytes sent"]  # the order Space.objectives uses for Pareto

# -- markdown and HTML -------------------------------------------------------------------------


def _pm(mean: float, std: float, fmt: str = "{:.4f}") -> str:
    if pd.isna(mean):
        return "—"
    return fmt.format(mean) + ("" if pd.isna(std) or std == 0 else " ± " + fmt.format(std))


def results_table(runs: pd.DataFrame, recipe: Recipe) -> pd.DataFrame:
    saved = _saved(runs, recipe)
    lines = []
    for row in recipe.rows:
        mine = runs[runs["row"] == row.label]
        if mine.empty:
            continue
        acc, mb = mine["test_accuracy"], mine["bytes_sent"] / 1e6
        lines.append(
            {
                "method": row.label,
                "seeds": len(mine),
                "test accuracy": _pm(acc.mean(), acc.std()),
                "MB sent": _pm(mb.mean(), mb.std(), "{:.3f}"),
                "messages": f"{mine['messages'].mean():,.0f}" if "messages" in mine else "—",
                "communication saved": _pm(
                    saved.loc[row.label, "saved"], saved.loc[row.label, "saved_std"], "{:.3f}"
                )
                if row.label in saved.index
                else "—",
            }
        )
    return pd.DataFrame(lines)


def claims_table(verdicts: list[Verdict]) -> pd.DataFrame:
    def measured(v: Verdict) -> str:
        if v.mean is None:
            return "—"
        return _pm(v.mean, v.std, "{:.4g}") + (
            "" if v.reference is None else f" (vs {v.reference:.4g})"
        )

    return pd.DataFrame(
        [
            {
                "claim": v.claim.describe(),
                "source": v.claim.source or "—",
                "paper value": "—" if v.claim.paper_value is None else f"{v.claim.paper_value:g}",
                "measured (mean ± std)": measured(v),
                "verdict": v.verdict + (f" ({v.detail})" if v.verdict != HOLDS else ""),
            }
            for v in verdicts
        ]
    )


def _md_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_no runs_\n"
    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    body = "".join(
        "| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |\n"
        for r in frame.itertuples(index=False)
    )
    return head + body


# -- the build ---------------------------------------------------------------------------------


def build_report(paper: str, uri: str, out_dir: Path, *, experiment: str | None = None) -> Report:
    """Rebuild ``out_dir`` (README.md, report.html, figures/) for ``paper`` from the store."""
    recipes = recipes_of(paper)
    runs, curves = load_runs(uri, experiment or paper)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        (work / "figures").mkdir()
        verdicts: dict[tuple[str, str], list[Verdict]] = {}
        sections: list[tuple[str, object]] = []  # ("md", text) | ("table", df) | ("fig", path)
        figures: list[Path] = []

        def save(fig: plt.Figure | None, name: str) -> None:
            if fig is None:
                return
            path = work / "figures" / f"{name}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=150)
            plt.close(fig)
            figures.append(path)
            sections.append(("fig", path))

        sha, dirty = git_state()
        sections.append(
            (
                "md",
                f"# Reproduction report: {paper}\n\nBuilt {datetime.date.today()} from the "
                f"MLflow store `{uri}` (code {sha[:10]}{' with local changes' if dirty else ''})"
                ". Claims are checked on the mean over seeds; *not testable* means the claim is "
                "not checked at that profile or a row it needs has no finished run.\n",
            )
        )
        for recipe in recipes:
            mine = runs[(runs["recipe"] == recipe.name) & runs["study"].isna()]
            sections.append(("md", _card(recipe)))
            for profile in recipe.profiles:
                prof = mine[mine["profile"] == profile]
                if prof.empty:
                    sections.append(("md", f"### Profile `{profile}`\n\n_No runs yet._\n"))
                    continue
                stats = aggregate((r["row"], r.to_dict()) for _, r in prof.iterrows())
                checked = recipe.check(stats, profile)
                verdicts[(recipe.name, profile)] = checked
                note = recipe.profiles[profile].note
                sections.append(("md", f"### Profile `{profile}`\n\n{note}\n\n#### Results\n"))
                sections.append(("table", results_table(prof, recipe)))
                sections.append(("md", "#### Claims\n"))
                sections.append(("table", claims_table(checked)))
                sections.append(("md", "#### Figures\n"))
                pc = curves[curves["run_id"].isin(prof["run_id"])]
                base = f"{slug(recipe.name)}-{profile}"
                save(fig_accuracy_vs_bytes(pc, recipe), f"{base}-accuracy-vs-bytes")
                save(fig_loss_vs_step(pc, recipe), f"{base}-loss")
                save(fig_saved_vs_accuracy(prof, recipe), f"{base}-saved-vs-accuracy")
                save(fig_time_to_target(prof, pc, recipe), f"{base}-time-to-target")
            trials = runs[(runs["recipe"] == recipe.name) & runs["study"].notna()]
            if not trials.empty:
                sections.append(("md", "### Sweeps\n"))
                for study, group in trials.groupby("study"):
                    save(fig_sweep_pareto(group, str(study)), f"sweep-{slug(str(study))}")
                for name, fig in optuna_figures(uri, experiment or paper, recipe):
                    save(fig, name)
        (work / "README.md").write_text(_markdown(sections, work))
        (work / "report.html").write_text(_html(paper, sections))
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            work.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        plt.close("all")
        raise
    moved = [out_dir / "figures" / p.name for p in figures]
    return Report(paper, out_dir, verdicts, moved)


def _card(recipe: Recipe) -> str:
    lines = [f"## {recipe.key}: {recipe.title}", f"Recipe `{recipe.name}`."]
    for label, text in (
        ("Command", f"`{recipe.command}`" if recipe.command else ""),
        ("Expected runtime", recipe.runtime),
        ("Deviations from the paper", recipe.deviations),
    ):
        if text:
            lines.append(f"{label}: {text}")
    return "\n\n".join(lines) + "\n"


def _markdown(sections: list[tuple[str, object]], root: Path) -> str:
    parts = []
    for kind, item in sections:
        if kind == "md":
            parts.append(str(item))
        elif kind == "table":
            parts.append(_md_table(item))  # type: ignore[arg-type]
        else:
            path = Path(str(item))
            parts.append(f"![{path.stem}](figures/{path.name})\n")
    return "\n".join(parts)


def _html(paper: str, sections: list[tuple[str, object]]) -> str:
    body = []
    for kind, item in sections:
        if kind == "md":
            body.append(_md_to_html(str(item)))
        elif kind == "table":
            body.append(item.to_html(index=False, border=0, escape=True))  # type: ignore[union-attr]
        else:
            data = base64.b64encode(Path(str(item)).read_bytes()).decode()
            name = html.escape(Path(str(item)).stem)
            body.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}"></figure>')
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse;margin:1rem 0}td,th{padding:.3rem .6rem;"
        "border-bottom:1px solid #ddd;text-align:left}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(paper)}"
        f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def _md_to_html(text: str) -> str:
    """The little markdown the report writes: headings, paragraphs, `code`, _emphasis_."""
    out = []
    for block in text.strip().split("\n\n"):
        block = html.escape(block.strip())
        block = _inline(block)
        level = len(block) - len(block.lstrip("#"))
        if 0 < level <= 6 and block[level : level + 1] == " ":
            out.append(f"<h{level}>{block[level + 1 :]}</h{level}>")
        elif block:
            out.append(f"<p>{block}</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    import re

    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)
    return re.sub(r"\b_([^_]+)_\b", r"<em>\1</em>", text)
