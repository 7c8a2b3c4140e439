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
    # healthy: base + scale = 1.2; rank 3 is 5x slower 30% of the time: 1.2 (0.7 + 0.3 * 5)
    for rank, expected in enumerate((1.2, 1.2, 1.2, 2.64)):
        assert float(taus[:, rank].mean()) == pytest.approx(expected, rel=0.05)
        assert mean_compute_time(cfg, rank) == pytest.approx(expected)
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
    from suite.errors import ConfigError

    with pytest.raises(ConfigError, match=r"slow_ranks \[4\]: valid ranks are 0\.\.3"):
        _cfg("algorithm=consensus_backup", "nproc=4", "algorithm.straggler.slow_ranks=4")
    assert _cfg("algorithm=consensus_backup", "nproc=5", "algorithm.straggler.slow_ranks=4")


# -- late messages ------------------------------------------------------------------------------


def _clock(config: StragglerConfig, late: str = "use", max_staleness: int = 8) -> VirtualClock:
    return VirtualClock(StragglerModel(config, 4), COMPLETE4, late, max_staleness)  # type: ignore[arg-type]


def test_virtual_time_with_late_messages_is_deterministic() -> None:
    cfg = StragglerConfig(slow_ranks=(3,), slow_prob=0.3, link_jitter=0.05)
    runs = []
    for _ in range(2):
        clock = _clock(cfg)
        runs.append([clock.step([1, 1, 2, 0]) for _ in range(100)])
    for x, y in zip(*runs, strict=True):
        assert torch.equal(x.end, y.end) and x.used == y.used
        assert x.late_used == y.late_used and x.dropped == y.dropped
    assert sum(len(late) for it in runs[0] for late in it.late_used) > 0


def test_a_late_message_is_used_once_newest_first_and_never_mixed_up() -> None:
    # constant 1 s steps, rank 3 takes 2.5 s: its iteration-s model reaches rank 0 at 2.5 (s + 1),
    # while rank 0 (b = 1: waits for ranks 1, 2) ends its iteration t at t + 1
    cfg = StragglerConfig(kind="constant", base=1.0, slow_ranks=(3,), slow_factor=2.5)
    clock = _clock(cfg, max_staleness=8)
    its = [clock.step([1, 1, 1, 1]) for _ in range(30)]
    assert all(it.used[0] == [1, 2] for it in its)
    late0 = {it.t: it.late_used[0] for it in its if it.late_used[0]}
    # newest arrived by t + 1 and not used yet: s = 0 at t = 2 (arrived 2.5 <= 3), s = 1 at t = 4,
    # s = 2 at t = 7 (7.5 <= 8), ...; staleness grows until it passes max_staleness = 8
    assert late0 == {2: {3: 0}, 4: {3: 1}, 7: {3: 2}, 9: {3: 3}, 12: {3: 4}}
    # rank 3 waits for its two fastest (ranks 0, 1 by peer order); rank 2's model of the previous
    # iteration has arrived long before: it is used late, one iteration old
    assert all(it.late_used[3] == ({2: it.t - 1} if it.t else {}) for it in its)
    seen: set[tuple[int, int, int]] = set()
    for it in its:
        for rank in range(4):
            for peer, s in it.mixed(rank).items():
                assert (rank, peer, s) not in seen  # never used twice
                assert s <= it.t and it.t - s <= 8
                seen.add((rank, peer, s))
    clock.finish()
    for box in clock.inboxes:
        assert box.used_fresh + box.used_late + box.dropped == box.posted == 3 * 30
        assert not box.pending


@pytest.mark.parametrize("late", ["drop", "use"])
def test_every_message_sent_is_used_fresh_used_late_or_dropped(late: str) -> None:
    cfg = StragglerConfig(slow_ranks=(3,), slow_prob=0.5, link_jitter=0.3)
    clock = _clock(cfg, late, max_staleness=3)
    its = [clock.step([1, 2, 1, 0]) for _ in range(60)]
    end = clock.finish()
    fresh = sum(len(u) for it in its for u in it.used)
    used_late = sum(len(x) for it in its for x in it.late_used)
    dropped = sum(sum(it.dropped) for it in its) + sum(end)
    assert fresh + used_late + dropped == 4 * 3 * 60
    assert (used_late > 0) == (late == "use")


def test_an_inbox_refuses_to_use_a_message_twice() -> None:
    from suite.stragglers import Inbox

    box = Inbox([1, 2], "use", 4)
    box.post(1, 0, 0.5)
    box.post(2, 0, 3.0)
    assert box.close(0, [1], 1.0) == ({}, [])  # rank 2's message has not arrived by 1.0
    with pytest.raises(ValueError, match="used already"):
        box.close(1, [1], 2.0)  # (1, 1) was never posted
    box = Inbox([1, 2], "use", 4)
    box.post(1, 0, 0.5)
    box.post(2, 0, 0.9)
    box.close(0, [1, 2], 1.0)
    with pytest.raises(ValueError, match="posted twice"):
        box.post(1, 0, 1.5)


