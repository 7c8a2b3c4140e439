"""Compressors: every registered one conserves error feedback, packs and unpacks (its own payload
and a peer's), and costs the bytes its formula says; random_k and qsgd are unbiased, random_k
payloads sum, top_k selects what torch.topk selects, and bad knobs fail with a useful message."""

from __future__ import annotations

import math

import pytest
import torch

import suite.compressors as comp
from suite.compressors import (
    ErrorFeedback,
    build,
    index_dtype,
    pack,
    pack_bits,
    payload_nbytes,
    unpack_bits,
)
from suite.registry import COMPRESSORS

NAMES = COMPRESSORS.names()
SIZES = [None, (300, 40, 7, 1000, 1)]  # one segment; several, one of a single entry
LOSSLESS = {"identity"}


def _x(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _n(sizes: tuple[int, ...] | None) -> int:
    return sum(sizes) if sizes else 2000


def _misaligned(buf: torch.Tensor) -> torch.Tensor:
    """``buf`` at an odd byte offset of a larger buffer, as one part of a gather arrives."""
    return torch.cat([torch.zeros(1, dtype=torch.uint8), buf])[1:]


# ---------------------------------------------------------------------------------- every entry


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_error_feedback_conserves_what_is_not_sent(name: str, sizes) -> None:
    c = build(name, sizes)
    ef = ErrorFeedback(c)
    n = _n(sizes)
    for call in range(4):
        x = _x(n, call)
        e_old = ef.error().clone() if call else torch.zeros(n)
        payload, ctx = ef.compress(x)
        dec = c.decompress(payload, ctx)
        e_new = ef.error()
        atol = 1e-6 * (1.0 + float(dec.abs().max()))
        assert torch.allclose(x + e_old, dec + e_new, rtol=0, atol=atol)
        if name not in LOSSLESS:  # the residual is real: the test is not vacuous
            assert float(e_new.abs().max()) > 1e-3


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_pack_unpack_and_a_peers_payload(name: str, sizes) -> None:
    mine, peer = build(name, sizes), build(name, sizes)  # same config: two ranks
    n = _n(sizes)
    for call in range(3):
        x, y = _x(n, 10 + call), _x(n, 20 + call) * 3
        payload, ctx = mine.compress(x)
        dense = mine.decompress(payload, ctx)
        assert dense.shape == (n,) and dense.dtype == x.dtype and dense.device == x.device
        buf = pack(payload)
        assert buf.dtype == torch.uint8 and buf.dim() == 1
        assert buf.numel() == payload_nbytes(payload)
        assert torch.equal(mine.decompress(mine.unpack(_misaligned(buf), ctx), ctx), dense)
        # the peer's buffer, decoded with the local ctx, says what the peer's own decode says
        theirs, their_ctx = peer.compress(y)
        got = mine.decompress(mine.unpack(_misaligned(pack(theirs)), ctx), ctx)
        assert torch.equal(got, peer.decompress(theirs, their_ctx))
        if name not in LOSSLESS:
            assert not torch.equal(got, dense)


@pytest.mark.parametrize("name", NAMES)
def test_float64_in_float64_out(name: str) -> None:
    c = build(name, (500, 12))
    payload, ctx = c.compress(_x(512, 3, torch.float64))
    assert c.decompress(payload, ctx).dtype == torch.float64
    assert c.decompress(c.unpack(pack(payload), ctx), ctx).dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_summable_payloads_are_one_floating_tensor(name: str) -> None:
    c = build(name)
    payload, _ = c.compress(_x(100, 0))
    if c.summable:
        assert len(payload) == 1 and payload[0].is_floating_point()
    assert c.ragged == (name == "top_k_approx")


# ---------------------------------------------------------------------------------- bytes


@pytest.mark.parametrize(
    ("largest", "dtype"),
    [(256, torch.uint8), (257, torch.int16), (32768, torch.int16), (32769, torch.int32)],
)
def test_top_k_exact_bytes_and_index_dtype(largest: int, dtype: torch.dtype) -> None:
    sizes = (largest, 100, 3)  # tensor scope: the largest segment decides the index dtype
    c = build("top_k", sizes, ratio=0.05)
    payload, _ = c.compress(_x(sum(sizes), 0))
    k = sum(max(1, math.floor(0.05 * s)) for s in sizes)
    assert payload[1].dtype == dtype
    assert payload_nbytes(payload) == k * (4 + dtype.itemsize)
    # model scope: one k over the whole vector, the total length decides
    c = build("top_k", None, ratio=0.05, scope="model")
    payload, _ = c.compress(_x(largest, 0))
    assert payload[1].dtype == dtype
    assert payload_nbytes(payload) == max(1, math.floor(0.05 * largest)) * (4 + dtype.itemsize)


def test_index_dtype_boundaries() -> None:
    assert index_dtype(255) == torch.uint8 and index_dtype(256) == torch.int16
    assert index_dtype(2**15 - 1) == torch.int16 and index_dtype(2**15) == torch.int32
    assert index_dtype(2**31 - 1) == torch.int32 and index_dtype(2**31) == torch.int64


def test_top_k_approx_bytes_follow_the_count() -> None:
    c = build("top_k_approx", (40000, 20000))  # k = 400 + 200 at the default ratio 0.01
    x = _x(60000, 0)
    payload, _ = c.compress(x)
    values, indices = payload
    count = values.numel()
    assert indices.numel() == count and 2 <= count <= 2 * (400 + 200)  # trimmed to k above 2k
    assert torch.equal(values, x[indices.long()])  # real entries, not padding
    # float32 values; global indices up to 59999 > 2**15 - 1 need int32: 4 + 4 bytes an entry
    assert values.dtype == torch.float32 and indices.dtype == torch.int32
    assert payload_nbytes(payload) == count * (4 + 4)


def test_identity_random_k_scaled_sign_bytes() -> None:
    sizes = (300, 40, 7, 1000, 1)
    n = sum(sizes)
    x = _x(n, 0)
    assert payload_nbytes(build("identity", sizes).compress(x)[0]) == 4 * n
    k = sum(max(1, math.floor(0.01 * s)) for s in sizes)
    assert payload_nbytes(build("random_k", sizes).compress(x)[0]) == 4 * k
    k = max(1, math.floor(0.01 * n))
    assert payload_nbytes(build("random_k", sizes, scope="model").compress(x)[0]) == 4 * k
    assert payload_nbytes(build("scaled_sign", sizes).compress(x)[0]) == math.ceil(n / 8) + 4
    tensor = build("scaled_sign", sizes, scope="tensor").compress(x)[0]
    assert payload_nbytes(tensor) == math.ceil(n / 8) + 4 * len(sizes)


@pytest.mark.parametrize(
    ("levels", "bits"), [(1, 2), (2, 4), (4, 4), (7, 4), (8, 8), (127, 8), (128, 16)]
)
@pytest.mark.parametrize("scope", ["tensor", "model"])
def test_qsgd_bytes(levels: int, bits: int, scope: str) -> None:
    """ceil(n * bits / 8) bytes of codes for the whole vector, plus a float32 norm per bucket."""
    sizes = (300, 40, 7, 1000, 1)
    n = sum(sizes)
    payload, _ = build("qsgd", sizes, levels=levels, scope=scope).compress(_x(n, 0))
    buckets = len(sizes) if scope == "tensor" else 1
    assert payload_nbytes(payload) == math.ceil(n * bits / 8) + 4 * buckets


# ---------------------------------------------------------------------------------- random_k


def test_random_k_is_unbiased() -> None:
    sizes, ratio, calls = (20, 30), 0.1, 4000
    x = _x(50, 0)
    c = build("random_k", sizes, ratio=ratio)
    total = torch.zeros(50, dtype=torch.float64)
    for _ in range(calls):
        total += c.decompress(*c.compress(x)).double()
    mean = total / calls
    # each entry is x_i * m/k with probability k/m, else 0: variance x_i^2 (m/k - 1)
    spread = torch.cat([torch.full((s,), s / max(1, int(ratio * s)) - 1.0) for s in sizes])
    std = x.double().abs() * (spread / calls).sqrt()
    assert bool(((mean - x.double()).abs() <= 5 * std + 1e-6).all())
    assert c.unbiased and not build("random_k", rescale=False).unbiased


@pytest.mark.parametrize("scope", ["tensor", "model"])
def test_random_k_payloads_sum(scope: str) -> None:
    sizes = (300, 40, 7, 1000, 1)
    a, b = build("random_k", sizes, scope=scope), build("random_k", sizes, scope=scope)
    for call in range(3):
        xa, xb = _x(sum(sizes), call), _x(sum(sizes), 100 + call)
        (pa,), ctx_a = a.compress(xa)
        (pb,), ctx_b = b.compress(xb)
        assert torch.equal(ctx_a.indices, ctx_b.indices)  # same draw on both "ranks"
        summed = a.decompress([pa + pb], ctx_a)
        assert torch.allclose(summed, a.decompress([pa], ctx_a) + b.decompress([pb], ctx_b))
        # ... which is the sum of the inputs, times size / k, where the shared indices fall
        buckets = sizes if scope == "tensor" else (sum(sizes),)
        factor = torch.cat([torch.full((s,), s / max(1, int(0.01 * s))) for s in buckets])
        expect = torch.zeros(sum(sizes))
        expect[ctx_a.indices] = ((xa + xb) * factor)[ctx_a.indices]
        assert torch.allclose(summed, expect, rtol=1e-5, atol=1e-5)


def test_random_k_draws_distinct_indices_and_differs_between_calls() -> None:
    c = build("random_k", (100_000, 10), ratio=0.2)  # dedupe path and randperm path
    first = c.compress(_x(100_010, 0))[1].indices
    second = c.compress(_x(100_010, 0))[1].indices
    assert first.unique().numel() == first.numel() == 20_000 + 2
    assert bool((first[:20_000] < 100_000).all()) and bool((first[20_000:] >= 100_000).all())
    assert not torch.equal(first, second)
    other_seed = build("random_k", (100_000, 10), ratio=0.2, seed=1)
    assert not torch.equal(other_seed.compress(_x(100_010, 0))[1].indices, first)


# ---------------------------------------------------------------------------------- qsgd


@pytest.mark.parametrize("scope", ["tensor", "model"])
def test_qsgd_is_unbiased(scope: str) -> None:
    sizes, levels, calls = (30, 34), 2, 3000
    x = _x(64, 1)
    c = build("qsgd", sizes, levels=levels, scope=scope)
    total = torch.zeros(64, dtype=torch.float64)
    norms = None
    for _ in range(calls):
        payload, ctx = c.compress(x)
        norms = payload[1].double()
        total += c.decompress(payload, ctx).double()
    mean = total / calls
    # a level is floor(r) or floor(r) + 1, r = |x| s / norm; variance (norm/s)^2 p (1 - p)
    norm = norms.repeat_interleave(torch.tensor(sizes)) if scope == "tensor" else norms
    r = x.double().abs() * levels / norm
    p = r - r.floor()
    std = norm / levels * (p * (1 - p) / calls).sqrt()
    assert bool(((mean - x.double()).abs() <= 5 * std + 1e-6).all())
    assert c.unbiased


def test_qsgd_values_are_levels_of_the_norm() -> None:
    x = _x(1000, 2)
    c = build("qsgd", None, levels=4, scope="model")
    payload, ctx = c.compress(x)
    dense = c.decompress(payload, ctx)
    level = dense / float(payload[1]) * 4
    assert torch.allclose(level, level.round(), atol=1e-4)
    assert bool((dense * x >= 0).all())  # never the wrong sign
    assert float(payload[1]) == pytest.approx(float(x.norm()), rel=1e-6)


# ---------------------------------------------------------------------------------- sign, bits


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("length", [1, 7, 9, 13, 1000])
def test_pack_bits_round_trip(bits: int, length: int) -> None:
    codes = torch.randint(0, 1 << bits, (length,), generator=torch.Generator().manual_seed(length))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(length * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, length).long(), codes)


