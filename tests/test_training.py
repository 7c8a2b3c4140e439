"""The loop and the baselines agree with plain references where they must."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch
from conftest import KeptMetrics

from suite.config import RunConfig, apply_overrides
from suite.launcher import launch
from suite.loop import Job, Trainer, build_dataset, initial_model, run_worker
from suite.transport import Transport

SMALL = [
    "dataset=digits",
    "model=mlp",
    "model.hidden=32",
    "eval_every=0",
    "eval_per_rank=false",
    "device=cpu",  # exact comparisons: every rank and the reference on one device
]


def _config(*items: str) -> RunConfig:
    return apply_overrides(RunConfig(), [*SMALL, *items])


def _train_and_return_params(cfg: RunConfig) -> dict:
    trainer = Trainer(Job(cfg, target="test", paper="test", progress=False), Transport())
    summary, _ = trainer.run()
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    return {"state": state, "summary": summary}


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_allreduce_sgd_on_two_ranks_equals_one_process_on_the_union_batch(
    micro_batches: int,
) -> None:
    steps, batch = 12, 16
    common = [f"steps={steps}", f"micro_batches={micro_batches}", "optim.momentum=0.9"]
    dist_cfg = _config("algorithm=allreduce_sgd", "nproc=2", f"batch_size={batch}", *common)
    single_cfg = _config("algorithm=single", "nproc=1", f"batch_size={2 * batch}", *common)
    two = launch(_train_and_return_params, 2, (dist_cfg,))
    one = launch(_train_and_return_params, 1, (single_cfg,))[0]
    assert _max_diff(two[0]["state"], two[1]["state"]) == 0.0  # ranks stay identical
    diff = _max_diff(two[0]["state"], one["state"])
    assert diff < 1e-5, f"all-reduce SGD drifted from the union-batch reference by {diff}"
    # and the reference really moved: the comparison is not between two initial models
    init = initial_model(single_cfg, build_dataset(single_cfg)).state_dict()
    assert _max_diff(init, one["state"]) > 1e-3


def test_local_sgd_with_period_one_equals_allreduce_sgd() -> None:
    common = ["steps=10", "nproc=2", "batch_size=16"]
    a = launch(_train_and_return_params, 2, (_config("algorithm=allreduce_sgd", *common),))
    b = launch(
        _train_and_return_params,
        2,
        (_config("algorithm=local_sgd", "algorithm.period=1", *common),),
    )
    assert _max_diff(a[0]["state"], b[0]["state"]) < 1e-5


def test_local_sgd_averages_every_period_and_counts_its_traffic() -> None:
    cfg = _config("algorithm=local_sgd", "algorithm.period=4", "steps=10", "nproc=2")
    out = launch(_train_and_return_params, 2, (cfg,))
    # 10 steps with H=4: averages after steps 4 and 8; models drift for the last 2 steps
    assert _max_diff(out[0]["state"], out[1]["state"]) > 0
    summary = out[0]["summary"]
    params = summary["num_params"]
    assert summary["messages"] == 2 * 2  # 2 averages x 2 ranks
    assert summary["bytes_sent"] == 2 * 2 * params * 4


def test_allreduce_sgd_bytes_match_the_model_size() -> None:
    cfg = _config("algorithm=allreduce_sgd", "steps=5", "nproc=2")
    summary = launch(_train_and_return_params, 2, (cfg,))[0]["summary"]
    assert summary["bytes_sent"] == 5 * 2 * summary["num_params"] * 4
    assert summary["messages"] == 5 * 2
    assert [r["bytes_sent"] for r in summary["per_rank"]] == [5 * summary["num_params"] * 4] * 2


def _accuracy(cfg: RunConfig, state: dict) -> float:
    data = build_dataset(cfg)
    model = initial_model(cfg, data)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        x = data.preprocess(data.test.x, False, None)
        return float((model(x).argmax(1) == data.test.y).float().mean())


def test_evaluation_scores_the_averaged_and_each_rank_model() -> None:
    # local models never averaged, so the two ranks and their average are three models
    cfg = _config(
        "algorithm=local_sgd",
        "algorithm.period=1000",
        "steps=40",
        "nproc=2",
        "eval_per_rank=true",
        "optim.lr=0.2",
    )
    out = launch(_train_and_return_params, 2, (cfg,))
    summary = out[0]["summary"]
    mean_state = {k: (out[0]["state"][k] + out[1]["state"][k]) / 2 for k in out[0]["state"]}
    assert summary["test_accuracy"] == pytest.approx(_accuracy(cfg, mean_state), abs=1e-6)
    own = [_accuracy(cfg, o["state"]) for o in out]
    ranks = sorted(own)
    assert summary["test_accuracy_rank_min"] == pytest.approx(ranks[0], abs=1e-6)
    assert summary["test_accuracy_rank_max"] == pytest.approx(ranks[1], abs=1e-6)
    # ranks 0 and N/2 by name: the local models the Crossover-SGD authors score
    assert summary["test_accuracy_rank0"] == pytest.approx(own[0], abs=1e-6)
    assert summary["test_accuracy_rank_half"] == pytest.approx(own[1], abs=1e-6)
    assert summary["bytes_sent"] == 0  # evaluation is harness traffic, never the algorithm's
    assert summary["harness_bytes_sent"] > 0


def test_training_learns_digits() -> None:
    cfg = _config("algorithm=allreduce_sgd", "steps=150", "nproc=2", "optim.lr=0.1")
    summary, _ = launch(run_worker, 2, (Job(cfg, "t", "t", progress=False),))[0]
    assert summary["test_accuracy"] > 0.85
    assert summary["train_loss"] < 0.6


def test_lr_schedule_warmup_and_milestones() -> None:
    from suite.loop import _lr_factor

    cfg = _config(
        "optim.schedule=multistep",
        "optim.milestones=1,2",
        "optim.warmup_steps=4",
        "optim.gamma=0.5",
    )
    f = _lr_factor(cfg, steps_per_epoch=10)
    assert [f(s) for s in (0, 3, 9, 10, 19, 20)] == [0.25, 1.0, 1.0, 0.5, 0.5, 0.25]


def _lrs_in_a_rank(cfg: RunConfig) -> tuple[dict[int, float], list[float], bool, bool]:
    sink = KeptMetrics()
    trainer = Trainer(Job(cfg, target="test", paper="test", progress=False), Transport(), sink)
    trainer.run()
    expected = [cfg.optim.lr * trainer.lr_factor(s) for s in range(cfg.steps)]
    wrapped = "step" in vars(trainer.optimizer)  # the scheduler's wrapper of optimizer.step
    return sink.series("lr"), expected, trainer.lr_moves, wrapped


def _logged_lrs(*items: str) -> tuple[dict[int, float], list[float], bool, bool]:
    """Each step's logged lr, the schedule's lr for each step, whether the loop steps it and
    whether the optimizer's step is still wrapped by the scheduler."""
    cfg = _config("algorithm=single", "nproc=1", "steps=12", "log_every=5", *items)
    return launch(_lrs_in_a_rank, 1, (cfg,))[0]


