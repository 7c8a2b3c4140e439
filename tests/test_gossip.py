"""Gossip topologies, Crossover-SGD's random derangements and SGP (push-sum): valid mixing
matrices, seed-determined draws, exact conservation of mass, and every byte counted."""

from __future__ import annotations

import itertools

import pytest
import torch

from suite.config import RunConfig, apply_overrides
from suite.launcher import launch
from suite.loop import Job, Trainer
from suite.registry import TOPOLOGIES
from suite.topologies import (
    ExponentialOnePeer,
    Topology,
    derangement_mixing_matrix,
    hierarchical_groups,
    load_balanced_derangement,
    random_sources,
)
from suite.transport import Transport

SMALL = [
    "dataset=digits",
    "model=mlp",
    "model.hidden=16",
    "eval_every=0",
    "eval_per_rank=false",
    "device=cpu",
]
NEW = ["exponential", "exponential_one_peer", "exponential3_two_peer", "exponential_one_peer_pm"]
ONES = {n: torch.ones(n, dtype=torch.float64) for n in range(1, 10)}


def _build(name: str, n: int) -> Topology:
    entry = TOPOLOGIES.get(name)
    return entry.obj(entry.make_config(), n)


# -- topologies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
@pytest.mark.parametrize("n", range(2, 10))
def test_mixing_matrices_are_stochastic_and_match_the_peer_lists(name: str, n: int) -> None:
    topo = _build(name, n)
    for step in range(7):
        w = topo.mixing_matrix(step)
        assert (w >= 0).all()
        assert torch.allclose(w.sum(0), ONES[n])  # column-stochastic: push-sum keeps mass
        assert torch.allclose(w.sum(1), ONES[n])  # all of these also claim doubly stochastic
        assert torch.equal(w, topo.mixing_matrix(step + topo.period))
        for i in range(n):
            assert topo.in_peers(i, step) == [j for j in range(n) if j != i and w[i, j] > 0]
            assert topo.out_peers(i, step) == [j for j in range(n) if j != i and w[j, i] > 0]
            for j in topo.out_peers(i, step):  # i sends to j iff j receives from i
                assert i in topo.in_peers(j, step)
        if topo.static:
            assert torch.equal(w, topo.mixing_matrix(0))


def test_exponential_graphs_have_the_published_peers() -> None:
    assert _build("exponential", 8).out_peers(0) == [1, 2, 4]
    assert _build("exponential", 5).out_peers(3) == [0, 2, 4]  # 3 + 1, 3 + 2, 3 + 4 (mod 5)
    assert _build("exponential", 5).mixing_matrix()[4, 3] == pytest.approx(1 / 4)
    one = ExponentialOnePeer(None, 8)
    assert [one.out_peers(0, t) for t in range(6)] == [[1], [2], [4], [1], [2], [4]]
    assert [one.in_peers(5, t) for t in range(3)] == [[4], [3], [1]]
    w = one.mixing_matrix(1)
    assert w[2, 0] == 0.5 and w[0, 0] == 0.5
    # the product over one period averages exactly when N is a power of 2
    prod = one.mixing_matrix(2) @ one.mixing_matrix(1) @ one.mixing_matrix(0)
    assert torch.allclose(prod, torch.full((8, 8), 1 / 8, dtype=torch.float64))
    three = _build("exponential3_two_peer", 10)  # exponents 0, 1, 2: distances 1,2 / 3,6 / 9,8
    assert three.period == 3
    assert [three.out_peers(0, t) for t in range(3)] == [[1, 2], [3, 6], [8, 9]]
    assert three.in_peers(0, 2) == [1, 2]
    # N = 6, exponent 1: 2 * 3 = N, the second "peer" is the rank itself and counts twice
    six = _build("exponential3_two_peer", 6).mixing_matrix(1)
    assert six[0, 0] == pytest.approx(2 / 3) and six[3, 0] == pytest.approx(1 / 3)
    two = _build("exponential3_two_peer", 2).mixing_matrix(0)
    assert torch.allclose(two, torch.tensor([[2, 1], [1, 2]], dtype=torch.float64) / 3)


def _sgp_graph0_out_peer(rank: int, n: int, itr: int) -> int:
    """SGP's graph_type 0 as facebookresearch/stochastic_gradient_push runs it, transcribed:
    DynamicDirectedExponentialGraph's phone book (r + 2^i, then r - 2^i, for i up to
    log2(N - 1), duplicates kept), the gossiper starting at entry 0 and rotating one entry per
    iteration (peers_per_itr = 1)."""
    import math

    book = []
    for i in range(int(math.log(n - 1, 2)) + 1):
        book += [(rank + 2**i) % n, (rank - 2**i) % n]
    return book[itr % len(book)]