def test_pack_bits_layout_is_first_code_lowest() -> None:
    ones = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=torch.uint8)
    assert pack_bits(ones, 1).tolist() == [1, 1]
    assert pack_bits(torch.tensor([1, 2, 3]), 2).tolist() == [1 | 2 << 2 | 3 << 4]
    assert pack_bits(torch.tensor([0x1234]), 16).tolist() == [0x34, 0x12]
    with pytest.raises(ValueError, match="bits must be one of"):
        pack_bits(ones, 3)


@pytest.mark.parametrize("scope", ["model", "tensor"])
def test_scaled_sign_is_sign_times_mean_magnitude(scope: str) -> None:
    sizes = (300, 40, 7, 1000, 1)
    x = _x(sum(sizes), 5)
    x[x == 0] = 1.0
    c = build("scaled_sign", sizes, scope=scope)
    payload, ctx = c.compress(x)
    dense = c.decompress(payload, ctx)
    buckets = sizes if scope == "tensor" else (sum(sizes),)
    scales = payload[1]
    expect = torch.stack([part.abs().sum() / part.numel() for part in x.split(buckets)])
    assert torch.allclose(scales, expect, rtol=1e-6, atol=0)
    per_entry = scales.repeat_interleave(torch.tensor(buckets))
    assert torch.equal(dense, torch.sign(x) * per_entry)  # exactly, no rounding in between


