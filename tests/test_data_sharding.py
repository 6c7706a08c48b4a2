"""DDP-style self-sharding: evaluation sets counted exactly once, training shards disjoint."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dfn.data import MovingMNIST, ShuffledShard, StridedShard, SyntheticHighway


def assert_same_batches(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    """The same batches in the same order: equal counts (an empty or short loader fails), each equal."""
    assert len(got) == len(expected), f"{len(got)} batches, expected {len(expected)}"
    for i, (a, b) in enumerate(zip(got, expected)):
        assert torch.equal(a, b), f"batch {i} differs"


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


def _tiny_mnist(**kw):
    args = dict(frames_in=2, frames_out=1, image_size=32, batch_size=4, train_batches_per_epoch=5, val_size=4,
                test_size=4)
    args.update(kw)
    return MovingMNIST(**args)


@pytest.mark.parametrize("make", [_tiny_mnist, lambda **kw: SyntheticHighway(
    frames_in=2, frames_out=1, image_size=32, batch_size=kw.get("batch_size", 4), train_batches_per_epoch=5,
    val_size=4, test_size=4, num_workers=kw.get("num_workers", 0))])
def test_training_stream_same_for_any_workers_and_devices(make):
    """The global batch sequence does not depend on num_workers or on the number of devices
    (at the same global batch size)."""
    reference = list(make().train_dataloader())
    assert len(reference) == 5 and len({float(b.sum()) for b in reference}) == 5
    workers = list(make(num_workers=2).train_dataloader())
    assert_same_batches(workers, reference)
    halves = []
    for rank in range(2):  # two devices with half the batch each: side by side, the same global batches
        dm = make(batch_size=2)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, current_epoch=0)
        halves.append(list(dm.train_dataloader()))
    assert len(halves[0]) == len(halves[1]) == len(reference)
    assert_same_batches([torch.cat([a, b]) for a, b in zip(*halves)], reference)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_resumes_mid_epoch_without_replaying(num_workers):
    dm = _tiny_mnist(num_workers=num_workers)
    loader = dm.train_dataloader()
    epoch0, epoch1 = list(loader), list(loader)
    resumed = _tiny_mnist(num_workers=num_workers).train_dataloader()
    resumed.load_state_dict({"epoch": 1, "batch": 2})  # two batches of epoch 1 were trained on
    rest = list(resumed)
    assert_same_batches(rest, epoch1[2:])
    assert len(rest) == 3
    assert not torch.equal(rest[0], epoch0[2])
    assert len(list(resumed)) == 5  # the pass after is a whole epoch again
    finished = _tiny_mnist().train_dataloader()
    finished.load_state_dict({"epoch": 0, "batch": 5})  # saved at the end of epoch 0: next is epoch 1
    assert_same_batches(list(finished), epoch1)


def test_map_style_loader_resumes_mid_epoch():
    from dfn.data.common import ClipDataModule, ShuffledLoader

    data = torch.arange(40.0).reshape(20, 2)
    dm = ClipDataModule(1, 1, 1, 8, batch_size=3, num_workers=0, seed=0)
    full = list(dm._shuffled_loader(data))
    loader = dm._shuffled_loader(data)
    assert isinstance(loader, ShuffledLoader)
    epochs = [list(loader), list(loader)]
    assert_same_batches(full, epochs[0])
    assert not torch.equal(epochs[0][0], epochs[1][0])
    resumed = dm._shuffled_loader(data)
    resumed.load_state_dict({"epoch": 1, "batch": 4})
    rest = list(resumed)
    assert_same_batches(rest, epochs[1][4:])
    assert len(rest) == len(epochs[1]) - 4
    with pytest.raises(ValueError, match="outside this loader's 0..6 batches"):
        resumed.load_state_dict({"epoch": 1, "batch": 9})
