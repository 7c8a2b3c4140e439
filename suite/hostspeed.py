"""The host's speed at the compute these runs do: one number a report prints beside the
simulated times that rest on it.

Simulated network time replays a run's trace with the compute measured on the host that ran it
(:mod:`suite.netmodel`). That compute moves with the host, not only with the code: on a VM of
the same name ("AMD EPYC x2") one commit's smoke crossover ablation took 2.5 simulated seconds
to its target on 2026-12-03 where it took 0.9 on 12-01, today's code's 2.6 s at 19:00 and 1.3 s
at 22:40 that day, and compute-bound time rankings turned over. So every run times a fixed
reference step once its training is done (its ranks gone, the host as quiet as the job leaves
it) and keeps it as ``reference_step_ms``; a report names the figure per profile, and two
reports' simulated times compare only at like figures.

The step is the smoke profile's kind of work, where per-op overhead weighs as much as the
arithmetic: a small MLP's forward, backward and SGD update, on one thread as every rank runs.
It is built here with plain torch, not from :mod:`suite.tasks`, so that the figure means the
same whatever the suite's own models become.
The figure is the fastest of a few blocks of steps, the least disturbed by other work. It
times the host's CPU: for a CUDA run, whose compute is on the GPU, it says nothing of the GPU."""

from __future__ import annotations

import math
import time

REFERENCE_STEP = "MLP 64-128-64-10, batch 32, forward, backward and SGD update on one thread"


def reference_step_ms(steps: int = 10, blocks: int = 5) -> float:
    """Milliseconds of one reference step (:data:`REFERENCE_STEP`): the fastest of ``blocks``
    blocks of ``steps`` steps each, after a block of warm-up. About 30 ms in all on a 2026 CPU
    core. Leaves torch's thread count and random state as they were."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(0)
            model = torch.nn.Sequential(
                torch.nn.Linear(64, 128),
                torch.nn.ReLU(),
                torch.nn.Linear(128, 64),
                torch.nn.ReLU(),
                torch.nn.Linear(64, 10),
            )
            x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

            def step() -> None:
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()

            for _ in range(steps):  # warm-up: first calls allocate and dispatch slowly
                step()
            best = math.inf
            for _ in range(blocks):
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                best = min(best, (time.perf_counter() - start) / steps)
            return best * 1e3
    finally:
        torch.set_num_threads(threads)