def test_scaled_sign_sends_zero_as_plus() -> None:
    c = build("scaled_sign")
    x = torch.tensor([0.0, -2.0, 4.0, -0.0])
    payload, ctx = c.compress(x)
    assert c.decompress(payload, ctx).tolist() == [1.5, -1.5, 1.5, 1.5]


# ---------------------------------------------------------------------------------- top_k


@pytest.mark.parametrize(("sizes", "scope"), [((300, 40, 7, 70000, 1000), "tensor"),
                                              ((200_000,), "model")])  # fmt: skip
def test_top_k_exact_is_torch_topk(sizes, scope: str) -> None:
    """Segments past 2**16 take the sampled-prefilter path; smaller ones a plain topk."""
    x = _x(sum(sizes), 7)
    c = build("top_k", sizes, ratio=0.01, scope=scope)
    for _ in range(2):
        kept = c.decompress(*c.compress(x)) != 0
        start = 0
        for size in sizes if scope == "tensor" else (sum(sizes),):
            seg = x[start : start + size]
            want = seg.abs().topk(max(1, int(0.01 * size))).indices
            assert set(kept[start : start + size].nonzero().squeeze(1).tolist()) == set(
                want.tolist()
            )
            start += size


def test_top_k_exact_falls_back_when_the_prefilter_keeps_too_few(monkeypatch) -> None:
    x = _x(100_000, 8)
    monkeypatch.setattr(comp, "_sample_threshold", lambda *a: torch.tensor(100.0))
    idx = comp._exact_topk(x, 1000, torch.Generator())
    assert set(idx.tolist()) == set(x.abs().topk(1000).indices.tolist())


