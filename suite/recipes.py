"""Recipes: a paper's table or figure as runnable rows plus the claims they should bear out.

A :class:`Recipe` is a card (big_vision / AlgoPerf style). It is keyed by the paper's own label
("Table 2", "Fig 7"), lists its rows (each a method under the paper's own row label, as a
target plus ``--set`` overrides), and declares its claims. Three profiles say how big to run it:
``smoke`` shrinks it to the embedded data for CI and laptops; ``real`` is the paper's model,
batch, ranks and schedule on a real data set this machine has (Fashion-MNIST in place of MNIST),
in under an hour on 2 CPU cores (most recipes in 15 to 30 minutes), where the paper's relative
claims are checked; ``full`` is the paper's setup and needs the user's data and hardware.
Each profile names its seeds; a row's results are the mean and standard deviation over them.

A :class:`Claim` compares one row's mean of a final metric with a number (the paper's or a
threshold) or with another row's mean, scaled: ``bytes_sent of "Local SGD H=4" <= 0.3 x
"All-reduce SGD"``. Its verdict is ``holds``, ``fails`` (also when a row it needs diverged) or
``not testable`` (the claim is not checked at this profile, or a row it needs has no finished
run).

A claim can name a group of rows (``row`` a tuple) with a ``quantifier``: ``"all"`` (every
row of the group meets the comparison: "no compression method is faster than DDP") or
``"any"`` (at least one does). Each row is checked as its own claim; the group's verdict and
the measurement shown are those of the deciding row (for ``all`` the one closest to failing,
for ``any`` the one furthest past the bound); a diverged row fails as its own claim would.

A claim a correct implementation is known not to meet at some profile carries a :class:`Known`
deviation for it (like pytest's ``xfail``, never silent): the reason and the evidence (a section
of the paper's notes in ``reproduce/<paper>/``). Its verdict still reads ``fails``, marked
known, and does not fail ``suite reproduce``; if it holds, the verdict is flagged as an
unexpected pass. A row that diverged still fails the claim: that is never the known failure.

A claim can be stated in simulated time on any network: the metric ``FIELD@NETWORK`` (FIELD one
of ``SIMULATED_FIELDS``, NETWORK a preset or spec of :mod:`suite.network`), e.g.
``network_seconds_to_target@wan``, is measured by replaying each run's stored trace on that
network (:mod:`suite.netmodel`, done by the report builder); a run that never reached the
target counts as infinitely slow, a run stored without a trace leaves the claim not testable.

Recipes live in ``reproduce/<paper>/`` and register themselves in ``RECIPES`` under
``<paper>/<label-slug>``; search spaces for ``suite sweep`` sit beside them (:class:`Space`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from suite.config import RunConfig, apply_overrides, flatten
from suite.errors import ConfigError
from suite.network import parse_network
from suite.targets import resolve_target

PROFILES = ("smoke", "real", "full")
# the network model's figures a claim can state on another network: "FIELD@NETWORK"
SIMULATED_FIELDS = ("network_seconds", "network_seconds_per_step", "network_seconds_to_target")
HOLDS, FAILS, UNTESTABLE = "holds", "fails", "not testable"
Op = Literal[">=", "<=", "within"]
Quantifier = Literal["all", "any"]


@dataclass(frozen=True)
class Row:
    """One method of a table: the paper's row label, a target and its overrides."""

    label: str
    target: str
    overrides: tuple[str, ...] = ()  # KEY=VALUE, applied after the profile's


@dataclass(frozen=True)
class Profile:
    """How big to run a recipe: overrides for every row, and the seeds."""

    overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    note: str = ""  # what this profile needs or leaves out (shown in the report)
    # the row labels run at this profile (empty: every row), when a figure's rows differ by
    # scale (ImageNet batches at full, digits micro-batch counts at smoke)
    rows: tuple[str, ...] = ()


@dataclass(frozen=True)
class Known:
    """An expected failure of a claim at ``profile``: why, and where that is shown."""

    profile: str
    reason: str  # one sentence a report reader understands
    evidence: str  # where the failure is explained, e.g. "reproduce/eventgrad/NOTES.md#flag-round"

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(
                f"known deviation at profile {self.profile!r}; valid choices: {', '.join(PROFILES)}"
            )
        if not self.reason.strip() or not self.evidence.strip():
            raise ValueError("a known deviation needs a reason and its evidence")