def test_sgp_graph_type_0_cycles_plus_and_minus_powers_of_two() -> None:
    from suite.registry import ALGORITHMS, load_builtins

    load_builtins()
    eight = _build("exponential_one_peer_pm", 8)
    assert eight.period == 6
    assert [eight.out_peers(0, t) for t in range(7)] == [[1], [7], [2], [6], [4], [4], [1]]
    assert [eight.in_peers(0, t) for t in range(4)] == [[7], [1], [6], [2]]
    assert eight.mixing_matrix(1)[7, 0] == 0.5 and eight.mixing_matrix(1)[0, 0] == 0.5
    for n in range(2, 10):
        topo = _build("exponential_one_peer_pm", n)
        for rank in range(n):
            for t in range(2 * topo.period + 1):
                peer = _sgp_graph0_out_peer(rank, n, t)
                assert topo.out_peers(rank, t) == ([] if peer == rank else [peer]), (n, rank, t)
    preset = ALGORITHMS.get("sgp_graph0")
    assert preset.make_config().topology == "exponential_one_peer_pm"


def test_one_rank_keeps_everything() -> None:
    for name in NEW:
        assert torch.equal(_build(name, 1).mixing_matrix(3), torch.ones(1, 1, dtype=torch.float64))


# -- Crossover-SGD's random topologies ------------------------------------------------------------


@pytest.mark.parametrize("groups", range(2, 9))
def test_load_balanced_derangements_are_derangements_covering_every_pair(groups: int) -> None:
    gen = torch.Generator().manual_seed(groups)
    seen: set[tuple[int, int]] = set()
    for _ in range(2000 if groups > 2 else 10):
        src = load_balanced_derangement(groups, gen)
        assert sorted(src) == list(range(groups))  # a permutation: each group sends once
        assert all(s != g for g, s in enumerate(src))  # no fixed point
        seen.update(enumerate(src))
        w = derangement_mixing_matrix(src)
        assert torch.allclose(w.sum(0), ONES[groups]) and torch.allclose(w.sum(1), ONES[groups])
    everyone = {(g, s) for g, s in itertools.product(range(groups), repeat=2) if g != s}
    assert seen == everyone
    if groups == 2:
        assert load_balanced_derangement(2, gen) == [1, 0]


@pytest.mark.parametrize("groups", [2, 3, 5, 8])
def test_random_sources_never_pick_themselves_and_may_repeat(groups: int) -> None:
    gen = torch.Generator().manual_seed(1)
    draws = [random_sources(groups, gen) for _ in range(500)]
    assert all(s != g and 0 <= s < groups for src in draws for g, s in enumerate(src))
    seen = {(g, s) for src in draws for g, s in enumerate(src)}
    assert len(seen) == groups * (groups - 1)
    if groups > 2:  # not a permutation in general: the ablation drops the load balance
        assert any(len(set(src)) < groups for src in draws)


def test_derangement_rejects_a_single_group() -> None:
    gen = torch.Generator()
    with pytest.raises(ValueError, match="groups >= 2"):
        load_balanced_derangement(1, gen)
    with pytest.raises(ValueError, match="groups >= 2"):
        random_sources(1, gen)


