"""Reports in simulated time: every run's stored trace replayed on the preset networks (a
table and a ranking), on a sweep of link rates (a figure with crossings), and for claims
stated as ``FIELD@NETWORK``; runs stored without a trace read n/a.

The store is fabricated (no training): hand-built traces whose replays have closed forms, on 2
ranks, STEPS steps, compute GAP per step. "All-reduce" all-reduces P bytes a step (2 rounds of
P/2 bytes), "Gossip" sends 2P bytes to its peer a step (1 round), its receive for a step posted
a step ahead (gloo moves bytes once the receiver's notice has arrived: posted ahead, the notice
costs no latency after the first step): at a fixed latency L gossip is slower below the rate
P/L and faster above it; at 20 ms (wan) it is faster."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import last_json, suite_cmd
from mlflow.entities import Metric, Param

from reports import builder, frames, simtime
from suite import trace
from suite.errors import ConfigError
from suite.network import parse_network
from suite.recipes import Claim, Profile, Recipe, Row
from suite.tracking import open_client

STEPS, GAP, P = 10, 0.01, 10_000
ALLREDUCE, GOSSIP, OLD, SLOW = "All-reduce", "Gossip", "Old", "Slow"
FASTER_ON_WAN = Claim("network_seconds_to_target@wan", GOSSIP, "<=", other=ALLREDUCE)
SLOWER_ON_WAN = Claim("network_seconds_to_target@wan", ALLREDUCE, "<=", other=GOSSIP)
NEVER = Claim("network_seconds_to_target@1g", SLOW, "<=", value=1e9)
NO_TRACE = Claim("network_seconds_to_target@wan", OLD, "<=", value=1e9)
RECIPE = Recipe(
    paper="fakenet",
    key="Net",
    title="fabricated traced runs",
    rows=(
        Row(ALLREDUCE, "allreduce_sgd"),
        Row(GOSSIP, "dpsgd"),
        Row(OLD, "local_sgd"),
        Row(SLOW, "local_sgd"),
    ),
    claims=(FASTER_ON_WAN, SLOWER_ON_WAN, NEVER, NO_TRACE),
    profiles={"smoke": Profile(seeds=(0, 1))},
    reference=ALLREDUCE,
    target_accuracy=0.8,
)
# row -> (accuracy at the evaluations after steps 5 and 10, has a trace)
ROWS = {ALLREDUCE: (0.85, True), GOSSIP: (0.85, True), OLD: (0.9, False), SLOW: (0.5, True)}


def _records(row: str) -> list[np.ndarray]:
    per_rank = []
    for r in range(2):
        recs = [(0, "recv", 1 - r, 2 * P, 0, -1)] if row == GOSSIP else []
        for step in range(STEPS):
            if row == GOSSIP:  # isend, irecv for the next step, then wait on this step's two
                i, recv = len(recs), len(recs) - (1 if step == 0 else 3)
                recs += [(step, "send", 1 - r, 2 * P, GAP, -1)]
                if step + 1 < STEPS:
                    recs += [(step, "recv", 1 - r, 2 * P, 0, -1)]
                recs += [(step, "wait", 1 - r, 2 * P, 0, i), (step, "wait", 1 - r, 2 * P, 0, recv)]
            else:
                recs.append((step, "all_reduce", -1, P, GAP, -1))
        rows = [
            (s, trace.KIND[k], 0, peer, n, 0, 0, gap, 0.0, ref, gap, 0.0)
            for s, k, peer, n, gap, ref in recs
        ]
        per_rank.append(np.array(rows, dtype=trace.DTYPE))
    return per_rank


def _text(row: str) -> str:
    return trace.encode(2, [(0, 1)], ["algorithm"], _records(row))


def _run(client, exp_id: str, row: str, seed: int) -> str:
    acc, traced = ROWS[row]
    tags = {"suite.recipe": RECIPE.name, "suite.row": row, "suite.profile": "smoke"}
    run_id = client.create_run(exp_id, tags=tags).info.run_id
    metrics = [Metric("test_accuracy", acc, 0, 4), Metric("test_accuracy", acc, 0, STEPS - 1)]
    metrics += [Metric("step_seconds", GAP, 0, s) for s in range(STEPS)]
    finals = {"test_accuracy": acc, "bytes_sent": 1e6, "messages": 10.0, "steps": STEPS}
    metrics += [Metric(f"final.{k}", v, 0, STEPS) for k, v in finals.items()]
    client.log_batch(run_id, metrics=metrics, params=[Param("seed", str(seed))])
    if traced:
        client.log_text(run_id, _text(row), trace.ARTIFACT)
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("netstore")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = open_client(uri)
    exp_id = client.create_experiment("fakenet", artifact_location=(root / "art").as_uri())
    for row in ROWS:
        for seed in (0, 1):
            _run(client, exp_id, row, seed)
    return uri


@pytest.fixture(scope="module")
def built(store: str, tmp_path_factory: pytest.TempPathFactory) -> builder.Report:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builder, "recipes_of", lambda paper: [RECIPE])
        return builder.build_report("fakenet", store, tmp_path_factory.mktemp("b") / "out")


def _wan_seconds(row: str) -> float:
    """Closed forms on wan (100 Mbit/s, 20 ms), five steps to the target."""
    bps, lat = 100e6 / 8, 20e-3
    if row == GOSSIP:  # the first step waits for the first notice (lat > GAP)
        return 5 * (GAP + 2 * P / bps + lat) + (lat - GAP)
    return 5 * (GAP + 2 * (lat + P / 2 / bps))


def _table(readme: str, title: str, after: int = 2) -> list[list[str]]:
    part = readme.split(title, 1)[1].split("\n\n", after)[after]  # the table after the paragraph
    lines = [line for line in part.splitlines() if line.startswith("|")]
    end = next((i for i, line in enumerate(lines[1:], 1) if not line.startswith("|")), len(lines))
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[:end]]


def test_the_report_shows_time_to_target_on_three_networks(built: builder.Report) -> None:
    readme = (built.out_dir / "README.md").read_text()
    cells = _table(readme, "#### Time to the target on simulated networks")
    header, rows = cells[0], {c[0]: c[1:] for c in cells[2:6]}
    assert [h.split(" (")[0] for h in header] == ["row", "datacenter", "1g", "wan"]
    wan = 3 - 1  # the third network column
    for row in (ALLREDUCE, GOSSIP):  # two identical seeds: std 0
        assert rows[row][wan] == f"{_wan_seconds(row):.4g} ± 0 s"
        mean = float(rows[row][wan].split(" ")[0])
        assert mean == pytest.approx(_wan_seconds(row), rel=1e-3)
    assert rows[SLOW] == ["not reached"] * 3
    ranking = _table(readme, "Ranking per network", after=1)  # the table after that paragraph
    assert [h.split(" (")[0] for h in ranking[0]] == ["rank", "datacenter", "1g", "wan"]
    wan_order = [line[3].split(" (")[0] for line in ranking[2:6]]
    assert wan_order == [GOSSIP, ALLREDUCE, SLOW, OLD]  # never reached: last, and said so
    assert ranking[2][3] == f"{GOSSIP} ({_wan_seconds(GOSSIP):.4g} s)"
    assert ranking[4][3] == f"{SLOW} (not reached)" and ranking[5][3] == f"{OLD} (n/a: no trace)"
    assert [line[0] for line in ranking[2:6]] == ["1", "2", "3", "4"]
    sweep = built.out_dir / "figures" / "fakenet-net-smoke-bandwidth-sweep.png"
    assert sweep in built.figures and sweep.read_bytes()[:4] == b"\x89PNG"
    assert f"](figures/{sweep.name})" in readme
    assert not (built.out_dir / ".traces").exists()  # the downloads stay out of the report


def test_a_run_without_a_trace_reads_n_a(built: builder.Report) -> None:
    readme = (built.out_dir / "README.md").read_text()
    cells = _table(readme, "#### Time to the target on simulated networks")
    assert {c[0]: c[1:] for c in cells[2:]}[OLD] == ["n/a"] * 3
    verdicts = {v.claim: v for v in built.verdicts[(RECIPE.name, "smoke")]}
    assert verdicts[NO_TRACE].verdict == "not testable"
    assert "not testable (no network_seconds_to_target@wan for Old (runs stored without a " in (
        readme
    )


def test_simulated_time_claims_are_measured_by_replays(built: builder.Report) -> None:
    verdicts = {v.claim: v for v in built.verdicts[(RECIPE.name, "smoke")]}
    holds, fails = verdicts[FASTER_ON_WAN], verdicts[SLOWER_ON_WAN]
    assert holds.verdict == "holds" and fails.verdict == "fails"
    assert holds.mean == pytest.approx(_wan_seconds(GOSSIP), rel=1e-6)
    assert holds.reference == pytest.approx(_wan_seconds(ALLREDUCE), rel=1e-6)
    assert verdicts[NEVER].verdict == "fails" and verdicts[NEVER].mean == math.inf
    readme = (built.out_dir / "README.md").read_text()
    assert "| not reached (2 seed(s)) |" in readme


def test_a_simulated_metric_names_a_known_field_and_network() -> None:
    with pytest.raises(ConfigError, match="datacenter"):
        Claim("network_seconds_to_target@moon", GOSSIP, "<=", value=1.0)
    with pytest.raises(ConfigError, match="network_seconds_to_target"):
        Claim("seconds@wan", GOSSIP, "<=", value=1.0)


def test_the_sweep_is_monotone_replays_each_run_once_and_marks_the_crossing(
    store: str, tmp_path: Path
) -> None:
    runs, curves = frames.load_runs(store, "fakenet")
    replays = simtime.Replays(open_client(store), tmp_path)
    sweep = simtime.bandwidth_sweep(runs, curves, 0.8, replays)
    assert len(simtime.SWEEP_BPS) >= 12 and min(simtime.SWEEP_BPS) <= 10e6
    assert max(simtime.SWEEP_BPS) >= 100e9
    for run_id, mine in sweep[sweep["row"] == ALLREDUCE].groupby("run_id"):
        seconds = mine.sort_values("bps")["seconds"].to_numpy()
        assert np.isfinite(seconds).all() and (np.diff(seconds) <= 1e-12).all(), run_id
        assert seconds[0] > 1.5 * seconds[-1]  # the rate matters at all
    traced = int(runs["row"].isin([ALLREDUCE, GOSSIP, SLOW]).sum())
    reached = int(runs["row"].isin([ALLREDUCE, GOSSIP]).sum())  # Slow's runs need no replay
    assert replays.replayed == reached * len(simtime.SWEEP_BPS)
    simtime.bandwidth_sweep(runs, curves, 0.8, replays)  # again: all cached
    assert replays.replayed == reached * len(simtime.SWEEP_BPS)
    assert len(list(tmp_path.glob(f"*/{trace.ARTIFACT}"))) == traced  # one download per run
    (mark,) = simtime.crossings(sweep, RECIPE)
    # gossip: L + 2P/B, all-reduce: 2L + P/B per step; equal at B = P/L (1.6 Gbit/s)
    assert (mark["row"], mark["other"], mark["faster_below"]) == (GOSSIP, ALLREDUCE, False)
    assert 8 * P / simtime.SWEEP_LATENCY_S / 2 < mark["bps"] < 8 * P / simtime.SWEEP_LATENCY_S * 2


def test_a_real_all_reduce_run_sweeps_monotone_and_agrees_with_its_summary(tmp_path: Path) -> None:
    """A real 2-rank run on wan: the report's replay to the target is the summary's figure, and
    its sweep never gets slower with more bandwidth."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = suite_cmd(
        "run", "allreduce_sgd", "--nproc", "2", "--steps", "20", "--json", "--quiet",
        "--tracking-uri", uri, "--experiment", "real", "--set", "model.hidden=16",
        "--set", "eval_every=5", "--set", "target_accuracy=0.05", "--set", "network=wan",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = last_json(run.stdout)
    client = open_client(uri)
    for key, value in (("suite.recipe", RECIPE.name), ("suite.row", ALLREDUCE)):
        client.set_tag(summary["run_id"], key, value)  # as `suite reproduce` tags its runs
    runs, curves = frames.load_runs(uri, "real")
    replays = simtime.Replays(client, tmp_path / "cache")
    (wan,) = simtime.network_times(runs, curves, 0.05, replays, [parse_network("wan")])["seconds"]
    assert wan == pytest.approx(summary["network_seconds_to_target"], rel=1e-12)
    sweep = simtime.bandwidth_sweep(runs, curves, 0.05, replays).sort_values("bps")
    seconds = sweep["seconds"].to_numpy()
    assert len(seconds) == len(simtime.SWEEP_BPS) and np.isfinite(seconds).all()
    assert (np.diff(seconds) <= 1e-12).all() and seconds[0] > seconds[-1]


def test_the_ranking_marks_places_the_seeds_do_not_separate() -> None:
    """Compute-bound smoke times move with the host; a ranking must not order rows whose seeds
    overlap: such a place is marked, one the seeds separate is not, nor one of a single seed."""
    from reports.simtime import TIED, ranking_table

    seconds = {"A": [1.0, 1.2], "B": [1.2, 1.4], "C": [1.9, 2.1], "D": [2.15], "E": [3.0, 3.0]}
    times = pd.DataFrame(
        [
            {"network": "wan", "row": row, "seed": seed, "status": "reached", "seconds": sec}
            for row, values in seconds.items()
            for seed, sec in enumerate(values)
        ]
    )
    column = ranking_table(times).iloc[:, 1].tolist()
    assert column == [
        "A (1.1 s)",
        f"{TIED} B (1.3 s)",  # 0.2 apart, spreads 0.14 + 0.14: not separated
        "C (2 s)",  # 0.7 above B: separated
        "D (2.15 s)",  # one seed: no spread to judge by
        "E (3 s)",  # spread 0, and 0.85 above D
    ]
