"""Recipes, claims, `suite reproduce` and `suite sweep`."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from test_report import claim_verdicts

import suite.reproduce as reproduce_mod
from suite import cli, names
from suite.recipes import (
    FAILS,
    HOLDS,
    UNTESTABLE,
    Claim,
    Known,
    Profile,
    Recipe,
    Row,
    aggregate,
)
from suite.sweep import OptunaPruner

STATS = {
    "A": {"test_accuracy": (0.90, 0.01, 2), "bytes_sent": (100.0, 0.0, 2)},
    "B": {"test_accuracy": (0.88, 0.02, 2), "bytes_sent": (25.0, 0.0, 2)},
}


@pytest.mark.parametrize(
    ("claim", "verdict"),
    [
        (Claim("bytes_sent", "B", "<=", other="A", scale=0.25), HOLDS),
        (Claim("bytes_sent", "B", "<=", other="A", scale=0.2), FAILS),
        (Claim("test_accuracy", "B", ">=", other="A", tolerance=0.03), HOLDS),
        (Claim("test_accuracy", "B", ">=", other="A", tolerance=0.01), FAILS),
        (Claim("test_accuracy", "A", ">=", value=0.95), FAILS),
        (Claim("test_accuracy", "A", "within", value=0.92, tolerance=0.025), HOLDS),
        (Claim("test_accuracy", "A", "within", value=0.92, tolerance=0.015), FAILS),
        (Claim("test_accuracy", "C", ">=", value=0.5), UNTESTABLE),
    ],
)
def test_claims_hold_only_when_the_numbers_do(claim: Claim, verdict: str) -> None:
    assert claim.check(STATS).verdict == verdict


def test_a_claim_not_checked_at_a_profile_is_not_testable_there() -> None:
    only_full = Claim("test_accuracy", "A", ">=", value=0.0, profiles=("full",))
    recipe = _tiny_recipe(claims=(only_full,))
    (verdict,) = recipe.check(STATS, "smoke")
    assert verdict.verdict == UNTESTABLE


def test_aggregate_gives_mean_and_sample_std_over_seeds() -> None:
    stats = aggregate([("A", {"x": 1.0, "flag": True}), ("A", {"x": 3.0}), ("B", {"x": 5})])
    mean, std, n = stats["A"]["x"]
    assert (mean, n) == (2.0, 2) and std == pytest.approx(math.sqrt(2.0))
    assert stats["B"]["x"] == (5.0, 0.0, 1)
    assert "flag" not in stats["A"]  # booleans are not measurements


# times to a target: C and D faster than A, B slower; E never reached it
TIMES = {
    "A": {"t": (10.0, 0.0, 2)},
    "B": {"t": (12.0, 0.0, 2)},
    "C": {"t": (8.0, 0.0, 2)},
    "D": {"t": (9.0, 1.0, 2)},
    "E": {"t": (math.inf, math.nan, 2)},
}


@pytest.mark.parametrize(
    ("rows", "quantifier", "verdict", "deciding"),
    [
        (("B", "E"), "all", HOLDS, "B"),  # none faster than A; B is the closest call
        (("B", "C", "D"), "all", FAILS, "C"),  # C is faster: the furthest past the bound
        (("B", "C", "D"), "any", HOLDS, "C"),  # at least one (C, the fastest) is faster
        (("B", "E"), "any", FAILS, "B"),
        (("B", "Z"), "all", UNTESTABLE, "Z"),  # no failure, but Z has no runs
        (("C", "Z"), "all", FAILS, "C"),  # a failure decides whatever is missing
        (("B", "Z"), "any", UNTESTABLE, "Z"),
        (("C", "Z"), "any", HOLDS, "C"),
    ],
)
def test_a_claim_on_a_group_of_rows_holds_for_all_or_any_of_them(
    rows: tuple[str, ...], quantifier: str, verdict: str, deciding: str
) -> None:
    op = ">=" if quantifier == "all" else "<="  # "none is faster" / "at least one is faster"
    claim = Claim("t", rows, op, other="A", quantifier=quantifier)  # type: ignore[arg-type]
    checked = claim.check(TIMES)
    assert checked.verdict == verdict
    assert checked.detail.startswith(f"{deciding}:")
    if deciding != "Z":
        assert checked.mean == TIMES[deciding]["t"][0] and checked.reference == 10.0
    word = "every one" if quantifier == "all" else "at least one"
    assert claim.describe() == f"t of {word} of {{{', '.join(rows)}}} {op} A"


def test_a_diverged_row_of_a_group_fails_all_but_not_any() -> None:
    rows = (Row("A", "allreduce_sgd"), Row("B", "local_sgd"), Row("C", "local_sgd"))
    every = Claim("t", ("B", "C"), ">=", other="A")
    some = Claim("t", ("B", "C"), ">=", other="A", quantifier="any")
    on_ref = Claim("t", ("B",), ">=", other="A", quantifier="any")
    recipe = _tiny_recipe(rows=rows, claims=(every, some, on_ref))
    stats = {k: v for k, v in TIMES.items() if k in "AB"}  # C diverged: no finished runs
    all_c, any_c, _ = recipe.check(stats, "smoke", diverged={"C"})
    assert all_c.verdict == FAILS and all_c.detail.startswith("C: C diverged")
    assert any_c.verdict == HOLDS and any_c.detail.startswith("B:")
    (*_, ref_gone) = recipe.check(stats, "smoke", diverged={"A"})
    assert ref_gone.verdict == FAILS and ref_gone.detail == "A diverged"


def test_a_group_claim_names_known_rows_and_a_quantifier() -> None:
    with pytest.raises(ValueError, match="unknown row 'Z'"):
        _tiny_recipe(claims=(Claim("t", ("A", "Z"), ">=", value=1.0),))
    with pytest.raises(ValueError, match="valid choices: all, any"):
        Claim("t", ("A", "B"), ">=", value=1.0, quantifier="most")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one row"):
        Claim("t", (), ">=", value=1.0)


def test_a_claim_on_an_unknown_row_is_rejected_when_the_recipe_is_made() -> None:
    with pytest.raises(ValueError, match="unknown row 'Z'"):
        _tiny_recipe(claims=(Claim("test_accuracy", "Z", ">=", value=0.5),))


def _tiny_recipe(rows: tuple[Row, ...] | None = None, claims: tuple[Claim, ...] = ()) -> Recipe:
    small = ("nproc=2", "steps=20", "eval_every=10", "model.hidden=16", "eval_per_rank=false")
    return Recipe(
        paper="tiny",
        key="Table 1",
        title="a tiny recipe for tests",
        rows=rows or (Row("A", "allreduce_sgd"), Row("B", "local_sgd", ("algorithm.period=4",))),
        claims=claims,
        profiles={"smoke": Profile(small, seeds=(0,))},
        reference="A",
    )


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ((Row("A", "allreduce_sgd"), Row("B", "no_such_algorithm")), "allreduce_sgd"),
        ((Row("A", "allreduce_sgd"), Row("B", "local_sgd", ("algorithm.perod=4",))), "period"),
    ],
)
def test_a_bad_recipe_fails_before_any_process_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys, rows, expected: str
) -> None:
    monkeypatch.setattr(reproduce_mod, "recipes_of", lambda paper: [_tiny_recipe(rows)])
    monkeypatch.setattr(names, "PAPERS", (*names.PAPERS, "tiny"))  # the CLI's first check
    started = []
    monkeypatch.setattr(reproduce_mod, "run_job", lambda *a, **k: started.append(a))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = cli.main(["reproduce", "tiny", "--tracking-uri", uri, "--out", str(tmp_path / "r")])
    assert code == 2
    assert expected in capsys.readouterr().err
    assert started == [] and not (tmp_path / "mlflow.db").exists()


def test_reproduce_skips_finished_runs_and_redoes_them_with_force(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    claims = (Claim("bytes_sent", "B", "<=", other="A", scale=0.25, tolerance=1.0),)
    recipe = _tiny_recipe(claims=claims)
    monkeypatch.setattr(reproduce_mod, "recipes_of", lambda paper: [recipe])
    import reports.builder as builder

    monkeypatch.setattr(builder, "recipes_of", lambda paper: [recipe])
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "report"

    def runs() -> int:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("tiny")
        found = client.search_runs([exp.experiment_id])
        return sum("suite.recipe" in r.data.tags for r in found)  # not the paper's parent run

    assert reproduce_mod.reproduce("tiny", profile="smoke", uri=uri, out_dir=out) == 0
    assert runs() == 2
    assert reproduce_mod.reproduce("tiny", profile="smoke", uri=uri, out_dir=out) == 0
    assert runs() == 2  # both skipped
    assert reproduce_mod.reproduce("tiny", profile="smoke", uri=uri, out_dir=out, force=True) == 0
    assert runs() == 4
    assert claim_verdicts((out / "README.md").read_text()) == {claims[0].describe(): "holds"}


def test_reproduce_exits_1_when_a_claim_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    claims = (Claim("test_accuracy", "A", ">=", value=1.01),)  # no model gets 101%
    recipe = _tiny_recipe(rows=(Row("A", "allreduce_sgd"),), claims=claims)
    monkeypatch.setattr(reproduce_mod, "recipes_of", lambda paper: [recipe])
    import reports.builder as builder

    monkeypatch.setattr(builder, "recipes_of", lambda paper: [recipe])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert reproduce_mod.reproduce("tiny", profile="smoke", uri=uri, out_dir=tmp_path / "r") == 1
    verdicts = claim_verdicts((tmp_path / "r" / "README.md").read_text())
    assert verdicts == {claims[0].describe(): "fails"}


def test_an_unknown_paper_or_space_is_bad_input(capsys) -> None:
    assert cli.main(["reproduce", "no_such_paper"]) == 2
    assert "baseline" in capsys.readouterr().err
    assert cli.main(["sweep", "baseline/periods", "--space", "nope", "--trials", "1"]) == 2
    assert "period" in capsys.readouterr().err


def test_the_optuna_pruner_reports_to_its_trial_and_prunes_a_poor_one(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    for _ in range(2):  # two finished trials set the median
        trial = study.ask()
        trial.report(0.9, 10)
        study.tell(trial, 0.9)
    good, poor = study.ask(), study.ask()
    good_pruner = OptunaPruner.from_arg(OptunaPruner(storage, "s", good._trial_id).to_arg())
    poor_pruner = OptunaPruner(storage, "s", poor._trial_id)
    assert good_pruner(10, 0.95) is False
    assert poor_pruner(10, 0.2) is True
    stored = {t.number: t.intermediate_values for t in study.get_trials()}
    assert stored[good.number] == {10: 0.95} and stored[poor.number] == {10: 0.2}


SWEEP = [
    sys.executable, "-m", "suite", "sweep", "baseline/periods", "--space", "lr", "--trials", "3",
    "--set", "nproc=2", "--set", "steps=30", "--set", "eval_every=10",
    "--set", "eval_per_rank=false",
]  # fmt: skip


def test_an_interrupted_sweep_resumes_with_the_trials_it_had(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study_name = "baseline/periods:lr:smoke"
    proc = subprocess.Popen(SWEEP, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    first = None
    while time.monotonic() < deadline and first is None:
        time.sleep(0.5)
        try:
            done = optuna.load_study(study_name=study_name, storage=storage).get_trials(
                states=(optuna.trial.TrialState.COMPLETE,)
            )
        except Exception:  # the study is not there yet
            continue
        first = done[0] if done else None
    assert first is not None, "no trial finished"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    resumed = subprocess.run(SWEEP, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
    finished = [t for t in trials if t.state.is_finished() and t.state.name != "FAIL"]
    assert len(finished) == 3
    kept = next(t for t in trials if t.number == first.number)
    assert kept.params == first.params and kept.value == first.value
    assert not [t for t in trials if t.state.name == "RUNNING"]


def _registered_recipes() -> list[str]:
    from suite.registry import RECIPES

    return RECIPES.names()


@pytest.mark.parametrize("name", _registered_recipes())
def test_every_registered_recipe_resolves_every_row_and_space(name: str) -> None:
    """A typo in any committed recipe (a key, a value, a row a space names) fails here, not
    hours into a full-profile run."""
    from suite.registry import RECIPES

    recipe = RECIPES.get(name).obj
    for profile in recipe.profiles:
        for row in recipe.rows:
            resolved = recipe.resolve(row, profile, seed=0).algorithm.name
            assert resolved == row.target, (row.label, profile)
    study = optuna.create_study(directions=["maximize"])
    for space in recipe.spaces.values():
        row = recipe.row(space.row)
        at = [p for p in recipe.profiles if row in recipe.rows_at(p)]
        assert at, f"space row {row.label!r} runs at no profile"
        for profile in at:
            recipe.resolve(row, profile, seed=0, extra=space.suggest(study.ask()))


@pytest.mark.parametrize("name", _registered_recipes())
def test_a_row_is_labelled_a_stand_in_exactly_when_it_runs_one(name: str) -> None:
    """Its label is what every table, figure legend and MLflow run name shows."""
    from suite.registry import ALGORITHMS, RECIPES

    for row in RECIPES.get(name).obj.rows:
        stand_in = ALGORITHMS.get(row.target).stand_in
        assert ("(stand-in)" in row.label) == stand_in, (row.label, row.target)


def test_a_planned_run_says_what_it_trains_the_stand_in_data_and_model_included() -> None:
    from suite.reproduce import plan

    mnist = [r for r in plan("eventgrad", "smoke", None, ()) if r.recipe.key == "MNIST"]
    assert {r.setup for r in mnist} == {"digits/mlp, 4 ranks, 300 steps"}  # MNIST's stand-in
    speedup = [r for r in plan("dybw", "smoke", None, ()) if r.recipe.key == "Linear speedup"]
    assert {r.setup.split(", ")[1] for r in speedup} == {"1 rank", "2 ranks", "4 ranks"}
    real = plan("eventgrad", "real", None, ())
    assert {r.setup for r in real} == {"fashion_mnist/cnn2, 4 ranks, 10 epochs"}


def _multistep_runs() -> list[tuple[str, str, str]]:
    """(recipe, profile, row) of every committed run with a multistep lr schedule over 2 or
    more epochs."""
    from suite.registry import RECIPES

    found = []
    for name in RECIPES.names():
        recipe = RECIPES.get(name).obj
        for profile in recipe.profiles:
            for row in recipe.rows_at(profile):
                cfg = recipe.resolve(row, profile, seed=0)
                if cfg.optim.schedule == "multistep" and cfg.epochs >= 2:
                    found.append((name, profile, row.label))
    return found


def test_the_milestone_check_has_runs_to_check() -> None:
    assert len({name.split("/")[0] for name, _, _ in _multistep_runs()}) >= 3  # papers


@pytest.mark.parametrize(("name", "profile", "label"), _multistep_runs())
def test_every_recipes_lr_milestones_are_epochs_inside_the_run(
    name: str, profile: str, label: str
) -> None:
    """Milestones are epochs: "0.5,0.75" meant as fractions of a 10-epoch run decays the lr
    after half an epoch (the baseline's real profile did, and trained to 0.78 for it)."""
    from suite.registry import RECIPES

    recipe = RECIPES.get(name).obj
    cfg = recipe.resolve(recipe.row(label), profile, seed=0)
    milestones = cfg.optim.milestones
    assert milestones, f"{label} at {profile}: multistep without milestones"
    assert all(1 <= m < cfg.epochs for m in milestones), (
        f"{label} at {profile}: milestones {milestones} for {cfg.epochs:g} epochs"
    )


KNOWN = Known("smoke", "the flag round costs a latency", "reproduce/x/NOTES.md#flags")


def test_a_known_deviation_marks_a_failure_known_and_a_pass_unexpected() -> None:
    failing = Claim("test_accuracy", "A", ">=", value=0.95, known=(KNOWN,))
    holding = Claim("test_accuracy", "A", ">=", value=0.5, known=(KNOWN,))
    plain = Claim("test_accuracy", "A", ">=", value=0.95)
    recipe = _tiny_recipe(claims=(failing, holding, plain))
    known_fail, surprise, real_fail = recipe.check(STATS, "smoke")
    assert known_fail.verdict == FAILS and known_fail.is_known_failure
    assert not known_fail.counts_as_failure and known_fail.label == "fails (known)"
    assert surprise.verdict == HOLDS and surprise.is_unexpected_pass
    assert surprise.label == "holds (unexpected pass)"
    assert real_fail.counts_as_failure and real_fail.label == "fails"
    # the deviation is known at smoke only: at full the same failure counts
    (at_full, *_) = recipe.check(STATS, "full")
    assert at_full.known is None and at_full.counts_as_failure


def test_a_diverged_row_is_never_a_known_failure() -> None:
    recipe = _tiny_recipe(claims=(Claim("test_accuracy", "A", ">=", value=0.95, known=(KNOWN,)),))
    (verdict,) = recipe.check(STATS, "smoke", diverged={"A"})
    assert verdict.verdict == FAILS and verdict.counts_as_failure


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Known("huge", "r", "e"), "valid choices: smoke, real, full"),
        (lambda: Known("smoke", " ", "e"), "needs a reason and its evidence"),
        (
            lambda: Claim("x", "A", ">=", value=1, profiles=("full",), known=(KNOWN,)),
            "where it is not checked",
        ),
        (lambda: Claim("x", "A", ">=", value=1, known=(KNOWN, KNOWN)), "two known deviations"),
    ],
)
def test_known_deviations_are_checked_when_written(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.fixture
def register_tiny(monkeypatch: pytest.MonkeyPatch):
    """Register recipes for one test only (the built-in ones stay registered beside them)."""
    from suite.recipes import register
    from suite.registry import RECIPES

    RECIPES.names()  # load the built-in recipes before taking the copy
    monkeypatch.setattr(RECIPES, "_entries", dict(RECIPES._entries))

    def add(*recipes: Recipe) -> None:
        for recipe in recipes:
            register(recipe)
            if recipe.paper not in names.PAPERS:  # the CLI's first check, before the registry
                monkeypatch.setattr(names, "PAPERS", (*names.PAPERS, recipe.paper))

    return add


_RUN_JOB = reproduce_mod.run_job


def _reproduce_cli(target: str, tmp_path: Path, started: list, monkeypatch) -> int:
    """``suite reproduce TARGET`` in this process, every started run recorded in ``started``."""

    def recording(target_name, overrides, **kw):
        started.append(kw["tags"]["suite.recipe"])
        return _RUN_JOB(target_name, overrides, **kw)

    monkeypatch.setattr(reproduce_mod, "run_job", recording)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return cli.main(["reproduce", target, "--tracking-uri", uri, "--out", str(tmp_path / "r")])


def test_a_known_failure_keeps_reproduce_green_and_a_known_pass_is_flagged(
    register_tiny, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    fails = Known("smoke", "no model scores 101 percent", "reproduce/tiny/NOTES.md#never")
    holds = Known("smoke", "expected to miss, but may not", "reproduce/tiny/NOTES.md#maybe")
    claims = (
        Claim("test_accuracy", "A", ">=", value=1.01, known=(fails,)),
        Claim("test_accuracy", "A", ">=", value=0.0, known=(holds,)),
    )
    register_tiny(replace(_tiny_recipe((Row("A", "allreduce_sgd"),), claims), paper="tinyk"))
    started: list[str] = []
    code = _reproduce_cli("tinyk", tmp_path, started, monkeypatch)
    out = capsys.readouterr().out
    assert code == 0, out
    assert started == ["tinyk/table-1"]
    assert "fails (known)" in out and "no model scores 101 percent" in out
    assert "reproduce/tiny/NOTES.md#never" in out
    assert "holds (unexpected pass)" in out and "expected to miss, but may not" in out
    verdicts = claim_verdicts((tmp_path / "r" / "README.md").read_text())
    assert verdicts == {
        claims[0].describe(): "fails (known)",
        claims[1].describe(): "holds (unexpected pass)",
    }


def test_reproduce_paper_slash_label_runs_that_recipe_only(
    register_tiny, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    one = _tiny_recipe((Row("A", "allreduce_sgd"),), (Claim("test_accuracy", "A", ">=", value=0),))
    register_tiny(one, replace(_tiny_recipe(), key="Table 2"))
    started: list[str] = []
    assert _reproduce_cli("tiny/tabel-1", tmp_path, started, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "did you mean 'tiny/table-1'" in err and "tiny/table-2" in err
    assert started == []
    assert _reproduce_cli("tiny/table-1", tmp_path, started, monkeypatch) == 0
    assert started == ["tiny/table-1"]


def test_a_recipe_without_its_data_is_reported_once_up_front_and_the_others_run(
    register_tiny, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    runnable = _tiny_recipe((Row("A", "allreduce_sgd"),))
    no_data = Profile(("dataset=mnist", f"data_dir={tmp_path / 'empty'}", "nproc=2"), seeds=(0, 1))
    needs_mnist = replace(_tiny_recipe(), key="MNIST", profiles={"smoke": no_data})
    register_tiny(runnable, needs_mnist)
    started: list[str] = []
    assert _reproduce_cli("tiny", tmp_path, started, monkeypatch) == 1
    err = capsys.readouterr().err
    assert started == ["tiny/table-1"]  # the 4 MNIST runs never started
    assert err.count("data not found") == 1 and "suite data download mnist" in err
    assert err.index("tiny/mnist: not run, its data is missing") < err.index("[1/1]")


# issue 17: the recipes promised a `real` profile, and what each must run there
REAL = {
    "eventgrad/mnist": {4},
    "dybw/mnist": {8},
    "dybw/linear-speedup": {1, 2, 4},
    "adaptive_topk/mnist": {4},
    "baseline/periods": {4},
    "crossover_sgd/fig-8": {8, 16, 32, 64},
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_a_real_profile_runs_fashion_mnist_and_checks_claims_on_its_own_rows(name: str) -> None:
    """Every row at `real` reads Fashion-MNIST at the paper's worker counts, and every claim
    checked there names rows that run there (else it would read "not testable" after up to
    an hour of runs)."""
    from suite.registry import RECIPES

    recipe = RECIPES.get(name).obj
    rows = recipe.rows_at("real")
    assert rows and recipe.profile("real").seeds
    configs = [recipe.resolve(row, "real", seed=0) for row in rows]
    assert {cfg.dataset.name for cfg in configs} == {"fashion_mnist"}
    assert {cfg.nproc for cfg in configs} == REAL[name]
    labels = {row.label for row in rows}
    checked = [c for c in recipe.claims if "real" in c.profiles]
    assert checked, "no claim is checked at real"
    for claim in checked:
        assert {claim.row, claim.other or claim.row} <= labels, claim.describe()
    # the relative claims only: an absolute number is the paper's on the paper's data alone
    paper_numbers = [c for c in checked if c.value is not None and c.paper_value is not None]
    assert all(c.metric == "savings" for c in paper_numbers)  # EventGraD's savings: a ratio
    assert "real" in recipe.runtime


def test_crossover_fig8_at_real_keeps_the_global_batch_fixed_as_n_grows() -> None:
    from suite.registry import RECIPES

    recipe = RECIPES.get("crossover_sgd/fig-8").obj
    for row in recipe.rows_at("real"):
        cfg = recipe.resolve(row, "real", seed=0)
        assert cfg.nproc * cfg.batch_size * cfg.micro_batches == 2048, row.label


def test_reproduce_at_real_without_fashion_mnist_exits_2_before_any_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    """An empty --set data_dir, or no system copy where the default looks: exit 2 up front, with
    where it looked and how to get the data; no run, no MLflow parent run."""
    import suite.tasks.datasets as datasets

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(empty))
    started: list[str] = []
    monkeypatch.setattr(reproduce_mod, "run_job", lambda *a, **kw: started.append(a))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = ["reproduce", "eventgrad", "--profile", "real", "--tracking-uri", uri]
    for extra in (["--set", f"data_dir={empty}"], []):
        assert cli.main([*base, "--out", str(tmp_path / "r"), *extra]) == 2
        err = capsys.readouterr().err
        assert "eventgrad/mnist: cannot run, its data is missing" in err
        assert str(empty) in err and "dataset-fashion-mnist" in err
        assert "nothing was run" in err
    assert started == []
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_run_job_runs_a_tracked_child_by_either_start_method(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork server where there is one; fresh interpreters (spawn) where there is none."""
    import multiprocessing

    if method == "spawn":
        monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert reproduce_mod._children().get_start_method() == method
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = reproduce_mod.run_job(
        "allreduce_sgd",
        ["nproc=2", "steps=3", "eval_every=0", "eval_per_rank=false"],
        uri=uri,
        experiment="e",
        tags={"suite.test": method},
        run_name="r",
    )
    assert summary["steps"] == 3 and summary["world_size"] == 2
    run = MlflowClient(uri).get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["suite.test"] == method
