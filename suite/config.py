"""Run configuration: frozen dataclasses, typed ``key=value`` overrides, flattening for MLflow.

A :class:`RunConfig` names its components (algorithm, dataset, model) and carries each one's
knobs in a :class:`Component`: ``name`` plus ``args``, an instance of the config dataclass the
registry entry declares. Changing a component's name swaps in that entry's dataclass (with preset
defaults), so keys such as ``algorithm.period`` are only valid for algorithms that have them.

Overrides are strings ``key=value`` with dotted keys (``optim.lr=0.1``, ``model=cnn2``,
``algorithm.period=4``). Values are parsed by the field's annotation (int, float, bool, str,
Literal, tuple[int, ...], tuple[float, ...]); unknown keys, unknown names and malformed values
raise :class:`ConfigError`, whose message lists the valid keys or choices. We wrote this (~150
lines) rather than use Hydra/OmegaConf/tyro because the set of valid keys depends on registry
lookups made while overrides are applied, and errors must list registry names.

Values out of range are ConfigErrors naming the valid range. Every float leaf (component knobs
included) must be finite: :func:`validate` refuses inf and nan unless the field opts out with
``field(default=..., metadata={"nonfinite": "what inf or nan means here"})`` (none does yet).
"""

from __future__ import annotations

import functools
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal

from suite.errors import ConfigError, did_you_mean
from suite.network import parse_network
from suite.registry import (
    ALGORITHMS,
    COMPRESSORS,
    DATASETS,
    MODELS,
    Registry,
    UnknownNameError,
)


@dataclass(frozen=True)
class Component:
    """A registry entry chosen by name, with that entry's knobs."""

    name: str
    args: Any = None


