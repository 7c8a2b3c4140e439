"""DyBW (stand-in rule): b = 0 without stragglers, b rises next to a straggler, every edge stays
in use, and without stragglers it trains exactly as full wait."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.consensus_backup import observations
from suite.algorithms.dybw import DyBWRule
from suite.stragglers import StragglerConfig, StragglerModel, VirtualClock

COMPLETE4 = [[j for j in range(4) if j != i] for i in range(4)]
RING4 = [[(i - 1) % 4, (i + 1) % 4] for i in range(4)]


def _drive(cfg: StragglerConfig, peers=COMPLETE4, steps=120, late="use", skip_ahead=True,
           estimates=(0.1, 1.0, 1.0, 0.02)):  # fmt: skip
    """The rule on the clock, every rank with the same (lr, G, S, D)."""
    clock = VirtualClock(StragglerModel(cfg, len(peers)), peers, late, 8, skip_ahead=skip_ahead)
    rule = DyBWRule(peers, range(len(peers)), window=20)
    for i in range(len(peers)):
        rule.update(i, *estimates)
    its = []
    for t in range(steps):
        it = clock.step(rule.backups(), rule.required(t), rule.deadlines() if t else None)
        rule.observe(observations(it, peers))
        its.append(it)
    return its, clock


def test_without_stragglers_dybw_waits_for_everyone() -> None:
    its, _ = _drive(StragglerConfig(kind="constant"))
    assert all(it.backups == [0, 0, 0, 0] and not any(it.skipped) for it in its)
    assert all(it.used[i] == COMPLETE4[i] for it in its for i in range(4))


def test_b_rises_at_the_iterations_when_a_neighbour_straggles() -> None:
    """The deadline takes what arrived: b of rank 0 is higher exactly when rank 3 is slowed."""
    its, _ = _drive(StragglerConfig(slow_ranks=(3,), slow_prob=0.3), steps=300)
    active = [it.backups[0] for it in its[20:] if it.straggled[3] and not it.skipped[3]]
    calm = [it.backups[0] for it in its[20:] if not it.straggled[3] and not it.skipped[3]]
    assert active and calm
    assert sum(active) / len(active) > sum(calm) / len(calm) + 0.1


def test_a_persistent_straggler_is_skipped_by_its_neighbours_and_skips_ahead() -> None:
    its, _ = _drive(StragglerConfig(slow_ranks=(3,), slow_factor=5.0))
    late = its[20:]
    assert all(min(it.backups[:3]) >= 1 for it in late)  # nobody waits for rank 3
    # rank 3 computes about one iteration in five (its pace) and skips the others
    skipped = sum(it.skipped[3] for it in late) / len(late)
    assert 0.6 <= skipped <= 0.9
    # a healthy rank skips only when a fast neighbour got a whole iteration ahead of it
    assert sum(it.skipped[i] for it in its for i in range(3)) <= 5


@pytest.mark.parametrize("peers", [COMPLETE4, RING4], ids=["complete", "ring"])
def test_every_edge_stays_in_use_without_forced_waits(peers) -> None:
    """Late models (the newest arrived of each neighbour) keep the union graph connected: every
    edge is used within 10 iterations, though the rule never forces a wait."""
    cfg = StragglerConfig(slow_ranks=(3,), slow_factor=5.0, slow_prob=0.7, link_jitter=0.2)
    its, _ = _drive(cfg, peers, steps=150)
    for i, mine in enumerate(peers):
        for j in mine:
            uses = [it.t for it in its if j in it.mixed(i)]
            gaps = [b - a for a, b in zip([-1, *uses], uses, strict=False)]
            assert max(gaps) <= 10, (i, j, gaps)
            assert 150 - 1 - uses[-1] < 10


def test_dybw_runs_at_the_healthy_ranks_pace_not_the_stragglers() -> None:
    """On the smoke recipe's straggler model, the rule's clock runs well ahead of full wait
    (about 833 virtual s for 300 iterations) and of static b = 1 (about 502)."""
    cfg = StragglerConfig(slow_ranks=(3,), slow_prob=0.3, slow_factor=5.0)
    full = VirtualClock(StragglerModel(cfg, 4), COMPLETE4)
    static = VirtualClock(StragglerModel(cfg, 4), COMPLETE4)
    for _ in range(300):
        full.step([0] * 4)
        static.step([1] * 4)
    _, dybw = _drive(cfg, steps=300)
    assert float(dybw.now.mean()) < 0.6 * float(full.now.mean())
    assert float(dybw.now.mean()) < 0.85 * float(static.now.mean())  # about 374 against 502
    assert float(dybw.now.max() - dybw.now.min()) < 10  # the straggler keeps up by skipping


def test_the_deadline_trades_averaging_against_time() -> None:
    """More disagreement makes averaging worth more: the deadline moves later (b falls)."""
    cfg = StragglerConfig(slow_ranks=(3,), slow_prob=0.3)
    little, _ = _drive(cfg, steps=200, estimates=(0.1, 1.0, 0.0, 0.0))
    much, _ = _drive(cfg, steps=200, estimates=(0.1, 1.0, 1.0, 0.1))

    def mean_b(its):
        return sum(it.backups[0] for it in its[20:]) / len(its[20:])

    assert mean_b(much) < mean_b(little)


def test_dybw_is_registered_as_a_labelled_stand_in() -> None:
    from suite.registry import ALGORITHMS

    entry = ALGORITHMS.get("dybw")
    assert entry.stand_in and entry.paper == "dybw"
    assert entry.description.startswith("stand-in: the DyBW paper's rule was not available")
    assert "stand-in" in (entry.obj.__doc__ or "").lower()
    assert entry.make_config().late == "use"


# -- multi-process ------------------------------------------------------------------------------

SMALL = ["dataset=digits", "model=mlp", "model.hidden=16", "eval_every=0", "device=cpu",
         "eval_per_rank=false", "optim.lr=0.1"]  # fmt: skip


def _cfg(*items: str):
    from suite.config import RunConfig, apply_overrides

    return apply_overrides(RunConfig(), [*SMALL, *items])


def _train(cfg) -> dict:
    from suite.loop import Job, Trainer
    from suite.transport import Transport

    trainer = Trainer(Job(cfg, target="test", paper="test", progress=False), Transport())
    summary, artifacts = trainer.run()
    params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    return {"params": params, "summary": summary, "artifacts": artifacts}


def test_without_stragglers_dybw_trains_as_full_wait() -> None:
    from suite.launcher import launch

    common = ("nproc=4", "steps=40", "algorithm.straggler.kind=constant")
    full = launch(_train, 4, (_cfg("algorithm=consensus_backup", "algorithm.backups=0",
                                   *common),))  # fmt: skip
    dybw = launch(_train, 4, (_cfg("algorithm=dybw", *common),))
    for a, b in zip(full, dybw, strict=True):
        assert float((a["params"] - b["params"]).abs().max()) < 1e-6
    s, f = dybw[0]["summary"], full[0]["summary"]
    assert s["test_accuracy"] == pytest.approx(f["test_accuracy"], abs=0.01)
    assert s["virtual_seconds"] == pytest.approx(40.0) and s["messages_used_late"] == 0
    rows = dybw[0]["artifacts"]["backups.csv"].strip().splitlines()
    assert len(rows) == 1 + 4 * 40 and all(r.split(",")[3] == "0" for r in rows[1:])


def test_dybw_with_a_straggler_logs_each_ranks_b_and_accounts_for_every_message() -> None:
    from suite.launcher import launch

    cfg = _cfg("algorithm=dybw", "nproc=4", "steps=40", "algorithm.straggler.slow_ranks=3")
    out = launch(_train, 4, (cfg,))
    s = out[0]["summary"]
    # the straggler (5x slower every iteration) skips ahead most iterations, sending nothing
    assert 20 <= s["iterations_skipped"] <= 35
    assert s["messages_unaccounted"] == 0
    assert s["messages_sent"] == 3 * (4 * 40 - s["iterations_skipped"])
    table = [r.split(",") for r in out[0]["artifacts"]["backups.csv"].strip().splitlines()[1:]]
    late = [r for r in table if int(r[0]) >= 20]
    assert all(int(r[3]) >= 1 for r in late if int(r[1]) < 3)  # nobody waits for rank 3
    # the ranks mixed with backups: their models differ (not an all-reduce)
    assert float((out[0]["params"] - out[3]["params"]).abs().max()) > 0


def test_dybw_in_real_time_keeps_the_accounting_exact() -> None:
    from suite.launcher import launch

    cfg = _cfg("algorithm=dybw", "nproc=3", "steps=20", "log_every=5", "algorithm.clock=real",
               "algorithm.time_scale=0.005", "algorithm.straggler.kind=constant",
               "algorithm.straggler.slow_ranks=2", "algorithm.straggler.slow_factor=6")  # fmt: skip
    s = launch(_train, 3, (cfg,))[0]["summary"]
    assert s["messages_sent"] == 3 * 2 * 20 and s["messages_unaccounted"] == 0
    assert s["real_seconds"] > 0 and s["waiting_seconds"] >= 0


def test_time_to_target_is_read_on_the_virtual_clock_at_the_first_evaluation_there() -> None:
    from suite.launcher import launch

    common = ("nproc=3", "steps=40", "eval_every=5", "algorithm.straggler.kind=constant")
    reach = launch(_train, 3, (_cfg("algorithm=consensus_backup", "algorithm.backups=0",
                                    "target_accuracy=0.3", *common),))[0]["summary"]  # fmt: skip
    # constant 1 s compute, full wait: the clock reads exactly the steps done
    assert reach["steps_to_target"] % 5 == 0 and 5 <= reach["steps_to_target"] <= 40
    assert reach["clock_to_target"] == pytest.approx(float(reach["steps_to_target"]))
    assert 0 < reach["seconds_to_target"] <= reach["train_seconds"]
    never = launch(_train, 3, (_cfg("algorithm=allreduce_sgd", "target_accuracy=1.0", "nproc=3",
                                    "steps=10", "eval_every=5"),))[0]["summary"]  # fmt: skip
    assert math.isnan(never["steps_to_target"]) and math.isnan(never["clock_to_target"])


def test_static_backups_never_hear_a_persistent_straggler_and_dybw_does() -> None:
    """The price of static b = 1 under a persistent straggler: its models never reach the
    others (the union graph is not connected); the stand-in mixes its late models in."""
    from suite.launcher import launch

    common = ("nproc=4", "steps=40", "algorithm.straggler.kind=constant",
              "algorithm.straggler.slow_ranks=3")  # fmt: skip
    static = launch(_train, 4, (_cfg("algorithm=consensus_backup", "algorithm.backups=1",
                                     *common),))[0]["summary"]  # fmt: skip
    dybw = launch(_train, 4, (_cfg("algorithm=dybw", *common),))[0]["summary"]
    assert static["used_from_rank3"] == 0 and static["least_heard_share"] == 0
    assert static["used_from_rank0"] == 40 * 3  # ranks 1, 2 and 3 use rank 0 every time
    assert dybw["least_heard_share"] >= 0.5  # of the models it sent (it skips most steps)
    assert dybw["used_from_rank3"] > 0


def test_dybw_reaches_the_target_sooner_than_full_wait_at_matched_accuracy() -> None:
    """The recipe's claim on a small run: a straggler x5 with probability 0.3, as at smoke."""
    from suite.launcher import launch

    common = ("nproc=4", "steps=120", "eval_every=10", "target_accuracy=0.7",
              "algorithm.straggler.slow_ranks=3", "algorithm.straggler.slow_prob=0.3")  # fmt: skip
    full = launch(_train, 4, (_cfg("algorithm=consensus_backup", "algorithm.backups=0",
                                   *common),))[0]["summary"]  # fmt: skip
    dybw = launch(_train, 4, (_cfg("algorithm=dybw", *common),))[0]["summary"]
    assert dybw["clock_to_target"] < 0.8 * full["clock_to_target"]
    assert dybw["test_accuracy"] >= full["test_accuracy"] - 0.03
    assert dybw["b_rise"] > 0 and dybw["least_heard_share"] > 0.3