@pytest.mark.parametrize(
    "items",
    [
        ("optim.warmup_steps=6",),
        ("optim.warmup_epochs=0.1",),
        ("optim.schedule=multistep", "optim.milestones=0.1", "optim.gamma=0.5"),
        ("optim.schedule=poly",),
    ],
)
def test_the_loop_follows_a_moving_lr_schedule_step_by_step(items: tuple[str, ...]) -> None:
    lrs, expected, _, wrapped = _logged_lrs(*items)
    assert wrapped  # torch's wrapper stays where the scheduler steps
    assert sorted(lrs) == list(range(12))
    assert [lrs[s] for s in range(12)] == pytest.approx(expected)
    assert len(set(lrs.values())) > 1  # it moved


def test_a_constant_lr_stays_the_base_lr_without_stepping_a_scheduler() -> None:
    lrs, expected, moves, wrapped = _logged_lrs()
    assert not moves
    assert not wrapped  # nor the wrapper the scheduler puts on optimizer.step (~0.5% of a step)
    assert set(lrs.values()) == set(expected) == {RunConfig().optim.lr} and len(lrs) == 12


def _crossover_authors_lr(epoch: int, itr: int, spe: int, warmup: int, maxepoch: int) -> float:
    """The Crossover-SGD authors' update_learning_rate (imagenet_test.py), transcribed: the
    factor of the base lr (and of the weight decay) at micro-batch ``itr`` of ``epoch``."""
    end = 0.0025
    if epoch < warmup:
        return (epoch * spe + itr + 1) / (warmup * spe)
    count = float(epoch - warmup) * spe + itr + 1
    total = (maxepoch - warmup - 2) * spe
    if epoch >= maxepoch - 2:
        count = total
    return (1.0 - end) * ((1 - count / total) ** 2.2) + end


