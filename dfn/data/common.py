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

from ..checks import check_int, fail
from ..progress import progress


# Lightning warns that an IterableDataset with __len__ may miscount under multiple workers. Not here:
# EpochStream stops after exactly `batches_per_epoch` batches in total, whatever the number of workers.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")

# Leading stream tags keep the seed tuples of different streams apart (SeedSequence pads short entropy
# with zeros, so (seed, 1, 2) and (seed, 1, 2, 0) would otherwise collide).
TAG_TRAIN, TAG_SHUFFLE, TAG_VAL, TAG_TEST = 101, 102, 103, 104
SET_NAMES = {TAG_VAL: "validation", TAG_TEST: "test"}  # for the progress of fixed_sequences


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
    starts = range(0, n, chunk)
    name = SET_NAMES.get(tag, "evaluation")
    parts = [make(seed_rng(seed, tag, c), min(chunk, n - start))
             for c, start in enumerate(progress(starts, f"generating the {name} set ({n} sequences)",
                                                total=len(starts), unit="chunk"))]
    return np.concatenate(parts) if parts else make(seed_rng(seed, tag, 0), 0)


def check_rank(owner: str, rank: object, world_size: object) -> None:
    """`world_size` an integer >= 1 and `rank` one of 0..world_size - 1 (`dfn.checks`' message shape)."""
    world = check_int(owner, "world_size", world_size)
    check_int(owner, "rank", rank, minimum=0, maximum=world - 1, meaning=f"one of the {world} processes")


