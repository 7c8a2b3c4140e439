"""One registry class for everything the suite can name: algorithms, compressors, topologies,
datasets, models and recipes.

An entry is registered by decorator, carries a one-line description (the first docstring line by
default), an optional frozen-dataclass ``config`` of knobs, and labels: ``paper`` (which paper it
belongs to; "baseline" for reference methods) and ``stand_in`` (True when it is our documented
substitute for something the paper text did not let us build faithfully). A *preset* is a named
entry that reuses another entry with different default knobs (PyTorch's POWER_SGD_RANK2 style).

Lookups of unknown names raise :class:`UnknownNameError`, whose message lists the valid choices,
so the CLI can turn it into exit code 2 without more work.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from suite.errors import did_you_mean

T = TypeVar("T")

# Modules whose import registers the built-in entries. Imported lazily, on first lookup, so that
# importing the registry stays cheap and import cycles cannot form.
BUILTIN_MODULES = (
    "suite.tasks",
    "suite.compressors",
    "suite.topologies",
    "suite.algorithms",
    "baselines",
    "reproduce",
)
_loaded = False


def load_builtins() -> None:
    """Import every module that registers built-in entries (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


class UnknownNameError(LookupError):
    """A name that is not in a registry; the message lists what is."""

    def __init__(self, kind: str, name: str, choices: list[str]) -> None:
        self.kind, self.name, self.choices = kind, name, choices
        listed = ", ".join(choices) if choices else "(none registered)"
        hint = did_you_mean(name, choices)
        super().__init__(f"unknown {kind} {name!r}{hint}; valid choices: {listed}")

    def __str__(self) -> str:  # LookupError would quote the message
        return self.args[0]


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One named thing in a registry."""

    name: str
    obj: T
    description: str
    config: type | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    base: str | None = None
    paper: str | None = None
    stand_in: bool = False
    meta: Mapping[str, Any] = field(default_factory=dict)

    def make_config(self, **overrides: Any) -> Any:
        """The entry's config dataclass with preset defaults, then ``overrides``, applied."""
        if self.config is None:
            if overrides:
                raise TypeError(f"{self.name!r} takes no options, got {sorted(overrides)}")
            return None
        return self.config(**{**self.defaults, **overrides})

    @property
    def label(self) -> str:
        """Description with the labels a reader must see (stand-in, preset)."""
        text = self.description
        if self.base:
            text += f" [preset of {self.base}]"
        if self.stand_in:
            text += " [stand-in]"
        return text


def _first_line(obj: Any) -> str:
    """The docstring's summary: its first paragraph, on one line (a summary wrapped over two
    source lines would otherwise be cut mid-sentence)."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return " ".join(doc.split("\n\n", 1)[0].split())


class Registry(Generic[T]):
    """A named collection of entries of one kind ("algorithm", "dataset", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self,
        name: str,
        *,
        description: str | None = None,
        config: type | None = None,
        paper: str | None = None,
        stand_in: bool = False,
        **meta: Any,
    ) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``. Raises on a duplicate name."""
        if config is not None and not dataclasses.is_dataclass(config):
            raise TypeError(f"config of {name!r} must be a dataclass, got {config!r}")

        def decorate(obj: T) -> T:
            self.add(
                Entry(
                    name=name,
                    obj=obj,
                    description=description or _first_line(obj) or name,
                    config=config,
                    paper=paper,
                    stand_in=stand_in,
                    meta=meta,
                )
            )
            return obj

        return decorate

    def preset(self, name: str, base: str, *, description: str, **defaults: Any) -> Entry[T]:
        """Register ``name`` as ``base`` with other default knobs. Unknown knobs raise now.
        ``base`` must be registered already (no built-in loading: presets sit beside their
        base, and loading from inside a module being imported would cycle)."""
        parent = self._entries.get(base)
        if parent is None:
            raise UnknownNameError(self.kind, base, sorted(self._entries))
        parent.make_config(**defaults)  # validates the knob names early
        entry = dataclasses.replace(
            parent,
            name=name,
            description=description,
            defaults={**parent.defaults, **defaults},
            base=parent.base or parent.name,
        )
        self.add(entry)
        return entry

    def add(self, entry: Entry[T]) -> None:
        if entry.name in self._entries:
            raise ValueError(f"duplicate {self.kind} name {entry.name!r}")
        self._entries[entry.name] = entry

    def get(self, name: str) -> Entry[T]:
        load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self, pattern: str = "*") -> list[str]:
        load_builtins()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entries(self, pattern: str = "*") -> list[Entry[T]]:
        return [self._entries[n] for n in self.names(pattern)]

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        load_builtins()
        return len(self._entries)


ALGORITHMS: Registry[Any] = Registry("algorithm")
COMPRESSORS: Registry[Any] = Registry("compressor")
TOPOLOGIES: Registry[Any] = Registry("topology")
DATASETS: Registry[Any] = Registry("dataset")
MODELS: Registry[Any] = Registry("model")
RECIPES: Registry[Any] = Registry("recipe")

REGISTRIES: dict[str, Registry[Any]] = {
    "algorithms": ALGORITHMS,
    "compressors": COMPRESSORS,
    "topologies": TOPOLOGIES,
    "datasets": DATASETS,
    "models": MODELS,
    "recipes": RECIPES,
}
