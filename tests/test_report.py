"""The report builds from the MLflow store alone: tables, verdicts, figures, one HTML file.

The store is fabricated (no training): a throwaway recipe with two rows x two seeds, a run
started by hand, a failed run, and a sweep with its Optuna study. It is built once per module;
tests that change it work on a copy."""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
import pandas as pd
import pytest
from mlflow.entities import Metric, Param

from reports import builder, figures, frames, paper_figures, simtime, text
from suite.errors import ConfigError
from suite.recipes import Claim, Known, Profile, Recipe, Row, Space, Verdict, aggregate
from suite.tracking import open_client

HOLDING = Claim("bytes_sent", "Sparse", "<=", other="Dense", scale=0.5, source="Table 3")
FAILING = Claim("test_accuracy", "Sparse", ">=", value=0.95, paper_value=0.97, source="Table 3")
FULL_ONLY = Claim("test_accuracy", "Dense", ">=", value=0.5, profiles=("full",))
RECIPE = Recipe(
    paper="fake",
    key="Table 3",
    title="fabricated runs",
    rows=(Row("Dense", "allreduce_sgd"), Row("Sparse", "local_sgd")),
    claims=(HOLDING, FAILING, FULL_ONLY),
    profiles={"smoke": Profile(seeds=(0, 1), note="tiny"), "full": Profile(seeds=(0,))},
    reference="Dense",
    spaces={
        "h": Space(
            "Sparse",
            lambda t: [f"algorithm.period={t.suggest_int('period', 1, 64)}"],
            objectives=(("test_accuracy", "maximize"), ("bytes_sent", "minimize")),
        )
    },
)
# row -> seed -> (final accuracy, total bytes); Sparse: mean 0.88, std sqrt(2e-4)
FINAL = {
    "Dense": {0: (0.90, 4000.0), 1: (0.92, 4200.0)},
    "Sparse": {0: (0.89, 1000.0), 1: (0.87, 1000.0)},
}
STUDY = f"{RECIPE.name}:h:smoke"
TRIALS = {0: (0.99, 500.0, "FINISHED"), 1: (0.98, 300.0, "FINISHED"), 2: (0.5, 900.0, "KILLED")}
STEPS = 10
RECIPE_DIRECTIONS = [d for _, d in RECIPE.spaces["h"].objectives]
PNG = b"\x89PNG\r\n\x1a\n"


def _fake_run(client, exp_id: str, seed: int, acc: float, total: float, **kw) -> str:
    """A run as `suite reproduce` leaves it: tags, params, step histories, final.* metrics."""
    tags = {"target": "x", "paper": "fake", "suite.profile": "smoke", "suite.config_hash": "h"}
    if kw.get("row") is not None:  # row=None: started by hand, no recipe tags
        tags |= {"suite.recipe": RECIPE.name, "suite.row": kw["row"]}
    if "trial" in kw:
        tags |= {"suite.study": STUDY, "suite.trial": str(kw["trial"]), "suite.space": "h"}
    run_id = client.create_run(exp_id, tags=tags).info.run_id
    metrics = []
    for step in range(STEPS):
        metrics += [
            Metric("train_loss", 2.0 / (step + 1) + acc / 10, 0, step),
            Metric("bytes_sent", total * (step + 1) / STEPS, 0, step),
            Metric("messages", float(step + 1), 0, step),
            Metric("step_seconds", 0.01, 0, step),
        ]
        if step % 5 == 4:  # evaluations at steps 4 and 9
            metrics.append(Metric("test_accuracy", acc - (0.1 if step == 4 else 0.0), 0, step))
    finals = {"test_accuracy": acc, "bytes_sent": total, "messages": 10.0, "steps": STEPS}
    finals |= {"compute_seconds": 0.05, "network_seconds": 0.06}
    metrics += [Metric(f"final.{k}", v, 0, STEPS) for k, v in finals.items()]
    client.log_batch(run_id, metrics=metrics, params=[Param("seed", str(seed))])
    client.set_terminated(run_id, kw.get("status", "FINISHED"))
    return run_id


def _fake_study(client, exp_id: str, storage: str) -> None:
    study = optuna.create_study(storage=storage, study_name=STUDY, directions=RECIPE_DIRECTIONS)
    dist = {"period": optuna.distributions.IntDistribution(1, 64)}
    for number, (acc, total, status) in TRIALS.items():
        _fake_run(client, exp_id, 0, acc, total, row="Sparse", trial=number, status=status)
        if status == "FINISHED":
            trial = optuna.trial.create_trial(
                params={"period": 2 + number}, distributions=dist, values=[acc, total]
            )
            study.add_trial(trial)
    tags = {"suite.kind": "study", "suite.study": STUDY, "suite.storage": storage}
    tags |= {"suite.recipe": RECIPE.name, "suite.space": "h", "paper": "fake"}
    client.set_terminated(client.create_run(exp_id, tags=tags).info.run_id, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = open_client(uri)
    exp_id = client.create_experiment("fake")
    for row, seeds in FINAL.items():
        for seed, (acc, total) in seeds.items():
            _fake_run(client, exp_id, seed, acc, total, row=row)
    _fake_run(client, exp_id, 0, 0.1, 1.0, row=None)  # by hand: would sink Dense's mean
    _fake_run(client, exp_id, 2, 0.0, 1.0, row="Sparse", status="FAILED")  # not a result
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _fake_study(client, exp_id, f"sqlite:///{root / 'optuna.db'}")
    return uri


@pytest.fixture()
def fake_recipes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "recipes_of", lambda paper: [RECIPE])