class StridedShard(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of ``range(n)``: a rank's share of an evaluation set.

    Across ranks the shards partition ``range(n)`` exactly (no padding, no duplication).
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        check_rank("StridedShard", rank, world_size)
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
        check_rank("ShuffledShard", rank, world_size)
        check_int("ShuffledShard", "n", n, minimum=world_size, meaning="training items, at least one per rank")
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch = 0
        self.start = 0  # items of this epoch's shard to skip (a resumed epoch; set by ShuffledLoader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        perm = seed_rng(self.seed, TAG_SHUFFLE, self.epoch).permutation(self.n)
        usable = self.world_size * (self.n // self.world_size)
        return iter(perm[self.rank:usable:self.world_size][self.start:].tolist())

    def __len__(self) -> int:
        return self.n // self.world_size


class InfiniteBatches(IterableDataset):
    """An endless stream of batches built sample by sample from ``make_batch(rng, 1) -> Tensor``.

    Yields float32 (B, T, C, H, W) tensors; the DataLoader must use ``batch_size=None``. Sample ``j``
    of rank ``r``'s batch ``i`` in epoch ``e`` is drawn from ``seed_rng(seed, TAG_TRAIN, e, i, r*B + j)``:
    its place in the *global* batch ``i`` (all ranks' batches side by side). So the stream is a pure
    function of (seed, epoch, batch index): the same with any number of workers (worker ``w`` of ``W``
    makes batches ``start + w, start + w + W, ...``, which the DataLoader interleaves back in order), the
    same global batches on any number of devices at the same global batch size, and a
    resumed run continues it from any batch without replaying one.
    """

    def __init__(self, make_batch: Callable[[np.random.Generator, int], torch.Tensor], batch_size: int,
                 seed: int, rank: int = 0) -> None:
        self.make_batch, self.batch_size, self.seed, self.rank = make_batch, batch_size, seed, rank
        # Set by EpochStream before each pass; copied into worker processes when they start.
        self.epoch, self.start, self.stop = 0, 0, None

    def batch(self, epoch: int, index: int) -> torch.Tensor:
        """This rank's batch number ``index`` of ``epoch``: (B, T, C, H, W)."""
        first = self.rank * self.batch_size  # this rank's first sample in the global batch
        return torch.cat([self.make_batch(seed_rng(self.seed, TAG_TRAIN, epoch, index, first + j), 1)
                          for j in range(self.batch_size)])

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        first = self.start + worker
        indices = itertools.count(first, workers) if self.stop is None else range(first, self.stop, workers)
        for index in indices:
            yield self.batch(self.epoch, index)


class ResumablePosition:
    """Mixin for a training DataLoader whose position can be saved and restored (exact resume).

    Lightning saves ``state_dict()`` of every training loader that has one in each checkpoint (under
    ``loops.fit_loop.state_dict.combined_loader``) and hands it back to ``load_state_dict`` on resume.
    The state is the position of the next batch the trainer will train on, ``{"epoch", "batch"}``,
    read from ``progress_fn() -> (batches trained this epoch, epoch finished)`` when the checkpoint is
    written: the loader's own iterator runs ahead of the trainer (workers and Lightning's fetcher
    prefetch). A restored loader's next pass starts exactly there, so a mid-epoch resume neither
    replays nor skips a batch. Subclasses call :meth:`_next_pass` in ``__iter__``.
    """

    def _init_position(self, epoch_fn: Callable[[], int | None] | None,
                       progress_fn: Callable[[], tuple[int, bool] | None] | None) -> None:
        self.epoch_fn, self.progress_fn = epoch_fn, progress_fn
        self._passes = 0  # epochs started without a trainer
        self._epoch = 0  # epoch of the current pass
        self._resume_at: tuple[int, int] | None = None

    def _next_pass(self) -> tuple[int, int]:
        """(epoch, first batch index) of the pass that starts now."""
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        epoch, start = (self._passes if epoch is None else epoch), 0
        if self._resume_at is not None:
            (epoch, start), self._resume_at = self._resume_at, None
        self._epoch, self._passes = epoch, epoch + 1
        return epoch, start

    def state_dict(self) -> dict[str, int]:
        """The next batch the trainer will train on: ``{"epoch": e, "batch": i}``."""
        progress = self.progress_fn() if self.progress_fn is not None else None
        if progress is None:
            return {"epoch": self._passes, "batch": 0}
        done, finished = progress
        return {"epoch": self._epoch + 1, "batch": 0} if finished else {"epoch": self._epoch, "batch": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batch, length = int(state["epoch"]), int(state["batch"]), len(self)
        if epoch < 0 or not 0 <= batch <= length:
            raise ValueError(f"{type(self).__name__}: the checkpoint's data position (epoch {epoch}, batch {batch}) "
                             f"is outside this loader's 0..{length} batches per epoch -- was the batch size, "
                             f"train_batches_per_epoch or the data changed since the checkpoint?")
        self._resume_at = (epoch + 1, 0) if batch == length else (epoch, batch)


class EpochStream(ResumablePosition, DataLoader):
    """DataLoader over an :class:`InfiniteBatches` that ends each pass after ``batches_per_epoch``.

    Before every pass it stamps the epoch (``epoch_fn()``, the trainer's epoch, or else a count of
    passes) and the first batch index into the dataset; worker processes are started per pass (no
    persistent workers) so they receive both. Resumable: see :class:`ResumablePosition`.
    """

    def __init__(self, dataset: InfiniteBatches, batches_per_epoch: int, num_workers: int,
                 epoch_fn: Callable[[], int | None] | None = None,
                 progress_fn: Callable[[], tuple[int, bool] | None] | None = None) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers, persistent_workers=False)
        self.batches_per_epoch = batches_per_epoch
        self._init_position(epoch_fn, progress_fn)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        epoch, start = self._next_pass()
        self.dataset.epoch, self.dataset.start, self.dataset.stop = epoch, start, self.batches_per_epoch
        return super().__iter__()


class ShuffledLoader(ResumablePosition, DataLoader):
    """Training loader of a map-style set: batches of a :class:`ShuffledShard`, reshuffled every epoch.

    The epoch is set on the sampler here, when the pass starts (Lightning's own ``set_epoch`` comes after
    the first iterator of a resumed run is built). Resumable: see :class:`ResumablePosition`.
    """

    def __init__(self, dataset: Dataset, batch_size: int, sampler: ShuffledShard, num_workers: int,
                 drop_last: bool, epoch_fn: Callable[[], int | None] | None = None,
                 progress_fn: Callable[[], tuple[int, bool] | None] | None = None) -> None:
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                         drop_last=drop_last)
        self._init_position(epoch_fn, progress_fn)

    def __iter__(self):
        epoch, start = self._next_pass()
        self.sampler.set_epoch(epoch)
        self.sampler.start = start * self.batch_size  # skip the batches already trained on
        return super().__iter__()


class ClipArray(Dataset):
    """Map-style view of a fixed uint8 array of clips (N, T, H, W) or (N, T, C, H, W).

    ``__getitem__`` returns float32 (T, C, H, W) in [0, 1]; the array stays uint8 in memory.
    """

    def __init__(self, clips: np.ndarray) -> None:
        if clips.ndim == 4:
            clips = clips[:, :, None]  # (N, T, H, W) -> (N, T, 1, H, W)
        if clips.ndim != 5:
            raise fail("ClipArray", "clips", "an array (N, T, H, W) or (N, T, C, H, W)", clips,
                       shown=f"shape {clips.shape}")
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_float_clips(self.clips[i])


class SeededDataModule(L.LightningDataModule):
    """Base class of every data module, video or not: validation of the loader arguments, rank
    discovery, the seeded resumable training stream and the rank-sharded evaluation loaders.

    Subclasses fill ``self.val_set / self.test_set / self.predict_set`` (map-style datasets) in
    ``setup`` and implement ``train_dataloader`` (generated data: ``self._stream(make_batch, n)``;
    map-style sets: ``self._shuffled_loader(train_set)``).
    """

    def __init__(self, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        owner = type(self).__name__
        check_int(owner, "batch_size", batch_size)
        check_int(owner, "num_workers", num_workers, minimum=0)
        check_int(owner, "seed", seed, minimum=0)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.predict_set: Dataset | None = None

    def rank_info(self) -> tuple[int, int]:
        """(world_size, global_rank) of the attached trainer, (1, 0) without one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def current_epoch(self) -> int | None:
        """The epoch the trainer is about to train (or training); None without a trainer.

        ``fit_loop.epoch_progress.current.processed`` rather than ``trainer.current_epoch``: when a run
        resumes from an end-of-epoch checkpoint, the loader is built before Lightning advances
        ``current_epoch``, and the count of processed epochs is already right then.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None
        loop = getattr(trainer, "fit_loop", None)
        return int(trainer.current_epoch) if loop is None else int(loop.epoch_progress.current.processed)

    def train_progress(self) -> tuple[int, bool] | None:
        """(training batches finished in the current epoch, whether the epoch's training is over), read
        from the trainer when a checkpoint is written; None without a trainer."""
        loop = getattr(getattr(getattr(self, "trainer", None), "fit_loop", None), "epoch_loop", None)
        if loop is None:
            return None
        done = int(loop.batch_progress.current.processed)
        return done, done >= self.trainer.num_training_batches

    def _stream(self, make_batch: Callable[[np.random.Generator, int], torch.Tensor], batches_per_epoch: int
                ) -> EpochStream:
        """The resumable training stream of a generated data set (see :class:`EpochStream`)."""
        _, rank = self.rank_info()
        stream = InfiniteBatches(make_batch, self.batch_size, self.seed, rank)
        return EpochStream(stream, batches_per_epoch, self.num_workers, self.current_epoch, self.train_progress)

    def _shuffled_loader(self, dataset: Dataset) -> DataLoader:
        """Training loader of a map-style set: a rank-disjoint shard, reshuffled every epoch."""
        world, rank = self.rank_info()
        sampler = ShuffledShard(len(dataset), self.seed, rank, world)
        # Drop a ragged last batch, unless that would leave no batch at all (tiny footage).
        return ShuffledLoader(dataset, self.batch_size, sampler, self.num_workers,
                              drop_last=len(sampler) >= self.batch_size, epoch_fn=self.current_epoch,
                              progress_fn=self.train_progress)

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


class ClipDataModule(SeededDataModule):
    """Base class of the video data modules: batches of clips (B, T, C, H, W).

    Subclasses set ``frames_in/frames_out/channels/image_size`` in ``__init__`` and fill
    ``self.val_set / self.test_set / self.predict_set`` (map-style datasets of (T, C, H, W)) in
    ``setup``; they implement ``train_dataloader`` (map-style sets: ``self._shuffled_loader(train_set)``).
    """

    def __init__(self, frames_in: int, frames_out: int, channels: int, image_size: int,
                 batch_size: int, num_workers: int, seed: int) -> None:
        for key, value in (("frames_in", frames_in), ("frames_out", frames_out), ("image_size", image_size)):
            check_int(type(self).__name__, key, value)
        super().__init__(batch_size, num_workers, seed)
        self.frames_in, self.frames_out = frames_in, frames_out
        self.channels, self.image_size = channels, image_size

    @property
    def frames(self) -> int:
        """T = frames_in + frames_out, the length of every clip."""
        return self.frames_in + self.frames_out