@dataclass(frozen=True)
class OptimConfig:
    """Local optimizer and learning-rate schedule (the same for every algorithm).

    name: "sgd" (momentum and nesterov apply), "adagrad" (per-coordinate step sizes from the
    sum of squared gradients; ``eps`` guards the division; momentum must stay 0) or "lars"
    (layer-wise trust ratio for large batches, :class:`suite.optim.LARS`; momentum, weight
    decay and ``trust_coefficient`` apply, nesterov does not; parameters with ndim <= 1, i.e.
    biases and BatchNorm, get plain momentum SGD without weight decay).

    schedule: "constant", "multistep" (lr *= gamma at each milestone, in epochs) or "poly"
    (after warm-up, lr * (1 - (step - warmup) / (total - warmup)) ** power, reaching 0 at the
    end of the run). The poly schedule can end on a floor and hold it, as the Crossover-SGD
    authors' schedule does: ``end_lr`` (a fraction of lr) is reached ``hold_epochs`` before the
    end and kept, lr * ((1 - end_lr) (1 - (step - warmup) / (total - warmup - hold)) ** power
    + end_lr).

    schedule_weight_decay: weight decay follows the same factor as the lr (warm-up and decay),
    as the Crossover-SGD authors' schedule does; false keeps it constant.

    Warm-up is linear, from lr/warmup to lr over the first warmup steps, given either as
    ``warmup_steps`` or as ``warmup_epochs`` (converted with the run's steps per epoch,
    rounded, at least 1 step); setting both is refused.
    """

    name: Literal["sgd", "adagrad", "lars"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    eps: float = 1e-10  # adagrad only
    # lars only: the trust ratio's coefficient (eta). The paper's ImageNet recipe uses 0.0025.
    trust_coefficient: float = 0.001
    schedule: Literal["constant", "multistep", "poly"] = "constant"
    milestones: tuple[float, ...] = ()  # multistep only
    gamma: float = 0.1  # multistep only
    power: float = 2.0  # poly only
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    end_lr: float = 0.0  # poly only: the floor, a fraction of lr (the Crossover authors: 0.0025)
    hold_epochs: float = 0.0  # poly only: epochs at the floor at the end (the Crossover authors: 2)
    schedule_weight_decay: bool = False

    def milestone_steps(self, steps_per_epoch: int) -> list[int]:
        """The step of each milestone (an epoch), in order: multistep multiplies the lr by
        gamma at each."""
        return [round(m * steps_per_epoch) for m in self.milestones]

    def __post_init__(self) -> None:
        # Written as "not (valid)" so that NaN, which fails every comparison, is refused too.
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"optim.momentum must be in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not self.eps > 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        if not self.gamma > 0:
            raise ValueError(f"optim.gamma must be > 0, got {self.gamma}")
        if not all(m >= 0 for m in self.milestones):
            raise ValueError(f"optim.milestones must be epochs >= 0, got {self.milestones}")
        if not self.power > 0:
            raise ValueError(f"optim.power must be > 0, got {self.power}")
        if not self.trust_coefficient > 0:
            raise ValueError(f"optim.trust_coefficient must be > 0, got {self.trust_coefficient}")
        if self.warmup_steps < 0 or not self.warmup_epochs >= 0:
            raise ValueError("optim.warmup_steps and optim.warmup_epochs must be >= 0")
        if not 0.0 <= self.end_lr < 1.0:
            raise ValueError(f"optim.end_lr must be in [0, 1), got {self.end_lr}")
        if not self.hold_epochs >= 0:
            raise ValueError(f"optim.hold_epochs must be >= 0, got {self.hold_epochs}")


@dataclass(frozen=True)
class FaultConfig:
    """Failure injection, to test that the harness ends a broken run cleanly.

    kind "crash" raises at ``step`` on ``rank``; "exit" kills the process without a Python
    traceback (os._exit); "hang" sleeps forever; "diverge" is a non-finite loss there (as a
    too-large lr gives, on that rank alone). "none" (the default) injects nothing.
    """

    kind: Literal["none", "crash", "exit", "hang", "diverge"] = "none"
    rank: int = 0
    step: int = 0


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a training run's result (what MLflow logs as params)."""

    algorithm: Component = field(default_factory=lambda: Component("allreduce_sgd"))
    dataset: Component = field(default_factory=lambda: Component("digits"))
    model: Component = field(default_factory=lambda: Component("mlp"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    nproc: int = 4  # world size
    steps: int = 300  # optimizer steps (ignored when epochs > 0)
    epochs: float = 0.0  # when > 0, steps = ceil(epochs * steps_per_epoch)
    batch_size: int = 32  # per rank and micro-batch
    micro_batches: int = 1  # gradient accumulation: micro-batches per optimizer step
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data_dir: str = ""  # for datasets read from disk (mnist, cifar10, cifar100, imagenet)
    num_workers: int = 0  # DataLoader workers for datasets read from files
    eval_every: int = 50  # steps between evaluations (0: only at the end)
    eval_per_rank: bool = True  # also evaluate every rank's own model, not just the average
    eval_batch_size: int = 256
    log_every: int = 50  # steps between gathering metrics to rank 0 (one small collective)
    label_smoothing: float = 0.0  # of the training loss (F.cross_entropy), in [0, 1)
    # when > 0, the summary records the steps and seconds (wall and the algorithm's own clock)
    # to the first evaluation at this test accuracy or better (NaN if never reached)
    target_accuracy: float = 0.0
    fault: FaultConfig = field(default_factory=FaultConfig)
    # the network the run's trace is replayed on for the summary's network_seconds (a preset or
    # RATE[:LATENCY], see suite.network): reporting only, training does not depend on it
    network: str = "1g"

    @property
    def length(self) -> str:
        """How long the run is, as asked for: "1.5 epochs" or "300 steps"."""
        return f"{self.epochs:g} epochs" if self.epochs > 0 else f"{self.steps} steps"


# Which registry each component field draws its names from: the run's own components, and
# components nested inside an algorithm's knobs (``algorithm.compressor=top_k``, then
# ``algorithm.compressor.ratio=0.05``).
COMPONENT_REGISTRIES: dict[str, Registry[Any]] = {
    "algorithm": ALGORITHMS,
    "dataset": DATASETS,
    "model": MODELS,
}
NESTED_REGISTRIES: dict[str, Registry[Any]] = {"compressor": COMPRESSORS}
_REGISTRY_OF_FIELD = {**COMPONENT_REGISTRIES, **NESTED_REGISTRIES}


def make_component(kind: str, name: str) -> Component:
    """``Component`` for registry entry ``name`` with the entry's (preset) default knobs."""
    try:
        entry = _REGISTRY_OF_FIELD[kind].get(name)
    except UnknownNameError as err:
        raise ConfigError(str(err)) from None
    return Component(name, entry.make_config())


def resolve(cfg: RunConfig) -> RunConfig:
    """Fill each component's ``args`` from its registry entry where they are missing."""
    updates = {}
    for kind in COMPONENT_REGISTRIES:
        comp: Component = getattr(cfg, kind)
        fresh = make_component(kind, comp.name)
        if comp.args is None and fresh.args is not None:
            updates[kind] = fresh
    return replace(cfg, **updates) if updates else cfg


# ---------------------------------------------------------------------------------------------
# Typed parsing of override values


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def describe_type(tp: Any) -> str:
    """Human form of a field type, for error messages and ``suite config``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        return f"comma-separated {inner.__name__}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def parse_value(text: str, tp: Any, key: str) -> Any:
    """Parse ``text`` as a value of type ``tp``; ConfigError names key, value and expectation."""
    origin = typing.get_origin(tp)

    def fail() -> ConfigError:
        return ConfigError(f"bad value {text!r} for {key}: expected {describe_type(tp)}")

    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if text == str(choice):
                return choice
        raise ConfigError(
            f"bad value {text!r} for {key}; valid choices: {', '.join(map(str, choices))}"
        )
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.lower() in {"none", "null", ""}:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(text, arg, key)
            except ConfigError:
                continue
        raise fail()
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        parts = [p.strip() for p in text.strip("()[] ").split(",") if p.strip()]
        return tuple(parse_value(p, inner, key) for p in parts)
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"bad value {text!r} for {key}: expected true or false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise fail() from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise fail() from None
    if tp is str:
        return text
    raise ConfigError(f"{key} cannot be set from the command line (type {tp!r})")


# ---------------------------------------------------------------------------------------------
# Keys, flattening and overrides


def _leaf_fields(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any, Any]]:
    """(dotted key, type, value) for every settable leaf under dataclass ``obj``."""
    hints = _hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if isinstance(value, Component):
            registry = _REGISTRY_OF_FIELD.get(f.name)
            names = tuple(registry.names()) if registry is not None else ()
            yield key, Literal[names] if names else str, value.name  # shown as the choices
            if value.args is not None:
                yield from _leaf_fields(value.args, key + ".")
        elif is_dataclass(value):
            yield from _leaf_fields(value, key + ".")
        else:
            yield key, hints[f.name], value


def settable_keys(cfg: Any) -> dict[str, Any]:
    """Every key ``--set`` accepts for ``cfg``, mapped to its type."""
    return {key: tp for key, tp, _ in _leaf_fields(cfg)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def flatten(cfg: Any) -> dict[str, Any]:
    """Dotted key -> value for every leaf (component names under their own key)."""
    return {key: _plain(value) for key, _, value in _leaf_fields(cfg)}


def to_json(cfg: Any) -> str:
    return json.dumps(flatten(cfg), indent=2, sort_keys=True)


def _set_path(obj: Any, path: list[str], text: str, key: str) -> Any:
    """Return ``obj`` with the leaf at ``path`` set from ``text`` (parsed by its type)."""
    head, rest = path[0], path[1:]
    names = {f.name for f in fields(obj)}
    if head not in names:
        raise KeyError(head)
    value = getattr(obj, head)
    if isinstance(value, Component):
        if not rest:
            if head not in _REGISTRY_OF_FIELD:
                raise KeyError(head)
            return replace(obj, **{head: make_component(head, text)})
        if value.args is None:
            raise KeyError(rest[0])
        return replace(obj, **{head: replace(value, args=_set_path(value.args, rest, text, key))})
    if is_dataclass(value):
        if not rest:
            raise KeyError(head)
        return replace(obj, **{head: _set_path(value, rest, text, key)})
    if rest:
        raise KeyError(rest[0])
    parsed = parse_value(text, _hints(type(obj))[head], key)
    try:
        return replace(obj, **{head: parsed})
    except (TypeError, ValueError) as err:  # a dataclass's own validation
        raise ConfigError(f"bad value {text!r} for {key}: {err}") from None


def _as_text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def split_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key=value")
    return key.strip(), value.strip()


def _names_first(pair: tuple[str, str]) -> tuple[bool, int]:
    """Sort key: component names before knobs, outer before nested (stable otherwise), so
    ``algorithm=saef`` lands before ``algorithm.compressor=...`` before its knobs."""
    path = pair[0].split(".")
    named = path[-1] in _REGISTRY_OF_FIELD
    return (not named, len(path))


def apply_overrides(cfg: RunConfig, items: Iterable[str] | Mapping[str, Any]) -> RunConfig:
    """Apply ``key=value`` overrides; component names first, so their knobs become valid."""
    if isinstance(items, Mapping):
        pairs = [(k, _as_text(v)) for k, v in items.items()]
    else:
        pairs = [split_override(i) for i in items]
    pairs.sort(key=_names_first)
    cfg = resolve(cfg)
    for key, text in pairs:
        try:
            cfg = _set_path(cfg, key.split("."), text, key)
        except KeyError:
            raise _unknown_key(key, settable_keys(cfg)) from None
    validate(cfg)
    return cfg


def _unknown_key(key: str, valid: Iterable[str]) -> ConfigError:
    keys = sorted(valid)
    return ConfigError(
        f"unknown config key {key!r}{did_you_mean(key, keys)}; valid keys: {', '.join(keys)}"
    )


def _check_name(kind: str, name: str, choices: Iterable[str]) -> str:
    if name not in choices:
        raise ConfigError(str(UnknownNameError(kind, name, sorted(choices))))
    return name


def precheck(algorithm: str | None, items: Iterable[str]) -> RunConfig:
    """The checks that need no registry module, so no torch: ``algorithm`` and every
    component name against :mod:`suite.names`, every key (with a "did you mean"), and the
    values and ranges of the run's own fields (optim, fault, nproc ...). Run it first so bad
    input exits at once; :func:`apply_overrides` then checks the rest (knob values).

    ``algorithm`` None: the overrides apply to runs of any algorithm, with any world size (a
    recipe's rows), so algorithm knobs and ranks named in fields are left to the full check.

    Returns the config with the overrides of the run's own fields and the component names
    applied (component knobs left unset), enough to say what the run will be."""
    from suite import names

    cfg = RunConfig()
    if algorithm is not None:
        cfg = RunConfig(algorithm=Component(_check_name("algorithm", algorithm, names.ALGORITHMS)))
        if algorithm in names.WORLD_SIZES:
            cfg = replace(cfg, nproc=names.WORLD_SIZES[algorithm])
    named = {"algorithm"} if algorithm is not None else set()
    pairs = sorted((split_override(i) for i in items), key=_names_first)
    for key, text in pairs:
        path = key.split(".")
        if path[0] not in names.COMPONENTS:  # the run's own fields: parsed and set here
            try:
                cfg = _set_path(cfg, path, text, key)
            except KeyError:
                raise _unknown_key(key, _precheck_keys(cfg)) from None
            continue
        kind = path[0]
        if len(path) == 1:
            cfg = replace(cfg, **{kind: Component(_check_name(kind, text, names.COMPONENTS[kind]))})
            named.add(kind)
            continue
        if kind == "algorithm" and kind not in named:
            continue  # knobs of whichever algorithm a recipe's row runs
        knobs = names.COMPONENTS[kind][getattr(cfg, kind).name]
        if path[1] not in knobs:
            raise _unknown_key(key, _precheck_keys(cfg))
        if len(path) == 2 and path[1] in names.NESTED:  # algorithm.compressor=NAME
            try:
                _check_name(path[1], text, names.NESTED[path[1]])
            except ConfigError as err:
                raise ConfigError(f"bad value {text!r} for {key}: {err}") from None
    _check_fields(cfg, world_known="algorithm" in named)
    if "algorithm" not in named:
        return cfg
    world = names.WORLD_SIZES.get(cfg.algorithm.name)
    if world is not None and cfg.nproc != world:
        raise ConfigError(
            f"algorithm {cfg.algorithm.name!r} runs on exactly {world} process(es); "
            f"got nproc={cfg.nproc}"
        )
    for key, value in _nonfinite(cfg):
        raise ConfigError(f"{key} must be a finite number, got {_as_text(value)}")
    return cfg


def _precheck_keys(cfg: RunConfig) -> list[str]:
    """The keys --set accepts for ``cfg`` as :mod:`suite.names` knows them (knobs of nested
    components, such as ``algorithm.compressor.ratio``, left out)."""
    from suite import names

    keys = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, Component):
            keys.append(f.name)
            knobs = names.COMPONENTS[f.name].get(value.name, ())
            keys.extend(f"{f.name}.{knob}" for knob in knobs)
        elif is_dataclass(value):
            keys.extend(f"{f.name}.{sub.name}" for sub in fields(value))
        else:
            keys.append(f.name)
    return keys


def _nonfinite(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of every float leaf under dataclass ``obj`` holding inf or nan,
    skipping fields whose metadata gives them a meaning (``{"nonfinite": "what inf means"}``)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if isinstance(value, Component):
            if value.args is not None:
                yield from _nonfinite(value.args, key + ".")
        elif is_dataclass(value):
            yield from _nonfinite(value, key + ".")
        elif "nonfinite" not in f.metadata:
            items = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in items):
                yield key, value


SEED_MAX = 2**32 - 1  # seeds are mixed into 64-bit torch seeds; numpy takes 32 bits


def validate(cfg: RunConfig) -> None:
    """Checks that span fields; raise ConfigError naming the field and the valid range.

    Every float knob must be finite (inf and nan are refused) unless its field's metadata has
    a ``"nonfinite"`` entry saying what they mean for it."""
    _check_fields(cfg)
    check_world = getattr(cfg.algorithm.args, "check_world", None)
    if check_world is not None:  # knobs that depend on the world size (ranks named in them)
        try:
            check_world(cfg.nproc)
        except ValueError as err:
            raise ConfigError(f"algorithm.{err}") from None
    entry = ALGORITHMS.get(cfg.algorithm.name)
    world = entry.meta.get("world_size")
    if world is not None and cfg.nproc != world:
        raise ConfigError(
            f"algorithm {entry.name!r} runs on exactly {world} process(es); got nproc={cfg.nproc}"
        )
    for key, value in _nonfinite(cfg):
        raise ConfigError(f"{key} must be a finite number, got {_as_text(value)}")


def _check_fields(cfg: RunConfig, world_known: bool = True) -> None:
    """The checks of :func:`validate` on the run's own fields (no registry needed); those that
    depend on the world size only if ``world_known``."""
    positive = ("nproc", "batch_size", "micro_batches", "eval_batch_size", "log_every")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    # Written as "not (valid)" so that NaN, which fails every comparison, is refused too.
    if not cfg.epochs >= 0:
        raise ConfigError(f"epochs must be >= 0 (0: run for steps), got {cfg.epochs}")
    if cfg.steps < 1 and cfg.epochs <= 0:
        raise ConfigError(f"steps must be >= 1 (or epochs > 0), got steps={cfg.steps}")
    if cfg.eval_every < 0 or cfg.num_workers < 0:
        raise ConfigError("eval_every and num_workers must be >= 0")
    if not 0 <= cfg.seed <= SEED_MAX:
        raise ConfigError(f"seed must be in [0, {SEED_MAX}], got {cfg.seed}")
    if not cfg.optim.lr > 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if cfg.optim.name == "adagrad" and (cfg.optim.momentum or cfg.optim.nesterov):
        raise ConfigError("optim.momentum and optim.nesterov apply to optim.name=sgd only")
    if cfg.optim.name == "lars" and cfg.optim.nesterov:
        raise ConfigError("optim.nesterov applies to optim.name=sgd only (lars: heavy-ball)")
    if cfg.optim.nesterov and cfg.optim.momentum == 0:
        raise ConfigError("optim.nesterov needs optim.momentum in (0, 1), got momentum 0")
    if cfg.optim.warmup_steps and cfg.optim.warmup_epochs:
        raise ConfigError("set optim.warmup_steps or optim.warmup_epochs, not both")
    late = [m for m in cfg.optim.milestones if cfg.epochs > 0 and m >= cfg.epochs]
    if cfg.optim.schedule == "multistep" and late:
        raise ConfigError(
            f"optim.milestones {late} are at or past the run's end (epochs={cfg.epochs:g}) and "
            "would never apply; milestones are epochs, not fractions of the run"
        )
    if not 0.0 <= cfg.target_accuracy <= 1.0:
        raise ConfigError(f"target_accuracy must be in [0, 1], got {cfg.target_accuracy}")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")

    parse_network(cfg.network)  # ConfigError listing the presets and the grammar
    if world_known and cfg.fault.kind != "none" and not 0 <= cfg.fault.rank < cfg.nproc:
        raise ConfigError(f"fault.rank must be in [0, {cfg.nproc - 1}], got {cfg.fault.rank}")


def from_flat(flat: Mapping[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from ``flatten`` output (e.g. an artifact or MLflow params)."""
    return apply_overrides(RunConfig(), dict(flat))


__all__ = [
    "Component",
    "ConfigError",
    "FaultConfig",
    "OptimConfig",
    "RunConfig",
    "apply_overrides",
    "flatten",
    "from_flat",
    "make_component",
    "parse_value",
    "precheck",
    "resolve",
    "settable_keys",
    "to_json",
    "validate",
]