@pytest.fixture(scope="module")
def built(store: str, tmp_path_factory: pytest.TempPathFactory) -> builder.Report:
    """One build shared by the read-only tests (a build is the slow part)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builder, "recipes_of", lambda paper: [RECIPE])
        return builder.build_report("fake", store, tmp_path_factory.mktemp("built") / "out")


def claim_verdicts(readme: str) -> dict[str, str]:
    """claim text -> verdict cell, from the markdown claims tables (claims read "X of ROW")."""
    cells = [line.strip("|").split(" | ") for line in readme.splitlines() if line.startswith("|")]
    at = next(c for c in cells if c[0].strip() == "claim").index("verdict")
    return {c[0].strip(): c[at].strip() for c in cells if " of " in c[0]}


def test_load_runs_keeps_recipe_runs_and_their_curves(store: str) -> None:
    runs, curves = frames.load_runs(store, "fake")
    plain = runs[runs["study"].isna()]
    # neither the hand-started run nor the FAILED one
    pairs = sorted(zip(plain["row"], plain["seed"], strict=True))
    assert pairs == [("Dense", 0), ("Dense", 1), ("Sparse", 0), ("Sparse", 1)]
    assert plain["seed"].dtype.kind == "i" and set(plain["status"]) == {"FINISHED"}
    trials = runs[runs["study"] == STUDY].set_index("trial")
    assert trials["status"].to_dict() == {n: s for n, (_, _, s) in TRIALS.items()}
    assert {"test_accuracy", "bytes_sent", "network_seconds", "wall_seconds"} <= set(runs)
    assert math.isnan(runs["wall_seconds"].iloc[0])  # never logged: NaN, not a KeyError
    assert list(curves.columns) == list(frames.CURVE_COLUMNS)
    assert set(curves["run_id"]) == set(plain["run_id"])  # trials carry no curves
    acc = curves[(curves["metric"] == "test_accuracy") & (curves["row"] == "Sparse")]
    assert sorted(acc["step"].unique()) == [4, 9] and len(acc) == 4


def test_a_rerun_replaces_the_seed_it_reran(store: str, tmp_path: Path) -> None:
    shutil.copy(store.removeprefix("sqlite:///"), tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_client(uri)
    exp_id = client.get_experiment_by_name("fake").experiment_id
    _fake_run(client, exp_id, 0, 0.99, 1000.0, row="Sparse")  # a later --force rerun of seed 0
    runs, _ = frames.load_runs(uri, "fake")
    sparse = runs[(runs["row"] == "Sparse") & runs["study"].isna()].set_index("seed")
    assert sparse["test_accuracy"].to_dict() == {0: 0.99, 1: 0.87}


def test_aggregate_gives_mean_and_sample_std_over_seeds(store: str) -> None:
    runs, _ = frames.load_runs(store, "fake")
    stats = aggregate(frames.finals(runs[runs["study"].isna()]))
    mean, std, n = stats["Dense"]["bytes_sent"]
    assert (mean, n) == (4100.0, 2) and std == pytest.approx(math.sqrt(2 * 100.0**2))
    mean, std, n = stats["Sparse"]["test_accuracy"]
    assert mean == pytest.approx(0.88) and std == pytest.approx(math.sqrt(2e-4)) and n == 2


def test_claims_are_checked_on_finished_recipe_runs_only(built: builder.Report) -> None:
    verdicts = {v.claim: v for v in built.verdicts[(RECIPE.name, "smoke")]}
    assert verdicts[HOLDING].verdict == "holds"
    assert verdicts[HOLDING].reference == pytest.approx(0.5 * 4100.0)
    # the sweep trials (0.99, 0.98) and the failed run (0.0) would move this mean
    assert verdicts[FAILING].verdict == "fails" and verdicts[FAILING].mean == pytest.approx(0.88)
    assert verdicts[FULL_ONLY].verdict == "not testable"
    assert (RECIPE.name, "full") not in built.verdicts  # no runs there: nothing checked
    assert not built.all_hold("smoke") and not built.all_hold("full")


def test_the_readme_tables_say_what_was_measured(built: builder.Report) -> None:
    readme = (built.out_dir / "README.md").read_text()
    assert claim_verdicts(readme) == {
        HOLDING.describe(): "holds",
        FAILING.describe(): "fails",
        FULL_ONLY.describe(): "not testable (not at smoke)",
    }
    assert "| 0.97 | 0.88 ± 0.01414 (2 seed(s)) | 0.95 | fails |" in readme  # paper, measured
    # runs stored before wire bytes: the wire column reads n/a, savings are of payload bytes
    assert "| Dense | 2 | 0.9100 ± 0.0141 | n/a | 0.004 ± 0.000 |" in readme
    # no parameter count stored: whole-model equivalents read n/a
    assert (
        "| Sparse | 2 | 0.8800 ± 0.0141 | n/a | 0.001 ± 0.000 | 10 ± 0 | n/a | 75.6% ± 0.0% |"
        in (readme)
    )
    assert "payload bytes saved vs Dense" in readme
    # the MLflow links are only as good as the store: the report says so
    assert "the links need that store, which a clone of the repository does not have" in readme
    assert "1 hold, 1 fail, 1 not testable" in readme and "reproduced" not in readme.lower()
    summary = readme.split("## Summary", 1)[1].split("##", 1)[0]  # names what fails, by name
    assert summary.strip() == (
        f"`{RECIPE.name}` at `smoke`: 1 hold, 1 fail, 1 not testable. Fails here: "
        f"{FAILING.describe()}."
    )
    assert "_No finished runs at this profile._" in readme  # full
    for key in ("Table 3: fabricated runs", "tiny", "2 finished and 1 pruned"):
        assert key in readme


def test_figures_are_pngs_linked_from_the_readme(built: builder.Report) -> None:
    base = "fake-table-3-smoke"
    expected = {
        f"{base}-{kind}.png"
        for kind in (
            "accuracy-vs-bytes", "loss", "tradeoff", "time-to-target",
            "sweep-h-pareto", "sweep-h-optuna-pareto",
        )
    }  # fmt: skip
    assert {p.name for p in built.figures} == expected
    assert {p.name for p in (built.out_dir / "figures").iterdir()} == expected
    readme = (built.out_dir / "README.md").read_text()
    for path in built.figures:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
        assert f"](figures/{path.name})" in readme
    assert "parameter importances need" in readme  # one knob: skipped, and it says so
    assert plt.get_fignums() == []  # every figure closed
    assert plt.rcParams["axes.facecolor"] == "white"  # Optuna's ggplot style did not leak


def test_the_html_is_one_self_contained_file(built: builder.Report) -> None:
    page = (built.out_dir / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(built.figures)
    assert 'src="http' not in page and 'src="figures' not in page and "<link" not in page
    assert '<td class="fails">fails</td>' in page and '<td class="holds">holds</td>' in page
    assert re.search(r"<h2>Table 3: fabricated runs</h2>", page)


def test_a_failed_build_leaves_the_previous_report_whole(
    built: builder.Report, store: str, tmp_path: Path, fake_recipes: None, monkeypatch
) -> None:
    out = tmp_path / "out"
    shutil.copytree(built.out_dir, out)
    (out / "figures" / "stale.png").write_text("from an older build")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        plt.figure()  # a figure function that fails half way
        raise RuntimeError("figure failed")

    with monkeypatch.context() as patch:
        patch.setattr(builder, "fig_time_to_target", broken)
        with pytest.raises(RuntimeError, match="figure failed"):
            builder.build_report("fake", store, out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directory left
    assert plt.get_fignums() == []
    builder.build_report("fake", store, out)  # a good build replaces the directory whole
    assert not (out / "figures" / "stale.png").exists() and (out / "README.md").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_unknown_paper_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no recipes for paper"):
        builder.build_report("no-such-paper", f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_an_empty_experiment_gives_a_report_that_checked_nothing(
    store: str, tmp_path: Path, fake_recipes: None
) -> None:
    report = builder.build_report("fake", store, tmp_path / "r", experiment="never-ran")
    assert report.verdicts == {} and report.figures == [] and not report.all_hold("smoke")
    assert "nothing was checked" in (tmp_path / "r" / "README.md").read_text()


def test_time_to_target_measured_and_modelled() -> None:
    runs = pd.DataFrame(
        {"run_id": ["a", "b"], "row": ["A", "B"], "seed": [0, 0], "steps": [10.0, 10.0]}
    ).assign(compute_seconds=0.5, network_seconds=0.6)
    curves = pd.DataFrame(
        [("a", s, "step_seconds", 0.1 * (s + 1)) for s in range(10)]
        + [("a", 4, "test_accuracy", 0.6), ("a", 9, "test_accuracy", 0.9)]
        + [("b", 9, "test_accuracy", 0.5)],
        columns=["run_id", "step", "metric", "value"],
    )
    times = frames.time_to_target(runs, curves, 0.55).set_index("row")
    assert times.loc["A", "steps"] == 5  # first evaluation at or above the target: step 4
    assert times.loc["A", "measured"] == pytest.approx(0.1 + 0.2 + 0.3 + 0.4 + 0.5)
    assert times.loc["A", "model"] == pytest.approx(5 / 10 * 0.6)
    assert times.loc["B", ["steps", "measured", "model"]].isna().all()  # never reached


def test_all_hold_ignores_untestable_claims_but_needs_runs() -> None:
    def report(*verdicts: str, runs: bool = True) -> builder.Report:
        checked = [Verdict(HOLDING, v, None, None, None) for v in verdicts]
        return builder.Report("fake", Path("."), {("r", "smoke"): checked} if runs else {}, [])

    assert report("holds", "not testable").all_hold("smoke")
    assert report().all_hold("smoke")  # runs, but no claims to check
    assert not report("holds", "fails").all_hold("smoke")
    assert not report(runs=False).all_hold("smoke")
    assert not report("holds").all_hold("full")


def test_a_known_failure_keeps_all_hold_and_is_explained_in_the_claims_table() -> None:
    known = Known("smoke", "the flag round costs a latency", "reproduce/x/NOTES.md#flags")
    claim = replace(HOLDING, known=(known,))
    checked = [Verdict(claim, "fails", 0.5, 0.0, 0.9, "1 seed(s)", known)]
    report = builder.Report("fake", Path("."), {("r", "smoke"): checked}, [])
    assert report.all_hold("smoke")
    table = text.claims_table(checked)
    assert table.loc[0, "verdict"] == "fails (known)"
    assert "flag round" in table.loc[0, "known deviation"]
    surprise = [Verdict(claim, "holds", 0.95, 0.0, 0.9, "1 seed(s)", known)]
    assert "unexpected pass" in text.claims_table(surprise).loc[0, "known deviation"]
    assert "1 hold (1 unexpectedly)" in text.tally(surprise)
    assert text.verdict_line(checked) == (
        f"0 hold, 1 fail (1 known), 0 not testable. Fails here: {claim.describe()} (known "
        "deviation)."
    )
    assert text.verdict_line(surprise) == "1 hold (1 unexpectedly), 0 fail, 0 not testable."


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = pd.DataFrame(
        {"test_accuracy": [0.9, 0.8, 0.85, 0.7, 0.9], "bytes_sent": [10.0, 2.0, 12.0, 3.0, 11.0]}
    )
    assert sorted(frames.pareto_front(points).index) == [0, 1]


def test_firing_rates_come_from_the_artifacts_and_draw_a_heat_map(tmp_path: Path) -> None:
    import json

    uri = f"sqlite:///{tmp_path / 'firing.db'}"
    client = open_client(uri)
    exp = client.create_experiment("p")
    ids = []
    for rate in (0.2, 0.4):
        run_id = client.create_run(exp).info.run_id
        client.log_text(run_id, json.dumps({"w": rate, "b": 1.0}), "firing.json")
        ids.append(run_id)
    plain = client.create_run(exp).info.run_id  # an algorithm without a trigger: no artifact
    runs = pd.DataFrame({"run_id": [*ids, plain], "row": ["E", "E", "D"]})
    rates = paper_figures.firing_rates(uri, runs)
    assert rates.groupby("tensor")["rate"].mean().to_dict() == pytest.approx({"w": 0.3, "b": 1.0})
    assert set(rates["row"]) == {"E"}
    recipe = Recipe(
        "p", "T", "t", (Row("D", "dpsgd"), Row("E", "eventgrad")), (), {"smoke": Profile()}
    )
    fig = paper_figures.fig_firing_heatmap(rates, recipe)
    assert fig is not None and fig.axes[0].get_title().startswith("Firing rate")
    assert paper_figures.fig_firing_heatmap(rates.iloc[0:0], recipe) is None


def _mixed_primitives(wire: bool) -> pd.DataFrame:
    """Dense (a ring all-reduce: wire 1.5x payload at 4 ranks) and Sparse (sends: wire equals
    payload). By payload Sparse saves 50%; on the wire, 66.7%."""
    runs = pd.DataFrame(
        {
            "row": ["Dense", "Sparse"],
            "test_accuracy": [0.9, 0.9],
            "bytes_sent": [2000.0, 1000.0],
            "wire_bytes": [3000.0, 1000.0] if wire else [math.nan, math.nan],
            "messages": [10.0, 10.0],
        }
    )
    return runs


def test_wire_bytes_are_the_headline_with_payload_beside() -> None:
    table = text.results_table(_mixed_primitives(True), RECIPE, "smoke")
    sparse = table.set_index("row").loc["Sparse"]
    assert sparse["wire bytes saved vs Dense"] == "66.7%"
    assert sparse["MB on the wire (all ranks)"] == "0.001"
    assert sparse["MB payload (all ranks)"] == "0.001"
    curves = pd.DataFrame(
        [("a", "Dense", 0, 0, m, v) for m, v in (("test_accuracy", 0.9), ("wire_bytes", 3e6),
                                                  ("bytes_sent", 2e6))],
        columns=["run_id", "row", "seed", "step", "metric", "value"],
    )  # fmt: skip
    fig = figures.fig_accuracy_vs_bytes(curves, RECIPE, "smoke")
    assert fig.axes[0].get_xlabel() == "cumulative wire bytes (all ranks) (MB)"
    plt.close(fig)


def test_runs_without_wire_bytes_fall_back_to_payload() -> None:
    table = text.results_table(_mixed_primitives(False), RECIPE, "smoke")
    sparse = table.set_index("row").loc["Sparse"]
    assert sparse["payload bytes saved vs Dense"] == "50.0%"
    assert sparse["MB on the wire (all ranks)"] == "n/a"
    assert frames.bytes_column(_mixed_primitives(False).drop(columns="wire_bytes")) == (
        "bytes_sent"
    )


# -- what the report answers: how much is saved, at what cost (issue 15 item 5) ---------------


def _row_runs(rows: dict[str, tuple[float, float]], seeds: int = 2) -> pd.DataFrame:
    """Finished runs of rows -> (mean accuracy, bytes), seeds spread ±0.005 around the mean."""
    records = [
        {"run_id": f"{row}{s}", "row": row, "seed": s, "test_accuracy": acc + 0.01 * (s - 0.5),
         "bytes_sent": total, "wire_bytes": total, "messages": 10.0, "train_loss": 0.5}
        for row, (acc, total) in rows.items()
        for s in range(seeds)
    ]  # fmt: skip
    return pd.DataFrame(records)


def _recipe(*labels: str, claims: tuple = (), **kw) -> Recipe:
    rows = tuple(Row(label, "allreduce_sgd") for label in labels)
    return Recipe("fake", "T", "t", rows, claims, {"smoke": Profile(seeds=(0, 1))}, **kw)


def test_a_figure_title_names_the_data_and_model_the_profile_trains() -> None:
    """A smoke profile trains stand-ins for the paper's task (a recipe keyed "MNIST" trains
    digits at smoke): the title says which, not just the paper's key."""
    recipe = _recipe("A", "B")
    assert figures.heading(recipe, "smoke") == "T (smoke: digits/mlp)"
    cnn = Recipe("fake", "MNIST", "t", (Row("A", "allreduce_sgd", ("model=cnn2",)),), (),
                 {"smoke": Profile(seeds=(0,))})  # fmt: skip
    assert figures.heading(cnn, "smoke") == "MNIST (smoke: digits/cnn2)"


