"""Every bad input is refused before any rank starts: exit 2, a message naming the problem and
the valid range, and nothing written in the working directory.

The matrix runs ``suite.cli.main`` in-process (fast) with the launcher and the MLflow run's
creation replaced by functions that fail the test, so a case passes only if it is refused
before a rank or a run could start. A few cases, and the crafted CIFAR pickles, go through the
real ``python -m suite`` as a user would. Case ids start with ``new-`` for inputs that started
ranks (or ran) before the hardening, ``kept-`` for inputs refused already (regressions).
"""

from __future__ import annotations

import os
import pickle
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import suite_cmd
from test_datasets import write_cifar10

from suite import cli, launcher, reproduce, sweep
from suite.tracking import RunWriter

RUN = ["run", "allreduce_sgd", "--steps", "2"]
SWEEP = ["sweep", "baseline/periods", "--space", "period", "--trials", "1"]

# Kinds of name whose error had a "did you mean" already (the registry's own lookups)
_HAD_ONE = {"dataset", "model", "algorithm", "compressor", "recipe", "data-name"}

# (id, argv, fragments the message must hold: the problem and the valid range)
CASES: list[tuple[str, list[str], list[str]]] = [
    # Non-finite floats, wherever they sit in the config
    ("new-lr-nan", [*RUN, "--set", "optim.lr=nan"], ["optim.lr must be > 0", "nan"]),
    ("new-lr-inf", [*RUN, "--set", "optim.lr=inf"], ["optim.lr must be a finite number", "inf"]),
    ("new-lr-overflow", [*RUN, "--set", "optim.lr=1e999"], ["optim.lr must be a finite"]),
    ("new-wd-nan", [*RUN, "--set", "optim.weight_decay=nan"], ["optim.weight_decay must be >= 0"]),
    ("new-epochs-nan", [*RUN, "--epochs", "nan"], ["epochs must be >= 0", "nan"]),
    ("new-epochs-inf", [*RUN, "--epochs", "inf"], ["epochs must be a finite number", "inf"]),
    ("new-gamma-nan", [*RUN, "--set", "optim.gamma=nan"], ["optim.gamma must be > 0"]),
    (
        "new-milestone-nan",
        [*RUN, "--set", "optim.schedule=multistep", "--set", "optim.milestones=1,nan"],
        ["optim.milestones must be epochs >= 0"],
    ),
    (
        "new-warmup-epochs-nan",
        [*RUN, "--set", "optim.warmup_epochs=nan"],
        ["optim.warmup_epochs must be >= 0"],
    ),
    (
        "new-eventgrad-horizon-nan",
        ["run", "eventgrad", "--set", "algorithm.horizon=nan"],
        ["algorithm.horizon must be a finite number", "nan"],
    ),
    (
        "new-straggler-base-inf",
        ["run", "consensus_backup", "--set", "algorithm.straggler.base=inf"],
        ["algorithm.straggler.base must be a finite number"],
    ),
    (
        "new-time-scale-nan",
        ["run", "consensus_backup", "--set", "algorithm.time_scale=nan"],
        ["algorithm.time_scale must be a finite number"],
    ),
    (
        "new-adaptive-smoothing-inf",
        ["run", "adaptive_topk", "--set", "algorithm.smoothing=inf"],
        ["algorithm.smoothing", "smoothing must be in [0, 1)", "inf"],
    ),
    (
        "new-adaptive-kmax-inf",
        ["run", "adaptive_topk", "--set", "algorithm.k_max=inf"],
        ["algorithm.k_max must be a finite number"],
    ),
    (
        "new-synthetic-noise-inf",
        [*RUN, "--set", "dataset=synthetic", "--set", "dataset.noise=inf"],
        ["dataset.noise must be a finite number"],
    ),
    # Ranges that torch (or the loop) found only inside the ranks, or never
    ("new-momentum-negative", [*RUN, "--set", "optim.momentum=-1"], ["in [0, 1)", "-1"]),
    ("new-momentum-above-1", [*RUN, "--set", "optim.momentum=1.5"], ["in [0, 1)", "1.5"]),
    ("new-wd-negative", [*RUN, "--set", "optim.weight_decay=-0.1"], ["must be >= 0", "-0.1"]),
    (
        "new-nesterov-without-momentum",
        [*RUN, "--set", "optim.nesterov=true"],
        ["optim.nesterov needs optim.momentum in (0, 1)"],
    ),
    (
        "new-adagrad-eps-negative",
        [*RUN, "--set", "optim.name=adagrad", "--set", "optim.eps=-1"],
        ["optim.eps must be > 0"],
    ),
    ("new-seed-too-big", [*RUN, "--seed", str(10**20)], ["seed must be in [0, 4294967295]"]),
    (
        "new-synthetic-noise-negative",
        [*RUN, "--set", "dataset=synthetic", "--set", "dataset.noise=-1"],
        ["noise is a standard deviation >= 0"],
    ),
    ("new-hang-timeout-negative", [*RUN, "--hang-timeout", "-1"], ["--hang-timeout", "> 0"]),
    ("new-hang-timeout-nan", [*RUN, "--hang-timeout", "nan"], ["--hang-timeout", "finite"]),
    ("new-hang-timeout-zero", [*RUN, "--hang-timeout", "0"], ["--hang-timeout", "> 0"]),
    # beyond timedelta's range: every rank failed to join, twice, and the run ended FAILED
    ("new-hang-timeout-1e14", [*RUN, "--hang-timeout", "1e14"], ["--hang-timeout", "30 days"]),
    # A batch larger than a rank's shard (found only after every rank started)
    (
        "new-nproc-64",
        [*RUN, "--nproc", "64"],
        [
            "batch_size 32 is larger than a rank's shard of digits",
            "1437 training samples over 64",
            "23 per rank",
            "batch_size <= 23",
            "nproc <= 46",
        ],
    ),
    (
        "new-batch-100000",
        [*RUN, "--set", "batch_size=100000"],
        ["batch_size 100000", "360 per rank", "batch_size <= 360"],
    ),
    # The other commands that start runs check their --set the same way
    (
        "new-reproduce-lr-nan",
        ["reproduce", "baseline", "--set", "optim.lr=nan"],
        ["optim.lr must be > 0", "nan"],
    ),
    (
        "new-sweep-momentum-2",
        [*SWEEP, "--set", "optim.momentum=2"],
        ["optim.momentum must be in [0, 1)"],
    ),
    # Found by reading the code (2026-12-03): each failed every run one by one, failed a rank at
    # its first save or the store after training, or was silently ignored
    (
        "new-reproduce-batch-100000",
        ["reproduce", "baseline", "--set", "batch_size=100000"],
        ["batch_size 100000", "larger than a rank's shard"],
    ),
    (
        "new-sweep-batch-100000",
        [*SWEEP, "--set", "batch_size=100000"],
        ["batch_size 100000", "larger than a rank's shard"],
    ),
    (
        "new-reproduce-set-seed",
        ["reproduce", "baseline", "--set", "seed=3"],
        ["--set seed=3", "a recipe sets each run's seed itself", "--seeds"],
    ),
    ("new-reproduce-seeds-repeat", ["reproduce", "baseline", "--seeds", "0", "0"], ["repeats"]),
    (
        "new-sweep-set-seed",
        [*SWEEP, "--set", "seed=3"],
        ["--set seed=3", "every trial runs the profile's first seed"],
    ),
    # found by a read-only audit (2026-12-04): the trial's own overrides came after --set, so the
    # study, a failed trial and a parent run were made before "unknown config key"
    (
        "new-sweep-set-under-a-key-the-space-sets",
        [
            "sweep",
            "saef/cifar-100",
            "--space",
            "ratio-period",
            "--trials",
            "1",
            "--set",
            "algorithm.compressor=qsgd",
            "--set",
            "algorithm.compressor.levels=8",
        ],
        [
            "--set algorithm.compressor=qsgd: space 'ratio-period' sets algorithm.compressor",
            "it sets algorithm.compressor, algorithm.compressor.ratio, algorithm.average_every",
        ],
    ),
    (
        "new-sweep-set-the-knob-it-tunes",
        [*SWEEP, "--set", "algorithm.period=4"],
        ["--set algorithm.period=4: space 'period' sets algorithm.period in every trial"],
    ),
    ("new-sweep-study-quote", [*SWEEP, "--study", "bob's"], ["--study", "without quotes"]),
    # the trials' --optuna-trial argument is STORAGE|STUDY|TRIAL: a '|' sent them the wrong study
    ("new-sweep-study-bar", [*SWEEP, "--study", "a|b"], ["--study 'a|b'", "or '|'"]),
    (
        "new-consensus-time-varying-topology",
        ["run", "consensus_backup", "--set", "algorithm.topology=exponential_one_peer"],
        [
            "'exponential_one_peer' changes from step to step",
            "valid choices: complete, exponential, ring",
        ],
    ),
    (
        "new-milestones-past-the-steps",
        [*RUN, "--set", "optim.schedule=multistep", "--set", "optim.milestones=1"],
        ["are epochs, at or past the run's end: 2 steps", "11 steps per epoch"],
    ),
    ("new-tag-run-name", [*RUN, "--tag", "mlflow.runName=x"], ["--run-name"]),
    ("new-tag-bad-key", [*RUN, "--tag", "a@b=1"], ["MLflow takes tag keys"]),
    (
        "new-tracking-uri-two-slashes",
        [*RUN, "--tracking-uri", "sqlite://mlflow.db"],
        ["names no SQLite file", "sqlite:///relative.db"],
    ),
    (
        "new-checkpoint-dir-under-a-file",
        [*RUN, "--no-track", "--checkpoint-every", "1", "--checkpoint-dir", "/dev/null/ckpt"],
        ["--checkpoint-dir /dev/null/ckpt", "/dev/null is a file"],
    ),
    (
        "new-reproduce-out-under-a-file",
        ["reproduce", "baseline", "--out", "/dev/null/report"],
        ["--out /dev/null/report", "/dev/null is a file"],
    ),
    (
        "new-report-out-under-a-file",
        ["report", "baseline", "--out", "/dev/null/report"],
        ["--out /dev/null/report", "/dev/null is a file"],
    ),
    (
        "new-data-dir-under-a-file",
        ["data", "download", "fashion_mnist", "--data-dir", "/dev/null/fm"],
        ["/dev/null is a file", "--data-dir"],
    ),
    (
        "new-tracking-uri-under-a-file",
        [*RUN, "--tracking-uri", "sqlite:////dev/null/mlflow.db"],
        ["tracking URI 'sqlite:////dev/null/mlflow.db'", "/dev/null is a file"],
    ),
    (
        "new-tracking-uri-unknown-driver",
        [*RUN, "--tracking-uri", "postgresql+nosuch://u@localhost/db"],
        ["is not a database URL", "postgresql://USER:PASSWORD@HOST/DB"],
    ),
    ("new-report-no-store", ["report", "baseline"], ["no MLflow store at", "--tracking-uri"]),
    ("new-replay-no-store", ["replay", "0123abcd"], ["'0123abcd' is not a trace file"]),
    # Refused already: regressions, from test_cli and test_config
    ("kept-unknown-target", ["run", "allreduce"], ["unknown target", "allreduce_sgd"]),
    ("kept-unknown-model", [*RUN, "--set", "model=vgg"], ["unknown model 'vgg'", "mlp"]),
    ("kept-unknown-key", [*RUN, "--set", "optim.lrr=1"], ["unknown config key", "optim.lr"]),
    ("kept-bad-int", [*RUN, "--set", "steps=many"], ["bad value 'many' for steps"]),
    ("kept-bad-choice", [*RUN, "--set", "optim.schedule=cosine"], ["valid choices: constant"]),
    ("kept-world-size", ["run", "single", "--nproc", "2"], ["exactly 1 process"]),
    ("kept-nproc-zero", [*RUN, "--nproc", "0"], ["nproc must be >= 1"]),
    ("kept-lr-negative", [*RUN, "--set", "optim.lr=-1"], ["optim.lr must be > 0"]),
    ("kept-batch-zero", [*RUN, "--set", "batch_size=0"], ["batch_size must be >= 1"]),
    (
        "kept-period-zero",
        ["run", "local_sgd", "--set", "algorithm.period=0"],
        ["period must be >= 1"],
    ),
    ("kept-smoothing-inf", [*RUN, "--set", "label_smoothing=inf"], ["in [0, 1)"]),
    ("kept-target-nan", [*RUN, "--set", "target_accuracy=nan"], ["in [0, 1]"]),
    # the network the trace is replayed on: presets and the grammar listed
    (
        "new-network-unknown",
        [*RUN, "--set", "network=10mb"],
        [
            "unknown network '10mb'",
            "datacenter (100gbit:5us)",
            "wan (100mbit:20ms)",
            "RATE[:LATENCY]",
        ],
    ),
    (
        "new-network-rate-zero",
        [*RUN, "--set", "network=0gbit:1ms"],
        ["network '0gbit:1ms'", "bandwidth must be finite and > 0", "1g (1gbit:50us)"],
    ),
    (
        "kept-compressor-ratio-nan",
        [
            "run",
            "ef_sgd",
            "--set",
            "algorithm.compressor=top_k",
            "--set",
            "algorithm.compressor.ratio=nan",
        ],
        ["ratio must be in (0, 1]"],
    ),
    ("kept-test-fraction-nan", [*RUN, "--set", "dataset.test_fraction=nan"], ["in (0, 1)"]),
    (
        "kept-fault-rank",
        [*RUN, "--set", "fault.kind=crash", "--set", "fault.rank=9"],
        ["fault.rank must be in [0, 3]"],
    ),
    ("kept-mnist-no-dir", [*RUN, "--set", "dataset=mnist"], ["--data-dir"]),
    ("kept-tracking-uri", [*RUN, "--tracking-uri", "ftp://x"], ["valid schemes"]),
    # "did you mean" for every kind of name and key (registry names had one: kept-)
    *[
        (
            f"{'kept' if kind in _HAD_ONE else 'new'}-mean-{kind}",
            argv,
            [*fragments, f"(did you mean {meant!r}?)"],
        )
        for kind, argv, fragments, meant in [
            ("target", ["run", "allreduce"], ["unknown target 'allreduce'"], "allreduce_sgd"),
            ("key", [*RUN, "--set", "optim.lrr=1"], ["unknown config key"], "optim.lr"),
            ("knob", ["run", "local_sgd", "--set", "algorithm.perod=2"], [], "algorithm.period"),
            (
                "show-knob",
                ["show", "eventgrad", "--set", "algorithm.horizn=2"],
                [],
                "algorithm.horizon",
            ),
            ("dataset", [*RUN, "--set", "dataset=digit"], ["unknown dataset 'digit'"], "digits"),
            ("model", [*RUN, "--set", "model=mpl"], ["unknown model 'mpl'"], "mlp"),
            ("algorithm", [*RUN, "--set", "algorithm=dpsdg"], ["unknown algorithm"], "dpsgd"),
            (
                "compressor",
                ["run", "ef_sgd", "--set", "algorithm.compressor=topk"],
                ["unknown compressor 'topk'"],
                "top_k",
            ),
            ("network", [*RUN, "--set", "network=wna"], ["unknown network 'wna'"], "wan"),
            ("preset", ["run", "eventgrad_tpk"], ["unknown target"], "eventgrad_topk"),
            ("paper", ["reproduce", "eventgrd"], ["no recipes for paper 'eventgrd'"], "eventgrad"),
            ("report-paper", ["report", "dybww"], ["no recipes for paper"], "dybw"),
            ("profile", ["reproduce", "dybw", "--profile", "smok"], ["--profile"], "smoke"),
            (
                "recipe",
                [*SWEEP[:1], "baseline/period", *SWEEP[2:]],
                ["unknown recipe"],
                "baseline/periods",
            ),
            ("reproduce-key", ["reproduce", "dybw", "--set", "optim.lrr=1"], [], "optim.lr"),
            ("sweep-key", [*SWEEP, "--set", "batch_sise=8"], [], "batch_size"),
            ("device", [*RUN, "--device", "cdua"], ["--device"], "cuda"),
            ("subcommand", ["rnu", "allreduce_sgd"], ["invalid choice: 'rnu'"], "run"),
            ("list-kind", ["list", "algoritms"], ["unknown kind"], "algorithms"),
            ("data-name", ["data", "download", "mnsit", "--data-dir", "d"], [], "mnist"),
        ]
    ],
]


