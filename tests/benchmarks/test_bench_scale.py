"""The harness's cost as the number of ranks grows: start-up, memory, file descriptors, ports and
per-step harness overhead of the local launcher at N = 4, 16 and 64 (allreduce_sgd, digits MLP).

Run with ``make bench`` or ``pytest -m bench -s tests/benchmarks/test_bench_scale.py``; one
row per N is printed and ``test_the_table`` prints the table README's "Many nodes" quotes.

Per rank, measured inside the rank (psutil) once its steps are done:

* start-up: seconds from ``launch()`` to the start of the rank's first step (the slowest rank);
* memory: RSS, USS (pages only this rank holds) and PSS (shared pages split among sharers),
  and USS again after a full garbage collection (a long run may
  have them; 20 steps do not);
* fds: open file descriptors; ports: this rank's TCP sockets (all on 127.0.0.1) and listeners;
* harness overhead per step: CPU seconds of this rank's main thread spent on everything but the
  step itself (rows, metrics gather to rank 0, parameter checks, trace) plus, inside the step,
  the transport's bookkeeping around each algorithm op. CPU rather than wall seconds: 64 ranks
  share 2 cores, so wall time mostly measures waiting for a core. MLflow is off here: its
  writer is rank 0's alone and does not grow with N (test_bench_tracking.py measures it).

The check: the mean overhead per step over the ranks, divided by the algorithm ops per step
each rank makes, must not grow more than ``GROWTH`` times from N = 4 to N = 64 (rank 0 gathers
N rows every ``log_every`` steps, so its share does grow; spread over the ranks it must not).
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

import psutil
import pytest

from suite.config import RunConfig, apply_overrides
from suite.launcher import launch
from suite.loop import Job, Trainer
from suite.preflight import preflight
from suite.transport import Transport

SIZES = (4, 16, 64)
STEPS = 20
GROWTH = 3.0  # allowed growth of overhead per algorithm op, N = 4 to N = 64
ITEMS = ("algorithm=allreduce_sgd", "dataset=digits", "model=mlp", "batch_size=8",
         f"steps={STEPS}", "eval_every=0", "eval_per_rank=false", "log_every=5")  # fmt: skip
_rows: dict[int, dict[str, float]] = {}


def _measure(cfg: RunConfig, launched: float) -> dict[str, float]:
    """Train ``cfg`` on this rank with the harness's parts timed (CPU of this thread)."""
    transport = Transport()
    trainer = Trainer(Job(cfg, "bench", "bench", progress=False), transport)
    trainer.evaluate = dict  # steps only: no evaluation, no end-of-run gathers
    trainer._finish = lambda seconds: (None, {})
    clock = time.thread_time
    state = {"first": 0.0, "in_step": 0.0, "t": 0.0, "keeping": 0.0, "inside": False}
    set_step, record, timed = transport.set_step, trainer._record, transport._timed

    def on_step(step: int) -> None:
        if not state["first"]:
            state["first"] = time.time()
        state["t"], state["inside"] = clock(), True
        set_step(step)

    def on_record(*args: Any) -> None:
        state["in_step"] += clock() - state["t"]
        state["inside"] = False
        record(*args)

    def on_timed(op: str, fn: Any, **kw: Any) -> Any:
        if not state["inside"]:  # a harness op between steps: counted with the rest outside
            return timed(op, fn, **kw)
        inner = [0.0]

        def call() -> Any:
            t = clock()
            try:
                return fn()
            finally:
                inner[0] = clock() - t

        t = clock()
        out = timed(op, call, **kw)
        state["keeping"] += clock() - t - inner[0]
        return out

    transport.set_step, trainer._record, transport._timed = on_step, on_record, on_timed
    t0 = clock()
    trainer.run()
    total = clock() - t0
    proc = psutil.Process()
    mem = proc.memory_full_info()
    conns = proc.net_connections(kind="tcp")
    gc.collect()  # what a long run's full collections do to the pages shared with the launcher
    return {
        "uss_gc": proc.memory_full_info().uss,
        "startup": state["first"] - launched,
        "overhead": (total - state["in_step"] + state["keeping"]) / STEPS,
        "ops": transport.stats.calls / STEPS,
        "rss": mem.rss,
        "uss": mem.uss,
        "pss": mem.pss,
        "fds": proc.num_fds(),
        "threads": proc.num_threads(),
        "sockets": len(conns),
        "listeners": sum(c.status == psutil.CONN_LISTEN for c in conns),
        "nonlocal": sum(c.laddr.ip != "127.0.0.1" for c in conns),
    }


def measure(n: int) -> dict[str, float]:
    """One run of ``n`` ranks: the table's row (means over ranks; start-up the slowest)."""
    cfg = apply_overrides(RunConfig(), [*ITEMS, f"nproc={n}"])
    preflight(cfg)  # as `suite run` does: the data loaded once, before the fork
    ranks = launch(_measure, n, (cfg, time.time()))
    mean = {key: statistics.fmean(r[key] for r in ranks) for key in ranks[0]}
    mean["startup"] = max(r["startup"] for r in ranks)
    mean["fds_max"] = max(r["fds"] for r in ranks)
    mean["overhead0"] = ranks[0]["overhead"]  # rank 0 also gathers and reduces every row
    mean["nonlocal"] = sum(r["nonlocal"] for r in ranks)
    mean["load"] = psutil.getloadavg()[0]
    return mean


def _line(n: int, row: dict[str, float]) -> str:
    mb = 1e6
    cells = [
        f"{n:>3}",
        f"{row['startup']:.1f}",
        *(f"{row[key] / mb:.0f}" for key in ("rss", "uss", "pss", "uss_gc")),
        f"{row['fds']:.0f}/{row['fds_max']:.0f}",
        f"{row['sockets']:.0f}",
        f"{row['listeners']:.0f}",
        f"{row['threads']:.0f}",
        f"{row['overhead'] * 1e3:.2f} ({row['overhead0'] * 1e3:.2f})",
        f"{row['ops']:.1f}",
        f"{row['load']:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| N | start-up s | RSS MB | USS MB | PSS MB | USS after gc MB | fds mean/max | TCP "
    "| listening | threads | harness ms/step, CPU (rank 0) | algorithm ops/step | load |\n"
    "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
)


@pytest.mark.bench
@pytest.mark.parametrize("n", SIZES)
def test_harness_cost_at_n_ranks(benchmark, n: int) -> None:
    row = benchmark.pedantic(lambda: measure(n), rounds=1)
    _rows[n] = row
    benchmark.extra_info.update(row)
    print(f"\n{HEADER}\n{_line(n, row)}")
    assert row["nonlocal"] == 0  # loopback only, at any N


@pytest.mark.bench
def test_the_table() -> None:
    """The rows above as one table (measuring any not measured in this session), and the growth
    check."""
    for n in SIZES:
        if n not in _rows:
            _rows[n] = measure(n)
    print("\n" + HEADER)
    for n in SIZES:
        print(_line(n, _rows[n]))
    per_op = {n: _rows[n]["overhead"] / _rows[n]["ops"] for n in SIZES}
    growth = per_op[SIZES[-1]] / per_op[SIZES[0]]
    print(f"harness CPU per algorithm op: x{growth:.2f} from N={SIZES[0]} to N={SIZES[-1]}")
    assert growth <= GROWTH