def test_every_row_of_a_long_recipe_gets_its_own_colour_and_marker() -> None:
    style = figures.styles(_recipe(*(f"method {i}" for i in range(20))))
    looks = [(tuple(colour), marker) for colour, marker, _ in style.values()]
    assert len(set(looks)) == 20


def test_a_recipe_can_set_its_target_accuracy_per_profile() -> None:
    recipe = Recipe(
        "fake", "T", "t", (Row("A", "allreduce_sgd"), Row("B", "allreduce_sgd")), (),
        {"smoke": Profile(), "full": Profile()}, target_accuracy={"smoke": 0.85},
    )  # fmt: skip
    runs = pd.DataFrame({"row": ["A", "B"], "test_accuracy": [0.9, 0.8], "profile": "smoke"})
    assert frames.target_accuracy(runs, recipe) == (0.85, "the recipe's target")
    at_full = frames.target_accuracy(runs.assign(profile="full"), recipe)  # none set there
    assert at_full == (pytest.approx(0.95 * 0.8), "95% of the worst row's mean")
    with pytest.raises(ValueError, match="target accuracy at unknown profiles"):
        replace(recipe, target_accuracy={"real": 0.8})


def test_without_a_recipe_target_the_report_uses_the_target_its_runs_were_given() -> None:
    given = Profile(("steps=10", "target_accuracy=0.7"))
    recipe = Recipe(
        "fake", "T", "t", (Row("A", "allreduce_sgd"), Row("B", "allreduce_sgd")), (),
        {"smoke": given, "real": Profile()},
    )  # fmt: skip
    runs = pd.DataFrame({"row": ["A", "B"], "test_accuracy": [0.9, 0.8], "profile": "smoke"})
    assert frames.target_accuracy(runs, recipe) == (0.7, "the runs' target_accuracy")
    at_real = frames.target_accuracy(runs.assign(profile="real"), recipe)  # none given there
    assert at_real == (pytest.approx(0.95 * 0.8), "95% of the worst row's mean")
    # a row with a target of its own makes the runs' target ambiguous
    rows = (Row("A", "allreduce_sgd", ("target_accuracy=0.5",)), Row("B", "allreduce_sgd"))
    ambiguous = frames.target_accuracy(runs, replace(recipe, rows=rows))
    assert ambiguous == (pytest.approx(0.95 * 0.8), "95% of the worst row's mean")