def test_top_k_approx_keeps_about_k_and_only_the_largest() -> None:
    n, ratio = 100_000, 0.01
    c = build("top_k_approx", None, ratio=ratio, scope="model")
    counts = set()
    for call in range(4):
        x = _x(n, call)
        payload, _ = c.compress(x)
        kept = torch.zeros(n, dtype=torch.bool)
        kept[payload[1].long()] = True
        counts.add(int(kept.sum()))
        # t is the 10th largest of 1000 samples: the fraction above it is Beta(10, 991), a
        # relative spread of 1/sqrt(10) = 32% around k; [k/2, 2k] is -1.6 to +3 of those
        assert 0.5 * ratio * n <= kept.sum() <= 2 * ratio * n
        assert torch.equal(payload[0], x[payload[1].long()])
        # the kept set is {|x| >= t} for the threshold used: nothing dropped outranks it
        assert float(x[kept].abs().min()) >= float(x[~kept].abs().max())
    assert len(counts) > 1  # the count follows the sample: ragged


def test_top_k_approx_trims_to_k_when_the_threshold_lets_too_many_through() -> None:
    x = torch.ones(100_000)
    x[::2] = -1.0
    x[:5] = 3.0
    payload, _ = build("top_k_approx", None, ratio=0.01).compress(x)
    assert payload[0].numel() == 1000  # every |x| >= 1 passes the threshold; trimmed to k
    assert payload[0].abs().min() >= 1.0 and int((payload[0] == 3.0).sum()) == 5


