from __future__ import annotations

import dataclasses

import pytest

from suite.registry import REGISTRIES, Registry, UnknownNameError


@dataclasses.dataclass(frozen=True)
class Knobs:
    period: int = 8
    scale: float = 1.0


def make() -> Registry:
    reg: Registry = Registry("widget")

    @reg.register("alpha", config=Knobs, paper="p1")
    class Alpha:
        """Alpha does things.

        More text that is not the description."""

    @reg.register("beta", description="explicit", stand_in=True)
    def beta() -> None:
        pass

    return reg


def test_register_describes_from_docstring_and_labels_stand_ins() -> None:
    reg = make()
    assert reg.get("alpha").description == "Alpha does things."
    assert reg.get("beta").label == "explicit [stand-in]"
    assert reg.names() == ["alpha", "beta"]
    assert reg.names("a*") == ["alpha"]


def test_duplicate_name_raises() -> None:
    reg = make()
    with pytest.raises(ValueError, match="duplicate widget name 'alpha'"):
        reg.register("alpha")(object)


def test_unknown_name_lists_valid_choices_and_suggests() -> None:
    reg = make()
    with pytest.raises(UnknownNameError) as info:
        reg.get("alpah")
    message = str(info.value)
    assert "unknown widget 'alpah'" in message
    assert "did you mean 'alpha'" in message
    assert "valid choices: alpha, beta" in message


def test_preset_carries_defaults_and_rejects_unknown_knobs() -> None:
    reg = make()
    entry = reg.preset("alpha_h4", "alpha", description="alpha every 4", period=4)
    assert entry.make_config() == Knobs(period=4)
    assert entry.make_config(scale=2.0) == Knobs(period=4, scale=2.0)
    assert entry.base == "alpha" and "[preset of alpha]" in entry.label
    with pytest.raises(TypeError):
        reg.preset("bad", "alpha", description="x", nonsense=1)


def test_config_must_be_a_dataclass() -> None:
    with pytest.raises(TypeError, match="must be a dataclass"):
        Registry("x").register("a", config=dict)


@pytest.mark.parametrize("kind", ["algorithms", "datasets", "models", "compressors", "topologies"])
def test_builtin_entries_are_described_and_configurable(kind: str) -> None:
    entries = REGISTRIES[kind].entries()
    assert entries, f"no {kind} registered"
    for entry in entries:
        assert entry.description and entry.description != entry.name
        assert entry.config is not None and dataclasses.is_dataclass(entry.config)
        entry.make_config()  # defaults alone build a valid config
