"""The straggler model and the virtual clock: reproducible, and waiting only for the fastest
neighbours keeps the fast ranks fast."""

from __future__ import annotations

import pytest
import torch

from suite.stragglers import StragglerConfig, StragglerModel, VirtualClock, mean_compute_time

COMPLETE4 = [[j for j in range(4) if j != i] for i in range(4)]


def _run(config: StragglerConfig, backups: list[int], steps: int = 200) -> list:
    clock = VirtualClock(StragglerModel(config, 4), COMPLETE4)
    return [clock.step(backups) for _ in range(steps)]


def test_virtual_time_is_deterministic_and_depends_on_the_seed() -> None:
    cfg = StragglerConfig(slow_ranks=(3,), slow_prob=0.3, link_jitter=0.05)
    a, b = _run(cfg, [1] * 4), _run(cfg, [1] * 4)
    assert all(torch.equal(x.end, y.end) and x.used == y.used for x, y in zip(a, b, strict=True))
    other = _run(StragglerConfig(slow_ranks=(3,), slow_prob=0.3, link_jitter=0.05, seed=1), [1] * 4)
    assert not torch.equal(a[-1].end, other[-1].end)


def test_draws_follow_the_configured_means() -> None:
    cfg = StragglerConfig(kind="shifted_exp", base=1.0, scale=0.2, slow_ranks=(3,),
                          slow_factor=5.0, slow_prob=0.3)  # fmt: skip
    model = StragglerModel(cfg, 4)
    taus = torch.stack([model.draw(t)[0] for t in range(4000)])
    for rank in range(4):
        expected = mean_compute_time(cfg, rank)
        assert float(taus[:, rank].mean()) == pytest.approx(expected, rel=0.05)
    slowed = torch.stack([model.draw(t)[2] for t in range(4000)]).float().mean(0)
    assert float(slowed[3]) == pytest.approx(0.3, abs=0.03) and float(slowed[:3].max()) == 0.0


def test_full_wait_follows_the_straggler_and_one_backup_does_not() -> None:
    cfg = StragglerConfig(kind="constant", base=1.0, slow_ranks=(3,), slow_factor=5.0)
    full = _run(cfg, [0] * 4, steps=50)
    backup = _run(cfg, [1] * 4, steps=50)
    assert all(it.used[0] == [1, 2, 3] for it in full)  # b = 0: every neighbour, every time
    # full wait: everyone runs at the straggler's pace (5 s per iteration)
    assert float(full[-1].end[0]) == pytest.approx(5.0 * 50)
    # one backup: ranks 0-2 never wait for rank 3 and keep a 1 s iteration
    assert float(backup[-1].end[0]) == pytest.approx(1.0 * 50)
    assert all(3 not in it.used[0] for it in backup)
    assert float(max(it.waited[:3].max() for it in backup)) == 0.0
    assert float(sum(it.waited[0] for it in full)) == pytest.approx(4.0 * 50)


def test_a_rank_uses_its_fastest_arrivals_and_at_least_one_neighbour() -> None:
    cfg = StragglerConfig(kind="constant", base=1.0, link_delay=0.0)
    clock = VirtualClock(StragglerModel(cfg, 4), COMPLETE4)
    clock.now = torch.tensor([0.0, 0.5, 0.1, 0.3], dtype=torch.float64)  # staggered starts
    it = clock.step([2, 2, 2, 9])  # b = 9 is clipped to deg - 1 = 2
    assert it.used[0] == [2] and it.used[3] == [0]  # the earliest-finished neighbour
    assert float(it.end[0]) == pytest.approx(1.1)  # waits for rank 2's model at 1.1
    assert float(it.end[3]) == pytest.approx(1.3)  # rank 0's model came at 1.0: no wait


def test_bad_straggler_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="valid choices"):
        StragglerConfig(kind="pareto")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="slow_ranks"):
        StragglerModel(StragglerConfig(slow_ranks=(7,)), 4)


# -- consensus with backup workers on the virtual clock -----------------------------------------

SMALL = ["dataset=digits", "model=mlp", "model.hidden=16", "eval_every=0", "device=cpu",
         "eval_per_rank=false", "optim.lr=0.1"]  # fmt: skip


def _train(cfg) -> dict:
    from suite.loop import Job, Trainer
    from suite.transport import Transport

    trainer = Trainer(Job(cfg, target="test", paper="test", progress=False), Transport())
    summary, _ = trainer.run()
    params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    return {"params": params, "summary": summary}


def _cfg(*items: str):
    from suite.config import RunConfig, apply_overrides

    return apply_overrides(RunConfig(), [*SMALL, *items])


def test_full_wait_consensus_is_dpsgd() -> None:
    from suite.launcher import launch

    common = ("nproc=3", "steps=20")
    dpsgd = launch(_train, 3, (_cfg("algorithm=dpsgd", "algorithm.topology=ring", *common),))
    full = launch(_train, 3, (_cfg("algorithm=consensus_backup", "algorithm.topology=ring",
                                   "algorithm.backups=0", *common),))  # fmt: skip
    for a, b in zip(dpsgd, full, strict=True):
        assert float((a["params"] - b["params"]).abs().max()) < 1e-6
    assert float((full[0]["params"] - full[1]["params"]).abs().max()) > 1e-4  # not all-reduce


def test_backup_workers_save_virtual_time_and_every_message_is_counted() -> None:
    from suite.launcher import launch

    steps, n = 30, 4
    common = ("algorithm=consensus_backup", f"nproc={n}", f"steps={steps}",
              "algorithm.straggler.kind=constant", "algorithm.straggler.slow_ranks=3")  # fmt: skip
    full = launch(_train, n, (_cfg(*common, "algorithm.backups=0"),))[0]["summary"]
    one = launch(_train, n, (_cfg(*common, "algorithm.backups=1"),))[0]["summary"]
    assert full["virtual_seconds"] == pytest.approx(5.0 * steps)  # everyone waits for rank 3
    # ranks 0-2 skip rank 3 and keep 1 s steps; rank 3 waits for nobody slower than itself
    assert one["virtual_seconds"] == pytest.approx((3 * steps + 5.0 * steps) / 4)
    d = 64 * 16 + 16 + 16 * 10 + 10
    # a worker cannot know it will be skipped: every model goes to every neighbour, every step
    assert one["bytes_sent"] == full["bytes_sent"] == n * (n - 1) * steps * 4 * d


def test_a_required_neighbour_is_waited_for_whatever_b_says() -> None:
    cfg = StragglerConfig(kind="constant", base=1.0, slow_ranks=(3,), slow_factor=5.0)
    clock = VirtualClock(StragglerModel(cfg, 4), COMPLETE4)
    it = clock.step([2, 2, 2, 2], required=[{3}, set(), set(), set()])
    assert it.used[0] == [3] and float(it.end[0]) == pytest.approx(5.0)  # waited for rank 3
    assert len(it.used[1]) == 1 and 3 not in it.used[1] and float(it.end[1]) == 1.0
    assert [round(float(a), 6) for a in it.arrivals[0]] == [1.0, 1.0, 5.0]


def test_a_slow_rank_outside_the_world_is_bad_input() -> None:
    from suite.config import ConfigError

    with pytest.raises(ConfigError, match=r"slow_ranks \[4\]: valid ranks are 0\.\.3"):
        _cfg("algorithm=consensus_backup", "nproc=4", "algorithm.straggler.slow_ranks=4")
    assert _cfg("algorithm=consensus_backup", "nproc=5", "algorithm.straggler.slow_ranks=4")