@pytest.fixture
def no_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Run in an empty ``tmp_path``; starting a rank, an MLflow run or a reproduce/sweep job
    fails the test."""

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("bad input reached the start of a job")

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store: ./mlflow.db
    monkeypatch.setattr(launcher, "launch", started)
    monkeypatch.setattr(launcher, "init_from_env", started)
    monkeypatch.setattr(RunWriter, "open", started)
    monkeypatch.setattr(reproduce, "run_job", started)  # suite reproduce's runs
    monkeypatch.setattr(sweep, "run_job", started)  # suite sweep's trials
    threads = torch.get_num_threads()  # the preflight sets 1 for the ranks it would fork
    yield tmp_path
    torch.set_num_threads(threads)


def _main(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exit:  # argparse's own refusals
        return int(exit.code)


@pytest.mark.parametrize(("argv", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_any_rank_starts(
    no_start: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragments: list[str]
) -> None:
    code = _main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    for fragment in fragments:
        assert fragment in err, err
    assert "Traceback" not in err
    assert os.listdir(no_start) == []  # no mlflow.db, no mlruns, nothing


@pytest.mark.parametrize(
    "case", ["new-nproc-64", "new-epochs-nan", "new-hang-timeout-nan", "new-network-unknown"]
)
def test_the_real_cli_refuses_them_too(tmp_path: Path, case: str) -> None:
    argv, fragments = next(c[1:] for c in CASES if c[0] == case)
    proc = suite_cmd(*argv, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr and "rank 0" not in proc.stderr
    assert os.listdir(tmp_path) == []


# Bad names, keys and values of the run's own fields are refused before torch or MLflow is
# imported (they take seconds to load on a busy machine); knob values are checked after.
FAST = [
    *("new-mean-" + kind for kind in ("target", "knob", "paper", "report-paper")),
    *("new-mean-" + kind for kind in ("sweep-key", "network")),
    *("kept-mean-" + kind for kind in ("recipe", "data-name", "compressor")),
    *("new-lr-nan", "kept-world-size", "kept-fault-rank", "kept-bad-choice"),
]

_IMPORTS_AT_EXIT = """
import atexit, sys
atexit.register(lambda: print(sorted({"torch", "mlflow"} & set(sys.modules)), file=sys.stderr))
from suite.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("case", FAST)
def test_bad_input_exits_before_torch_or_mlflow_is_imported(tmp_path: Path, case: str) -> None:
    argv, fragments = next(c[1:] for c in CASES if c[0] == case)
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORTS_AT_EXIT, *argv], cwd=tmp_path, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr
    assert proc.stderr.rstrip().endswith("[]"), proc.stderr  # neither was imported