def test_identical_rows_are_noted_and_drawn_with_distinct_styles() -> None:
    # h=0 trains exactly as D-PSGD and sends a little more (its flags); h=1 trains otherwise
    sent = {"D-PSGD": 1e6, "EventGraD h=0": 1.001e6, "h=1": 4e5}
    runs = _row_runs({"D-PSGD": (0.9, 1e6), "EventGraD h=0": (0.9, 1.001e6), "h=1": (0.9, 4e5)})
    curves = pd.DataFrame(
        [(f"{row}{s}", row, s, step, metric, value)
         for row in ("D-PSGD", "EventGraD h=0", "h=1")
         for s in range(2)
         for step, metric, value in ((4, "test_accuracy", 0.8 + s / 100),
                                     (4, "wire_bytes", sent[row] / 2),
                                     (9, "test_accuracy", 0.9 + s / 100 - (row == "h=1") / 100),
                                     (9, "wire_bytes", sent[row]))],
        columns=["run_id", "row", "seed", "step", "metric", "value"],
    )  # fmt: skip
    assert frames.identical_rows(runs, curves) == [("D-PSGD", "EventGraD h=0")]
    note = text.identical_note(frames.identical_rows(runs, curves))
    assert "D-PSGD and EventGraD h=0" in note and "coincide" in note
    # the last digits of a sum in another order: still identical; one step 1% off: not
    rounded = curves.assign(value=curves["value"].where(curves.index != 0, 0.8 * (1 + 1e-6)))
    assert frames.identical_rows(runs, rounded) == [("D-PSGD", "EventGraD h=0")]
    moved = curves.assign(value=curves["value"].where(curves.index != 0, 0.8 * 1.01))
    assert frames.identical_rows(runs, moved) == []
    recipe = _recipe("D-PSGD", "EventGraD h=0", "h=1")
    fig = figures.fig_accuracy_vs_bytes(curves, recipe, "smoke")
    lines = {c.get_label(): c.lines[0] for c in fig.axes[0].containers}  # errorbar lines
    a, b = lines["D-PSGD"], lines["EventGraD h=0"]
    assert a.get_marker() != b.get_marker() and a.get_linestyle() != b.get_linestyle()
    plt.close(fig)