@dataclass(frozen=True)
class Claim:
    """``metric`` of ``row`` compared by ``op`` with ``value`` or with ``scale`` x ``other``'s.

    ``tolerance`` widens the comparison (for ``within``: the allowed absolute difference).
    ``paper_value`` is what the paper reports, shown beside the measurement; ``source`` says
    where ("Fig 7, batch 131K"). ``profiles`` lists where the claim is checked."""

    metric: str
    row: str | tuple[str, ...]  # a tuple: a group of rows, joined by ``quantifier``
    op: Op
    value: float | None = None
    other: str | None = None
    scale: float = 1.0
    tolerance: float = 0.0
    paper_value: float | None = None
    source: str = ""
    profiles: tuple[str, ...] = PROFILES
    known: tuple[Known, ...] = ()  # expected failures, per profile (see the module docstring)
    quantifier: Quantifier = "all"  # for a group of rows: every one, or at least one

    def __post_init__(self) -> None:
        if self.op not in (">=", "<=", "within"):
            raise ValueError(f"claim op {self.op!r}; valid choices: >=, <=, within")
        if self.quantifier not in ("all", "any"):
            raise ValueError(f"claim quantifier {self.quantifier!r}; valid choices: all, any")
        if isinstance(self.row, tuple) and not self.row:
            raise ValueError("a claim on a group of rows needs at least one row")
        if (self.value is None) == (self.other is None):
            raise ValueError("a claim compares with exactly one of: value, other")
        simulated_metric(self.metric)  # a bad FIELD@NETWORK fails at import, not in a report
        at = [k.profile for k in self.known]
        if len(set(at)) != len(at):
            raise ValueError(f"claim {self.describe()}: two known deviations at one profile")
        if set(at) - set(self.profiles):
            raise ValueError(f"claim {self.describe()}: known deviation where it is not checked")

    @property
    def rows(self) -> tuple[str, ...]:
        """The row labels the claim is about (one, or its group's)."""
        return self.row if isinstance(self.row, tuple) else (self.row,)

    def known_at(self, profile: str) -> Known | None:
        return next((k for k in self.known if k.profile == profile), None)

    def describe(self) -> str:
        ref = f"{self.value:g}" if self.other is None else f"{self.other}"
        if self.other is not None and self.scale != 1.0:
            ref = f"{self.scale:g} x {ref}"
        rows = self.row
        if isinstance(rows, tuple):
            rows = f"{'every one' if self.quantifier == 'all' else 'at least one'} of "
            rows += "{" + ", ".join(self.row) + "}"
        if self.op == "within":
            return f"{self.metric} of {rows} within {self.tolerance:g} of {ref}"
        tol = f" (tolerance {self.tolerance:g})" if self.tolerance else ""
        return f"{self.metric} of {rows} {self.op} {ref}{tol}"

    def check(
        self,
        stats: Mapping[str, Mapping[str, tuple[float, float, int]]],
        diverged: Collection[str] = (),
    ) -> Verdict:
        """Verdict from ``stats[row][metric] = (mean, std, n)`` of one profile's runs; a row in
        ``diverged`` fails (for a group: as one of its rows)."""
        if isinstance(self.row, tuple):
            return self._check_group(stats, diverged)
        if self.row in diverged:
            return Verdict(self, FAILS, None, None, None, f"{self.row} diverged")
        mine = stats.get(self.row, {}).get(self.metric)
        theirs = None if self.other is None else stats.get(self.other, {}).get(self.metric)
        if mine is None or (self.other is not None and theirs is None):
            missing = self.row if mine is None else self.other
            detail = f"no finished runs of {missing}"
            if missing in stats:  # runs, but none measured this metric
                detail = f"no {self.metric} for {missing}"
                if simulated_metric(self.metric):
                    detail += " (runs stored without a trace)"
            return Verdict(self, UNTESTABLE, None, None, None, detail)
        mean, std, n = mine
        ref = self.value if theirs is None else self.scale * theirs[0]
        assert ref is not None
        if self.op == ">=":
            ok = mean >= ref - self.tolerance
        elif self.op == "<=":
            ok = mean <= ref + self.tolerance
        else:
            ok = abs(mean - ref) <= self.tolerance
        if math.isnan(mean) or math.isnan(ref):
            ok = False
        return Verdict(self, HOLDS if ok else FAILS, mean, std, ref, f"{n} seed(s)")

    def _check_group(
        self,
        stats: Mapping[str, Mapping[str, tuple[float, float, int]]],
        diverged: Collection[str],
    ) -> Verdict:
        """Each row as its own claim, joined by the quantifier; the deciding row's numbers."""
        each = {r: replace(self, row=r).check(stats, diverged) for r in self.rows}
        held = [r for r, v in each.items() if v.verdict == HOLDS]
        if self.quantifier == "all":
            verdict = HOLDS if len(held) == len(each) else FAILS
            if verdict == FAILS and not any(v.verdict == FAILS for v in each.values()):
                verdict = UNTESTABLE  # nothing failed, but some row could not be checked
        else:
            verdict = HOLDS if held else FAILS
            if verdict == FAILS and any(v.verdict == UNTESTABLE for v in each.values()):
                verdict = UNTESTABLE  # nothing held, and some row could not be checked
        # deciding row: for "all" the one closest to failing (a failing one if any), for "any"
        # the one furthest past the bound; unmeasured rows decide only when nothing was measured
        if verdict == UNTESTABLE:
            pool = [r for r, v in each.items() if v.verdict == UNTESTABLE]
        else:
            pool = [r for r, v in each.items() if v.verdict == verdict] or list(each)
        margin = {r: self._margin(each[r]) for r in pool}
        pick = (min if self.quantifier == "all" else max)(pool, key=margin.__getitem__)
        v = each[pick]
        detail = f"{pick}: {v.detail}; {len(held)} of {len(each)} rows hold"
        return Verdict(self, verdict, v.mean, v.std, v.reference, detail)

    def _margin(self, v: Verdict) -> float:
        """How far past the bound a row's measurement is (negative: short of it)."""
        if v.mean is None or v.reference is None:
            return -math.inf
        if self.op == ">=":
            gap = v.mean - (v.reference - self.tolerance)
        elif self.op == "<=":
            gap = v.reference + self.tolerance - v.mean
        else:
            gap = self.tolerance - abs(v.mean - v.reference)
        return -math.inf if math.isnan(gap) else gap


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    verdict: str  # HOLDS, FAILS or UNTESTABLE
    mean: float | None
    std: float | None
    reference: float | None  # what the mean was compared with
    detail: str = ""
    known: Known | None = None  # the claim's known deviation at the checked profile

    @property
    def is_known_failure(self) -> bool:
        """Fails as the known deviation expects (measured: a diverged row is never known)."""
        return self.verdict == FAILS and self.known is not None and self.mean is not None

    @property
    def is_unexpected_pass(self) -> bool:
        """Holds although a known deviation expected it to fail: flagged in the report."""
        return self.verdict == HOLDS and self.known is not None

    @property
    def counts_as_failure(self) -> bool:
        """A failure that fails ``suite reproduce``: not explained by a known deviation."""
        return self.verdict == FAILS and not self.is_known_failure

    @property
    def label(self) -> str:
        """The verdict as shown: ``fails (known)``, ``holds (unexpected pass)``, or plain."""
        if self.is_known_failure:
            return f"{FAILS} (known)"
        if self.is_unexpected_pass:
            return f"{HOLDS} (unexpected pass)"
        return self.verdict


