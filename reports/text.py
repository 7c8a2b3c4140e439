"""Frames to tables and text: the results and claims tables, the report's header, each
recipe's card and the figures' captions."""

from __future__ import annotations

import datetime

import pandas as pd

from reports.frames import bytes_column, saved
from suite.recipes import FAILS, HOLDS, UNTESTABLE, Recipe, Verdict
from suite.tracking import git_state


def num(x: float | None) -> str:
    if x is None or pd.isna(x):
        return "—"
    return f"{x:,.0f}" if abs(x) >= 1e4 else f"{x:.4g}"


def pm(values: pd.Series, fmt: str = "{:.4f}") -> str:
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
        accuracy = pm(mine["test_accuracy"])
        if lost:
            accuracy = "diverged" if mine.empty else f"{accuracy}; {lost} seed(s) diverged"
        lines.append(
            {
                "row": row.label,
                "seeds": len(mine) + lost,
                "final test accuracy": accuracy,
                # wire bytes head, payload beside; n/a for runs stored before wire bytes
                "MB on the wire (all ranks)": pm(mine["wire_bytes"] / 1e6, "{:.3f}")
                if has_wire and mine["wire_bytes"].notna().any()
                else "n/a",
                "MB payload (all ranks)": pm(mine["bytes_sent"] / 1e6, "{:.3f}"),
                "messages": pm(mine["messages"], "{:,.0f}"),
                f"{kind} saved vs {ref or '(no reference run)'}": pm(mine["saved"], "{:.1f}%"),
                **{
                    header: pm(mine[metric], "{:.4g}") if metric in mine else "n/a"
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
        return f"{num(v.mean)}{f' ± {num(v.std)}' if v.std else ''} ({v.detail})"

    return pd.DataFrame(
        [
            {
                "claim": v.claim.describe(),
                "source": v.claim.source or "—",
                "paper value": num(v.claim.paper_value),
                "measured (mean ± std)": measured(v),
                "compared with": num(v.reference),
                # with no measurement (not testable, or a row diverged) the reason is the verdict
                "verdict": f"{v.label} ({v.detail})" if v.mean is None else v.label,
                "known deviation": _known(v),
            }
            for v in verdicts
        ]
    )


def _known(v: Verdict) -> str:
    if v.known is None:
        return "—"
    if v.is_unexpected_pass:
        return f"**unexpected pass**: expected to fail as {v.known.reason} ({v.known.evidence})"
    return f"{v.known.reason} ({v.known.evidence})"


def tally(verdicts: list[Verdict]) -> str:
    n = {k: sum(v.verdict == k for v in verdicts) for k in (HOLDS, FAILS, UNTESTABLE)}
    known = sum(v.is_known_failure for v in verdicts)
    surprise = sum(v.is_unexpected_pass for v in verdicts)
    fails = f"{n[FAILS]} fail" + (f" ({known} known)" if known else "")
    holds = f"{n[HOLDS]} hold" + (f" ({surprise} unexpectedly)" if surprise else "")
    return f"{holds}, {fails}, {n[UNTESTABLE]} not testable"


def header(paper: str, experiment: str, uri: str, runs: int) -> str:
    sha, dirty = git_state()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"# Reproduction report: {paper}\n\nBuilt {stamp} from experiment `{experiment}` of "
        f"the MLflow store `{uri}` ({runs} recipe runs), code {sha[:10]}"
        f"{' with local changes' if dirty else ''}.\n\nClaims are checked on the mean over "
        "seeds of the finished runs: **holds** and **fails** are measured outcomes; *not "
        "testable* means the claim is not checked at that profile or a row it needs has no "
        "finished run; a claim on a row whose run diverged fails. *fails (known)* is a failure "
        "the recipe expects at that profile, with its reason and evidence beside it (it does "
        "not fail the command); *holds (unexpected pass)* flags a claim expected to fail. Only "
        "claims marked holds are borne out by this report.\n"
    )


def card(recipe: Recipe) -> str:
    parts = [f"## {recipe.key}: {recipe.title}", f"Recipe `{recipe.name}`."]
    stand_ins = [r for r in recipe.rows if is_stand_in(r.target)]
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


def is_stand_in(target: str) -> bool:
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