def test_a_many_method_figures_legend_sits_beside_the_axes_not_over_the_lines() -> None:
    """Up to figures.CROWDED rows the legend is inside the axes; past it, right of them (the
    compare report's 16 methods covered their own lines)."""

    def legend_box(labels: list[str]) -> tuple[float, float]:
        curves = pd.DataFrame(
            [(f"{row}0", row, 0, 9, m, v) for i, row in enumerate(labels)
             for m, v in (("test_accuracy", 0.8 + i / 100), ("wire_bytes", 1e6 * (i + 1)))],
            columns=["run_id", "row", "seed", "step", "metric", "value"],
        )  # fmt: skip
        fig = figures.fig_accuracy_vs_bytes(curves, _recipe(*labels), "smoke")
        fig.canvas.draw()
        ax = fig.axes[0]
        box, axis = ax.get_legend().get_window_extent(), ax.get_window_extent()
        plt.close(fig)
        return box.x0 - axis.x1, box.x1 - axis.x1  # > 0: right of the axes

    few = [f"method {i}" for i in range(figures.CROWDED)]
    assert legend_box(few)[1] <= 0  # inside
    many = [f"method {i}" for i in range(figures.CROWDED + 10)]
    assert legend_box(many)[0] > 0  # beside


def test_a_crowded_bandwidth_sweep_marks_only_the_references_crossings_and_no_bands() -> None:
    """The sweep's crosses are filled in the crossing row's colour; past figures.CROWDED rows
    only crossings with the reference row are marked and the seeds' bands are left out (the
    compare report's 17 rows drew about thirty crosses and as many overlapping bands)."""

    def draw(n: int) -> tuple[list, int, str]:
        labels = [f"method {i}" for i in range(n)]
        recipe = _recipe(*labels, reference=labels[0])
        sweep = pd.DataFrame(
            [(f"{row}{s}", row, bps, (i + 1) / bps ** 0.5 * (1 + s / 10), simtime.REACHED)
             for i, row in enumerate(labels) for s in range(2) for bps in (1e7, 1e8, 1e9)],
            columns=["run_id", "row", "bps", "seconds", "status"],
        )  # fmt: skip
        marks = [  # one crossing with the reference, one between two other rows
            {"row": labels[2], "other": labels[0], "bps": 3e7, "seconds": 1e-3},
            {"row": labels[3], "other": labels[1], "bps": 5e7, "seconds": 2e-3},
        ]
        fig = figures.fig_bandwidth_sweep(sweep, marks, recipe, "smoke", "time")
        ax = fig.axes[0]
        crosses = [ln for ln in ax.lines if ln.get_marker() == "X" and len(ln.get_xdata())]
        faces = [(tuple(ln.get_xdata()), ln.get_markerfacecolor()) for ln in crosses]
        colours = {label: figures.styles(recipe)[label][0] for label in labels}
        bands = len(ax.collections)
        title = ax.get_legend().get_texts()[-1].get_text()
        plt.close(fig)
        return (
            [
                (x, tuple(face[:3]) == tuple(colours[row]))
                for (x, face), row in zip(faces, [m["row"] for m in marks], strict=False)
            ],
            bands,
            title,
        )

    few, few_bands, few_label = draw(figures.CROWDED)
    assert [x for x, _ in few] == [(30.0,), (50.0,)] and all(same for _, same in few)
    assert few_bands == figures.CROWDED and few_label == "crossing with a baseline"
    many, many_bands, many_label = draw(figures.CROWDED + 2)
    assert many == [((30.0,), True)] and many_bands == 0
    assert many_label == "crossing with method 0"


