from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from suite.config import (
    Component,
    ConfigError,
    RunConfig,
    _nonfinite,
    apply_overrides,
    flatten,
    from_flat,
    parse_value,
    settable_keys,
)
from suite.registry import DATASETS, MODELS


def test_defaults_resolve_component_knobs() -> None:
    cfg = apply_overrides(RunConfig(), [])
    assert cfg.algorithm.name == "allreduce_sgd"
    assert cfg.model.name == "mlp" and cfg.dataset.name == "digits"
    assert cfg.model.args == MODELS.get("mlp").make_config()  # the component's own defaults
    assert cfg.dataset.args == DATASETS.get("digits").make_config()


def test_typed_overrides() -> None:
    cfg = apply_overrides(
        RunConfig(),
        ["optim.lr=0.2", "steps=7", "eval_per_rank=false", "optim.milestones=1,2.5", "seed=3"],
    )
    assert cfg.optim.lr == 0.2 and isinstance(cfg.optim.lr, float)
    assert cfg.steps == 7 and cfg.eval_per_rank is False
    assert cfg.optim.milestones == (1.0, 2.5)
    assert cfg.seed == 3


def test_component_switch_makes_its_knobs_settable() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'algorithm\.period'"):
        apply_overrides(RunConfig(), ["algorithm.period=4"])
    # names are applied first, whatever the order on the command line
    cfg = apply_overrides(RunConfig(), ["algorithm.period=4", "algorithm=local_sgd"])
    assert cfg.algorithm.name == "local_sgd" and cfg.algorithm.args.period == 4
    assert "algorithm.period" in settable_keys(cfg)


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), ["optim.learning_rate=1"])
    message = str(info.value)
    assert "unknown config key 'optim.learning_rate'" in message
    assert "optim.lr" in message and "batch_size" in message


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("steps=ten", "bad value 'ten' for steps: expected int"),
        ("eval_per_rank=maybe", "expected true or false"),
        ("optim.schedule=cosine", "valid choices: constant, multistep"),
        ("model=resnet9000", "unknown model 'resnet9000'"),
        ("algorithm=allreduce", "valid choices:"),
        ("algorithm=local_sgd,algorithm.period=0", "period must be >= 1"),
        ("batch_size=0", "batch_size must be >= 1"),
        ("steps", "not of the form key=value"),
    ],
)
def test_bad_values_are_config_errors_naming_the_problem(item: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        apply_overrides(RunConfig(), item.split(","))
    assert fragment in str(info.value)


def test_a_milestone_at_or_past_the_last_epoch_is_refused() -> None:
    base = ["epochs=10", "optim.schedule=multistep"]
    with pytest.raises(ConfigError, match=r"\[12\.0\] are at or past the run's end"):
        apply_overrides(RunConfig(), [*base, "optim.milestones=5,12"])
    assert apply_overrides(RunConfig(), [*base, "optim.milestones=5,7.5"]).optim.milestones == (
        5.0,
        7.5,
    )


def test_unknown_component_lists_registry_names() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), ["dataset=imagenet21k"])
    assert "digits" in str(info.value) and "synthetic" in str(info.value)


def test_single_process_algorithm_rejects_other_world_sizes() -> None:
    with pytest.raises(ConfigError, match="exactly 1 process"):
        apply_overrides(RunConfig(), ["algorithm=single", "nproc=4"])
    assert apply_overrides(RunConfig(), ["algorithm=single", "nproc=1"]).nproc == 1


def test_flatten_round_trips() -> None:
    cfg = apply_overrides(
        RunConfig(), ["algorithm=local_sgd", "algorithm.period=3", "optim.milestones=2,4"]
    )
    flat = flatten(cfg)
    assert flat["algorithm"] == "local_sgd" and flat["algorithm.period"] == 3
    assert flat["optim.milestones"] == [2.0, 4.0]
    assert from_flat(flat) == cfg


def test_parse_value_optional_and_tuples() -> None:
    assert parse_value("none", int | None, "k") is None
    assert parse_value("5", int | None, "k") == 5
    assert parse_value("64,32", tuple[int, ...], "k") == (64, 32)
    with pytest.raises(ConfigError):
        parse_value("a,b", tuple[int, ...], "k")


def test_component_is_frozen() -> None:
    comp = Component("x")
    with pytest.raises(AttributeError):
        comp.name = "y"  # type: ignore[misc]


def test_nonfinite_floats_are_found_at_any_depth_unless_the_field_opts_out() -> None:
    @dataclass(frozen=True)
    class Knobs:
        cap: float = field(default=math.inf, metadata={"nonfinite": "inf: no cap"})
        rate: float = 1.0
        points: tuple[float, ...] = ()

    @dataclass(frozen=True)
    class Outer:
        inner: Component = field(default_factory=lambda: Component("x", Knobs()))
        knobs: Knobs = field(default_factory=Knobs)
        count: int = 3

    assert list(_nonfinite(Outer())) == []  # cap = inf is documented, so allowed
    bad = Outer(Component("x", Knobs(rate=math.nan)), Knobs(points=(1.0, -math.inf)))
    found = dict(_nonfinite(bad))
    assert found.keys() == {"inner.rate", "knobs.points"}
    assert found["knobs.points"] == (1.0, -math.inf)