@dataclass(frozen=True)
class Space:
    """An Optuna search space over one paper knob, for ``suite sweep``.

    ``suggest(trial)`` returns ``--set`` overrides for ``row``. ``objectives`` are final metrics
    with directions: one gives a single-objective study (with pruning on ``test_accuracy`` at
    each evaluation); two give a Pareto study (accuracy against bytes)."""

    row: str
    suggest: Callable[[Any], Sequence[str]]
    objectives: tuple[tuple[str, str], ...] = (("test_accuracy", "maximize"),)
    description: str = ""


@dataclass(frozen=True)
class Curve:
    """A logged per-step metric the report draws against step, epoch or another logged
    per-step metric (a cumulative one: ``x="algo.elements_total"``), one line per row: the
    mean over seeds with a ±1 std band against step or epoch, one line per seed against a
    metric. ``Curve("algo.mismatch", label="gradient mismatch")``."""

    metric: str  # as logged: "train_loss", "algo.mismatch"
    x: str = "step"  # "step", "epoch" or a logged metric
    label: str = ""  # y-axis label (default: the metric)
    caption: str = ""
    log: bool = False  # log-scale y axis
    x_label: str = ""  # x-axis label when x is a metric (default: the metric)


@dataclass(frozen=True)
class Recipe:
    """A paper table or figure, runnable. See the module docstring."""

    paper: str
    key: str  # the paper's label: "Table 2", "Fig 7"
    title: str
    rows: tuple[Row, ...]
    claims: tuple[Claim, ...]
    profiles: Mapping[str, Profile]
    command: str = ""  # the exact command that reproduces it
    runtime: str = ""  # expected runtime on named hardware, per profile
    deviations: str = ""  # where we depart from the paper, and why
    reference: str | None = None  # the row others are measured against (communication saved)
    # for time to accuracy (None: the builder's pick); a mapping gives one per profile
    target_accuracy: float | Mapping[str, float] | None = None
    spaces: Mapping[str, Space] = field(default_factory=dict)
    curves: tuple[Curve, ...] = ()  # extra figures of logged per-step metrics
    columns: tuple[tuple[str, str], ...] = ()  # extra (final metric, header) results columns
    figures: tuple[str, ...] = ()  # this paper's own report figures (reports.paper_figures)

    def __post_init__(self) -> None:
        labels = [r.label for r in self.rows]
        if len(set(labels)) != len(labels):
            raise ValueError(f"recipe {self.name}: duplicate row labels")
        for claim in self.claims:
            for label in (*claim.rows, claim.other):
                if label is not None and label not in labels:
                    raise ValueError(f"recipe {self.name}: claim names unknown row {label!r}")
        for name, space in self.spaces.items():
            if space.row not in labels:
                raise ValueError(f"recipe {self.name}: space {name!r} names row {space.row!r}")
        if isinstance(self.target_accuracy, Mapping):
            stray = set(self.target_accuracy) - set(self.profiles)
            if stray:
                raise ValueError(f"recipe {self.name}: target accuracy at unknown profiles {stray}")
        unknown = set(self.profiles) - set(PROFILES)
        if unknown:
            raise ValueError(f"recipe {self.name}: unknown profiles {sorted(unknown)}")
        for name, prof in self.profiles.items():
            stray = [label for label in prof.rows if label not in labels]
            if stray:
                raise ValueError(f"recipe {self.name}: profile {name!r} names unknown rows {stray}")

    @property
    def name(self) -> str:
        return f"{self.paper}/{slug(self.key)}"

    def row(self, label: str) -> Row:
        for row in self.rows:
            if row.label == label:
                return row
        raise ConfigError(
            f"recipe {self.name} has no row {label!r}; valid choices: "
            + ", ".join(r.label for r in self.rows)
        )

    def rows_at(self, profile: str) -> tuple[Row, ...]:
        """The rows run at ``profile`` (all of them unless the profile names some)."""
        chosen = self.profile(profile).rows
        return tuple(r for r in self.rows if not chosen or r.label in chosen)

    def target_at(self, profile: str) -> float | None:
        """The target accuracy at ``profile`` (None: none set there)."""
        if isinstance(self.target_accuracy, Mapping):
            return self.target_accuracy.get(profile)
        return self.target_accuracy

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise ConfigError(
                f"recipe {self.name} has no profile {name!r}; valid choices: "
                + ", ".join(self.profiles)
            )
        return self.profiles[name]

    def overrides(self, row: Row, profile: str, seed: int, extra: Sequence[str] = ()) -> list[str]:
        """The ``--set`` list of one run: profile, row, then ``extra``, then the seed."""
        return [*self.profile(profile).overrides, *row.overrides, *extra, f"seed={seed}"]

    def resolve(self, row: Row, profile: str, seed: int, extra: Sequence[str] = ()) -> RunConfig:
        """The run's full config; raises ConfigError / UnknownNameError on a bad recipe."""
        base, _ = resolve_target(row.target)
        return apply_overrides(base, self.overrides(row, profile, seed, extra))

    def check(
        self,
        stats: Mapping[str, Mapping[str, tuple[float, float, int]]],
        profile: str,
        diverged: Collection[str] = (),
    ) -> list[Verdict]:
        """Every claim's verdict at ``profile``. A claim on a row in ``diverged`` (a run of it
        stopped on a non-finite loss or parameter) fails: the method did not train."""
        out = []
        for claim in self.claims:
            if profile not in claim.profiles:
                out.append(Verdict(claim, UNTESTABLE, None, None, None, f"not at {profile}"))
            elif claim.other is not None and claim.other in diverged:
                out.append(Verdict(claim, FAILS, None, None, None, f"{claim.other} diverged"))
            else:
                checked = claim.check(stats, diverged)
                out.append(replace(checked, known=claim.known_at(profile)))
        return out


