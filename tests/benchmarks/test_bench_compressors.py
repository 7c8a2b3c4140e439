"""Compressor throughput, and Top-K's selection cost against one streaming pass.

Throughput: compress + decompress of every registered compressor (default knobs, one segment)
on a float32 vector of 1e5 and 1e7 Gaussian entries, in elements per second.

Top-K cost: ``compress`` of top_k at 1% density, model scope, on 1e7 entries, exact and approx
(Deep Gradient Compression's sampled threshold), against ``torch.abs(x).max()`` (one streaming
pass over the same tensor), measured side by side in one run, alternating, medians. Target:
approx / pass <= 3.0; the exact ratio is reported, not asserted.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from suite.compressors import build
from suite.registry import COMPRESSORS

TARGET = 3.0
ROUNDS = 9


def _gaussian(n: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(0))


@pytest.mark.bench
@pytest.mark.parametrize("n", [100_000, 10_000_000], ids=["1e5", "1e7"])
@pytest.mark.parametrize("name", COMPRESSORS.names())
def test_compress_decompress_throughput(benchmark, name: str, n: int) -> None:
    c = build(name)
    x = _gaussian(n)
    rounds = 30 if n <= 100_000 else 5
    benchmark.pedantic(lambda: c.decompress(*c.compress(x)), rounds=rounds, warmup_rounds=1)
    out = c.decompress(*c.compress(x))  # what was timed is a round trip: x's shape back, finite
    assert out.shape == x.shape and bool(torch.isfinite(out).all()), name
    assert (name != "identity" or torch.equal(out, x)) and bool(out.abs().sum() > 0), name
    median = benchmark.stats.stats.median
    rate = n / median
    benchmark.extra_info.update({"elements": n, "elements_per_s": rate})
    print(f"\n{name} n={n:.0e}: {median * 1e3:.2f} ms, {rate / 1e6:.1f} M elements/s")


def _side_by_side(x: torch.Tensor) -> dict[str, list[float]]:
    exact = build("top_k", ratio=0.01, scope="model")
    approx = build("top_k", ratio=0.01, scope="model", mode="approx")
    ops = {
        "pass": lambda: torch.abs(x).max(),
        "approx": lambda: approx.compress(x),
        "exact": lambda: exact.compress(x),
    }
    times: dict[str, list[float]] = {name: [] for name in ops}
    for op in ops.values():  # warm-up: allocator, thread pool
        op()
    for _ in range(ROUNDS):
        for name, op in ops.items():
            start = time.perf_counter()
            op()
            times[name].append(time.perf_counter() - start)
    return times


@pytest.mark.bench
def test_top_k_selection_against_a_streaming_pass(benchmark) -> None:
    x = _gaussian(10_000_000)
    result = benchmark.pedantic(lambda: _side_by_side(x), rounds=1)
    med = {name: statistics.median(t) for name, t in result.items()}
    approx, exact = med["approx"] / med["pass"], med["exact"] / med["pass"]
    benchmark.extra_info.update({f"{name}_ms": t * 1e3 for name, t in med.items()})
    benchmark.extra_info.update({"approx_ratio": approx, "exact_ratio": exact})
    print(
        f"\ntop_k 1% of 1e7, model scope: pass {med['pass'] * 1e3:.1f} ms, "
        f"approx {med['approx'] * 1e3:.1f} ms (ratio {approx:.2f}, target <= {TARGET}), "
        f"exact {med['exact'] * 1e3:.1f} ms (ratio {exact:.2f})"
    )
    assert approx <= TARGET
