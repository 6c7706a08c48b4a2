"""Shared machinery for every data module: rank-aware samplers, seeded streams, the base DataModule.

Multi-device contract (the trainer runs with ``use_distributed_sampler=False``, so we shard ourselves):

* val / test / predict: :class:`StridedShard` gives rank ``r`` of ``w`` the indices ``r, r+w, r+2w, ...``
  -- no padding, no duplicates, so every sequence is evaluated exactly once across ranks (shard
  lengths may differ by one).
* map-style training sets: :class:`ShuffledShard` draws one seeded permutation per epoch (same on every
  rank) and gives each rank a disjoint, equal-length slice of it (the remainder is dropped so that all
  ranks run the same number of steps -- unequal step counts would deadlock DDP's gradient all-reduce).
* infinite training streams: :class:`EpochStream` is a DataLoader that tells its
  :class:`InfiniteBatches` dataset the epoch before every pass; the dataset seeds each batch from
  ``(seed, epoch, rank, worker)`` so all four change the data.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info


# Lightning warns that an IterableDataset with __len__ may miscount under multiple workers. Not here:
# EpochStream stops after exactly `batches_per_epoch` batches in total, whatever the number of workers.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")

# Leading stream tags keep the seed tuples of different streams apart (SeedSequence pads short entropy
# with zeros, so (seed, 1, 2) and (seed, 1, 2, 0) would otherwise collide).
TAG_TRAIN, TAG_SHUFFLE, TAG_VAL, TAG_TEST = 101, 102, 103, 104


def to_float_clips(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 array/tensor (any shape) -> float32 tensor of the same shape in [0, 1] (x / 255).

    Float inputs are assumed to be in [0, 1] already and are only cast.
    """
    t = torch.as_tensor(x)
    if t.dtype == torch.uint8:
        t = t.float().div_(255.0)
    else:
        t = t.float()
    return t


def seed_rng(*entropy: int) -> np.random.Generator:
    """A numpy Generator seeded by a tuple of non-negative ints (SeedSequence mixes them properly,
    so (seed, epoch=1, rank=0) and (seed, epoch=0, rank=1) are unrelated streams)."""
    return np.random.default_rng(np.random.SeedSequence([int(e) for e in entropy]))


def fixed_sequences(make: Callable[[np.random.Generator, int], np.ndarray], n: int, seed: int, tag: int,
                    chunk: int = 500) -> np.ndarray:
    """A fixed evaluation set of ``n`` sequences, generated in seeded chunks of ``chunk``.

    ``make(rng, count)`` returns ``count`` sequences (count, ...). Chunk ``c`` always uses
    ``seed_rng(seed, tag, c)``, so the first k sequences do not depend on ``n`` (the predict set is a
    prefix of the test set without generating all of it).
    """
    parts = [make(seed_rng(seed, tag, c), min(chunk, n - start)) for c, start in enumerate(range(0, n, chunk))]
    return np.concatenate(parts) if parts else make(seed_rng(seed, tag, 0), 0)