def test_a_crowded_time_to_target_figure_keeps_its_notes_and_names_apart() -> None:
    """Past figures.CROWDED rows the notes above the bars stand upright, clear of each other
    and of the legend, and the row names stay whole (the compare report's 17 methods had both
    run together: "allred uce_sg d", notes written over each other)."""
    labels = [f"method {i}" for i in range(figures.CROWDED + 4)]
    recipe = _recipe(*labels, reference=labels[0], target_accuracy=0.85)
    runs = pd.DataFrame(
        [{"run_id": f"{row}{s}", "row": row, "seed": s, "steps": 10.0, "network_seconds": 1.0,
          "profile": "smoke", "test_accuracy": 0.9, "bytes_sent": 1e6, "wire_bytes": 1e6}
         for row in labels for s in range(2)]
    )  # fmt: skip
    curves = pd.DataFrame(
        [(f"{row}{s}", step, "step_seconds", 0.1 * (i + 1)) for i, row in enumerate(labels)
         for s in range(2) for step in range(10)]
        + [(f"{row}{s}", 9, "test_accuracy", 0.9) for row in labels for s in range(2)],
        columns=["run_id", "step", "metric", "value"],
    )  # fmt: skip
    fig = figures.fig_time_to_target(runs, curves, recipe, "smoke")
    fig.canvas.draw()
    ax = fig.axes[0]
    notes = [t for t in ax.texts if "(slower)" in t.get_text()]
    assert len(notes) == len(labels) - 1  # every row but the reference, each 2x-10x slower
    boxes = [t.get_window_extent() for t in notes]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert not any(ax.get_legend().get_window_extent().overlaps(b) for b in boxes)
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    plt.close(fig)


