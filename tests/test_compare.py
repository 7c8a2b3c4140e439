"""The cross-method benchmark recipe (reproduce/compare): its one table of knobs covers the
registry exactly, every entry but the variants is a row, and its field claims read the rows
they should."""

from __future__ import annotations

import math
from pathlib import Path

import reproduce.compare as compare
from reports import headline
from reports.simtime import TIED
from suite.recipes import FAILS, HOLDS, recipes_of
from suite.registry import ALGORITHMS


def test_every_registered_algorithm_has_an_entry_and_every_entry_is_registered() -> None:
    assert compare.table_problems(set(ALGORITHMS.names())) == []


def test_a_new_registration_without_an_entry_or_an_entry_without_one_is_a_problem() -> None:
    registered = set(ALGORITHMS.names())
    assert compare.table_problems(registered | {"my_method"}) == [
        "registered algorithm 'my_method' has no entry in KNOBS"
    ]
    assert compare.table_problems(registered - {"dpsgd"}) == [
        "KNOBS entry 'dpsgd' names no registered algorithm"
    ]


def test_the_recipe_runs_every_entry_but_variants() -> None:
    (recipe,) = recipes_of("compare")
    targets = [row.target for row in recipe.rows]
    for name, knobs in compare.KNOBS.items():
        assert (name in targets) == (not knobs.not_a_row), name
        if knobs.not_a_row:
            assert name in ALGORITHMS, f"{name}: a variant must name a registered algorithm"
    assert compare.REFERENCE in targets and recipe.reference == compare.label(compare.REFERENCE)


def test_stand_ins_are_labelled_as_such() -> None:
    (recipe,) = recipes_of("compare")
    for row in recipe.rows:
        assert row.label.endswith("(stand-in)") == ALGORITHMS.get(row.target).stand_in
    for name, knobs in compare.KNOBS.items():  # the variants too: the table states the flag
        assert knobs.stand_in == ALGORITHMS.get(name).stand_in, name


def _times(network: str, **seconds: float) -> dict[str, dict[str, tuple[float, float, int]]]:
    metric = f"network_seconds_to_target@{network}"
    return {row: {metric: (s, 0.0, 2)} for row, s in seconds.items()}


def test_the_field_claims_read_the_compression_and_sparse_or_event_groups() -> None:
    (recipe,) = recipes_of("compare")
    ref = compare.label(compare.REFERENCE)
    by_metric = {c.metric: c for c in recipe.claims}
    datacenter = by_metric["network_seconds_to_target@datacenter"]
    slow = by_metric["network_seconds_to_target@1g"]
    assert "topk_sgd" in datacenter.rows and "eventgrad" not in datacenter.rows
    assert {"topk_sgd", "eventgrad"} <= set(slow.rows) and "dpsgd" not in slow.rows
    assert datacenter.quantifier == "all" and slow.quantifier == "any"
    # at datacenter: one compression method faster than the reference breaks "none beats it"
    slower = _times("datacenter", **{ref: 1.0}, **{r: 2.0 for r in datacenter.rows})
    assert datacenter.check(slower).verdict == HOLDS
    one_faster = {**slower, **_times("datacenter", topk_sgd=0.5)}
    assert datacenter.check(one_faster).verdict == FAILS
    # at 1g: one sparsified or event-triggered method faster suffices; never reaching is not
    never = _times("1g", **{ref: 1.0}, **{r: math.inf for r in slow.rows})
    assert slow.check(never).verdict == FAILS
    assert slow.check({**never, **_times("1g", eventgrad=0.9)}).verdict == HOLDS
    assert set(slow.profiles) == set(datacenter.profiles) == {"smoke", "real"}


