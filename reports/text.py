"""Frames to tables and text: the results and claims tables, the report's header, each
recipe's card and the figures' captions."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import pandas as pd

from reports.frames import bytes_column, saved
from suite.hostspeed import REFERENCE_STEP
from suite.recipes import FAILS, HOLDS, UNTESTABLE, Recipe, Verdict
from suite.tracking import METRIC_CONVENTION, code_state, store_label


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


# Every metric the report shows or checks, defined once (the "Definitions" section); tables
# and figures use these names. Counts of bytes and messages are summed over ranks, losses and
# accuracies averaged (the suite's convention for final.* metrics).
DEFINITIONS = {
    "final test accuracy": "top-1 accuracy on the test split at the run's last evaluation "
    "(the model every rank holds, or their average for decentralised methods).",
    "wire bytes": "bytes each primitive's algorithm puts on the links (suite.wire: a ring "
    "all-reduce moves about 2(n-1)/n x its payload per rank), summed over ranks; the headline "
    "byte count, comparable across primitives.",
    "payload bytes": "bytes the ranks hand to the communication backend, summed over ranks.",
    "messages": "raw count of communication calls, summed over ranks: a per-tensor method "
    "counts one per tensor (and per flag), a whole-model method one per model, so raw counts "
    "do not compare across methods.",
    "whole-model equivalents": "payload bytes / (4 bytes x the model's parameters): how many "
    "float32 copies of the whole model the ranks sent. This one compares across methods.",
    "saved vs REF": "1 - the row's mean bytes / the reference row's mean bytes, in wire bytes "
    "(payload bytes for runs stored before wire bytes were counted). The only saving the "
    "tables and figures show; a claim on an algorithm's own saving names its metric (below).",
    "time to target": "seconds until the first evaluation at the target accuracy or better: "
    "measured here (sum of step times) or simulated (the run's trace replayed by the network "
    "model, suite.netmodel).",
    "mean ± std": "over the seeds of a row; std is the sample standard deviation.",
}
# the final metrics claims name most, beyond the ones above
METRICS = {
    "test_accuracy": "final test accuracy (above).",
    "bytes_sent": "payload bytes (above).",
    "wire_bytes": "wire bytes (above).",
    "messages": "messages (above).",
    "savings": "EventGraD's own event saving: 1 - tensor sends / possible sends (2 x tensors x "
    "steps x neighbours, over all ranks); counts events, not bytes, so it differs from "
    "'saved vs REF'.",
    "bytes_sent_max": "payload bytes of the busiest rank.",
    "train_loss_auc": "mean training loss over the run (area under the loss curve per step).",
    "train_loss_early": "mean training loss over the first quarter of the run.",
    "samples_per_second": "training samples per second of training time, all ranks.",
    "virtual_seconds": "the virtual clock's length of the run (suite.stragglers), mean over ranks.",
    "clock_to_target": "virtual seconds to the target accuracy.",
    "steps_to_target": "steps to the first evaluation at the target accuracy.",
}


def definitions(recipes: list[Recipe]) -> str:
    """The report's one glossary: the generic terms, then every metric a claim checks."""
    lines = [f"- **{term}**: {text}" for term, text in DEFINITIONS.items()]
    named = dict.fromkeys(c.metric for r in recipes for c in r.claims)
    for metric in named:
        field = metric.split("@")[0]
        if "@" in metric:
            what = "time to target (above)" if field.endswith("_to_target") else field
            text = f"{what} in simulated seconds, the run's trace replayed on the network "
            text += f"{metric.split('@')[1]} (suite.netmodel)."
        else:
            text = METRICS.get(metric, "the algorithm's own final metric (final." + metric
                               + " in MLflow; see the algorithm's docstring).")  # fmt: skip
        lines.append(f"- `{metric}`: {text}")
    return "## Definitions\n\n" + "\n".join(lines) + "\n"


def model_equivalents(runs: pd.DataFrame) -> pd.Series:
    """Payload bytes in float32 copies of the whole model (NaN without a parameter count)."""
    params = runs["num_params"] if "num_params" in runs else pd.Series(float("nan"), runs.index)
    return runs["bytes_sent"] / (4.0 * params.where(params > 0))


