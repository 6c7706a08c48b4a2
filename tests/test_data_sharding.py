"""DDP-style self-sharding: evaluation sets counted exactly once, training shards disjoint."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dfn.data import MovingMNIST, ShuffledShard, StridedShard, SyntheticHighway


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n", [10, 11, 1])
def test_strided_shard_partitions(world, n):
    shards = [list(StridedShard(n, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(StridedShard(n, r, world)) for r in range(world)] == list(map(len, shards))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_test_set_covered_exactly_once(world):
    dm = MovingMNIST(frames_in=2, frames_out=2, image_size=32, batch_size=3, test_size=10, val_size=5)
    dm.setup("test")
    full = torch.cat(list(dm.test_dataloader()))
    seen = []
    for rank in range(world):
        dm.trainer = SimpleNamespace(world_size=world, global_rank=rank, current_epoch=0)
        seen.append(torch.cat(list(dm.test_dataloader())))
    got = torch.cat(seen)
    assert got.shape == full.shape  # no padding, no duplicates
    for seq in full:  # every test sequence appears exactly once across ranks
        assert sum(torch.equal(seq, g) for g in got) == 1


@pytest.mark.parametrize("world", [2, 3])
def test_shuffled_shard_disjoint_and_reseeded(world):
    n = 20
    shards = [ShuffledShard(n, seed=0, rank=r, world_size=world) for r in range(world)]
    first = [list(s) for s in shards]
    flat = [i for s in first for i in s]
    assert len(flat) == len(set(flat)) == world * (n // world)  # disjoint, equal lengths
    for s in shards:
        s.set_epoch(1)
    assert [list(s) for s in shards] != first  # a new order every epoch
    assert list(ShuffledShard(n, 0, 0, world)) == first[0]  # reproducible


def test_eval_loaders_of_highway_shard_too():
    dm = SyntheticHighway(batch_size=4, val_size=7, test_size=9, predict_size=5)
    dm.setup()
    sizes = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, current_epoch=0)
        sizes.append((sum(len(b) for b in dm.val_dataloader()), sum(len(b) for b in dm.test_dataloader()),
                      sum(len(b) for b in dm.predict_dataloader())))
    assert [sum(x) for x in zip(*sizes)] == [7, 9, 5]


def test_lightning_trainer_epochs_and_stream():
    """A real Trainer: an 'epoch' is train_batches_per_epoch batches, and each epoch's data differ."""
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[tuple[int, float]] = []

        def training_step(self, batch, i):
            self.seen.append((self.current_epoch, float(batch.sum())))
            return (self.w * batch.mean()).sum()

        def validation_step(self, batch, i):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = MovingMNIST(frames_in=2, frames_out=1, image_size=32, batch_size=2, train_batches_per_epoch=3,
                     val_size=4, test_size=4)
    probe = Probe()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, use_distributed_sampler=False, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(probe, datamodule=dm)
    epochs = [e for e, _ in probe.seen]
    assert epochs == [0, 0, 0, 1, 1, 1]
    sums = [s for _, s in probe.seen]
    assert len(set(sums)) == 6
