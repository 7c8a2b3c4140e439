"""Compressors: pure functions from a flat vector to the payload that goes on the wire.

Interface
---------
``Compressor(config, sizes)``: ``sizes`` are the segment (parameter tensor) sizes of the flat 1-D
vectors the instance will see, in order (``None``: one segment, the whole input).

- ``compress(x) -> (payload, ctx)``: ``x`` is a 1-D floating tensor with ``sum(sizes)``
  elements; ``payload`` is the list of tensors that go on the wire, already packed;
- ``decompress(payload, ctx) -> Tensor``: dense 1-D tensor of x's numel, dtype and device;
- ``unpack(buf, ctx) -> payload``: inverse of :func:`pack` for this or a peer's buffer.

A compressor never communicates. Capability flags let an algorithm refuse, at construction, a
pairing that cannot work (summing payloads that are not summable, say):

- ``unbiased``: E[decompress(compress(x))] == x;
- ``summable``: the payload is one floating tensor, and the element-wise sum of the payloads of
  several ranks decompresses (with any rank's ctx) to the sum of their inputs;
- ``ragged``: payload sizes may differ between ranks or calls (needs an uneven all-gather).

The ctx rule: a ctx holds only what every rank knows (numel, dtype, device, sizes, the call
counter that seeds shared randomness, and what follows from those), never values that depend on
the data, so a peer's payload decompresses with the local ctx. Shared randomness is reproducible:
call ``t`` of an instance seeds its generator with a hash of ``(config.seed, t)``, so instances
with the same config that have made the same number of calls draw the same numbers.

Packing: :func:`pack` concatenates the byte views of the payload tensors (nothing else: no
header), so bytes on the wire == :func:`payload_nbytes`. Bytes, for x of n float32 elements in
S segments (b = 4, the element size of x; fewer bits than 8 are packed several to a byte):

==============  =====================================================================
identity        4n
top_k exact     K (b + i): K = sum_j max(1, floor(ratio n_j)) (tensor scope, indices
                local to the segment, i for the largest segment) or max(1, floor(ratio n))
                (model scope); i = 1, 2, 4, 8 bytes (uint8/int16/int32/int64) for a largest
                index < 2^8, 2^15, 2^31, else
top_k approx    K' (b + i), K' the data-dependent count kept, indices global (i for n)
random_k        K b (values only; the indices come from the shared generator)
scaled_sign     ceil(n / 8) + 4 B: one sign bit per entry, B float32 scales (B = 1 model
                scope, S tensor scope)
qsgd            ceil(n q / 8) + 4 B: a q-bit code per entry, q the fewest of 2, 4, 8, 16
                holding 2 levels + 1 codes; B float32 norms (B = S tensor scope, 1 model)
==============  =====================================================================

Tensor-scope scales and norms are per segment, but the bits of all segments are packed as one
run. :class:`ErrorFeedback` wraps any compressor (per-key residuals, ``state_dict``);
:func:`build` makes a registered compressor from its name and knobs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from suite.registry import COMPRESSORS

Scope = Literal["tensor", "model"]
SCOPES: tuple[str, ...] = ("tensor", "model")
MODES: tuple[str, ...] = ("exact", "approx")
MIN_SAMPLES = 512  # approx top-k: fewer samples make the threshold estimate too noisy
_CHUNK = 1 << 20  # CPU threshold scans: small enough to stay cache-friendly, no n-sized temps
_MASK63 = (1 << 63) - 1
_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------------
# Packing helpers


def pack(payload: Sequence[Tensor]) -> Tensor:
    """One contiguous 1-D uint8 tensor: the byte views of the payload tensors, concatenated.

    A one-tensor payload is returned as a byte view of it (no copy)."""
    parts = [t.reshape(-1).view(torch.uint8) for t in payload]
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts)


def payload_nbytes(payload: Sequence[Tensor]) -> int:
    """Bytes a payload puts on the wire: sum of numel * element_size."""
    return sum(t.numel() * t.element_size() for t in payload)


def _take(buf: Tensor, start: int, count: int, dtype: torch.dtype) -> Tensor:
    """``count`` elements of ``dtype`` stored at byte ``start`` of ``buf``."""
    size = dtype.itemsize
    part = buf[start : start + count * size]
    if part.storage_offset() % size:  # Tensor.view(dtype) needs an aligned start: copy
        part = part.clone()
    return part.view(dtype)


def _check_buf(buf: Tensor, expected: int, name: str) -> None:
    if buf.dtype != torch.uint8 or buf.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D uint8 buffer, got {buf.dtype} {tuple(buf.shape)}")
    if buf.numel() != expected:
        raise ValueError(f"{name}: buffer of {buf.numel()} bytes, expected {expected}")


PACK_BITS: tuple[int, ...] = (1, 2, 4, 8, 16)


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack integer codes in [0, 2**bits) into bytes, 8 // bits codes per byte, first code in the
    lowest bits; 16-bit codes as two bytes, little-endian. Returns ceil(len * bits / 8) bytes."""
    if bits not in PACK_BITS:
        raise ValueError(f"bits must be one of {PACK_BITS}, got {bits}")
    codes = codes.reshape(-1)
    if bits == 16:
        c = codes.to(torch.int32)
        return torch.stack([c & 0xFF, c >> 8], dim=1).to(torch.uint8).view(-1)
    c = codes if codes.dtype == torch.uint8 else codes.to(torch.uint8)
    per = 8 // bits
    tail = -c.numel() % per
    if tail:
        c = torch.cat([c, c.new_zeros(tail)])
    v = c.view(-1, per)
    out = v[:, 0].clone()
    for j in range(1, per):  # per <= 8 strided passes over len / per bytes
        out.bitwise_or_(v[:, j] << (bits * j))
    return out