def test_poly_schedule_with_the_crossover_authors_floor_and_flat_end() -> None:
    from suite.loop import _lr_factor

    spe, warmup, maxepoch = 5, 3, 10
    cfg = _config("optim.schedule=poly", "optim.power=2.2", f"optim.warmup_epochs={warmup}",
                  "optim.end_lr=0.0025", "optim.hold_epochs=2")  # fmt: skip
    ours = _lr_factor(cfg, steps_per_epoch=spe, total_steps=maxepoch * spe)
    theirs = [_crossover_authors_lr(s // spe, s % spe, spe, warmup, maxepoch)
              for s in range(maxepoch * spe)]  # fmt: skip
    warm = warmup * spe
    assert [ours(s) for s in range(warm)] == pytest.approx(theirs[:warm])
    # after warm-up the authors count from 1, ours from 0: one step apart, the same curve
    assert [ours(s + 1) for s in range(warm, maxepoch * spe - 1)] == pytest.approx(theirs[warm:-1])
    assert [ours(s) for s in range((maxepoch - 2) * spe, maxepoch * spe)] == pytest.approx(
        [0.0025] * 2 * spe
    )  # the last 2 epochs stay at the floor
    assert _lr_factor(_config("optim.schedule=poly"), 10, 100)(99) == pytest.approx(0.0001)


def _weight_decays(cfg: RunConfig) -> dict:
    trainer = Trainer(Job(cfg, target="test", paper="test", progress=False), Transport())
    trainer.run()
    factor = trainer.lr_factor(trainer.scheduler.last_epoch)
    return {"wd": [g["weight_decay"] for g in trainer.optimizer.param_groups], "factor": factor}


@pytest.mark.parametrize("scheduled", [True, False])
def test_weight_decay_follows_the_lr_schedule_when_asked(scheduled: bool) -> None:
    cfg = _config("nproc=1", "steps=6", "optim.name=lars", "optim.weight_decay=0.1",
                  "optim.schedule=poly", "optim.warmup_steps=2", "optim.end_lr=0.2",
                  f"optim.schedule_weight_decay={str(scheduled).lower()}")  # fmt: skip
    out = launch(_weight_decays, 1, (cfg,))[0]
    assert out["factor"] == pytest.approx(0.2)  # at the floor: scaled and constant decay differ
    lars, excluded = out["wd"]  # LARS: biases and norm layers never decay
    assert lars == pytest.approx(0.1 * out["factor"] if scheduled else 0.1)
    assert excluded == 0.0


def _prune_after_40(step: int, accuracy: float) -> bool:
    assert 0.0 <= accuracy <= 1.0  # the pruner sees the averaged model's test accuracy
    return step >= 40


def test_a_pruner_stops_every_rank_at_an_evaluation() -> None:
    cfg = _config("algorithm=allreduce_sgd", "nproc=2", "steps=100", "eval_every=20")
    job = Job(cfg, "t", "t", progress=False, prune=_prune_after_40)
    summary, _ = launch(run_worker, 2, (job,))[0]
    assert summary["pruned"] is True
    assert summary["steps"] == 40
    assert summary["messages"] == 2 * 40  # both ranks stopped after the same step


def test_without_a_pruner_the_run_goes_to_the_end() -> None:
    cfg = _config("algorithm=allreduce_sgd", "nproc=2", "steps=60", "eval_every=20")
    summary, _ = launch(run_worker, 2, (Job(cfg, "t", "t", progress=False),))[0]
    assert summary["pruned"] is False and summary["steps"] == 60


def _division_ops_per_step(cfg: RunConfig) -> dict[str, float]:
    """Division ops (forward and backward) per step of our loop and of a plain torch loop on the
    same batches: counted by torch.profiler over ``cfg.steps`` and over twice as many steps."""
    import torch.nn.functional as F
    from torch.profiler import profile

    from suite.tasks.data import ShardedBatches

    def divisions(run) -> int:
        with profile() as prof:
            run()
        return sum(e.count for e in prof.key_averages() if "div" in e.key.lower())

    def ours(steps: int) -> int:
        trainer = Trainer(Job(replace(cfg, steps=steps), "t", "t", progress=False), Transport())
        trainer.evaluate = dict  # the run's end is not a step
        return divisions(trainer.run)

    def plain(steps: int) -> int:
        data = build_dataset(cfg)
        model = initial_model(cfg, data)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
        batches = ShardedBatches(data, cfg.batch_size, 0, 1, cfg.seed)

        def run() -> None:
            for _ in range(steps):
                opt.zero_grad(set_to_none=False)
                x, y = next(batches)
                F.cross_entropy(model(x), y).backward()
                opt.step()

        return divisions(run)

    n = cfg.steps
    return {
        "ours": (ours(2 * n) - ours(n)) / n,
        "plain": (plain(2 * n) - plain(n)) / n,
    }


def test_one_micro_batch_step_adds_no_tensor_op_to_the_plain_loop() -> None:
    # loss / micro_batches is exact and useless with one micro-batch, but costs an op and an
    # autograd node every step (loop13: the loop's per-step cost against a plain torch loop)
    cfg = _config("algorithm=allreduce_sgd", "nproc=1", "steps=4", "log_every=100")
    counts = launch(_division_ops_per_step, 1, (cfg,))[0]
    assert counts["ours"] == counts["plain"]
    # the control: the profiler does see that division where it is due (two micro-batches)
    split = launch(_division_ops_per_step, 1, (replace(cfg, micro_batches=2),))[0]
    assert split["ours"] >= split["plain"] + 1, split


@pytest.mark.parametrize("work", ["_merge_traces", "build_dataset"], ids=["end", "data load"])
def test_long_local_work_of_a_rank_is_not_taken_for_a_hang(
    monkeypatch: pytest.MonkeyPatch, work: str
) -> None:
    """Work a rank does alone for longer than the hang timeout (minutes at scale; 5 s here
    against 2): rank 0 replaying and encoding the trace after the others returned, or every
    rank loading a large image folder. It beats meanwhile; without the beats (the control) the
    launcher declares the run hung."""
    import contextlib

    from suite import loop
    from suite.launcher import RankFailure

    real = getattr(loop, work)

    def slow(*args: object) -> object:
        time.sleep(5)
        return real(*args)

    monkeypatch.setattr(loop, work, slow)
    cfg = _config("algorithm=allreduce_sgd", "nproc=2", "steps=4")
    done = launch(_train_and_return_params, 2, (cfg,), hang_timeout=2)
    assert done[0]["summary"]["steps"] == 4
    monkeypatch.setattr(loop, "beating", contextlib.nullcontext)
    with pytest.raises(RankFailure, match="hung"):
        launch(_train_and_return_params, 2, (cfg,), hang_timeout=2)


def test_gathered_rows_are_logged_as_rank_sums_and_means_whatever_their_chunks() -> None:
    """Rank 0's reduction of the gathered rows (Trainer._take_rows): counters summed over the
    ranks, everything else their mean, each step's row logged with its slowest rank's time; the
    loss areas summed step by step, so rows taken in other chunks give the same sums to the bit
    (a resumed run's must equal the uninterrupted run's)."""
    from suite.loop import _ROW, _SUMMED

    names = [*_ROW, "algo.k"]
    steps, ranks = 40, 3
    seeded = torch.Generator().manual_seed(0)
    table = torch.rand(ranks, steps, 1 + len(names), dtype=torch.float64, generator=seeded).numpy()
    table[:, :, 0] = range(steps)

    class Rank0:  # what _take_rows reads and writes of a Trainer
        metric_names, bar, last_eval = names, None, {}

        def __init__(self) -> None:
            self.steps, self.loss_area, self.metrics = steps, [0.0, 0.0], KeptMetrics()

    whole, chunked = Rank0(), Rank0()
    Trainer._take_rows(whole, table)
    for lo, hi in ((0, 7), (7, 10), (10, 33), (33, 40)):  # 10 = steps // 4 falls on an edge
        Trainer._take_rows(chunked, table[:, lo:hi])
    assert whole.loss_area == chunked.loss_area
    assert whole.metrics.logged == chunked.metrics.logged
    loss = names.index("train_loss")
    area, early = 0.0, 0.0
    for s in range(steps):  # the reference: one step at a time, in step order
        mean = sum(table[r, s, 1 + loss] for r in range(ranks)) / ranks
        area += mean
        early += mean if s < steps // 4 else 0.0
    assert whole.loss_area == pytest.approx([area, early], rel=1e-15)
    logged = whole.metrics.by_step()
    assert sorted(logged) == list(range(steps))
    for s, row in logged.items():
        for i, name in enumerate(names):
            column = table[:, s, 1 + i]
            expected = column.sum() if name in _SUMMED else column.mean()
            assert row[name] == pytest.approx(expected, rel=1e-15), (s, name)
        assert row["step_seconds_max"] == table[:, s, 1 + names.index("step_seconds")].max()
    assert whole.last_losses == table[:, -1, 1 + loss].tolist()
