"""Network descriptions: a rate and a latency per rank link, by preset name or by spec.

One :class:`NetworkSpec` describes every rank's link to a switch: ``bandwidth_bps`` each way
(uplink and downlink alike) and ``latency_s``, the one-way delay between any two ranks (so a
round trip is ``2 * latency_s``). ``latency_s`` is None when the spec sets none: then whoever
uses the spec supplies one (a real shaped link's measured latency, see ``suite.emulate``).

Grammar (case-insensitive, no spaces)::

    NETWORK  := PRESET | RATE [":" LATENCY]
    RATE     := NUMBER ("bit" | "kbit" | "mbit" | "gbit" | "tbit")   decimal units, as tc
    LATENCY  := "0" | NUMBER ("s" | "ms" | "us")

Examples: ``datacenter``, ``1gbit:0.5ms``, ``100mbit`` (latency unset), ``10gbit:0``.
Pure: no I/O, nothing imported beyond the standard library and :mod:`suite.errors`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from suite.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class NetworkSpec:
    """Every rank's link: ``bandwidth_bps`` bits/s up and down, ``latency_s`` one way (None:
    not set). ``name`` is the text it was parsed from (a preset name or the spec itself)."""

    bandwidth_bps: float
    latency_s: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bandwidth_bps) and self.bandwidth_bps > 0):
            raise ConfigError(f"network bandwidth must be finite and > 0, got {self.bandwidth_bps}")
        if self.latency_s is not None and not (
            math.isfinite(self.latency_s) and self.latency_s >= 0
        ):
            raise ConfigError(f"network latency must be finite and >= 0, got {self.latency_s}")

    def __str__(self) -> str:
        return self.name or format_spec(self)


PRESETS: dict[str, NetworkSpec] = {
    "datacenter": NetworkSpec(100e9, 5e-6, "datacenter"),
    "10g": NetworkSpec(10e9, 10e-6, "10g"),
    "1g": NetworkSpec(1e9, 50e-6, "1g"),
    "wan": NetworkSpec(100e6, 20e-3, "wan"),
}

_RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
_PER_SECOND = {"s": 1.0, "ms": 1e3, "us": 1e6}  # divide: 5 / 1e6 is exactly 5e-6
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?"
_SPEC = re.compile(
    rf"(?P<rate>{_NUMBER})(?P<runit>tbit|gbit|mbit|kbit|bit)"
    rf"(?::(?:(?P<lat>{_NUMBER})(?P<lunit>ms|us|s)|(?P<zero>0+(?:\.0*)?)))?"
)

GRAMMAR = (
    "RATE[:LATENCY], RATE a number with bit, kbit, mbit, gbit or tbit (decimal, as tc), "
    "LATENCY 0 or a number with s, ms or us (one way), e.g. 1gbit:0.5ms, 100mbit, 10gbit:0"
)


def describe_presets() -> str:
    return ", ".join(f"{name} ({format_spec(spec)})" for name, spec in PRESETS.items())


def _valid() -> str:
    return f"valid: a preset ({describe_presets()}) or a spec {GRAMMAR}"


def parse_network(text: str) -> NetworkSpec:
    """A preset name or a spec; ConfigError listing the presets and the grammar otherwise."""
    key = text.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    match = _SPEC.fullmatch(key)
    if match is None:
        raise ConfigError(
            f"unknown network {text!r}{did_you_mean(key, PRESETS)}; valid: a preset "
            f"({describe_presets()}) or a spec {GRAMMAR}"
        )
    rate = float(match["rate"]) * _RATE_UNITS[match["runit"]]
    if match["zero"] is not None:
        latency: float | None = 0.0
    elif match["lat"] is not None:
        latency = float(match["lat"]) / _PER_SECOND[match["lunit"]]
    else:
        latency = None
    try:
        return NetworkSpec(rate, latency, key)
    except ConfigError as err:
        raise ConfigError(f"network {text!r}: {err}; {_valid()}") from None


def format_spec(spec: NetworkSpec) -> str:
    """The spec's figures in the grammar, e.g. ``1gbit:500us`` (name left out)."""
    rate = spec.bandwidth_bps
    unit = next(
        (u for u in ("tbit", "gbit", "mbit", "kbit", "bit") if rate >= _RATE_UNITS[u]), "bit"
    )
    text = f"{rate / _RATE_UNITS[unit]:g}{unit}"
    if spec.latency_s is None:
        return text
    if spec.latency_s == 0:
        return text + ":0"
    lat = spec.latency_s
    lunit = "s" if lat >= 1 else "ms" if lat >= 1e-3 else "us"
    return f"{text}:{lat * _PER_SECOND[lunit]:g}{lunit}"