def test_suite_run_says_what_it_starts_before_importing_torch(tmp_path: Path) -> None:
    """The plan is the first line, printed before the config is built (which loads torch)."""
    script = """
import sys
from suite import cli
def stop(args):
    print("torch" in sys.modules, file=sys.stderr)
    sys.exit(0)
cli.build_config = stop
sys.exit(cli.main(sys.argv[1:]))
"""
    argv = ["run", "dpsgd", "--no-track", "--nproc", "3", "--epochs", "1.5", "--set", "model=cnn2"]
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv], cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "dpsgd: starting 3 local rank(s), digits/cnn2, 1.5 epochs ...",
        "False",
    ]


@pytest.mark.parametrize(
    "start", [RUN, ["reproduce", "baseline"], SWEEP], ids=["run", "reproduce", "sweep"]
)
def test_a_store_whose_database_driver_is_missing_is_refused_before_training(
    no_start: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    start: list[str],
) -> None:
    # MLflow opens the store in the writer, after training starts: the driver is checked first
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # its import fails, installed or not
    uri = "postgresql+psycopg2://user:s3cret@localhost/runs"
    assert _main([*start, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    shown = "postgresql+psycopg2://user@localhost/runs"  # never the password
    assert f"tracking URI {shown!r} needs the Python module 'psycopg2'" in err, err
    assert "s3cret" not in err
    assert "postgresql+DRIVER://" in err and "Traceback" not in err
    assert os.listdir(no_start) == []


# ---------------------------------------------------------------------------------------------
# Reports and studies that already exist: neither replaced nor mixed up by mistake


@pytest.mark.parametrize("command", ["report", "reproduce"])
def test_an_out_folder_holding_other_files_is_refused_and_kept(
    no_start: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """A report replaces its folder whole: pointed at a folder of the user's own (``--out .``,
    or a drafts folder), it used to delete every file in it once the report was built."""
    drafts = no_start / "drafts"
    drafts.mkdir()
    (drafts / "paper.tex").write_text("months of work")
    assert _main([command, "baseline", "--out", str(drafts)]) == 2
    err = capsys.readouterr().err
    assert f"--out {drafts} holds files that are not a report's (paper.tex)" in err, err
    assert (drafts / "paper.tex").read_text() == "months of work"
    assert sorted(os.listdir(no_start)) == ["drafts"]  # no store opened, no report written


def test_a_report_folder_is_still_replaced_whole(tmp_path: Path) -> None:
    """The control: a folder holding only a report's files passes the check."""
    from reports.render import check_out_dir

    old = tmp_path / "report"
    (old / "figures").mkdir(parents=True)
    (old / "README.md").write_text("old")
    (old / "report.html").write_text("old")
    check_out_dir(old)
    check_out_dir(tmp_path / "new")  # absent: fine too
    (old / "notes.txt").write_text("mine")
    with pytest.raises(cli.ConfigError, match=r"notes\.txt"):
        check_out_dir(old)


def test_a_report_of_a_mistyped_experiment_is_refused_not_written_empty(
    no_start: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{no_start / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment("baseline")
    before = sorted(os.listdir(no_start))
    assert _main(["report", "baseline", "--experiment", "basline", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "no experiment 'basline'" in err and "(did you mean 'baseline'?)" in err, err
    assert "valid choices: baseline" in err
    assert sorted(os.listdir(no_start)) == before  # no out/reports/baseline written


def test_a_sweep_storage_that_is_a_folder_is_refused_before_any_study(
    no_start: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by a read-only audit (2026-12-04): SQLAlchemy's traceback after seconds of retries,
    exit 1."""
    (no_start / "optuna.db").mkdir()
    assert _main([*SWEEP, "--storage", f"sqlite:///{no_start / 'optuna.db'}"]) == 2
    err = capsys.readouterr().err
    assert f"{no_start / 'optuna.db'} is a folder, not a database file" in err, err
    assert "Traceback" not in err and os.listdir(no_start) == ["optuna.db"]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # metric names
@pytest.mark.parametrize("made_by", ["owner tag", "objectives"])
def test_a_study_name_reused_for_another_space_is_refused(
    no_start: Path, capsys: pytest.CaptureFixture[str], made_by: str
) -> None:
    """``--study`` names a study swept over another space: its trials tune other knobs (or
    other objectives, for a study made before owners were recorded), so adding trials would
    mix two searches."""
    import optuna

    storage = f"sqlite:///{no_start / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="s1", directions=["maximize"])
    if made_by == "owner tag":
        study.set_user_attr(sweep.OWNER_ATTR, "baseline/periods:period:smoke")
        expected = "was made for baseline/periods:period:smoke, not baseline/periods:lr:smoke"
    else:
        study.set_metric_names(["wire_bytes"])
        expected = "was made for the objectives wire_bytes"
    argv = ["sweep", "baseline/periods", "--space", "lr", "--trials", "1", "--study", "s1"]
    assert _main([*argv, "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    loaded = optuna.load_study(study_name="s1", storage=storage)
    assert loaded.trials == []  # no trial added
    assert loaded.user_attrs == study.user_attrs  # the owner not taken over


# ---------------------------------------------------------------------------------------------
# No code runs from data files


class _Payload:
    """Unpickles into ``os.system("touch MARKER")``: what a crafted CIFAR batch could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _cifar_cli(data: Path, cwd: Path):
    return suite_cmd(
        "run", "allreduce_sgd", "--set", "dataset=cifar10", "--data-dir", str(data),
        "--steps", "2", cwd=cwd,
    )  # fmt: skip


def test_a_crafted_cifar_pickle_is_refused_and_its_payload_never_runs(tmp_path: Path) -> None:
    data, cwd, marker = tmp_path / "data", tmp_path / "cwd", tmp_path / "marker"
    cwd.mkdir()
    write_cifar10(data)
    batch = data / "cifar-10-batches-py" / "data_batch_1"
    crafted = pickle.dumps({b"data": _Payload(marker), b"labels": [0, 1]}, protocol=2)
    batch.write_bytes(crafted)
    proc = _cifar_cli(data, cwd)
    assert proc.returncode == 2, proc.stderr
    assert f"refusing to load {batch}" in proc.stderr
    assert f"global {os.system.__module__}.system not allowed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()  # the payload did not run
    assert os.listdir(cwd) == []
    # The payload is live: plain pickle runs it (what the reader did before).
    pickle.loads(crafted)
    assert marker.exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_cifar_pickle_is_exit_2_naming_the_file(tmp_path: Path, damage: str) -> None:
    data, cwd = tmp_path / "data", tmp_path / "cwd"
    cwd.mkdir()
    write_cifar10(data)
    batch = data / "cifar-10-batches-py" / "data_batch_1"
    if damage == "garbage":
        batch.write_bytes(b"\x80\x02}q\x00GARBAGE\xff\xfe not a pickle")
    else:
        whole = batch.read_bytes()
        batch.write_bytes(whole[: len(whole) // 2])
    proc = _cifar_cli(data, cwd)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot read {batch}" in proc.stderr and "download it again" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert os.listdir(cwd) == []


@pytest.mark.parametrize("dataset", ["digits", "cifar10"])
def test_good_input_gets_past_the_checks_to_the_launcher(
    no_start: Path, tmp_path: Path, dataset: str
) -> None:
    """The control for the matrix: valid input (here real-format tiny CIFAR files, ten images,
    so one rank with batch 2) passes every check and reaches the (patched) launcher."""
    data = tmp_path / "data"
    write_cifar10(data)
    argv = ["run", "allreduce_sgd", "--no-track", "--nproc", "1", "--set", "batch_size=2"]
    with pytest.raises(AssertionError, match="reached the start of a job"):
        _main([*argv, "--set", f"dataset={dataset}", "--data-dir", str(data)])
