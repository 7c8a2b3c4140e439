"""The cross-method benchmark recipe (reproduce/compare): its one table of knobs covers the
registry exactly, every entry but the variants is a row, and its field claims read the rows
they should."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import reproduce.compare as compare
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


# -- the README's headline tables are the committed report's ------------------------------------

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = ("accuracy", "wire", "seconds")


def _tables(text: str) -> list[list[list[str]]]:
    """The markdown tables in ``text``: rows of stripped cells, header first, separator
    dropped."""
    tables: list[list[list[str]]] = []
    rows: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-:") for c in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def _mean(cell: str) -> str:
    """'0.164 ± 0.03226 s' -> '0.164'; 'not reached' stays."""
    return cell.split(" ±")[0].removesuffix(" s")


def _report_rows(section: str) -> dict[str, dict[str, Any]]:
    """Per row of one profile of the committed report: accuracy, wire and payload MB, the
    mean seconds to the target per network and its place in each network's ranking (with
    the ≈ of a place its seeds do not separate from the one above)."""
    results, times, ranking = (
        next(t for t in _tables(section) if t[0][: len(h)] == h)
        for h in (["row", "seeds", "final test accuracy"], ["row", "datacenter (100gbit:5us)"],
                  ["rank"])
    )  # fmt: skip
    rows: dict[str, dict[str, Any]] = {
        r[0]: {"accuracy": r[2], "wire": f"{_mean(r[3])} ({_mean(r[4])})"} for r in results[1:]
    }
    for r in times[1:]:
        rows[r[0]]["seconds"] = [_mean(c) for c in r[1:]]
    for r in ranking[1:]:
        for network, cell in enumerate(r[1:]):
            tied = cell.startswith(TIED)
            name = cell.removeprefix(TIED).strip().rsplit(" (", 1)[0]
            rows[name].setdefault("places", {})[network] = f"{TIED if tied else ''}{r[0]}"
    return rows


def test_the_readme_headline_tables_are_the_committed_reports() -> None:
    """README's first section shows the compare report's smoke and real results (issue 18):
    rebuilding the report without updating the README, or editing a figure by hand, fails."""
    readme = (ROOT / "README.md").read_text()
    headline = readme.split("## The headline", 1)[1].split("\n## ", 1)[0]
    shown = [t for t in _tables(headline) if t[0][:2] == ["method", "family"]]
    report = (ROOT / "reports" / "compare" / "README.md").read_text()
    profiles = ["smoke", "real"]
    assert len(shown) == len(profiles)
    for table, profile in zip(shown, profiles, strict=True):
        section = report.split(f"### Profile `{profile}`", 1)[1].split("\n### ", 1)[0]
        rows = _report_rows(section)
        assert [r[0].removesuffix(" (reference)") for r in table[1:]] == list(rows), profile
        for method, family, accuracy, wire, *seconds, places in table[1:]:
            name = method.removesuffix(" (reference)")
            row = rows[name]
            assert method.endswith("(reference)") == (name == compare.REFERENCE)
            assert family == compare.KNOBS[name.removesuffix(" (stand-in)")].family, name
            shown_row, report_row = (accuracy, wire, seconds), (row[k] for k in ROW_KEYS)
            assert shown_row == tuple(report_row), (profile, name)
            assert places.split(" / ") == [row["places"][n] for n in range(3)], (profile, name)