def simulated_metric(metric: str) -> tuple[str, str] | None:
    """``(field, network)`` of a simulated-time metric ``FIELD@NETWORK``, None for any other;
    ConfigError for an unknown field or network."""
    field, at, network = metric.partition("@")
    if not at:
        return None
    if field not in SIMULATED_FIELDS:
        raise ConfigError(
            f"simulated metric {metric!r}: unknown field {field!r}; valid choices: "
            + ", ".join(SIMULATED_FIELDS)
        )
    parse_network(network)  # ConfigError listing the presets and the grammar
    return field, network


def aggregate(
    results: Iterable[tuple[str, Mapping[str, Any]]],
) -> dict[str, dict[str, tuple[float, float, int]]]:
    """``{row: {metric: (mean, std, n)}}`` over seeds from ``(row label, final metrics)`` pairs;
    std is the sample standard deviation (0 for a single seed)."""
    values: dict[str, dict[str, list[float]]] = {}
    for row, metrics in results:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(row, {}).setdefault(key, []).append(float(value))
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for row, metrics in values.items():
        for key, xs in metrics.items():
            mean = sum(xs) / len(xs)
            var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
            out.setdefault(row, {})[key] = (mean, math.sqrt(var), len(xs))
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# Keys left out of a run's identity while at these values: knobs added after runs were stored,
# whose value here reproduces those runs exactly (so they keep their hashes and are not rerun).
ADDED_AT_NO_EFFECT = {
    "algorithm.straggler.network": "",
    "optim.end_lr": 0.0,
    "optim.hold_epochs": 0.0,
    "optim.schedule_weight_decay": False,
}


