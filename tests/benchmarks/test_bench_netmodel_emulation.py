"""The network model against real shaped links: measured / predicted seconds per step.

For allreduce_sgd, dpsgd, eventgrad, topk_sgd and crossover_sgd on 4 ranks at 100 Mbit/s and
1 Gbit/s, ``suite run --emulate RATE`` trains on tbf-shaped links in network namespaces and
puts beside its training time what :mod:`suite.netmodel` predicts from the run's own trace on
the network the emulation measured (:func:`suite.netmodel.emulated_network`: the links'
measured rate and round trip, gloo's per-message cost, and the host's processors, which the 4
ranks share; harness ops included, as the training time includes them). The MLP is 512x512 on
digits (1.2 MB of gradients): communication dominates at 1 Gbit/s too (a ring all-reduce ~15 ms
against ~3 ms of compute a step), except for topk_sgd (24 KB a rank a step), whose steps are
bound by the 4 ranks' compute on 2 cores.

The model knows other jobs on the host only through the compute gaps they lengthened, not
through the ops they slow: run it on a quiet machine (a loaded one inflates the measured steps,
at 1 Gbit/s most). Target: every ratio within 0.85 to 1.15; every ratio is printed (a table)
and stored in ``benchmark.extra_info`` before the assertion. Needs root, iproute2 and sch_tbf, as
tests/test_emulate.py: without them the runs exit 2 and this fails saying why. No delay is
emulated (this kernel has no sch_netem). Do not run it beside tests/test_emulate.py (that test
compares the host's namespace list).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import last_json, suite_cmd

ALGORITHMS = ("allreduce_sgd", "dpsgd", "eventgrad", "topk_sgd", "crossover_sgd")
RATES = {"100mbit": 15, "1gbit": 40}  # rate -> steps (about 5-10 s of training each)
BAND = (0.85, 1.15)


def _emulated(tmp_path: Path, algorithm: str, rate: str, steps: int) -> dict:
    proc = suite_cmd(
        "run", algorithm, "--nproc", "4", "--steps", str(steps), "--emulate", rate, "--json",
        "--quiet", "--no-track", "--set", "model.hidden=512,512", "--set", "eval_every=0",
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"{algorithm} on emulated {rate} failed (needs root, iproute2 and sch_tbf):\n"
        f"{proc.stderr[-3000:]}"
    )
    out = last_json(proc.stdout)
    assert "emulated_model_seconds_per_step" in out, f"no prediction: {proc.stderr[-3000:]}"
    return out


@pytest.mark.bench
def test_the_network_model_predicts_emulated_step_times(benchmark, tmp_path: Path) -> None:
    def measure() -> dict[str, dict[str, float]]:
        rows = {}
        for rate, steps in RATES.items():
            for algorithm in ALGORITHMS:
                out = _emulated(tmp_path, algorithm, rate, steps)
                measured = out["train_seconds"] / out["steps"]
                predicted = out["emulated_model_seconds_per_step"]
                rows[f"{algorithm}@{rate}"] = {
                    "measured_s": measured,
                    "predicted_s": predicted,
                    "ratio": measured / predicted,
                    "link_bps": out.get("measured_throughput_bps", 0.0),
                }
        return rows

    rows = benchmark.pedantic(measure, rounds=1)
    benchmark.extra_info.update({key: row["ratio"] for key, row in rows.items()})
    lines = [f"\n{'run':<24} {'measured':>10} {'predicted':>10} {'ratio':>6}  link (measured)"]
    for key, row in rows.items():
        flag = "" if BAND[0] <= row["ratio"] <= BAND[1] else "  OUTSIDE"
        lines.append(
            f"{key:<24} {row['measured_s'] * 1e3:>8.1f}ms {row['predicted_s'] * 1e3:>8.1f}ms"
            f" {row['ratio']:>6.3f}  {row['link_bps'] / 1e6:,.0f} Mbit/s{flag}"
        )
    print("\n".join(lines))
    outside = {
        k: round(r["ratio"], 3) for k, r in rows.items() if not BAND[0] <= r["ratio"] <= BAND[1]
    }
    assert not outside, f"measured/predicted outside {BAND}: {outside}"
