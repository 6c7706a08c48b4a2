"""MNIST IDX files (gzipped and raw), header validation, and the download failure message."""

from __future__ import annotations

import gzip
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest

from dfn.data import MovingMNIST
from dfn.data.digits import load_mnist_idx, read_idx_images


def write_idx(path, images: np.ndarray, magic: int = 0x803, gz: bool = False) -> None:
    raw = struct.pack(">IIII", magic, *images.shape) + images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def fake_mnist(folder, n_train=30, n_test=12, gz=True):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    ext = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{ext}", train, gz=gz)
    write_idx(folder / f"t10k-images-idx3-ubyte{ext}", test, gz=gz)
    return train, test


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx(tmp_path, gz):
    train, test = fake_mnist(tmp_path, gz=gz)
    with pytest.warns(UserWarning, match="standard MNIST"):
        got_train, got_test = load_mnist_idx(tmp_path)
    assert np.array_equal(got_train, train) and np.array_equal(got_test, test)


def test_moving_mnist_from_idx(tmp_path):
    fake_mnist(tmp_path)
    dm = MovingMNIST(digits="mnist", mnist_dir=str(tmp_path), frames_in=2, frames_out=2, batch_size=2,
                     train_batches_per_epoch=1, val_size=2, test_size=2)
    with pytest.warns(UserWarning):
        dm.setup()
    assert next(iter(dm.train_dataloader())).shape == (2, 4, 1, 64, 64)


def test_idx_validation(tmp_path):
    labels = tmp_path / "labels"
    labels.write_bytes(struct.pack(">II", 0x801, 3) + bytes(3))  # an IDX1 labels file
    with pytest.raises(ValueError, match="magic"):
        read_idx_images(labels)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">IIII", 0x803, 5, 28, 28) + bytes(100))
    with pytest.raises(ValueError, match="header says 5x28x28"):
        read_idx_images(short)
    with pytest.raises(ValueError, match="too short"):
        (tmp_path / "tiny").write_bytes(b"abc")
        read_idx_images(tmp_path / "tiny")


def test_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist_idx(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist_idx(tmp_path / "absent")
    with pytest.raises(ValueError, match="mnist_dir"):
        MovingMNIST(digits="mnist")


def test_download_failure_message(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError) as info:
        load_mnist_idx(tmp_path / "mnist", download=True)
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "mnist") in msg and "no network" in msg
    assert not list((tmp_path / "mnist").iterdir())  # no half-written files left behind