def test_the_same_seed_draws_the_same_topologies() -> None:
    def draws(seed: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(seed)
        return [f(6, gen) for _ in range(20) for f in (load_balanced_derangement, random_sources)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_hierarchical_groups() -> None:
    assert hierarchical_groups(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert hierarchical_groups(6, 1) == [[r] for r in range(6)]
    assert hierarchical_groups(6, 6) == [list(range(6))]
    with pytest.raises(ValueError, match="valid sizes: 1, 2, 3, 6"):
        hierarchical_groups(6, 4)
    with pytest.raises(ValueError):
        hierarchical_groups(6, 0)


# -- multi-rank: agreement without talking, push-sum, complete graph ---------------------------


class Irregular(Topology):
    """Column-stochastic but not row-stochastic: rank 0 spreads its mass over everyone, every
    other rank keeps half and pushes half to its right. Push-sum must still average."""

    def mixing_matrix(self, step: int = 0) -> torch.Tensor:
        n = self.world_size
        w = torch.zeros((n, n), dtype=torch.float64)
        w[:, 0] = 1.0 / n
        for i in range(1, n):
            w[i, i] += 0.5
            w[(i + 1) % n, i] += 0.5
        return w


def _gossip_worker(topologies: list[str], rounds: int) -> dict:
    from baselines.dpsgd import DPSGD, DPSGDConfig
    from baselines.sgp import SGP, SGPConfig
    from suite.algorithms.base import Context
    from suite.algorithms.gossip import consensus_distance

    transport = Transport()
    rank = transport.rank
    gen = torch.Generator().manual_seed(123)  # the same seed on every rank, no communication
    out: dict = {"draws": [load_balanced_derangement(transport.world_size, gen) for _ in range(20)]}

    def fresh() -> tuple[torch.nn.Module, Context]:
        model = torch.nn.Linear(3, 2)
        with torch.no_grad():
            for k, p in enumerate(model.parameters()):
                p.copy_(torch.arange(p.numel()).view_as(p) * (rank + 1) + 10.0 * rank + k)
        sgd = torch.optim.SGD(model.parameters(), lr=0.0)
        return model, Context(transport, model, sgd, torch.device("cpu"), 1, 1, 0)

    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    model, ctx = fresh()
    out["start"] = flat(model)
    before = transport.stats.bytes_sent
    out["consensus"] = consensus_distance(transport, out["start"])
    out["consensus_algorithm_bytes"] = transport.stats.bytes_sent - before
    DPSGD(DPSGDConfig(topology="complete"), ctx).reduce_gradients(0)
    out["dpsgd_complete"] = flat(model)
    model, ctx = fresh()
    SGP(SGPConfig(topology="complete", measure_every=0), ctx).mix_parameters(0)
    out["sgp_complete"] = flat(model)

    for name in [*topologies, "irregular"]:
        model, ctx = fresh()
        algo = SGP(SGPConfig(topology=name if name != "irregular" else "ring"), ctx)
        if name == "irregular":
            algo.topology = Irregular(None, transport.world_size)
        # different weights per rank, and x = w * z so the model still holds z
        algo.state[-1] = float(rank + 1)
        algo.numerator.mul_(rank + 1)
        mass = [(algo.numerator.clone(), algo.weight)]
        for step in range(rounds):
            algo.optimizer.step()  # lr = 0: moves nothing
            algo.mix_parameters(step)
            mass.append((algo.numerator.clone(), algo.weight))
        out[name] = {"mass": mass, "z": flat(model), "consensus": algo.consensus}
    return out


@pytest.mark.parametrize(
    ("n", "topologies"),
    [(3, ["exponential"]), (4, ["exponential", "exponential_one_peer", "exponential3_two_peer"])],
)
def test_push_sum_conserves_mass_and_reaches_the_average(n: int, topologies: list[str]) -> None:
    rounds = 40
    runs = launch(_gossip_worker, n, (topologies, rounds))
    assert all(r["draws"] == runs[0]["draws"] for r in runs)  # identical seeds, identical draws
    starts = torch.stack([r["start"] for r in runs])
    mean = starts.mean(0)
    # consensus distance: one harness all-reduce, the same value everywhere
    expected = float(((starts - mean) ** 2).sum(1).mean())
    for r in runs:
        assert r["consensus"] == pytest.approx(expected, rel=1e-9)
        assert r["consensus_algorithm_bytes"] == 0
        # gossip with uniform weights on the complete graph is parameter averaging
        assert torch.allclose(r["dpsgd_complete"], mean, atol=1e-5)
        assert torch.allclose(r["sgp_complete"], mean, atol=1e-5)
    weights = torch.arange(1, n + 1, dtype=torch.float64)
    # x_i = w_i z_i: push-sum converges to sum x / sum w, the w-weighted average of the starts
    target = (weights[:, None] * starts.double()).sum(0) / weights.sum()
    for name in [*topologies, "irregular"]:
        for t in range(rounds + 1):
            xs = sum(r[name]["mass"][t][0].double() for r in runs)
            ws = sum(r[name]["mass"][t][1] for r in runs)
            assert torch.allclose(xs, weights @ starts.double(), rtol=1e-5), (name, t)
            assert ws == pytest.approx(float(weights.sum()), rel=1e-6), (name, t)
        ws_end = [r[name]["mass"][-1][1] for r in runs]
        assert max(ws_end) - min(ws_end) > 1e-3 or name != "irregular"  # w really moved
        for r in runs:
            assert torch.allclose(r[name]["z"].double(), target, atol=1e-3), name
        spread = float(((starts.double() - target) ** 2).sum(1).mean())
        assert runs[0][name]["consensus"] < 1e-6 * spread


# -- training through the loop ----------------------------------------------------------------


def _train(cfg: RunConfig) -> dict:
    trainer = Trainer(Job(cfg, target="test", paper="test", progress=False), Transport())
    summary, _ = trainer.run()
    return {"summary": summary, "weight": trainer.algorithm.weight}


@pytest.mark.parametrize(
    ("algorithm", "steps", "peers"), [("sgp", 100, 1), ("sgp_crossover", 30, 2)]
)
def test_sgp_trains_and_counts_one_message_of_d_plus_one_floats_per_peer(
    algorithm: str, steps: int, peers: int
) -> None:
    cfg = apply_overrides(
        RunConfig(), [*SMALL, f"algorithm={algorithm}", "nproc=4", f"steps={steps}",
                      "optim.lr=0.1", "log_every=10"]
    )  # fmt: skip
    runs = launch(_train, 4, (cfg,))
    summary = runs[0]["summary"]
    d = summary["num_params"]
    for row in summary["per_rank"]:
        assert row["bytes_sent"] == steps * peers * 4 * (d + 1)
        assert row["bytes_recv"] == steps * peers * 4 * (d + 1)
        assert row["messages"] == steps * peers
        assert row["harness_bytes_sent"] > 0  # the consensus measurements, kept apart
    assert all(r["weight"] == 1.0 for r in runs)  # regular graphs: w stays exactly 1
    if algorithm == "sgp":
        assert summary["train_loss"] < 0.5 * summary["train_loss_early"]
        assert summary["train_loss"] < 1.0
    else:
        assert summary["train_loss"] < summary["train_loss_early"]