def _train_real(cfg) -> dict:
    from suite.loop import Job, Trainer
    from suite.transport import Transport

    trainer = Trainer(Job(cfg, target="test", paper="test", progress=False), Transport())
    summary, artifacts = trainer.run()
    return {"summary": summary, "iter_seconds": list(trainer.algorithm.iter_seconds),
            "artifacts": artifacts}  # fmt: skip


@pytest.mark.parametrize("clock", ["virtual", "real"])
def test_late_messages_are_accounted_for_exactly(clock: str) -> None:
    from suite.launcher import launch

    steps, n = 24, 4
    cfg = _cfg("algorithm=consensus_backup", f"nproc={n}", f"steps={steps}", "log_every=8",
               "algorithm.late=use", "algorithm.backups=1", f"algorithm.clock={clock}",
               "algorithm.time_scale=0.005", "algorithm.max_staleness=4",
               "algorithm.straggler.slow_ranks=3", "algorithm.straggler.slow_factor=4")  # fmt: skip
    s = launch(_train, n, (cfg,))[0]["summary"]
    assert s["messages_sent"] == n * (n - 1) * steps == s["messages"]
    used = s["messages_used_fresh"] + s["messages_used_late"] + s["messages_dropped"]
    assert used == s["messages_sent"] and s["messages_unaccounted"] == 0
    assert s["messages_used_fresh"] >= n * (n - 2) * steps  # n - 1 - b fresh per rank per step
    assert s["messages_used_late"] > 0
    assert ("real_seconds" in s) == (clock == "real") != ("virtual_seconds" in s)


def test_in_real_time_the_fast_ranks_do_not_wait_for_a_slow_one() -> None:
    from suite.launcher import launch

    scale, slow = 0.02, 10.0  # fast ranks compute 20 ms, rank 3 200 ms per iteration
    common = ("algorithm=consensus_backup", "nproc=4", "log_every=100", "algorithm.clock=real",
              "algorithm.late=use", f"algorithm.time_scale={scale}",
              "algorithm.straggler.kind=constant", "algorithm.straggler.slow_ranks=3",
              f"algorithm.straggler.slow_factor={slow}")  # fmt: skip
    runs = launch(_train_real, 4, (_cfg(*common, "steps=25", "algorithm.backups=1"),))
    medians = [sorted(r["iter_seconds"])[len(r["iter_seconds"]) // 2] for r in runs]
    slow_compute = scale * slow
    assert medians[3] >= slow_compute * 0.9
    # ~20 ms + overhead, not the slow rank's 200 ms (relative: a loaded host slows both)
    assert max(medians[:3]) < 0.4 * medians[3], medians
    s = runs[0]["summary"]
    assert s["messages_unaccounted"] == 0 and s["messages_used_late"] > 0
    rows = runs[0]["artifacts"]["backups.csv"].strip().splitlines()
    assert rows[0].startswith("step,rank,wtime,backups") and len(rows) == 1 + 4 * 25
    # the contrast: full wait drags everyone to the slow rank's pace
    full = launch(_train_real, 4, (_cfg(*common, "steps=8", "algorithm.backups=0"),))
    assert min(sorted(r["iter_seconds"])[4] for r in full) >= slow_compute * 0.9


def test_each_training_seed_meets_its_own_stragglers() -> None:
    cfg = StragglerConfig(slow_ranks=(3,), slow_prob=0.3)
    same = [StragglerModel(cfg, 4, run_seed=7).draw(5)[0] for _ in range(2)]
    other = StragglerModel(cfg, 4, run_seed=8).draw(5)[0]
    assert torch.equal(same[0], same[1]) and not torch.equal(same[0], other)


# -- skip ahead ---------------------------------------------------------------------------------


def test_a_rank_that_falls_behind_skips_ahead_and_sends_nothing_meanwhile() -> None:
    """With skip_ahead, a rank some neighbour's iteration-t model reached before it started t
    skips t: no compute, no message, it ends where it started; the clocks stay together."""
    cfg = StragglerConfig(slow_ranks=(3,), slow_factor=5.0)
    plain = VirtualClock(StragglerModel(cfg, 4), COMPLETE4, late="use")
    clock = VirtualClock(StragglerModel(cfg, 4), COMPLETE4, late="use", skip_ahead=True)
    its = []
    for _ in range(100):
        plain.step([1, 1, 1, 0])
        its.append(clock.step([1, 1, 1, 0]))
    assert not any(any(it.skipped) for it in its[:1])
    skips = [it for it in its if it.skipped[3]]
    assert len(skips) >= 60  # rank 3 is five times slower: it computes about one step in five
    for it in skips:
        assert float(it.compute_end[3]) == float(it.start[3]) == float(it.end[3])
        assert all(3 not in it.used[i] for i in range(3))
        assert all(it.arrivals[i][-1] == float("inf") for i in range(3))  # never sent
    # the others' inboxes got rank 3's messages only when it computed
    assert clock.inboxes[0].posted == sum(not it.skipped[j] for it in its for j in (1, 2, 3))
    clock.finish()
    for box in clock.inboxes:
        assert box.posted == box.used_fresh + box.used_late + box.dropped
    assert float(clock.now.max() - clock.now.min()) < 10  # rank 3 keeps up with the others
    assert float(plain.now.max() - plain.now.min()) > 200  # without skipping it falls behind