def test_a_crowded_loss_figure_draws_coarser_means_without_bands() -> None:
    def draw(n: int) -> tuple[int, int, str]:
        labels = [f"method {i}" for i in range(n)]
        curves = pd.DataFrame(
            [(f"{row}{s}", row, s, step, "train_loss", 2.0 / (step + 1) + s / 10)
             for row in labels for s in range(2) for step in range(600)],
            columns=["run_id", "row", "seed", "step", "metric", "value"],
        )  # fmt: skip
        fig = figures.fig_loss_vs_step(curves, _recipe(*labels), "smoke")
        ax = fig.axes[0]
        points = max(len(line.get_xdata()) for line in ax.lines)
        out = len(ax.collections), points, ax.get_title()
        plt.close(fig)
        return out

    # 600 steps: unbinned under MAX_POINTS (400: bins of 599 // 400 = 1 step); crowded, bins
    # of 599 // CROWDED_POINTS (60) = 9 steps, 67 of them
    bands, points, title = draw(figures.CROWDED)
    assert (bands, points) == (figures.CROWDED, 600) and title.endswith("band ±1 std over seeds")
    bands, points, title = draw(figures.CROWDED + 1)
    assert (bands, points) == (0, 67) and title.endswith("mean over seeds, means of 9-step bins")


def test_byte_axes_go_log_when_rows_differ_by_an_order_of_magnitude() -> None:
    recipe = _recipe("Dense", "Sparse", reference="Dense")
    wide = _row_runs({"Dense": (0.9, 3e6), "Sparse": (0.88, 1e5)})  # 30x apart
    near = _row_runs({"Dense": (0.9, 3e6), "Sparse": (0.88, 2e6)})
    for runs, scale in ((wide, "log"), (near, "linear")):
        fig = figures.fig_tradeoff(runs, recipe, "smoke")
        assert fig.axes[0].get_xscale() == scale
        plt.close(fig)
    curves = pd.DataFrame(
        [(f"{row}0", row, 0, 9, m, v) for row, total in (("Dense", 3e6), ("Sparse", 1e5))
         for m, v in (("test_accuracy", 0.9), ("wire_bytes", total))],
        columns=["run_id", "row", "seed", "step", "metric", "value"],
    )  # fmt: skip
    fig = figures.fig_accuracy_vs_bytes(curves, recipe, "smoke")
    assert fig.axes[0].get_xscale() == "log"  # 30x: log (a 100x threshold left it linear)
    plt.close(fig)


def test_the_tradeoff_figure_draws_the_pareto_frontier_baseline_band_and_seeds() -> None:
    # C is dominated by B (more bytes, less accuracy): off the frontier
    rows = {"A": (0.90, 1e6), "B": (0.89, 1e5), "C": (0.85, 5e5), "D": (0.80, 1e4)}
    band = Claim("test_accuracy", "B", ">=", other="A", tolerance=0.015)
    recipe = _recipe(*rows, claims=(band,), reference="A")
    fig = figures.fig_tradeoff(_row_runs(rows), recipe, "smoke")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    front = lines["Pareto frontier (row means)"]
    assert list(front.get_xdata()) == pytest.approx([0.01, 0.1, 1.0])  # D, B, A in MB
    assert list(front.get_ydata()) == pytest.approx([0.80, 0.89, 0.90])
    assert list(lines["A's accuracy"].get_ydata()) == pytest.approx([0.9, 0.9])
    (shade,) = [p for p in ax.patches if "tolerance" in p.get_label()]
    low, high = shade.get_y(), shade.get_y() + shade.get_height()  # a Rectangle in data y
    assert (low, high) == pytest.approx((0.885, 0.9))
    seeds = [c for c in ax.collections if c.get_offsets().shape[0] == 2]  # a point per seed
    assert len(seeds) == len(rows)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "B (90.0% saved)" in legend and "A" in legend
    plt.close(fig)


