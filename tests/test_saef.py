"""Server aggregation, compressed SGD, local EF and SAEF: lossless cases are exact, the server's
error compensation conserves what it drops, every byte is the formula's, and SAEF steps ahead
exactly as the authors' code does (checked against a plain-torch reference written here)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from conftest import KeptMetrics

from suite.algorithms.base import Context
from suite.algorithms.server import Server, build_compressor
from suite.compressors import ErrorFeedback
from suite.config import RunConfig, apply_overrides, flatten, from_flat
from suite.errors import ConfigError
from suite.launcher import launch
from suite.loop import Job, Trainer
from suite.registry import ALGORITHMS, COMPRESSORS, RECIPES
from suite.transport import Transport

SMALL = ["dataset=digits", "model=mlp", "model.hidden=16", "eval_every=0", "device=cpu",
         "eval_per_rank=false", "optim.momentum=0.9", "optim.weight_decay=0.001"]  # fmt: skip
MLP_PARAMS = 64 * 16 + 16 + 16 * 10 + 10  # digits (8x8) -> 16 -> 10


def _config(*items: str) -> RunConfig:
    return apply_overrides(RunConfig(), [*SMALL, *items])


def _train(cfg: RunConfig) -> dict:
    trainer = Trainer(Job(cfg, target="test", paper="test", progress=False), Transport())
    summary, _ = trainer.run()
    model = trainer.algorithm.eval_model()
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {"params": params, "summary": summary}


def _max_diff(a: list[dict], b: list[dict]) -> float:
    return max(float((x["params"] - y["params"]).abs().max()) for x, y in zip(a, b, strict=True))


# -- lossless input gives the exact result ------------------------------------------------------

IDENTITY = ("algorithm.compressor=identity",)


@pytest.mark.parametrize(
    "algorithm",
    [
        ("algorithm=compressed_sgd", *IDENTITY, "algorithm.downlink=dense"),
        ("algorithm=ef_sgd", *IDENTITY),  # server EC with identity: s stays 0
        ("algorithm=saef", *IDENTITY, "algorithm.average_every=3"),  # e stays 0: SA is a no-op
    ],
    ids=["compressed_sgd", "ef_sgd", "saef"],
)
def test_identity_compression_equals_allreduce_sgd(algorithm: tuple[str, ...]) -> None:
    common = ("nproc=3", "steps=30", "optim.lr=0.05")
    reference = launch(_train, 3, (_config("algorithm=allreduce_sgd", *common),))
    ours = launch(_train, 3, (_config(*algorithm, *common),))
    assert _max_diff(reference, ours) < 1e-6
    assert _max_diff(ours, ours[1:] + ours[:1]) == 0.0  # the server keeps every rank identical
    start = launch(_train, 1, (_config("algorithm=single", "nproc=1", "steps=1", "optim.lr=1e-9"),))
    assert float((ours[0]["params"] - start[0]["params"]).abs().max()) > 1e-3  # it did train


def test_local_adagrad_through_a_server_differs_from_global_adagrad_but_trains() -> None:
    # Adagrad is not linear in the gradient: each worker's own accumulator makes EF differ from
    # all-reduce Adagrad even without compression (as in the authors' code)
    common = ("nproc=2", "steps=40", "optim.lr=0.05", "optim.name=adagrad", "optim.momentum=0")
    ef = launch(_train, 2, (_config("algorithm=ef_sgd", *IDENTITY, *common),))
    ar = launch(_train, 2, (_config("algorithm=allreduce_sgd", *common),))
    assert _max_diff(ef, ar) > 1e-6
    assert ef[0]["summary"]["train_loss"] < 1.5  # from ~2.3 (10 classes)


def test_adagrad_refuses_momentum() -> None:
    with pytest.raises(ConfigError, match=r"optim\.momentum"):
        _config("optim.name=adagrad", "optim.momentum=0.9")


# -- the server: what it sends, and what it keeps -----------------------------------------------


def _rounds(name: str, downlink: str, rounds: int) -> dict:
    transport = Transport()
    rank, n = transport.rank, transport.world_size
    sizes = [300, 40, 7]
    up, down = build_compressor(_comp(name), sizes), build_compressor(_comp(name), sizes)
    server = Server(transport, up, down, downlink)
    ef = ErrorFeedback(up)
    torch.manual_seed(100 + rank)
    out = {"m": [], "conserved": [], "dense_ok": []}
    for _ in range(rounds):
        u = torch.randn(sum(sizes))
        payload, ctx = ef.compress(u, "w")
        mine = up.decompress(payload, ctx)  # what this rank's payload says
        everyone = [torch.empty_like(mine) for _ in range(n)]
        dist.all_gather(everyone, mine)  # test-side truth, outside the counted transport
        cbar = torch.stack(everyone).mean(0)
        s_old = server.residual(u).clone()
        m = server.round(payload, ctx, u)
        out["m"].append(m)
        if rank == 0 and downlink == "compensated":
            out["conserved"].append(float((cbar + s_old - m - server.residual(u)).abs().max()))
        if downlink == "dense":
            out["dense_ok"].append(float((m - cbar).abs().max()))
    out["bytes_up"], out["bytes_down"] = server.bytes_up, server.bytes_down
    out["payload"] = server.payload_bytes
    return out


def _comp(name: str):
    from suite.config import make_component

    return make_component("compressor", name)


@pytest.mark.parametrize("name", ["top_k", "scaled_sign", "random_k", "top_k_approx", "qsgd"])
def test_server_error_compensation_conserves_and_every_rank_gets_the_same_m(name: str) -> None:
    runs = launch(_rounds, 3, (name, "compensated", 5))
    assert max(runs[0]["conserved"]) < 1e-5  # cbar + s_old == m + s_new on the server
    for r in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0]["m"], r["m"], strict=True))


@pytest.mark.parametrize("name", ["top_k", "random_k"])
def test_a_dense_downlink_sends_the_exact_average(name: str) -> None:
    runs = launch(_rounds, 2, (name, "dense", 3))
    assert max(max(r["dense_ok"]) for r in runs) < 1e-6


@pytest.mark.parametrize("name", ["top_k", "scaled_sign", "random_k", "qsgd"])
def test_server_bytes_are_payload_up_and_packed_m_down(name: str) -> None:
    rounds = 4
    runs = launch(_rounds, 3, (name, "compressed", rounds))
    payload = runs[1]["payload"]  # fixed-size compressors: every rank, every round
    assert runs[0]["bytes_up"] == 0  # the server is also a worker: it sends itself nothing
    assert runs[1]["bytes_up"] == runs[2]["bytes_up"] == rounds * payload
    assert runs[0]["bytes_down"] == rounds * payload  # m is compressed like any payload
    assert runs[1]["bytes_down"] == 0


def test_uplink_reduce_with_a_compressor_that_cannot_be_summed_is_bad_input() -> None:
    with pytest.raises(ConfigError, match="not summable"):
        _config("algorithm=saef", "algorithm.compressor=top_k", "algorithm.uplink=reduce")
    cfg = _config("algorithm=saef", "algorithm.compressor=random_k", "algorithm.uplink=reduce")
    assert cfg.algorithm.args.uplink == "reduce"
    with pytest.raises(ConfigError, match="valid choices: dense, compressed, compensated"):
        _config("algorithm=ef_sgd", "algorithm.downlink=both")


def test_nested_compressor_knobs_parse_flatten_and_come_back() -> None:
    cfg = _config("algorithm=saef", "algorithm.compressor.ratio=0.05", "algorithm.compressor=top_k")
    assert cfg.algorithm.args.compressor.name == "top_k"
    assert cfg.algorithm.args.compressor.args.ratio == 0.05
    flat = flatten(cfg)
    assert flat["algorithm.compressor"] == "top_k" and flat["algorithm.compressor.ratio"] == 0.05
    assert from_flat(flat) == cfg
    with pytest.raises(ConfigError, match=r"unknown compressor 'topk'.*valid choices"):
        _config("algorithm=saef", "algorithm.compressor=topk")


# -- byte accounting of a whole run -------------------------------------------------------------


def test_a_saef_run_sends_exactly_the_formula() -> None:
    steps, n, period = 20, 3, 4
    cfg = _config("algorithm=saef", "algorithm.compressor=scaled_sign", f"nproc={n}",
                  f"steps={steps}", f"algorithm.average_every={period}")  # fmt: skip
    summary = launch(_train, n, (cfg,))[0]["summary"]
    sign = math.ceil(MLP_PARAMS / 8) + 4  # packed bits + one float32 scale
    up = (n - 1) * sign * steps  # the server's own payload is not sent
    down = sign * steps  # one compensated broadcast per step
    averages = sum((s + 1) % period == 0 for s in range(1, steps))  # before steps 1..steps-1
    ea = n * 4 * MLP_PARAMS * averages  # all-reduce: every rank hands in its whole residual
    assert summary["bytes_up"] == up and summary["bytes_down"] == down
    assert summary["bytes_ea"] == ea and summary["error_averages"] == n * averages
    assert summary["bytes_sent"] == up + down + ea
    assert summary["compression_ratio"] == pytest.approx(4 * MLP_PARAMS / sign)


# -- SAEF's semantics ---------------------------------------------------------------------------


def _scaled_sign(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v >= 0, 1.0, -1.0) * v.abs().sum() / v.numel()


def _saef_against_reference(steps: int) -> float:
    """One rank: our SAEF (scaled sign, compensated downlink) driven by hand, and the authors'
    ``r-Sign -cb -sec`` loop written out in plain torch; the largest parameter difference."""
    from suite.algorithms.saef import SAEF, SAEFConfig

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    ref = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx = Context(Transport(), model, opt, torch.device("cpu"), steps, steps, 0)
    algo = SAEF(SAEFConfig(compressor=_comp("scaled_sign")), ctx)

    ref_model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    with torch.no_grad():
        for p, r in zip(ref_model.parameters(), ref, strict=True):
            p.copy_(r)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9)
    params = list(ref_model.parameters())
    old = [p.detach().clone() for p in params]
    e = torch.zeros(sum(p.numel() for p in params))
    s = torch.zeros_like(e)
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    for step in range(steps):
        x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
        # ours: the loop's order of calls
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        algo.reduce_gradients(step)
        opt.step()
        algo.mix_parameters(step)
        # the authors': step ahead, gradient, local step, compress, server EC, x_{t+1}
        with torch.no_grad():
            offset = 0
            for p in params:
                p.sub_(e[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        ref_opt.zero_grad()
        F.cross_entropy(ref_model(x), y).backward()
        ref_opt.step()
        with torch.no_grad():
            delta = flat(old) - flat(params)
            c = _scaled_sign(delta)
            e = delta - c
            s = s + c
            m = _scaled_sign(s)
            s = s - m
            new = flat(old) - m
            offset = 0
            for p, o in zip(params, old, strict=True):
                p.copy_(new[offset : offset + p.numel()].view_as(p))
                o.copy_(p)
                offset += p.numel()
    ours = flat(list(algo.eval_model().parameters()))
    assert float((algo.error - e).abs().max()) < 1e-5
    return float((ours - flat(params)).abs().max())


def test_saef_steps_ahead_exactly_as_the_authors_code() -> None:
    assert launch(_saef_against_reference, 1, (25,))[0] < 1e-5


def _measured(cfg: RunConfig) -> dict:
    trainer = Trainer(Job(cfg, target="test", paper="test", progress=False), Transport())
    summary, _ = trainer.run()
    return {"summary": summary, "measured": dict(trainer.algorithm.measured)}


def test_error_averaging_every_step_leaves_no_spread_and_saef_mismatch_is_the_servers() -> None:
    common = ("algorithm.compressor=top_k", "algorithm.compressor.ratio=0.05", "nproc=3",
              "steps=15")  # fmt: skip
    averaged = launch(_measured, 3, (_config("algorithm=saef", "algorithm.average_every=1",
                                             *common),))  # fmt: skip
    plain = launch(_measured, 3, (_config("algorithm=saef", *common),))
    assert averaged[0]["summary"]["error_spread_mean"] < 1e-10  # every e_i is the mean
    assert plain[0]["summary"]["error_spread_mean"] > 1e-6  # without EA they differ
    # with e_i == mean(e), SAEF's mismatch ||mean(e) + s - e_i|| is the server's ||s|| alone
    assert averaged[0]["summary"]["mismatch_mean"] < plain[0]["summary"]["mismatch_mean"]


def test_saef_mismatch_is_below_efs_on_the_same_run() -> None:
    common = ("algorithm.compressor=scaled_sign", "nproc=2", "steps=40", "optim.lr=0.05")
    ef = launch(_measured, 2, (_config("algorithm=ef_sgd", *common),))
    sa = launch(_measured, 2, (_config("algorithm=saef", *common),))
    assert sa[0]["summary"]["mismatch_mean"] < ef[0]["summary"]["mismatch_mean"]
    assert ef[0]["summary"]["measurements"] == 2 * 39  # after every step but the last, 2 ranks


def _logged(cfg: RunConfig) -> dict[int, dict[str, float]]:
    """Every metric rank 0 logs, by step."""
    sink = KeptMetrics()
    job = Job(cfg, target="test", paper="test", progress=False)
    Trainer(job, Transport(), sink if dist.get_rank() == 0 else None).run()  # type: ignore[arg-type]
    return sink.by_step()


def test_saef_logs_its_training_loss_at_x_t_like_ef_and_the_step_ahead_loss_beside_it() -> None:
    common = ("algorithm.compressor=scaled_sign", "nproc=2", "steps=3", "optim.lr=0.05",
              "log_every=1")  # fmt: skip
    ef = launch(_logged, 2, (_config("algorithm=ef_sgd", *common),))[0]
    sa = launch(_logged, 2, (_config("algorithm=saef", *common),))[0]
    # step 0 is the same in both (every e_i is 0), so at step 1 both stand at the same x_1 with
    # the same batch: the same loss at x_t; SAEF's gradient is taken at x_1 - e_i, elsewhere
    assert sa[1]["train_loss"] == pytest.approx(ef[1]["train_loss"], rel=1e-6)
    assert abs(sa[1]["algo.train_loss_ahead"] - sa[1]["train_loss"]) > 1e-4
    assert sa[0]["algo.train_loss_ahead"] == pytest.approx(sa[0]["train_loss"], rel=1e-6)
    assert "algo.train_loss_ahead" not in ef[1]
    # EF's start point is x_t: its mismatch is the iterate's gap ||mean(e) + s||
    assert ef[1]["algo.mismatch"] == pytest.approx(ef[1]["algo.iterate_gap"])
    assert sa[1]["algo.mismatch"] != pytest.approx(sa[1]["algo.iterate_gap"])


# -- the registry and recipes -------------------------------------------------------------------


def test_saef_entries_are_registered_with_their_paper() -> None:
    assert ALGORITHMS.get("saef").paper == "saef"
    assert ALGORITHMS.get("saef_ea").make_config().average_every == 20
    assert ALGORITHMS.get("ef_sgd").paper == ALGORITHMS.get("compressed_sgd").paper == "baseline"
    assert {"identity", "top_k", "random_k", "scaled_sign", "qsgd"} <= set(COMPRESSORS)


@pytest.mark.parametrize("name", [n for n in RECIPES.names() if n.startswith("saef/")])
def test_every_saef_recipe_row_resolves_at_every_profile(name: str) -> None:
    recipe = RECIPES.get(name).obj
    for profile in recipe.profiles:
        for row in recipe.rows:
            cfg = recipe.resolve(row, profile, seed=0)
            assert cfg.algorithm.name == row.target


def test_each_rank_rounds_with_its_own_noise_but_shares_random_k_draws() -> None:
    sizes, x = [50, 30], torch.randn(80)
    q0, q1 = (build_compressor(_comp("qsgd"), sizes, rank) for rank in (0, 1))
    assert not torch.equal(q0.decompress(*q0.compress(x)), q1.decompress(*q1.compress(x)))
    r0, r1 = (build_compressor(_comp("random_k"), sizes, rank) for rank in (0, 1))
    (a,), ctx0 = r0.compress(x)
    (b,), ctx1 = r1.compress(2 * x)
    assert torch.allclose(r0.decompress([a + b], ctx0), r1.decompress([3 * b / 2], ctx1))
