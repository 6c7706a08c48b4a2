"""Synthetic highway generator and the authors' HDF5 highway files (small files written here)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from dfn.data import HighwayH5, SyntheticHighway, synthetic_highway


def test_generator_shape_range_seed():
    a = synthetic_highway(6, 6, 64, np.random.default_rng(0))
    assert a.shape == (6, 6, 64, 64) and a.dtype == np.uint8 and a.min() < 80 and a.max() > 200
    assert np.array_equal(a, synthetic_highway(6, 6, 64, np.random.default_rng(0)))
    assert not np.array_equal(a, synthetic_highway(6, 6, 64, np.random.default_rng(1)))
    assert synthetic_highway(2, 4, 96, np.random.default_rng(0), curves=False, shake=False, num_cars=0).shape == (2, 4, 96, 96)


def test_motion_depends_on_position():
    """Near road (bottom) changes much more per frame than the distant scene (upper part): the motion
    field is not uniform, which is what local dynamic filters are for."""
    v = synthetic_highway(64, 6, 64, np.random.default_rng(2), shake=False).astype(np.float32)
    change = np.abs(np.diff(v, axis=1)).mean(axis=(0, 1))  # (H, W) mean per-pixel temporal change
    assert change[48:].mean() > 2 * change[:16].mean()
    assert change[48:].mean() > 1.0  # and the near road does move


def test_datamodule_batches_and_fixed_test():
    dm = SyntheticHighway(batch_size=4, train_batches_per_epoch=2, val_size=5, test_size=6, predict_size=3)
    assert (dm.frames_in, dm.frames_out, dm.channels, dm.image_size) == (3, 3, 1, 64)
    dm.setup()
    train = list(dm.train_dataloader())
    assert len(train) == 2 and train[0].shape == (4, 6, 1, 64, 64) and train[0].dtype == torch.float32
    test = torch.cat(list(dm.test_dataloader()))
    other = SyntheticHighway(val_size=5, test_size=6)
    other.setup("test")
    assert torch.equal(test, torch.cat(list(other.test_dataloader())))  # fixed by the seed
    assert torch.equal(torch.cat(list(dm.predict_dataloader())), test[:3])
    val = torch.cat(list(dm.val_dataloader()))
    assert not torch.equal(val[:5], test[:5])
    with pytest.raises(ValueError, match="SyntheticHighway: num_cars must be an integer >= 0, got -1$"):
        SyntheticHighway(num_cars=-1)


def write_h5(path, frames: np.ndarray, key: str = "highway_L") -> str:
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=frames)
    return str(path)


@pytest.mark.parametrize("layout", ["nhw_uint8", "n1hw_float"])
def test_h5_loader(tmp_path, layout):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (60, 64, 64), dtype=np.uint8)
    stored = frames if layout == "nhw_uint8" else (frames[:, None].astype(np.float32) / 255)
    train = write_h5(tmp_path / "highwayDriving_train.h5", stored)
    test = write_h5(tmp_path / "highwayDriving_test.h5", stored[:20])
    dm = HighwayH5(train_file=train, test_file=test, batch_size=4, val_fraction=0.2)
    assert (dm.frames_in, dm.frames_out, dm.channels, dm.image_size) == (3, 3, 1, 64)
    dm.setup()
    assert len(dm.train_set) == 48 - 5 and len(dm.val_set) == 12 - 5 and len(dm.test_set) == 15
    b = next(iter(dm.train_dataloader()))
    assert b.shape == (4, 6, 1, 64, 64) and b.dtype == torch.float32
    first = dm.test_set[0]
    assert torch.allclose(first[:, 0], torch.from_numpy(frames[:6]).float() / 255, atol=1e-6)
    assert len(torch.cat(list(dm.predict_dataloader()))) == 15


def test_h5_errors(tmp_path):
    good = write_h5(tmp_path / "good.h5", np.zeros((30, 64, 64), np.uint8))
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        HighwayH5(train_file=str(tmp_path / "missing.h5"), test_file=good)
    wrong_key = write_h5(tmp_path / "key.h5", np.zeros((30, 64, 64), np.uint8), key="frames")
    with pytest.raises(KeyError, match="highway_L"):
        HighwayH5(train_file=wrong_key, test_file=good)
    bad_shape = write_h5(tmp_path / "shape.h5", np.zeros((30, 3, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="shape.h5"):
        HighwayH5(train_file=bad_shape, test_file=good).setup()
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x00" * 512)
    with pytest.raises(ValueError, match="corrupt.h5"):
        HighwayH5(train_file=str(corrupt), test_file=good)
    short = write_h5(tmp_path / "short.h5", np.zeros((4, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="short.h5.*shorter than one clip"):
        HighwayH5(train_file=short, test_file=good)