def config_hash(target: str, cfg: RunConfig) -> str:
    """Identity of a run for skipping: the target and the whole resolved config, less
    ``network`` (a reporting knob: a stored run's trace replays on any network, so changing
    it forces no rerun, and runs stored before it existed keep their hashes) and the keys of
    ``ADDED_AT_NO_EFFECT`` at their no-effect values."""
    flat = {
        k: v
        for k, v in flatten(cfg).items()
        if k != "network" and not (k in ADDED_AT_NO_EFFECT and v == ADDED_AT_NO_EFFECT[k])
    }
    text = json.dumps(flat, indent=2, sort_keys=True)  # as config.to_json
    return hashlib.sha256(f"{target}\n{text}".encode()).hexdigest()[:16]


def recipes_of(paper: str) -> list[Recipe]:
    """The registered recipes of ``paper``; ConfigError listing the papers if there are none."""
    from suite.registry import RECIPES

    found = [e.obj for e in RECIPES.entries() if e.obj.paper == paper]
    if not found:
        papers = sorted({e.obj.paper for e in RECIPES.entries()})
        raise ConfigError(f"no recipes for paper {paper!r}; valid choices: {', '.join(papers)}")
    return found


def register(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to the registry (call at import of its reproduce/ module)."""
    from suite.registry import RECIPES

    RECIPES.register(recipe.name, description=f"{recipe.key}: {recipe.title}", paper=recipe.paper)(
        recipe
    )
    return recipe