def unpack_bits(buf: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` codes (uint8 for bits <= 8, int32 for
    16)."""
    if bits not in PACK_BITS:
        raise ValueError(f"bits must be one of {PACK_BITS}, got {bits}")
    if bits == 16:
        pairs = buf[: 2 * count].view(-1, 2).to(torch.int32)
        return pairs[:, 0] | (pairs[:, 1] << 8)
    if bits == 8:
        return buf[:count]
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=buf.device)
    return ((buf.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).view(-1)[:count]


def _byte_table(bits: int, values: Tensor) -> Tensor:
    """(256, 8 // bits) table: row b holds ``values[code]`` for each code packed in byte b, so
    decoding is one index_select (faster than shifting then mapping)."""
    codes = unpack_bits(
        torch.arange(256, dtype=torch.uint8, device=values.device), bits, 256 * 8 // bits
    )
    return values[codes.long()].view(256, 8 // bits)


def _bits_for(codes: int) -> int:
    """The fewest bits among 2, 4, 8, 16 that hold ``codes`` distinct codes."""
    for bits in (2, 4, 8, 16):
        if codes <= 1 << bits:
            return bits
    raise ValueError(f"{codes} codes do not fit in 16 bits")


def index_dtype(max_index: int) -> torch.dtype:
    """Smallest integer dtype holding every index up to ``max_index``."""
    if max_index < 1 << 8:
        return torch.uint8
    if max_index < 1 << 15:
        return torch.int16
    if max_index < 1 << 31:
        return torch.int32
    return torch.int64


def _mix(seed: int, step: int) -> int:
    """SplitMix64 of (seed, step): decorrelated per-call seeds for neighbouring seeds/steps."""
    z = (seed * 0x9E3779B97F4A7C15 + step + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & _MASK63


# --------------------------------------------------------------------------------------------
# Selection kernels


def _above(x: Tensor, t: Tensor) -> Tensor:
    """Ascending int64 indices of the entries with |x| >= t.

    On the CPU a naive ``(x.abs() >= t).nonzero()`` costs 3x a streaming pass: two n-sized
    temporaries (page faults) and a byte-wise nonzero. Here x is scanned in cache-sized chunks,
    and nonzero runs over the mask viewed as int64 words (8 flags each), then expands only the
    few words that hold a hit."""
    n = x.numel()
    if x.device.type != "cpu":
        return (x.abs() >= t).nonzero().squeeze(1)
    width = min(n, _CHUNK)
    padded = (width + 7) // 8 * 8
    buf = torch.empty(width, dtype=x.dtype)
    flags = torch.empty(padded, dtype=torch.bool)
    eight = torch.arange(8)
    found = []
    for start in range(0, n, _CHUNK):
        chunk = x[start : start + _CHUNK]
        m = chunk.numel()
        m8 = (m + 7) // 8 * 8
        torch.abs(chunk, out=buf[:m])
        torch.ge(buf[:m], t, out=flags[:m])
        if m8 > m:
            flags[m:m8] = False
        mask = flags[:m8]
        words = mask.view(torch.int64).nonzero().squeeze(1)
        pos = (words.unsqueeze(1) * 8 + eight).view(-1)
        pos = pos[mask[pos]]
        found.append(pos.add_(start) if start else pos)
    return found[0] if len(found) == 1 else torch.cat(found)


def _sample_threshold(x: Tensor, samples: int, rank: int, gen: torch.Generator) -> Tensor:
    """The ``rank``-th largest |x| among ``samples`` entries drawn with replacement."""
    idx = torch.randint(x.numel(), (samples,), generator=gen, device=x.device)
    return x[idx].abs().kthvalue(samples - rank + 1).values


def _exact_topk(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """int64 indices of the k largest |x| (unordered).

    On large CPU segments a full ``topk`` is a selection over all n entries (~20 streaming passes
    at n = 1e7). Instead: take a threshold from a sample, set a few standard deviations low so
    that at least k entries pass it with high probability, keep those (:func:`_above`) and
    select among them. If fewer than k passed, fall back to the full topk, so the result is
    always exact. On CUDA ``topk`` is already a radix select."""
    n = x.numel()
    if x.device.type != "cpu" or n < 1 << 16 or 8 * k > n:
        return x.abs().topk(k, sorted=False).indices
    samples = max(4096, n // 128)
    expect = k * samples / n
    rank = math.ceil(expect + 4.0 * math.sqrt(expect) + 2.0)
    if rank >= samples // 4:
        return x.abs().topk(k, sorted=False).indices
    cand = _above(x, _sample_threshold(x, samples, rank, gen))
    if cand.numel() < k:
        return x.abs().topk(k, sorted=False).indices
    return cand[x[cand].abs().topk(k, sorted=False).indices]


def top_indices(x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """int64 indices of the k largest |x| of a 1-D tensor (unordered): the exact selection
    top_k uses, for algorithms that choose k themselves (adaptive Top-K)."""
    if not 1 <= k <= x.numel():
        raise ValueError(f"k must be in [1, {x.numel()}], got {k}")
    if k == x.numel():
        return torch.arange(k, device=x.device)
    gen = generator or torch.Generator(device=x.device).manual_seed(0)
    return _exact_topk(x, k, gen)


def _approx_topk(x: Tensor, k: int, sample: float, gen: torch.Generator) -> Tensor:
    """Deep Gradient Compression's selection: int64 indices of every |x| >= t, t the estimated
    k-th largest |x| from a random sample; if that keeps more than 2k, the exact top k of those.
    Always at least one entry (the sampled entry at t itself passes)."""
    n = x.numel()
    samples = max(MIN_SAMPLES, math.ceil(sample * n))
    if samples >= n:  # small segment: the exact k-th largest is as cheap as a sample
        t = x.abs().topk(k, sorted=False).values.min()
    else:
        t = _sample_threshold(x, samples, max(1, round(k * samples / n)), gen)
    cand = _above(x, t)
    if cand.numel() > 2 * k:
        cand = cand[x[cand].abs().topk(k, sorted=False).indices]
    elif cand.numel() == 0:  # only with NaN in x
        cand = x.abs().argmax().view(1)
    return cand


def _random_subset(n: int, k: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """k distinct indices of range(n), uniformly without replacement, ascending (int64).

    ``randperm(n)[:k]`` costs O(n) (200 ms at n = 1e7 on the CPU) whatever k. For k <= n / 4 we
    draw ~k indices with replacement and drop repeats (O(k log k)): the distinct values of iid
    uniform draws, given how many there are, are a uniform subset of that size, and a uniform
    k-subset of it (``randperm`` over the distinct values) is a uniform k-subset of range(n)."""
    if k >= n:
        return torch.arange(n, device=device)
    if 4 * k > n:
        return torch.randperm(n, generator=gen, device=device)[:k].sort().values
    draws = k + 2 * math.ceil(k * k / n) + 16  # expected repeats ~ draws^2 / 2n
    while True:
        distinct = torch.unique(torch.randint(n, (draws,), generator=gen, device=device))
        if distinct.numel() >= k:
            break
        draws *= 2
    if distinct.numel() > k:
        keep = torch.randperm(distinct.numel(), generator=gen, device=device)[:k]
        distinct = distinct[keep.sort().values]
    return distinct


# --------------------------------------------------------------------------------------------
# Base class


@dataclass(frozen=True, eq=False)
class Ctx:
    """What decompress needs besides the payload; only values every rank knows."""

    numel: int
    dtype: torch.dtype
    device: torch.device
    shape: tuple[int, ...] = ()
    step: int = 0  # the call counter that seeded shared randomness
    indices: Tensor | None = None  # random_k: the shared draw (a function of seed, step, sizes)


def _check_scope(name: str, scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"{name} scope {scope!r}; valid choices: {', '.join(SCOPES)}")


def _check_fraction(name: str, knob: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} {knob} must be in (0, 1], got {value}")


class Compressor(ABC):
    """Base class of every registered compressor (see the module docstring for the rules)."""

    unbiased: bool = False
    summable: bool = False
    ragged: bool = False
    config_class: ClassVar[type | None] = None

    def __init__(self, config: Any = None, sizes: Sequence[int] | None = None) -> None:
        if config is None and self.config_class is not None:
            config = self.config_class()
        self.config = config
        if sizes is not None:
            sizes = tuple(sizes)
            if not sizes:
                raise ValueError("sizes must be a non-empty sequence of positive integers")
            for i, s in enumerate(sizes):
                if isinstance(s, bool) or not isinstance(s, int) or s <= 0:
                    raise ValueError(f"sizes must be positive integers, got {s!r} at position {i}")
        self.sizes: tuple[int, ...] | None = sizes
        self.step = 0  # compress calls so far: seeds shared randomness
        self._cache: dict[Any, Any] = {}
        self._gens: dict[torch.device, torch.Generator] = {}

    # -- helpers shared by subclasses --

    def _segments(self, n: int) -> tuple[int, ...]:
        return self.sizes if self.sizes is not None else (n,)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 1 or not x.is_floating_point():
            raise ValueError(
                f"{type(self).__name__}: x must be a 1-D floating tensor, got {x.dtype} "
                f"of shape {tuple(x.shape)}"
            )
        if self.sizes is not None and x.numel() != sum(self.sizes):
            raise ValueError(
                f"{type(self).__name__}: x has {x.numel()} elements, but sizes sum to "
                f"{sum(self.sizes)}"
            )

    def _cached(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _generator(self, device: torch.device, step: int) -> torch.Generator:
        """This instance's generator on ``device``, seeded for call ``step``."""
        gen = self._gens.get(device)
        if gen is None:
            gen = self._gens[device] = torch.Generator(device=device)
        seed = getattr(self.config, "seed", 0)
        return gen.manual_seed(_mix(seed, step))

    def _next_step(self) -> int:
        step, self.step = self.step, self.step + 1
        return step

    def _expand(self, per_segment: Tensor, n: int) -> Tensor:
        """Per-segment values (length S) repeated over each segment's entries (length n)."""
        sizes = self._segments(n)
        counts = self._cached(
            ("counts", n, per_segment.device),
            lambda: torch.tensor(sizes, device=per_segment.device),
        )
        return per_segment.repeat_interleave(counts, output_size=n)

    # -- the interface --

    @abstractmethod
    def compress(self, x: Tensor) -> tuple[list[Tensor], Any]:
        """Payload tensors to send, and the context ``decompress`` needs locally."""

    @abstractmethod
    def decompress(self, payload: list[Tensor], ctx: Any) -> Tensor:
        """Dense 1-D tensor from a payload (one's own or a peer's)."""

    @abstractmethod
    def unpack(self, buf: Tensor, ctx: Any) -> list[Tensor]:
        """Payload tensors from a :func:`pack` ed byte buffer (one's own or a peer's)."""


# --------------------------------------------------------------------------------------------
# identity


@dataclass(frozen=True)
class IdentityConfig:
    """No knobs: sends the tensor as it is."""


@COMPRESSORS.register("identity", config=IdentityConfig)
class Identity(Compressor):
    """No compression: the payload is the tensor itself (lossless, summable)."""

    unbiased = True
    summable = True
    config_class = IdentityConfig

    def compress(self, x: Tensor) -> tuple[list[Tensor], Any]:
        if self.sizes is not None:
            self._check(x)
        return [x], Ctx(x.numel(), x.dtype, x.device, tuple(x.shape))

    def decompress(self, payload: list[Tensor], ctx: Any) -> Tensor:
        return payload[0].view(ctx.shape)

    def unpack(self, buf: Tensor, ctx: Any) -> list[Tensor]:
        _check_buf(buf, ctx.numel * ctx.dtype.itemsize, "identity")
        return [_take(buf, 0, ctx.numel, ctx.dtype)]


# --------------------------------------------------------------------------------------------
# top_k


@dataclass(frozen=True)
class TopKConfig:
    """Top-K sparsification: send the largest-magnitude entries and their indices.

    ratio: fraction of entries kept (0 < ratio <= 1); k = max(1, floor(ratio * size)), the SAEF
        authors' rule. Bytes ~ ratio * n * (value + index bytes): lower saves bandwidth, but
        leaves more in the error-feedback residual (slower convergence without EF).
    scope: "tensor" keeps k per segment (parameter tensor; every layer gets a share, indices
        local to the segment so they fit smaller ints); "model" keeps the k largest of the
        whole vector (tracks the true top entries, global indices).
    mode: "exact" selects the true top k (fixed payload size); "approx" keeps every |x| >= a
        threshold estimated from a random sample (Deep Gradient Compression): cheaper on large
        vectors, but the count varies around k (ragged payloads), trimmed to k above 2k.
    sample: approx mode's fraction of entries sampled for the threshold (at least 512
        samples): more samples, a count closer to k, a slower estimate.
    seed: seeds the sampling generator (same on every rank; reproducible per call).
    """

    ratio: float = 0.01
    scope: Scope = "tensor"
    mode: Literal["exact", "approx"] = "exact"
    sample: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        _check_fraction("top_k", "ratio", self.ratio)
        _check_fraction("top_k", "sample", self.sample)
        _check_scope("top_k", self.scope)
        if self.mode not in MODES:
            raise ValueError(f"top_k mode {self.mode!r}; valid choices: {', '.join(MODES)}")


@COMPRESSORS.register("top_k", config=TopKConfig)
class TopK(Compressor):
    """Top-K sparsification: largest-magnitude entries with their indices (biased)."""

    config_class = TopKConfig

    def __init__(
        self, config: TopKConfig | None = None, sizes: Sequence[int] | None = None
    ) -> None:
        super().__init__(config, sizes)
        self.ragged = self.config.mode == "approx"

    def _plan(self, n: int) -> tuple[tuple[int, ...], tuple[int, ...], torch.dtype]:
        """(segment sizes, k per segment, index dtype) for inputs of n elements."""

        def make() -> tuple[tuple[int, ...], tuple[int, ...], torch.dtype]:
            cfg = self.config
            sizes = self._segments(n) if cfg.scope == "tensor" else (n,)
            ks = tuple(max(1, int(cfg.ratio * s)) for s in sizes)
            local = cfg.scope == "tensor" and cfg.mode == "exact"
            return sizes, ks, index_dtype((max(sizes) if local else n) - 1)

        return self._cached(("plan", n), make)

    def compress(self, x: Tensor) -> tuple[list[Tensor], Any]:
        self._check(x)
        n = x.numel()
        step = self._next_step()
        gen = self._generator(x.device, step)
        sizes, ks, itype = self._plan(n)
        exact = self.config.mode == "exact"
        values, indices = [], []
        start = 0
        for size, k in zip(sizes, ks, strict=True):  # loops over segments, not entries
            seg = x[start : start + size]
            if exact:
                idx = _exact_topk(seg, k, gen)
                values.append(seg[idx])
                indices.append(idx)  # local to the segment
            else:
                idx = _approx_topk(seg, k, self.config.sample, gen)
                values.append(seg[idx])
                indices.append(idx.add_(start) if start else idx)  # global
            start += size
        vals = values[0] if len(values) == 1 else torch.cat(values)
        idx = indices[0] if len(indices) == 1 else torch.cat(indices)
        return [vals, idx.to(itype)], Ctx(n, x.dtype, x.device, (n,), step)

    def _offsets(self, ctx: Ctx) -> Tensor | None:
        """Exact tensor scope: each kept entry's segment start (local -> global indices)."""
        if self.config.mode != "exact" or self.config.scope != "tensor":
            return None
        sizes, ks, _ = self._plan(ctx.numel)
        if len(sizes) == 1:
            return None

        def make() -> Tensor:
            starts = torch.tensor([0, *sizes[:-1]], device=ctx.device).cumsum(0)
            counts = torch.tensor(ks, device=ctx.device)
            return starts.repeat_interleave(counts, output_size=sum(ks))

        return self._cached(("offsets", ctx.numel, ctx.device), make)

    def decompress(self, payload: list[Tensor], ctx: Any) -> Tensor:
        values, indices = payload
        idx = indices.long()
        offsets = self._offsets(ctx)
        if offsets is not None:
            idx = idx + offsets
        out = torch.zeros(ctx.numel, dtype=ctx.dtype, device=ctx.device)
        return out.index_put_((idx,), values)

    def unpack(self, buf: Tensor, ctx: Any) -> list[Tensor]:
        _, ks, itype = self._plan(ctx.numel)
        entry = ctx.dtype.itemsize + itype.itemsize
        if self.ragged:
            if buf.numel() % entry:
                raise ValueError(f"top_k: {buf.numel()} bytes is not a multiple of {entry}")
            count = buf.numel() // entry
        else:
            count = sum(ks)
            _check_buf(buf, count * entry, "top_k")
        vsize = count * ctx.dtype.itemsize
        return [_take(buf, 0, count, ctx.dtype), _take(buf, vsize, count, itype)]


COMPRESSORS.preset(
    "top_k_approx",
    "top_k",
    description="Top-K with a sampled threshold (Deep Gradient Compression): ragged payloads",
    mode="approx",
)


# --------------------------------------------------------------------------------------------
# random_k


@dataclass(frozen=True)
class RandomKConfig:
    """Random-K sparsification with indices every rank draws alike (only values are sent).

    ratio: fraction of entries sent (0 < ratio <= 1), k = max(1, floor(ratio * size)). Bytes =
        k * value bytes; lower ratio, higher variance (about 1 / ratio times the input's).
    scope: "tensor" draws k per segment (every layer gets its share); "model" draws k over the
        whole vector.
    seed: seeds the shared index generator. Must be equal on every rank: the payloads are then
        aligned and can be summed (all-reduced).
    rescale: multiply the values by size / k so that the estimate is unbiased (variance grows
        by the same factor); False sends them as they are (biased, smaller, for EF).
    """

    ratio: float = 0.01
    scope: Scope = "tensor"
    seed: int = 0
    rescale: bool = True

    def __post_init__(self) -> None:
        _check_fraction("random_k", "ratio", self.ratio)
        _check_scope("random_k", self.scope)


@COMPRESSORS.register("random_k", config=RandomKConfig)
class RandomK(Compressor):
    """Random-K sparsification with shared indices: summable; unbiased when rescaled."""

    unbiased = True
    summable = True
    config_class = RandomKConfig

    def __init__(
        self, config: RandomKConfig | None = None, sizes: Sequence[int] | None = None
    ) -> None:
        super().__init__(config, sizes)
        self.unbiased = self.config.rescale

    def _plan(self, n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        def make() -> tuple[tuple[int, ...], tuple[int, ...]]:
            sizes = self._segments(n) if self.config.scope == "tensor" else (n,)
            return sizes, tuple(max(1, int(self.config.ratio * s)) for s in sizes)

        return self._cached(("plan", n), make)

    def _scale(self, n: int, device: torch.device, dtype: torch.dtype) -> Tensor | float:
        sizes, ks = self._plan(n)
        if len(sizes) == 1:
            return sizes[0] / ks[0]

        def make() -> Tensor:
            per = torch.tensor([s / k for s, k in zip(sizes, ks, strict=True)], dtype=dtype)
            counts = torch.tensor(ks)
            return per.repeat_interleave(counts, output_size=sum(ks)).to(device)

        return self._cached(("scale", n, device, dtype), make)

    def indices(self, n: int, step: int, device: torch.device) -> Tensor:
        """The global indices every rank draws at call ``step`` (ascending per segment)."""
        sizes, ks = self._plan(n)
        gen = self._generator(device, step)
        parts, start = [], 0
        for size, k in zip(sizes, ks, strict=True):
            idx = _random_subset(size, k, gen, device)
            parts.append(idx.add_(start) if start else idx)
            start += size
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def compress(self, x: Tensor) -> tuple[list[Tensor], Any]:
        self._check(x)
        n = x.numel()
        step = self._next_step()
        idx = self.indices(n, step, x.device)
        values = x[idx]
        if self.config.rescale:
            values.mul_(self._scale(n, x.device, x.dtype))
        return [values], Ctx(n, x.dtype, x.device, (n,), step, idx)

    def decompress(self, payload: list[Tensor], ctx: Any) -> Tensor:
        idx = (
            ctx.indices
            if ctx.indices is not None
            else self.indices(ctx.numel, ctx.step, ctx.device)
        )
        out = torch.zeros(ctx.numel, dtype=ctx.dtype, device=ctx.device)
        return out.index_put_((idx,), payload[0])

    def unpack(self, buf: Tensor, ctx: Any) -> list[Tensor]:
        count = sum(self._plan(ctx.numel)[1])
        _check_buf(buf, count * ctx.dtype.itemsize, "random_k")
        return [_take(buf, 0, count, ctx.dtype)]


# --------------------------------------------------------------------------------------------
# scaled_sign


@dataclass(frozen=True)
class ScaledSignConfig:
    """Scaled sign: one bit per entry, times the mean magnitude (||x||_1 / d).

    scope: "model" (the SAEF authors' rule) uses one scale, the whole vector's mean |x|;
        "tensor" one per segment (4 more bytes each), which follows layers of different
        magnitude better.
    """

    scope: Scope = "model"

    def __post_init__(self) -> None:
        _check_scope("scaled_sign", self.scope)


@COMPRESSORS.register("scaled_sign", config=ScaledSignConfig)
class ScaledSign(Compressor):
    """Scaled sign: sign(x) * ||x||_1 / d, one bit per entry (biased).

    sign(0) is sent as +1: a 1-bit code cannot say 0 (the authors' ``torch.sign`` gives 0
    there, which differs only where x is exactly 0)."""

    config_class = ScaledSignConfig

    def _buckets(self, n: int) -> tuple[int, ...]:
        return self._segments(n) if self.config.scope == "tensor" else (n,)

    def compress(self, x: Tensor) -> tuple[list[Tensor], Any]:
        self._check(x)
        n = x.numel()
        buckets = self._buckets(n)
        if len(buckets) == 1:
            scales = (torch.linalg.vector_norm(x, 1) / n).view(1)
        else:
            norms = [torch.linalg.vector_norm(s, 1) for s in x.split(buckets)]
            sizes = torch.tensor(buckets, dtype=x.dtype, device=x.device)
            scales = torch.stack(norms) / sizes
        bits = pack_bits((x < 0).view(torch.uint8), 1)
        return [bits, scales.float()], Ctx(n, x.dtype, x.device, (n,))

    def decompress(self, payload: list[Tensor], ctx: Any) -> Tensor:
        bits, scales = payload
        table = self._cached(
            ("signs", ctx.dtype, ctx.device),
            lambda: _byte_table(1, torch.tensor([1.0, -1.0], dtype=ctx.dtype, device=ctx.device)),
        )
        out = table.index_select(0, bits.int()).view(-1)[: ctx.numel]
        scales = scales.to(ctx.dtype)
        if scales.numel() == 1:
            return out.mul_(scales)
        return out.mul_(self._expand(scales, ctx.numel))

    def unpack(self, buf: Tensor, ctx: Any) -> list[Tensor]:
        nbits = (ctx.numel + 7) // 8
        scales = len(self._buckets(ctx.numel))
        _check_buf(buf, nbits + 4 * scales, "scaled_sign")
        return [buf[:nbits], _take(buf, nbits, scales, torch.float32)]


# --------------------------------------------------------------------------------------------
# qsgd


@dataclass(frozen=True)
class QSGDConfig:
    """QSGD (Alistarh et al., 2017): stochastic rounding of |v_i| / ||v||_2 to s levels.

    levels: s >= 1 (at most 32767). Codes sign * level + s take 2s + 1 values, packed in the
        fewest of 2, 4, 8, 16 bits (s = 1: 2 bits; s <= 7: 4; s <= 127: 8). More levels, lower
        variance (about min(n / s^2, sqrt(n) / s) times ||v||^2), more bits.
    scope: the norm bucket: "tensor" one norm per segment (lower variance when layers differ in
        scale), "model" one norm for the whole vector.
    seed: seeds the rounding noise. Call t of every instance with the same seed draws the same
        noise, so ranks that should round independently need different seeds.
    """

    levels: int = 4
    scope: Scope = "tensor"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not isinstance(self.levels, int):
            raise ValueError(f"qsgd levels must be an integer in [1, 32767], got {self.levels!r}")
        if not 1 <= self.levels <= 32767:
            raise ValueError(f"qsgd levels must be in [1, 32767], got {self.levels}")
        _check_scope("qsgd", self.scope)


@COMPRESSORS.register("qsgd", config=QSGDConfig)
class QSGD(Compressor):
    """QSGD: stochastically rounded levels of |v| / ||v||_2 per bucket (unbiased)."""

    unbiased = True
    config_class = QSGDConfig

    def __init__(
        self, config: QSGDConfig | None = None, sizes: Sequence[int] | None = None
    ) -> None:
        super().__init__(config, sizes)
        self.bits = _bits_for(2 * self.config.levels + 1)

    def _buckets(self, n: int) -> tuple[int, ...]:
        return self._segments(n) if self.config.scope == "tensor" else (n,)

    def compress(self, x: Tensor) -> tuple[list[Tensor], Any]:
        self._check(x)
        n, s = x.numel(), self.config.levels
        step = self._next_step()
        buckets = self._buckets(n)
        if len(buckets) == 1:
            norms = torch.linalg.vector_norm(x).view(1)
        else:
            norms = torch.stack([torch.linalg.vector_norm(b) for b in x.split(buckets)])
        norms = norms.float()  # what is sent; rounding uses it too, so decoding is unbiased
        inv = torch.where(norms > 0, s / norms, 0.0).to(x.dtype)
        # code = s + sign(v) level. floor(t + u) for the signed t = v s / norm has the law of
        # sign(v) floor(|t| + u) (either rounds |t| away from 0 with probability frac(|t|)), and
        # with s added first every value is >= 0, so the integer cast's truncation is the floor:
        # five passes instead of abs, mul, add, floor, clamp, copysign, add, cast.
        gen = self._generator(x.device, step)
        codes = torch.rand(n, generator=gen, dtype=x.dtype, device=x.device).add_(s)
        codes.addcmul_(x, inv if len(buckets) == 1 else self._expand(inv, n))
        codes = codes.clamp_(0, 2 * s).to(torch.uint8 if self.bits <= 8 else torch.int32)
        return [pack_bits(codes, self.bits), norms], Ctx(n, x.dtype, x.device, (n,), step)

    def decompress(self, payload: list[Tensor], ctx: Any) -> Tensor:
        buf, norms = payload
        s = self.config.levels
        if self.bits == 16:
            out = unpack_bits(buf, 16, ctx.numel).to(ctx.dtype).sub_(s)
        else:
            table = self._cached(
                ("levels", ctx.dtype, ctx.device),
                lambda: _byte_table(
                    self.bits,
                    torch.arange(-s, (1 << self.bits) - s, dtype=ctx.dtype, device=ctx.device),
                ),
            )
            out = table.index_select(0, buf.int()).view(-1)[: ctx.numel]
        step = norms.to(ctx.dtype) / s
        return out.mul_(step if step.numel() == 1 else self._expand(step, ctx.numel))

    def unpack(self, buf: Tensor, ctx: Any) -> list[Tensor]:
        nbytes = (ctx.numel * self.bits + 7) // 8
        buckets = len(self._buckets(ctx.numel))
        _check_buf(buf, nbytes + 4 * buckets, "qsgd")
        return [buf[:nbytes], _take(buf, nbytes, buckets, torch.float32)]


# --------------------------------------------------------------------------------------------
# Error feedback and construction


class ErrorFeedback:
    """EF (Seide 2014, Karimireddy 2019): compress x + e, keep e <- (x + e) - decompress(...) per
    key. Residuals are live tensors, updated in place, so callers may hold and change them."""

    def __init__(self, compressor: Compressor) -> None:
        self.compressor = compressor
        self._errors: dict[str, Tensor] = {}

    def compress(self, x: Tensor, key: str = "") -> tuple[list[Tensor], Any]:
        """Compress x + e[key] and store what the payload does not carry as the new e[key]."""
        e = self._errors.get(key)
        if e is None:
            e = self._errors[key] = torch.zeros_like(x)
        elif e.shape != x.shape:
            raise ValueError(
                f"error feedback {key!r}: x has shape {tuple(x.shape)}, the residual "
                f"{tuple(e.shape)}"
            )
        elif e.dtype != x.dtype or e.device != x.device:  # made by error() before x was seen
            e = self._errors[key] = e.to(device=x.device, dtype=x.dtype)
        corrected = x + e
        payload, ctx = self.compressor.compress(corrected)
        torch.sub(corrected, self.compressor.decompress(payload, ctx), out=e)
        return payload, ctx

    def error(self, key: str = "", like: Tensor | None = None) -> Tensor:
        """The live residual of ``key``. If absent, zeros are created and stored: shaped like
        ``like`` when given, else float32 CPU zeros of the compressor's sum(sizes) (moved to
        x's device and dtype at the first compress)."""
        e = self._errors.get(key)
        if e is None:
            if like is not None:
                e = torch.zeros_like(like)
            elif self.compressor.sizes is not None:
                e = torch.zeros(sum(self.compressor.sizes))
            else:
                raise ValueError(
                    f"error feedback {key!r}: no residual yet and no shape known; pass like= "
                    "or build the compressor with sizes"
                )
            self._errors[key] = e
        return e

    def reset(self) -> None:
        """Every residual to zero (in place)."""
        for e in self._errors.values():
            e.zero_()

    def state_dict(self) -> dict[str, Tensor]:
        return {k: e.clone() for k, e in self._errors.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore residuals: in place where a residual of that shape exists (live references
        stay valid), else as copies; keys absent from ``state`` are dropped."""
        for key in list(self._errors):
            if key not in state:
                del self._errors[key]
        for key, value in state.items():
            e = self._errors.get(key)
            if e is not None and e.shape == value.shape:
                e.copy_(value)
            else:
                self._errors[key] = value.detach().clone()


def build(name: str, sizes: Sequence[int] | None = None, **knobs: Any) -> Compressor:
    """The registered compressor ``name`` with ``knobs`` over its (preset) defaults."""
    entry = COMPRESSORS.get(name)
    return entry.obj(entry.make_config(**knobs), sizes)
