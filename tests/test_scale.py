"""Many local ranks: 16-rank runs of crossover_sgd and dybw, the launcher's limits (memory, file
descriptors) refused before any rank starts, its fd limit raised for what N ranks need, and
forked ranks that keep sharing the launcher's pages through their garbage collections.
(tests/benchmarks/test_bench_scale.py measures the costs at 4, 16 and 64 ranks.)"""

from __future__ import annotations

import gc
import resource
from collections.abc import Iterator
from types import SimpleNamespace

import psutil
import pytest
import torch

from suite import cli, launcher
from suite.config import RunConfig, apply_overrides
from suite.launcher import launch
from suite.loop import Job, Trainer
from suite.transport import Transport

SMALL = ["dataset=digits", "model=mlp", "model.hidden=16", "eval_every=0", "device=cpu",
         "eval_per_rank=false", "optim.lr=0.1", "batch_size=8", "log_every=10"]  # fmt: skip
STEPS = 10


def _train(cfg: RunConfig) -> dict | None:
    trainer = Trainer(Job(cfg, target="test", paper="test", progress=False), Transport())
    summary, _ = trainer.run()
    return summary if summary is not None else {"rank": trainer.rank, "steps": trainer.steps_run}


def _run16(*items: str) -> list[dict]:
    cfg = apply_overrides(RunConfig(), [*SMALL, "nproc=16", f"steps={STEPS}", *items])
    out = launch(_train, 16, (cfg,))
    assert [r.get("rank", 0) for r in out] == list(range(16))  # every rank came back
    assert all(r["steps"] == STEPS for r in out)
    assert out[0]["world_size"] == 16
    return out


def test_sixteen_ranks_of_crossover_sgd_send_the_closed_form_and_keep_the_average() -> None:
    s = _run16("algorithm=crossover_sgd")[0]
    d = s["num_params"]
    # group_size 1: every rank is a root and sends its model (fp32) once a round
    assert s["bytes_sent"] == s["wire_bytes"] == 16 * STEPS * 4 * d
    assert s["drift_rel_mean"] < 1e-6  # a load-balanced round keeps the average
    assert 0 < s["contraction_mean"] < 1


def test_sixteen_ranks_of_dybw_exchange_with_every_peer_and_account_for_each_message() -> None:
    s = _run16("algorithm=dybw", "algorithm.straggler.kind=constant")[0]
    d = s["num_params"]
    # no straggler: every rank sends its model to its 15 peers each iteration, none late
    assert s["messages_sent"] == 16 * 15 * STEPS and s["messages_unaccounted"] == 0
    assert s["iterations_skipped"] == 0 and s["messages_used_late"] == 0
    assert s["bytes_sent"] == 16 * 15 * STEPS * 4 * d


# -- refused before any rank starts ------------------------------------------------------------


@pytest.fixture
def no_start(monkeypatch, tmp_path) -> Iterator[None]:
    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("a job that cannot fit reached the start of its ranks")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launcher, "launch", started)
    threads = torch.get_num_threads()  # the preflight sets 1 for the ranks it would fork
    yield
    torch.set_num_threads(threads)


RUN64 = ["run", "allreduce_sgd", "--no-track", "--nproc", "64", "--set", "batch_size=8"]


def test_more_ranks_than_memory_holds_exit_2_with_the_numbers(no_start, monkeypatch, capsys):
    per_rank = launcher.RANK_MEMORY  # plus the MLP's few KB of parameters
    available = 10.5 * per_rank  # room for 10 ranks
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=available))
    assert cli.main(RUN64) == 2
    err = capsys.readouterr().err
    assert "nproc=64 local ranks need about" in err and "GB available" in err
    assert "valid: nproc <= 10" in err


def test_a_hard_fd_limit_too_low_for_the_ranks_exits_2(no_start, monkeypatch, capsys) -> None:
    hard = 160  # 64 ranks need 24 + 3 x 63 = 213 each, beyond what they inherit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (hard, hard))
    assert cli.main(RUN64) == 2
    err = capsys.readouterr().err
    assert "open files per process" in err and "hard limit of 160 (ulimit -Hn)" in err
    fits = int(err.split("valid: nproc <= ")[1].split(",")[0])
    assert fits >= 1 and fits < 64  # the largest world that fits, and not the one asked for
    assert launcher._fds_needed(fits) <= hard < launcher._fds_needed(fits + 1)


# -- the launcher at scale ---------------------------------------------------------------------


def _ok() -> int:
    return 1


def test_the_launcher_raises_a_low_soft_fd_limit_for_its_ranks() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = max(48, psutil.Process().num_fds() + 8)  # too few for 16 ranks' gloo pairs
    if hard != resource.RLIM_INFINITY and hard < 4 * low:
        pytest.fail(f"this machine's hard fd limit ({hard}) is below what the test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:  # before the launcher raised the limit, every rank aborted in gloo's init
        assert launch(_ok, 16) == [1] * 16
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > low
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _collected_growth() -> float:
    """MB of memory this rank alone holds after a full collection, beyond before it."""
    process = psutil.Process()
    before = process.memory_full_info().uss
    gc.collect()
    return (process.memory_full_info().uss - before) / 1e6


def test_a_ranks_garbage_collection_keeps_the_pages_it_shares_with_the_launcher() -> None:
    # Without gc.freeze a full collection writes to every inherited object's header: each
    # rank copied ~65 MB of the launcher's (torch's) pages.
    growth = launch(_collected_growth, 2)
    assert max(growth) < 20, growth
