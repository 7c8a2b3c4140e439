"""The report builds from the MLflow store alone: tables, verdicts, figures, one HTML file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param

import reports.builder as builder
from suite.recipes import Claim, Profile, Recipe, Row
from suite.tracking import open_client

RECIPE = Recipe(
    paper="fake",
    key="Table 3",
    title="fabricated runs",
    rows=(Row("Dense", "allreduce_sgd"), Row("Sparse", "local_sgd")),
    claims=(
        Claim("bytes_sent", "Sparse", "<=", other="Dense", scale=0.5, source="Table 3"),
        Claim("test_accuracy", "Sparse", ">=", value=0.95, paper_value=0.97, source="Table 3"),
        Claim("test_accuracy", "Dense", ">=", value=0.5, profiles=("full",)),
    ),
    profiles={"smoke": Profile(seeds=(0, 1)), "full": Profile(seeds=(0,))},
    reference="Dense",
)
# row -> seed -> (final accuracy, total bytes)
FINAL = {
    "Dense": {0: (0.90, 4000.0), 1: (0.92, 4000.0)},
    "Sparse": {0: (0.89, 1000.0), 1: (0.87, 1000.0)},
}


def _fake_run(client, exp_id: str, row: str | None, seed: int, acc: float, total: float) -> str:
    tags = {"target": "x", "suite.profile": "smoke", "suite.config_hash": f"{row}{seed}"}
    if row is not None:
        tags.update({"suite.recipe": RECIPE.name, "suite.row": row})
    run_id = client.create_run(exp_id, tags=tags).info.run_id
    steps = 10
    metrics = []
    for step in range(steps):
        metrics.append(Metric("train_loss", 1.0 / (step + 1), 0, step))
        metrics.append(Metric("bytes_sent", total * (step + 1) / steps, 0, step))
        metrics.append(Metric("step_seconds", 0.01, 0, step))
        if step % 5 == 4:
            metrics.append(Metric("test_accuracy", acc * (step + 1) / steps, 0, step))
    finals = {"test_accuracy": acc, "bytes_sent": total, "messages": 10.0, "steps": steps}
    finals |= {"compute_seconds": 0.05, "model_comm_seconds": 0.01}
    metrics += [Metric(f"final.{k}", v, 0, steps) for k, v in finals.items()]
    client.log_batch(run_id, metrics=metrics, params=[Param("seed", str(seed))])
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(builder, "recipes_of", lambda paper: [RECIPE])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_client(uri)
    exp_id = client.create_experiment("fake")
    for row, seeds in FINAL.items():
        for seed, (acc, total) in seeds.items():
            _fake_run(client, exp_id, row, seed, acc, total)
    _fake_run(client, exp_id, None, 0, 0.1, 1.0)  # a hand-started run: not part of the report
    return uri


def test_the_report_checks_claims_on_the_mean_over_seeds(store: str, tmp_path: Path) -> None:
    report = builder.build_report("fake", store, tmp_path / "out")
    verdicts = {v.claim.describe(): v for v in report.verdicts[(RECIPE.name, "smoke")]}
    bytes_claim, acc_claim, full_only = (verdicts[c.describe()] for c in RECIPE.claims)
    assert bytes_claim.verdict == "holds" and bytes_claim.reference == pytest.approx(2000.0)
    assert acc_claim.verdict == "fails" and acc_claim.mean == pytest.approx(0.88)
    assert acc_claim.std == pytest.approx(0.0141421, rel=1e-4)
    assert full_only.verdict == "not testable"
    assert not report.all_hold("smoke")
    text = (tmp_path / "out" / "README.md").read_text()
    assert "| holds |" in text and "| fails" in text and "0.97" in text
    assert "| Dense | 2 | 0.9100 ± 0.0141" in text  # the hand-started run is not a seed


def test_figures_exist_and_the_html_is_self_contained(store: str, tmp_path: Path) -> None:
    report = builder.build_report("fake", store, tmp_path / "out")
    names = {p.name for p in report.figures}
    for kind in ("accuracy-vs-bytes", "loss", "saved-vs-accuracy", "time-to-target"):
        assert f"fake-table-3-smoke-{kind}.png" in names
    for path in report.figures:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(report.figures)
    assert 'src="http' not in page and 'src="figures' not in page


def test_a_rerun_replaces_the_seed_it_reran(store: str, tmp_path: Path) -> None:
    client = open_client(store)
    exp_id = client.get_experiment_by_name("fake").experiment_id
    time.sleep(0.01)  # a later start time
    _fake_run(client, exp_id, "Sparse", 0, 0.99, 1000.0)  # a --force rerun of seed 0
    runs, _ = builder.load_runs(store, "fake")
    sparse = runs[runs["row"] == "Sparse"].set_index("seed")["test_accuracy"]
    assert sparse.to_dict() == {0: 0.99, 1: 0.87}


def test_a_failed_build_leaves_the_previous_report_whole(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    builder.build_report("fake", store, out)
    before = (out / "README.md").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(builder, "fig_time_to_target", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        builder.build_report("fake", store, out)
    assert (out / "README.md").read_text() == before
    assert len(list((out / "figures").iterdir())) == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_pareto_front_keeps_only_undominated_points() -> None:
    import pandas as pd

    points = pd.DataFrame(
        {"test_accuracy": [0.9, 0.8, 0.85, 0.7], "bytes_sent": [10.0, 2.0, 12.0, 3.0]}
    )
    front = builder.pareto_front(points)
    assert sorted(front.index) == [0, 1]