def test_the_16_bit_claims_compare_ddp_fp16_with_ddp_once_both_are_rows() -> None:
    (recipe,) = recipes_of("compare")
    labels = {row.label for row in recipe.rows}
    assert len(compare.claims(labels - {"ddp_fp16"})) == 3  # the three network claims only
    claims = compare.claims(labels | {"ddp", "ddp_fp16"})[3:]
    assert [(c.metric, c.rows, c.other) for c in claims] == [
        ("wire_bytes", ("ddp_fp16",), "ddp"),
        ("test_accuracy", ("ddp_fp16",), "ddp"),
    ]
    stats = {"ddp": {"wire_bytes": (1000.0, 0.0, 2), "test_accuracy": (0.9, 0.0, 2)}}
    stats["ddp_fp16"] = {"wire_bytes": (500.0, 0.0, 2), "test_accuracy": (0.895, 0.0, 2)}
    assert [c.check(stats).verdict for c in claims] == [HOLDS, HOLDS]
    stats["ddp_fp16"] = {"wire_bytes": (600.0, 0.0, 2), "test_accuracy": (0.88, 0.0, 2)}
    assert [c.check(stats).verdict for c in claims] == [FAILS, FAILS]


# -- the README's headline tables are the committed report's ----------------------------------

ROOT = Path(__file__).resolve().parents[1]

SECTION = """
#### Results

| row | seeds | final test accuracy | MB on the wire (all ranks) | MB payload (all ranks) | more |
|---|---|---|---|---|---|
| ddp | 2 | 0.9264 ± 0.0020 | 69.192 ± 0.000 | 46.128 ± 0.000 | x |
| dybw (stand-in) | 2 | 0.9278 ± 0.0039 | 137.404 ± 0.082 | 137.404 ± 0.082 | x |
| compressed_sgd | 1 | 0.7848 | 28.165 | 16.095 | x |

Simulated seconds to the first evaluation at test accuracy 0.800 (the recipe's target): ...

| row | datacenter (100gbit:5us) | 1g (1gbit:50us) | wan (100mbit:20ms) |
|---|---|---|---|
| ddp | 0.1708 ± 6.242e-06 s | 0.203 ± 0.0004565 s | 6.386 ± 0.008261 s |
| dybw (stand-in) | 0.1709 ± 0.03272 s | 0.627 ± 0.03046 s | 2.886 ± 0.015 s |
| compressed_sgd | not reached | not reached | 13.61 s |

| rank | datacenter (100gbit:5us) | 1g (1gbit:50us) | wan (100mbit:20ms) |
|---|---|---|---|
| 1 | ddp (0.1708 s) | ddp (0.203 s) | dybw (stand-in) (2.886 s) |
| 2 | ≈ dybw (stand-in) (0.1709 s) | dybw (stand-in) (0.627 s) | ddp (6.386 s) |
| 3 | compressed_sgd (not reached) | compressed_sgd (not reached) | compressed_sgd (13.61 s) |
"""


def test_the_headline_reads_places_ties_and_misses_from_a_report_section() -> None:
    assert headline.target(SECTION) == "0.80"
    assert [row.cells() for row in headline.rows(SECTION)] == [
        ["ddp (reference)", "baseline", "0.9264 ± 0.0020", "69.192 (46.128)",
         "0.1708", "0.203", "6.386", "1 / 1 / 2"],
        ["dybw (stand-in)", "backup workers", "0.9278 ± 0.0039", "137.404 (137.404)",
         "0.1709", "0.627", "2.886", f"{TIED}2 / 2 / 1"],
        ["compressed_sgd", "quantized", "0.7848", "28.165 (16.095)",
         "not reached", "not reached", "13.61", "3 / 3 / 3"],
    ]  # fmt: skip


def test_the_readme_headline_tables_are_the_committed_reports() -> None:
    """README's first section shows the compare report's smoke and real results (issue 18):
    rebuilding the report without updating the README (``python -m reports.headline`` prints
    the tables), or editing a figure by hand, fails."""
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("## The headline", 1)[1].split("\n## ", 1)[0]
    report = headline.REPORT.read_text()
    for profile in headline.PROFILES:
        assert headline.table(report, profile) in shown, profile
