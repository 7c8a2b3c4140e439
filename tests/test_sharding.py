"""Each rank reads its own seeded shard, with DistributedSampler semantics."""

from __future__ import annotations

import pytest
import torch

from suite.tasks.data import Dataset, ShardedBatches, TensorSplit, eval_batches, eval_shard


def _dataset(n: int = 103) -> Dataset:
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)  # sample i is the number i
    split = TensorSplit(x, torch.zeros(n, dtype=torch.long))
    return Dataset("ids", (1,), 2, split, split)


def _ids(batches: ShardedBatches, steps: int) -> list[list[int]]:
    return [next(batches)[0].squeeze(1).long().tolist() for _ in range(steps)]


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_together_read_the_single_process_union_batch(world: int) -> None:
    data, batch = _dataset(), 5
    steps = (103 // world) // batch  # one epoch on the ranks
    shards = [_ids(ShardedBatches(data, batch, r, world, seed=3), steps) for r in range(world)]
    single = _ids(ShardedBatches(data, batch * world, 0, 1, seed=3), steps)
    for step in range(steps):
        union = sorted(i for shard in shards for i in shard[step])
        assert union == sorted(single[step])
    seen = [i for shard in shards for b in shard for i in b]
    assert len(seen) == len(set(seen))  # ranks never share a sample within an epoch


def test_shards_are_seeded_and_reshuffled_each_epoch() -> None:
    data = _dataset(40)
    a = _ids(ShardedBatches(data, 4, 1, 2, seed=7), 10)  # 5 steps per epoch: two epochs
    b = _ids(ShardedBatches(data, 4, 1, 2, seed=7), 10)
    c = _ids(ShardedBatches(data, 4, 1, 2, seed=8), 10)
    assert a == b
    assert a != c
    assert (
        len({i for batch in a[:5] for i in batch}) == 20
    )  # half of the 40 samples, each once per epoch
    assert a[:5] != a[5:]  # the next epoch is a new permutation


def test_a_batch_larger_than_the_shard_is_an_error() -> None:
    with pytest.raises(ValueError, match="larger than a rank's shard"):
        ShardedBatches(_dataset(10), 8, 0, 4, seed=0)


@pytest.mark.parametrize("world", [1, 3, 4])
def test_eval_shards_cover_the_test_set_exactly_once(world: int) -> None:
    data = _dataset(103)
    seen = []
    for r in range(world):
        for x, _ in eval_batches(data, eval_shard(103, r, world), 16):
            seen += x.squeeze(1).long().tolist()
    assert sorted(seen) == list(range(103))