def test_time_to_target_says_slower_and_its_row_labels_never_collide() -> None:
    labels = [f"EventGraD threshold h={h} (per-tensor events)" for h in range(6)]
    runs = pd.DataFrame(
        {"run_id": labels, "row": labels, "seed": 0, "steps": 10.0, "test_accuracy": 0.9,
         "network_seconds": 1.0, "bytes_sent": [1e6 - i for i in range(6)]}
    )  # fmt: skip
    curves = pd.DataFrame(
        [(r, s, "step_seconds", 0.1 * (1 + i)) for i, r in enumerate(labels) for s in range(10)]
        + [(r, 9, "test_accuracy", 0.9) for r in labels],
        columns=["run_id", "step", "metric", "value"],
    )
    recipe = _recipe(*labels, reference=labels[0], target_accuracy=0.85)
    fig = figures.fig_time_to_target(runs, curves, recipe, "smoke")
    fig.tight_layout()
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in fig.axes[0].get_xticklabels()]
    assert len(boxes) == 6
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    words = [t.get_text() for t in fig.axes[0].texts]
    assert any("slower" in w and "2.00x" in w for w in words)  # h=1 took twice as long
    assert "0.850" in fig.axes[0].get_title()
    plt.close(fig)
    times = frames.time_to_target(runs, curves, 0.85)
    notes = text.time_notes(times, labels[0])
    assert f"{labels[1]} is **slower** than {labels[0]}" in notes


def test_every_metric_is_defined_once_and_messages_have_a_comparable_unit(
    built: builder.Report,
) -> None:
    readme = (built.out_dir / "README.md").read_text()
    assert readme.count("## Definitions") == 1
    for term in ("wire bytes", "messages", "whole-model equivalents", "saved vs REF"):
        assert readme.count(f"- **{term}**:") == 1
    for claim in (HOLDING, FAILING):
        assert readme.count(f"- `{claim.metric}`:") == 1
    runs = _mixed_primitives(True).assign(num_params=125.0)  # a model of 500 bytes
    table = text.results_table(runs, RECIPE, "smoke").set_index("row")
    assert table["whole-model equivalents"].to_dict() == {"Dense": "4.0", "Sparse": "2.0"}
    assert table["messages"].to_dict() == {"Dense": "10", "Sparse": "10"}  # raw count beside


def test_report_html_links_each_row_to_its_mlflow_runs(
    built: builder.Report, store: str, tmp_path: Path, fake_recipes: None, monkeypatch
) -> None:
    runs, _ = frames.load_runs(store, "fake")
    exp = open_client(store).get_experiment_by_name("fake").experiment_id
    page = (built.out_dir / "report.html").read_text()
    for run in runs[runs["study"].isna()].itertuples():
        link = f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{run.run_id}"
        assert f'<a href="{link}">s{run.seed}</a>' in page
    monkeypatch.setenv("SUITE_MLFLOW_UI", "https://mlflow.example/")
    builder.build_report("fake", store, tmp_path / "r")
    page = (tmp_path / "r" / "report.html").read_text()
    assert f'<a href="https://mlflow.example/#/experiments/{exp}/runs/' in page


def test_paper_figures_are_declared_by_the_recipe(tmp_path: Path, monkeypatch) -> None:
    import json

    uri = f"sqlite:///{tmp_path / 'p.db'}"
    client = open_client(uri)
    exp = client.create_experiment("p", artifact_location=(tmp_path / "art").as_uri())
    for row in ("D", "E"):
        tags = {"suite.recipe": "p/t", "suite.row": row, "suite.profile": "smoke"}
        run_id = client.create_run(exp, tags=tags).info.run_id
        finals = [Metric(f"final.{k}", v, 0, 1) for k, v in (("test_accuracy", 0.9),
                                                              ("bytes_sent", 1e6))]  # fmt: skip
        client.log_batch(run_id, metrics=finals, params=[Param("seed", "0")])
        client.log_text(run_id, json.dumps({"w": 0.5}), "firing.json")
        client.log_text(run_id, "step,rank,vtime,backups\n0,0,1.0,1\n0,1,1.0,2\n", "backups.csv")
        client.set_terminated(run_id, "FINISHED")
    rows = (Row("D", "dpsgd"), Row("E", "eventgrad"))
    names = {}
    for declared in ((), ("firing", "backups")):
        recipe = Recipe("p", "t", "t", rows, (), {"smoke": Profile()}, figures=declared)
        monkeypatch.setattr(builder, "recipes_of", lambda paper, r=recipe: [r])
        report = builder.build_report("p", uri, tmp_path / f"out{len(declared)}")
        names[declared] = {p.name for p in report.figures}
    assert not any("firing" in n or "backups" in n for n in names[()])
    assert {"p-t-smoke-firing.png", "p-t-smoke-backups.png"} <= names[("firing", "backups")]
    bad = Recipe("p", "t", "t", rows, (), {"smoke": Profile()}, figures=("heat",))
    monkeypatch.setattr(builder, "recipes_of", lambda paper: [bad])
    with pytest.raises(ConfigError, match="unknown figures"):
        builder.build_report("p", uri, tmp_path / "bad")


def test_the_committed_recipes_declare_their_own_figures_by_known_names() -> None:
    from suite.registry import RECIPES

    declared = {name: RECIPES.get(name).obj.figures for name in RECIPES.names()}
    assert all(set(names) <= set(paper_figures.FIGURES) for names in declared.values())
    assert declared["eventgrad/mnist"] == ("firing",) and declared["dybw/mnist"] == ("backups",)
    assert not declared["baseline/periods"]  # the generic report draws no paper's figure
