"""Every name the suite registers, as plain data that imports nothing.

The registry learns its names by importing the modules that register them, and those import
torch (seconds on a loaded machine). The CLI checks what a user typed against this table first,
so a typo, an unknown name or an unknown key exits 2 at once, with a "did you mean". Knobs are
the ``--set COMPONENT.KNOB`` keys of each entry (the fields of its config dataclass).

tests/test_names.py checks that this table equals the registry, so the two cannot drift; after
registering something, regenerate the table with ``python -m suite.names`` (it prints the
tables below) and paste them here.
"""

from __future__ import annotations

ALGORITHMS: dict[str, tuple[str, ...]] = {
    "adaptive_topk": ("density", "error_feedback", "k_min", "k_max", "gain"),
    "allreduce_sgd": (),
    "compressed_sgd": ("compressor", "downlink", "uplink"),
    "consensus_backup": (
        "topology",
        "backups",
        "straggler",
        "late",
        "max_staleness",
        "clock",
        "time_scale",
    ),
    "crossover_no_both": (
        "segments",
        "group_size",
        "fairness",
        "fresh_per_segment",
        "measure_every",
    ),
    "crossover_no_fairness": (
        "segments",
        "group_size",
        "fairness",
        "fresh_per_segment",
        "measure_every",
    ),
    "crossover_no_segment": (
        "segments",
        "group_size",
        "fairness",
        "fresh_per_segment",
        "measure_every",
    ),
    "crossover_sgd": ("segments", "group_size", "fairness", "fresh_per_segment", "measure_every"),
    "dpsgd": ("topology",),
    "dybw": (
        "topology",
        "backups",
        "straggler",
        "late",
        "max_staleness",
        "clock",
        "time_scale",
        "window",
        "consensus_weight",
        "connect_every",
    ),
    "ef_sgd": ("compressor", "downlink", "uplink", "measure_every"),
    "eventgrad": ("horizon", "mode", "threshold", "warmup", "topk"),
    "eventgrad_topk": ("horizon", "mode", "threshold", "warmup", "topk"),
    "local_sgd": ("period", "buffers"),
    "saef": ("compressor", "downlink", "uplink", "measure_every", "average_every", "reset_every"),
    "saef_ea": (
        "compressor",
        "downlink",
        "uplink",
        "measure_every",
        "average_every",
        "reset_every",
    ),
    "sgp": ("topology", "measure_every"),
    "sgp_crossover": ("topology", "measure_every"),
    "single": (),
    "topk_sgd": ("density", "error_feedback"),
}
DATASETS: dict[str, tuple[str, ...]] = {
    "cifar10": ("augment", "normalize"),
    "cifar100": ("augment", "normalize"),
    "digits": ("test_fraction",),
    "fashion_mnist": ("normalize",),
    "imagenet": ("image_size",),
    "mnist": ("normalize",),
    "synthetic": ("input_shape", "num_classes", "train_size", "test_size", "noise", "data_seed"),
}
MODELS: dict[str, tuple[str, ...]] = {
    "cnn2": (),
    "mlp": ("hidden",),
    "resnet18_cifar": (),
    "resnet20": (),
    "resnet50": ("zero_init_residual",),
    "resnet56": (),
    "small_cnn": ("width",),
}
COMPRESSORS: tuple[str, ...] = (
    "identity",
    "qsgd",
    "random_k",
    "scaled_sign",
    "top_k",
    "top_k_approx",
)
TOPOLOGIES: tuple[str, ...] = (
    "complete",
    "exponential",
    "exponential3_two_peer",
    "exponential_one_peer",
    "ring",
)
RECIPES: tuple[str, ...] = (
    "adaptive_topk/cifar-10",
    "adaptive_topk/mnist",
    "baseline/periods",
    "crossover_sgd/ablations",
    "crossover_sgd/fig-7",
    "crossover_sgd/fig-8",
    "crossover_sgd/fig-9",
    "dybw/cifar-10",
    "dybw/linear-speedup",
    "dybw/mnist",
    "eventgrad/cifar-10",
    "eventgrad/mnist",
    "saef/adagrad",
    "saef/cifar-100",
    "saef/imagenet",
)
# Entries that run on a fixed number of processes (their registry meta ``world_size``).
WORLD_SIZES: dict[str, int] = {"single": 1}

# A recipe is named PAPER/NAME.
PAPERS: tuple[str, ...] = tuple(sorted({name.split("/")[0] for name in RECIPES}))

# The kinds a component field of RunConfig (``--set algorithm=...``), or a nested one
# (``--set algorithm.compressor=...``), draws its names from.
COMPONENTS: dict[str, dict[str, tuple[str, ...]]] = {
    "algorithm": ALGORITHMS,
    "dataset": DATASETS,
    "model": MODELS,
}
NESTED: dict[str, tuple[str, ...]] = {"compressor": COMPRESSORS, "topology": TOPOLOGIES}


def from_registry() -> dict[str, object]:
    """The tables above as the registry has them (imports every registering module)."""
    from dataclasses import fields

    from suite.registry import REGISTRIES

    def knobs(kind: str) -> dict[str, tuple[str, ...]]:
        return {
            e.name: tuple(f.name for f in fields(e.config)) if e.config else ()
            for e in REGISTRIES[kind].entries()
        }

    return {
        "ALGORITHMS": knobs("algorithms"),
        "DATASETS": knobs("datasets"),
        "MODELS": knobs("models"),
        "COMPRESSORS": tuple(REGISTRIES["compressors"].names()),
        "TOPOLOGIES": tuple(REGISTRIES["topologies"].names()),
        "RECIPES": tuple(REGISTRIES["recipes"].names()),
        "WORLD_SIZES": {
            e.name: e.meta["world_size"]
            for e in REGISTRIES["algorithms"].entries()
            if e.meta.get("world_size") is not None
        },
        "PAPERS": tuple(sorted({e.obj.paper for e in REGISTRIES["recipes"].entries()})),
    }


def main() -> None:
    """Print the tables as Python source, to paste above."""
    for name, table in from_registry().items():
        if name == "PAPERS":
            continue  # derived from RECIPES
        if isinstance(table, dict):
            print(f"{name} = {{")
            for key, value in table.items():
                print(f"    {key!r}: {value!r},")
            print("}")
        else:
            print(f"{name} = (")
            for key in table:
                print(f"    {key!r},")
            print(")")


if __name__ == "__main__":
    main()
