"""What a dataset is to the training loop, and how each rank reads its shard.

A :class:`Dataset` has a train and a test split plus a batch-level ``preprocess`` (scaling,
normalisation, augmentation). Splits held in memory (:class:`TensorSplit`) are sliced directly:
far cheaper per step than a DataLoader for small images. Splits read from files (an ImageNet
folder) are ordinary ``torch.utils.data.Dataset`` objects fed through a DataLoader.

Sharding follows ``torch.utils.data.DistributedSampler`` exactly (we call it for the indices):
each epoch the index set is permuted with ``seed + epoch``, padded to a multiple of the world
size, and rank r takes every world_size-th index starting at r. Hence N ranks with batch B see,
step for step, the same samples as one process with batch N*B, which is what the all-reduce
equivalence test relies on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from suite.errors import DataNotFoundError  # noqa: F401  (the readers' error)

# preprocess(batch_x, train, generator) -> float tensor ready for the model.
Preprocess = Callable[[Tensor, bool, "torch.Generator | None"], Tensor]


@dataclass(frozen=True)
class TensorSplit:
    """A split held in memory: raw inputs ``x`` (any dtype, preprocessed per batch) and labels."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)


def _identity(x: Tensor, train: bool, generator: torch.Generator | None) -> Tensor:
    return x


@dataclass(frozen=True)
class Dataset:
    """A classification task's data, as the loop sees it."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    train: TensorSplit | torch.utils.data.Dataset
    test: TensorSplit | torch.utils.data.Dataset
    preprocess: Preprocess = _identity


class _IndexLength:
    """Stand-in dataset for DistributedSampler, which needs only ``len``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def shard_size(n: int, world_size: int) -> int:
    """Training samples per rank per epoch: ``DistributedSampler`` pads ``n`` to a multiple of
    the world size, so every rank gets ceil(n / world_size)."""
    return -(-n // world_size)


def optimizer_steps_per_epoch(shard: int, batch_size: int, micro_batches: int = 1) -> int:
    """Optimizer steps per epoch of the training loop: a rank's full batches of its ``shard``
    samples, ``micro_batches`` of them per step, at least 1."""
    return max(1, shard // batch_size // micro_batches)


class _ResumableSampler(torch.utils.data.Sampler):
    """The wrapped sampler's indices, the first ``skip`` of them left out once (the batches of
    a resumed epoch that were trained on before the checkpoint)."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler, self.skip = sampler, 0

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.sampler), skip, None)

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


class ShardedBatches:
    """Endless training batches of one rank's shard, epoch after epoch.

    ``next(batches)`` returns ``(x, y)`` on ``device``. Every rank gets ``steps_per_epoch`` full
    batches per epoch (the tail that does not fill a batch is dropped, on every rank alike).
    ``state_dict()`` is the position (epoch, batches taken in it, augmentation generator):
    loaded into a fresh instance, the same batches follow. (A file-backed split's DataLoader
    workers draw a new base seed for a resumed epoch: their own randomness, if any, differs.)
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        device: torch.device | str = "cpu",
        num_workers: int = 0,
    ) -> None:
        self.dataset, self.batch_size, self.device = dataset, batch_size, torch.device(device)
        split = dataset.train
        self.sampler = DistributedSampler(
            _IndexLength(len(split)), num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )
        self.steps_per_epoch = self.sampler.num_samples // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch size {batch_size} is larger than a rank's shard of {dataset.name} "
                f"({self.sampler.num_samples} samples with {world_size} ranks)"
            )
        # Augmentation randomness: per rank, reproducible.
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)
        self.epoch = 0
        self.position = 0  # batches taken in this epoch
        self._loader: DataLoader | None = None
        self._resumable = _ResumableSampler(self.sampler)
        if not isinstance(split, TensorSplit):
            self._loader = DataLoader(
                split,
                batch_size=batch_size,
                sampler=self._resumable,
                num_workers=num_workers,
                drop_last=True,
                persistent_workers=num_workers > 0,
                pin_memory=self.device.type == "cuda",
            )
        self._it: Iterator = iter(())
        self._start_epoch(0)

    def _start_epoch(self, epoch: int, position: int = 0) -> None:
        """Start ``epoch`` at its batch ``position`` (0: its beginning)."""
        self.epoch, self.position = epoch, position
        self.sampler.set_epoch(epoch)
        if self._loader is not None:
            self._resumable.skip = position * self.batch_size
            self._it = iter(self._loader)
        else:
            order = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
            usable = self.steps_per_epoch * self.batch_size
            self._it = iter(order[:usable].split(self.batch_size)[position:])

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._start_epoch(int(state["epoch"]), int(state["position"]))
        self.generator.set_state(state["generator"])

    def __iter__(self) -> ShardedBatches:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        try:
            item = next(self._it)
        except StopIteration:
            self._start_epoch(self.epoch + 1)
            item = next(self._it)
        self.position += 1
        if self._loader is not None:
            x, y = item
        else:
            split: TensorSplit = self.dataset.train  # type: ignore[assignment]
            x, y = split.x[item], split.y[item]
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        return self.dataset.preprocess(x, True, self.generator), y


def eval_shard(n: int, rank: int, world_size: int) -> range:
    """Contiguous, exact (no padding) share of ``n`` test samples for ``rank``."""
    start = n * rank // world_size
    return range(start, n * (rank + 1) // world_size)


def eval_batches(
    dataset: Dataset,
    indices: range,
    batch_size: int,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Test batches over ``indices`` of the test split, preprocessed without augmentation."""
    split = dataset.test
    if isinstance(split, TensorSplit):
        for lo in range(indices.start, indices.stop, batch_size):
            hi = min(lo + batch_size, indices.stop)
            x = split.x[lo:hi].to(device)
            yield dataset.preprocess(x, False, None), split.y[lo:hi].to(device)
        return
    subset = torch.utils.data.Subset(split, indices)
    for x, y in DataLoader(subset, batch_size=batch_size, num_workers=num_workers):
        yield dataset.preprocess(x.to(device), False, None), y.to(device)