def results_table(
    runs: pd.DataFrame,
    recipe: Recipe,
    profile: str,
    diverged: pd.DataFrame | None = None,
    run_url: Callable[[str], str] | None = None,
) -> pd.DataFrame:
    """One line per row of the recipe at ``profile`` (rows without finished runs too: zero
    seeds is a result). Runs in ``diverged`` count as seeds; their row reads "diverged".
    ``run_url``: a run id's page in the MLflow UI, linked from the row (markdown links)."""
    ref, fraction = saved(runs, recipe)
    runs = runs.assign(saved=100 * fraction, models=model_equivalents(runs))
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
                "whole-model equivalents": pm(mine["models"], "{:,.1f}")
                if mine["models"].notna().any()
                else "n/a",
                f"{kind} saved vs {ref or '(no reference run)'}": pm(mine["saved"], "{:.1f}%"),
                **{
                    header: pm(mine[metric], "{:.4g}") if metric in mine else "n/a"
                    for metric, header in recipe.columns
                },
                **({"MLflow runs": _links(mine, run_url)} if run_url else {}),
            }
        )
    return pd.DataFrame(lines)


def _links(runs: pd.DataFrame, run_url: Callable[[str], str]) -> str:
    """One markdown link per run, by seed: ``[s0](URL) [s1](URL)``."""
    ordered = runs.sort_values("seed")
    links = [f"[s{r.seed}]({run_url(r.run_id)})" for r in ordered.itertuples()]
    return " ".join(links) or "—"


def identical_note(pairs: list[tuple[str, str]]) -> str:
    """A note naming rows whose runs are identical (their lines lie on top of each other)."""
    if not pairs:
        return ""
    named = "; ".join(f"{a} and {b}" for a, b in pairs)
    return (
        f"_Rows that train identically: {named} have the same accuracy and loss at every "
        "evaluation of every seed, so their lines coincide in the accuracy and loss figures "
        "(told apart by marker and line style); they differ only in what they send (see the "
        "results table)._\n"
    )


def time_notes(times: pd.DataFrame, reference: str | None, column: str = "measured") -> str:
    """Plain sentences: each row's time to the target against the reference row's (mean over
    the seeds that reached it), saying "slower" where it is."""
    if reference is None:
        return ""
    mean = times.groupby("row", sort=False)[column].mean()
    ref = mean.get(reference)
    if ref is None or pd.isna(ref) or ref <= 0:
        return ""
    lines = []
    for row, secs in mean.items():
        if row == reference:
            continue
        if pd.isna(secs):
            lines.append(f"{row} never reached the target")
        elif abs(secs / ref - 1) < 0.02:
            lines.append(f"{row} is about as fast as {reference}: {secs:.3g} s against "
                         f"{ref:.3g} s ({secs / ref:.2f}x)")  # fmt: skip
        elif secs > ref:
            lines.append(f"{row} is **slower** than {reference}: {secs:.3g} s against "
                         f"{ref:.3g} s ({secs / ref:.2f}x)")  # fmt: skip
        else:
            lines.append(f"{row} is faster than {reference}: {secs:.3g} s against {ref:.3g} s "
                         f"({secs / ref:.2f}x)")  # fmt: skip
    return ("Measured time to the target: " + "; ".join(lines) + ".\n") if lines else ""


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


def verdict_line(verdicts: list[Verdict]) -> str:
    """The tally, then every claim that fails by name: the summary must not leave a reader to
    find the paper's central claim failing in a table further down."""
    failed = [v for v in verdicts if v.verdict == FAILS]
    if not failed:
        return tally(verdicts) + "."
    named = "; ".join(
        v.claim.describe() + (" (known deviation)" if v.is_known_failure else "") for v in failed
    )
    return f"{tally(verdicts)}. Fails here: {named}."


def made_by(runs: pd.DataFrame) -> str:
    """Which code made the report's runs (their ``suite.code`` tags), per profile: a report may
    hold runs of several commits (each profile run when it was, reused since)."""
    if runs.empty:
        return ""

    def name(code: str) -> str:
        sha, _, changes = str(code).partition("+")
        return "unrecorded code" if sha == "unknown" else (
            f"commit {sha[:10]}" + (" with local changes" if changes else "")
        )  # fmt: skip

    parts = []
    for profile, group in runs.groupby("profile", sort=False):
        counts = group["code"].map(name).value_counts(sort=False)
        parts.append(f"{profile}: " + ", ".join(f"{n} by {c}" for c, n in counts.items()))
    return "Runs by the code that made them: " + "; ".join(parts) + "."


