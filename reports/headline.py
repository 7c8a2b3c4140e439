"""The README's headline tables, read from the committed compare report.

After ``suite reproduce compare --profile smoke|real --out reports/compare`` rebuilt the report,
``python -m reports.headline`` prints one table per profile (method, family, accuracy, wire and
payload MB, simulated seconds to the target on the three networks and the places in their
rankings, ``≈`` where the seeds do not separate a place from the one above) to paste under the
README's "The headline"; tests/test_compare.py fails while the README holds other figures.

Read from the report's markdown rather than the MLflow store: the report is what the repository
keeps (a clone has no store), so the README can only quote it.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import reproduce.compare as compare
from reports.simtime import NETWORKS, TIED
from suite.network import format_spec, parse_network

REPORT = Path(__file__).resolve().parent / "compare" / "README.md"
PROFILES = ("smoke", "real")


def markdown_tables(text: str) -> list[list[list[str]]]:
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


@dataclass(frozen=True)
class Row:
    """One method's line of the headline table, as the report prints its figures."""

    name: str
    accuracy: str
    wire: str  # "wire (payload)", MB
    seconds: tuple[str, ...]  # per network in NETWORKS: the mean, or "not reached"
    places: tuple[str, ...]  # per network: "3", or "≈3" (not separated from place 2)

    def cells(self) -> list[str]:
        label = f"{self.name} (reference)" if self.name == compare.REFERENCE else self.name
        family = compare.KNOBS[self.name.removesuffix(" (stand-in)")].family
        return [label, family, self.accuracy, self.wire, *self.seconds, " / ".join(self.places)]


def profile_section(report: str, profile: str) -> str:
    """The report's section of one profile."""
    head = f"### Profile `{profile}`"
    if head not in report:
        raise ValueError(f"the report has no profile {profile!r}")
    return report.split(head, 1)[1].split("\n### ", 1)[0]


def rows(section: str) -> list[Row]:
    """The headline rows of one profile's section, in the report's order."""
    tables = markdown_tables(section)

    def find(*header: str) -> list[list[str]]:
        return next(t for t in tables if tuple(t[0][: len(header)]) == header)

    columns = [f"{n} ({format_spec(parse_network(n))})" for n in NETWORKS]
    results = find("row", "seeds", "final test accuracy")
    times, ranking = find("row", columns[0]), find("rank", columns[0])
    at = [times[0].index(c) for c in columns]  # the networks' columns, in NETWORKS' order
    seconds = {line[0]: tuple(_mean(line[i]) for i in at) for line in times[1:]}
    places: dict[str, dict[int, str]] = {}
    for line in ranking[1:]:
        for network, i in enumerate(ranking[0].index(c) for c in columns):
            if not line[i]:  # a network with fewer ranked rows
                continue
            tied = line[i].startswith(TIED)
            name = line[i].removeprefix(TIED).strip().rsplit(" (", 1)[0]
            places.setdefault(name, {})[network] = f"{TIED if tied else ''}{line[0]}"
    return [
        Row(
            r[0],
            r[2],
            f"{_mean(r[3])} ({_mean(r[4])})",
            seconds[r[0]],
            tuple(places[r[0]][n] for n in range(len(NETWORKS))),
        )
        for r in results[1:]
    ]


def target(section: str) -> str:
    """The profile's target accuracy as the README writes it ('0.85')."""
    found = re.search(r"first evaluation at test accuracy ([0-9.]+)", section)
    if found is None:
        raise ValueError("the section names no target accuracy")
    return f"{float(found.group(1)):.2f}"


def table(report: str, profile: str) -> str:
    """One profile's headline table, in markdown."""
    section = profile_section(report, profile)
    head = ["method", "family", "final test accuracy", "MB on the wire (payload)"]
    head += [f"s to {target(section)}: {NETWORKS[0]}", *NETWORKS[1:]]
    head.append(f"rank: {' / '.join(NETWORKS)}")
    lines = [f"| {' | '.join(cells)} |" for cells in [head, *(r.cells() for r in rows(section))]]
    lines.insert(1, "|" + "---|" * len(head))
    return "\n".join(lines)


def main() -> int:
    report = REPORT.read_text()
    for profile in PROFILES:
        print(f"{profile}:\n\n{table(report, profile)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
