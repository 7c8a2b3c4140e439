"""Tasks: datasets (data + sharding) and models, registered in DATASETS and MODELS."""

from suite.tasks import datasets, models  # noqa: F401  (registration side effects)
from suite.tasks.data import (
    DataNotFoundError,
    Dataset,
    ShardedBatches,
    TensorSplit,
    eval_batches,
    eval_shard,
)

__all__ = [
    "DataNotFoundError",
    "Dataset",
    "ShardedBatches",
    "TensorSplit",
    "eval_batches",
    "eval_shard",
]