class StridedShard(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of ``range(n)``: a rank's share of an evaluation set.

    Across ranks the shards partition ``range(n)`` exactly (no padding, no duplication).
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"StridedShard: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class ShuffledShard(Sampler[int]):
    """A rank's disjoint slice of a per-epoch seeded permutation of ``range(n)``.

    Every rank draws the same permutation (same seed and epoch), then takes positions
    ``rank, rank + w, ...`` of its first ``w * (n // w)`` entries, so ranks never overlap and all
    see ``n // w`` items. Lightning calls :meth:`set_epoch` at the start of every training epoch.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"ShuffledShard: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if n < world_size:
            raise ValueError(f"ShuffledShard: {n} training items cannot be split over {world_size} ranks")
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        perm = seed_rng(self.seed, TAG_SHUFFLE, self.epoch).permutation(self.n)
        usable = self.world_size * (self.n // self.world_size)
        return iter(perm[self.rank:usable:self.world_size].tolist())

    def __len__(self) -> int:
        return self.n // self.world_size


class InfiniteBatches(IterableDataset):
    """An endless stream of ready-made batches from ``make_batch(rng, batch_size) -> Tensor``.

    Yields float32 (B, T, C, H, W) tensors; the DataLoader must use ``batch_size=None``. Generating a
    whole batch per call is what lets the generators vectorise. The rng of each pass is seeded by
    ``(seed, epoch, rank, worker_id)``: change any of them and the stream changes; fix them all and
    it repeats exactly.
    """

    def __init__(self, make_batch: Callable[[np.random.Generator, int], torch.Tensor], batch_size: int,
                 seed: int, rank: int = 0) -> None:
        self.make_batch, self.batch_size, self.seed, self.rank = make_batch, batch_size, seed, rank
        self.epoch = 0  # set by EpochStream before each pass; copied into workers when they start

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        rng = seed_rng(self.seed, TAG_TRAIN, self.epoch, self.rank, worker)
        while True:
            yield self.make_batch(rng, self.batch_size)


class EpochStream(DataLoader):
    """DataLoader over an :class:`InfiniteBatches` that ends each pass after ``batches_per_epoch``.

    Before every pass it stamps the epoch (from ``epoch_fn``, e.g. the trainer's current epoch, or
    else a count of passes) into the dataset; worker processes are started per pass (no persistent
    workers) so they receive the fresh epoch.
    """

    def __init__(self, dataset: InfiniteBatches, batches_per_epoch: int, num_workers: int,
                 epoch_fn: Callable[[], int | None] | None = None) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers, persistent_workers=False)
        self.batches_per_epoch = batches_per_epoch
        self.epoch_fn = epoch_fn
        self._passes = 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        self.dataset.epoch = self._passes if epoch is None else epoch
        self._passes += 1
        return itertools.islice(super().__iter__(), self.batches_per_epoch)


class ClipArray(Dataset):
    """Map-style view of a fixed uint8 array of clips (N, T, H, W) or (N, T, C, H, W).

    ``__getitem__`` returns float32 (T, C, H, W) in [0, 1]; the array stays uint8 in memory.
    """

    def __init__(self, clips: np.ndarray) -> None:
        if clips.ndim == 4:
            clips = clips[:, :, None]  # (N, T, H, W) -> (N, T, 1, H, W)
        if clips.ndim != 5:
            raise ValueError(f"ClipArray: expected (N,T,H,W) or (N,T,C,H,W), got shape {clips.shape}")
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_float_clips(self.clips[i])


class ClipDataModule(L.LightningDataModule):
    """Base class: rank discovery, validation of the common arguments, the evaluation loaders.

    Subclasses set ``frames_in/frames_out/channels/image_size`` in ``__init__`` and fill
    ``self.val_set / self.test_set / self.predict_set`` (map-style datasets of (T, C, H, W)) in
    ``setup``; they implement ``train_dataloader`` (map-style sets: ``self._shuffled_loader(train_set)``).
    """

    def __init__(self, frames_in: int, frames_out: int, channels: int, image_size: int,
                 batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        name = type(self).__name__
        for key, value, low in (("frames_in", frames_in, 1), ("frames_out", frames_out, 1),
                                ("image_size", image_size, 1), ("batch_size", batch_size, 1),
                                ("num_workers", num_workers, 0), ("seed", seed, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}: {key} must be an integer >= {low}, got {value!r}")
        self.frames_in, self.frames_out = frames_in, frames_out
        self.channels, self.image_size = channels, image_size
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.predict_set: Dataset | None = None

    @property
    def frames(self) -> int:
        """T = frames_in + frames_out, the length of every clip."""
        return self.frames_in + self.frames_out

    def rank_info(self) -> tuple[int, int]:
        """(world_size, global_rank) of the attached trainer, (1, 0) without one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def current_epoch(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else int(trainer.current_epoch)

    def _shuffled_loader(self, dataset: Dataset) -> DataLoader:
        """Training loader of a map-style set: a rank-disjoint shard, reshuffled every epoch."""
        world, rank = self.rank_info()
        sampler = ShuffledShard(len(dataset), self.seed, rank, world)
        # Drop a ragged last batch, unless that would leave no batch at all (tiny footage).
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, drop_last=len(sampler) >= self.batch_size)

    def _eval_loader(self, dataset: Dataset | None, stage: str) -> DataLoader:
        if dataset is None:
            self.setup(stage)
            dataset = {"validate": self.val_set, "test": self.test_set, "predict": self.predict_set}[stage]
        world, rank = self.rank_info()
        return DataLoader(dataset, batch_size=self.batch_size, sampler=StridedShard(len(dataset), rank, world),
                          num_workers=self.num_workers, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        loader = self._eval_loader(self.val_set, "validate")
        if len(loader.dataset) == 0:  # Lightning would skip validation and checkpointing on val/loss silently
            raise ValueError(f"{type(self).__name__}: the validation split is empty (val_fraction / val_size 0, or "
                             "too little data), but validation runs and checkpoints monitor val/loss. Give "
                             "val_fraction > 0 (or val_size >= 1), or train without validation: "
                             "--trainer.limit_val_batches 0 --checkpoint.monitor null")
        return loader

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.predict_set, "predict")