def test_top_k_approx_tensor_scope_has_global_indices() -> None:
    sizes = (300, 40, 5000)
    x = _x(sum(sizes), 9)
    payload, ctx = build("top_k_approx", sizes, ratio=0.02).compress(x)
    c = build("top_k_approx", sizes, ratio=0.02)
    assert torch.equal(payload[0], x[payload[1].long()])
    assert torch.equal(c.decompress(payload, ctx)[payload[1].long()], payload[0])


# ---------------------------------------------------------------------------------- EF, config


def test_error_feedback_state_dict_round_trip_and_reset() -> None:
    sizes = (300, 40)
    ef = ErrorFeedback(build("top_k", sizes))
    for call in range(3):
        ef.compress(_x(340, call), "a")
        ef.compress(_x(340, 50 + call), "b")
    state = ef.state_dict()
    assert set(state) == {"a", "b"} and float(state["a"].abs().sum()) > 0
    other = ErrorFeedback(build("top_k", sizes))
    live = other.error("a")  # created (zeros of sum(sizes)) and held by a caller
    other.load_state_dict(state)
    assert live is other.error("a") and torch.equal(live, state["a"])
    assert torch.equal(other.error("b"), state["b"])
    state["b"].add_(1.0)  # the loaded copy does not alias the checkpoint
    assert not torch.equal(other.error("b"), state["b"])
    other.reset()
    assert float(live.abs().sum()) == 0 and float(other.error("b").abs().sum()) == 0
    other.load_state_dict({"a": state["a"]})
    assert set(other.state_dict()) == {"a"}


def test_error_feedback_residual_is_live_and_checked() -> None:
    ef = ErrorFeedback(build("scaled_sign"))
    x = _x(100, 0)
    e = ef.error("w", like=x)
    ef.compress(x, "w")
    assert e is ef.error("w") and float(e.abs().sum()) > 0
    e.zero_()  # callers may change it in place (SAEF's reset), EF sees it
    payload, ctx = ef.compress(x, "w")
    assert torch.allclose(x, ef.compressor.decompress(payload, ctx) + e, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        ef.compress(_x(99, 0), "w")
    with pytest.raises(ValueError, match="pass like="):
        ef.error("never")


@pytest.mark.parametrize(
    ("name", "knobs", "match"),
    [
        ("top_k", {"ratio": 0.0}, r"ratio must be in \(0, 1\], got 0"),
        ("top_k", {"ratio": 1.5}, r"ratio must be in \(0, 1\], got 1.5"),
        ("top_k", {"sample": 0.0}, r"sample must be in \(0, 1\]"),
        ("top_k", {"mode": "fast"}, "valid choices: exact, approx"),
        ("random_k", {"ratio": 0.0}, r"ratio must be in \(0, 1\]"),
        ("random_k", {"scope": "layer"}, "valid choices: tensor, model"),
        ("scaled_sign", {"scope": "layer"}, "valid choices: tensor, model"),
        ("qsgd", {"levels": 0}, r"levels must be in \[1, 32767\], got 0"),
        ("qsgd", {"levels": 2.5}, r"levels must be an integer in \[1, 32767\]"),
    ],
)
def test_bad_knobs_name_the_problem(name: str, knobs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(name, None, **knobs)


@pytest.mark.parametrize("name", NAMES)
def test_bad_sizes_and_inputs_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="positive integers, got 0 at position 1"):
        build(name, (3, 0))
    with pytest.raises(ValueError, match="non-empty"):
        build(name, ())
    c = build(name, (3, 4))
    with pytest.raises(ValueError, match="x has 8 elements, but sizes sum to 7"):
        c.compress(torch.zeros(8))
    with pytest.raises(ValueError, match="1-D floating"):
        c.compress(torch.zeros(7, dtype=torch.int64))


def test_unpack_refuses_a_buffer_of_the_wrong_size() -> None:
    c = build("qsgd", (300, 40))
    payload, ctx = c.compress(_x(340, 0))
    with pytest.raises(ValueError, match="expected"):
        c.unpack(pack(payload)[:-1], ctx)
