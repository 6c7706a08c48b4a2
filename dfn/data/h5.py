"""The DFN authors' highway driving HDF5 files (``highwayDriving_train.h5`` / ``highwayDriving_test.h5``).

Each file holds one long grayscale frame sequence under the key ``highway_L``: (N, H, W) or (N, 1, H, W)
(also (N, H, W, 1)), uint8 0..255 or float in [0, 1]. Clips are windows of frames_in + frames_out
consecutive frames. Validation is the last ``val_fraction`` of the training file's frames (windows never
cross the train/val boundary); the test file is the test set. The data set is not publicly mirrored:
bring the files yourself. Needs h5py (``pip install 'dfn[h5]'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..checks import check_int, check_number
from .common import ClipDataModule, to_float_clips


def _h5py():
    try:
        import h5py
    except ImportError as err:
        raise ImportError("HighwayH5 needs h5py: pip install 'dfn[h5]' (or pip install h5py)") from err
    return h5py


def h5_shape(path: str | Path, key: str = "highway_L") -> tuple[int, ...]:
    """Validate the file and key without loading the frames; returns the dataset's shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: HDF5 file not found (the DFN highway files are not publicly "
                                "mirrored; put highwayDriving_train.h5 / highwayDriving_test.h5 there yourself)")
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise KeyError(f"{path}: no dataset {key!r} (keys: {sorted(f.keys())})")
            shape = f[key].shape
    except KeyError:
        raise
    except Exception as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({type(err).__name__}: {err})") from err
    return shape


def load_h5_frames(path: str | Path, key: str = "highway_L") -> np.ndarray:
    """Read all frames -> (N, H, W) uint8, validating layout and value range."""
    shape = h5_shape(path, key)
    with _h5py().File(path, "r") as f:
        arr = f[key][()]
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]  # (N, 1, H, W) -> (N, H, W)
    elif arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]  # (N, H, W, 1) -> (N, H, W)
    if arr.ndim != 3:
        raise ValueError(f"{path}[{key}]: expected grayscale frames (N, H, W) or (N, 1, H, W), got shape {shape}")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{path}[{key}]: float frames outside [0, 1] / [0, 255] (min {lo}, max {hi})")
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    raise ValueError(f"{path}[{key}]: dtype {arr.dtype} not supported (expected uint8, or float in [0, 1])")


class FrameWindows(Dataset):
    """Windows of ``frames`` consecutive frames of one sequence (N, H, W) uint8 -> float32 (T, 1, H, W)."""

    def __init__(self, frames_array: np.ndarray, starts: list[int], frames: int) -> None:
        self.array, self.starts, self.frames = frames_array, starts, frames

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> torch.Tensor:
        s = self.starts[i]
        return to_float_clips(self.array[s:s + self.frames]).unsqueeze(1)  # (T, H, W) -> (T, 1, H, W)


class HighwayH5(ClipDataModule):
    """The DFN highway driving data (3 frames in, 3 out by default), from the authors' HDF5 files.

    ``stride`` spaces the training windows, ``eval_stride`` the validation/test windows (1 = every
    window, as many as the data allow). Predict: the first ``predict_size`` test windows.
    """

    def __init__(
        self,
        train_file: str = "data/highwayDriving_train.h5",
        test_file: str = "data/highwayDriving_test.h5",
        key: str = "highway_L",
        frames_in: int = 3,
        frames_out: int = 3,
        stride: int = 1,
        eval_stride: int = 1,
        val_fraction: float = 0.1,
        predict_size: int = 32,
        batch_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        shape = h5_shape(train_file, key)  # fail early, and learn the frame size
        test_shape = h5_shape(test_file, key)
        hw = shape[-2:] if len(shape) == 3 or shape[1] == 1 else shape[1:3]
        if len(shape) not in (3, 4) or hw[0] != hw[1]:
            raise ValueError(f"{train_file}[{key}]: expected square frames (N, H, W) or (N, 1, H, W), got {shape}")
        super().__init__(frames_in, frames_out, 1, int(hw[0]), batch_size, num_workers, seed)
        for name, value in (("stride", stride), ("eval_stride", eval_stride), ("predict_size", predict_size)):
            check_int("HighwayH5", name, value)
        check_number("HighwayH5", "val_fraction", val_fraction, low=0, high=1, high_open=True)
        for path, shp in ((train_file, shape), (test_file, test_shape)):
            if shp[0] < self.frames:
                raise ValueError(f"{path}[{key}]: {shp[0]} frames, shorter than one clip ({self.frames})")
        self.train_file, self.test_file, self.key = train_file, test_file, key
        self.stride, self.eval_stride, self.val_fraction, self.predict_size = stride, eval_stride, val_fraction, predict_size
        self.train_set: FrameWindows | None = None

    def setup(self, stage: str | None = None) -> None:
        T = self.frames
        if stage in (None, "fit", "validate") and self.train_set is None:
            train = load_h5_frames(self.train_file, self.key)
            if train.shape[1:] != (self.image_size, self.image_size):
                raise ValueError(f"{self.train_file}: frames are {train.shape[1:]}, expected square {self.image_size}")
            cut = int(round(len(train) * (1 - self.val_fraction)))  # train: [0, cut), val: [cut, N)
            self.train_set = FrameWindows(train, list(range(0, cut - T + 1, self.stride)), T)
            self.val_set = FrameWindows(train, list(range(cut, len(train) - T + 1, self.eval_stride)), T)
            if len(self.train_set) == 0 or len(self.val_set) == 0:  # never a silent "no validation"
                raise ValueError(f"{self.train_file}: {len(train)} frames are too few for train and val clips of "
                                 f"{T} frames with val_fraction={self.val_fraction} (validation needs "
                                 f"val_fraction > 0: model selection)")
        if stage in (None, "test", "predict") and self.test_set is None:
            test = load_h5_frames(self.test_file, self.key)
            if test.shape[1:] != (self.image_size, self.image_size):
                raise ValueError(f"{self.test_file}: frames are {test.shape[1:]}, but the training frames are "
                                 f"{self.image_size}x{self.image_size}")
            self.test_set = FrameWindows(test, list(range(0, len(test) - T + 1, self.eval_stride)), T)
            self.predict_set = FrameWindows(test, self.test_set.starts[: self.predict_size], T)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._shuffled_loader(self.train_set)