def made_on(runs: pd.DataFrame) -> str:
    """The machines and torch versions that made the report's runs (their ``hardware`` and
    ``torch_version`` tags), per profile: on CPU a run repeats bit for bit only on like
    hardware and torch, as torch's kernels round differently by instruction set."""
    if runs.empty:
        return ""
    parts = []
    for profile, group in runs.groupby("profile", sort=False):
        machines = group.get("hardware", pd.Series("", index=group.index)).fillna("")
        versions = group.get("torch", pd.Series("", index=group.index)).fillna("")
        named = [
            (machine or "an unrecorded machine") + (f", torch {version}" if version else "")
            for machine, version in zip(machines, versions, strict=True)
        ]
        counts = pd.Series(named).value_counts(sort=False)
        parts.append(f"{profile}: " + " and ".join(f"{n} on {m}" for m, n in counts.items()))
    return (
        f"Runs on: {'; '.join(parts)}. On CPU a run repeats bit for bit only on like hardware "
        "and torch: kernels for another instruction set round differently."
    )


def host_speed(runs: pd.DataFrame) -> str:
    """The speed of the host that measured the runs' compute, per profile (their
    ``reference_step_ms``, :mod:`suite.hostspeed`): the simulated times rest on it."""
    if runs.empty:
        return ""
    parts = []
    for profile, group in runs.groupby("profile", sort=False):
        ms = group.get("reference_step_ms", pd.Series(dtype=float)).dropna()
        if ms.empty:
            parts.append(f"{profile}: not recorded (runs made before suite.hostspeed)")
        else:
            parts.append(
                f"{profile}: {ms.iloc[0]:.3g} ms (1 run)" if len(ms) == 1 else
                f"{profile}: {ms.median():.3g} ms, median of {len(ms)} runs "
                f"({ms.min():.3g}-{ms.max():.3g})"
            )  # fmt: skip
    return (
        f"Host speed, one reference step ({REFERENCE_STEP}) timed by each run after its "
        f"training: {'; '.join(parts)}. Simulated times replay the compute measured on that "
        "host: compare them across reports only at like speed (suite.hostspeed)."
    )


LINKS_NOTE = (
    "Each results row links its MLflow runs in the UI that serves this store (`make ui` beside "
    "it, or `SUITE_MLFLOW_UI`): the links need that store, which a clone of the repository does "
    "not have; the tables and figures here are the record."
)


def header(paper: str, experiment: str, runs: pd.DataFrame, uri: str, note: str = "") -> str:
    sha, code = code_state()  # the suite's own sources: reports it wrote are not local changes
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    made = " ".join(filter(None, (made_by(runs), made_on(runs), host_speed(runs))))
    return (
        f"# Reproduction report: {paper}\n\nBuilt {stamp} from experiment `{experiment}` of "
        f"the MLflow store `{store_label(uri)}` ({len(runs)} recipe runs) by code {sha[:10]}"
        f"{' with local changes' if code != sha else ''}.{' ' + note if note else ''}"
        f"{' ' + made if made else ''}"
        f"\n\n{LINKS_NOTE}\n\n{METRIC_CONVENTION}\n\nClaims are checked on the mean over "
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
    "tradeoff": "How much communication is saved at what accuracy cost: final test accuracy "
    "against the bytes each run sent (faint points: seeds; large: mean ± std over seeds, "
    "labelled with the saving against the reference row). The dotted step is the Pareto "
    "frontier of the row means (no row has both higher accuracy and fewer bytes); the "
    "horizontal line is the reference row's accuracy and the band the tolerance its accuracy "
    "claims allow. Up and to the left is better; the byte axis is logarithmic where rows "
    "differ tenfold or more.",
    "time-to-target": "Seconds until a run's test accuracy first reaches the target (in the "
    "title: the recipe's target, else the target_accuracy its runs were given, else 95% of the "
    "worst row's mean final accuracy, which every row reaches): as measured here, and as the "
    "network model predicts them (suite.netmodel: the run's trace replayed on its config's "
    "network, 1 Gbit/s and 50 µs unless set). Above each bar: its measured time as a multiple "
    "of the reference row's, marked slower or faster.",
    "bandwidth-sweep": "Simulated seconds to the target accuracy against the link rate of "
    "every rank (log-log; latency fixed, see the x axis): each run's stored trace replayed by "
    "the network model (suite.netmodel) with its measured compute; mean over the seeds that "
    "reached the target, ±1 std as a band (no bands where more than six methods share the "
    "axes); the reference row's line runs over a grey halo. Crosses, in a method's colour, "
    "mark where its line crosses a baseline's (the reference row, all-reduce, D-PSGD; only the "
    "reference row's where more than six methods share the axes); the text below lists every "
    "crossing.",
}
