"""MNIST IDX files (gzipped and raw), header validation, writing them, the mnist.pkl.gz conversion, messages."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest

from dfn.data import MovingMNIST
from dfn.data.digits import idx_bytes, load_mnist_idx, mnist_pickle_images, read_idx_images


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
    with pytest.raises(FileNotFoundError, match=r"has no train-images-idx3-ubyte\[\.gz\] and no t10k.*fetch mnist --dest"):
        load_mnist_idx(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist_idx(tmp_path / "absent")
    fake_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no t10k-images-idx3-ubyte\[\.gz\];"):
        load_mnist_idx(tmp_path)


@pytest.mark.parametrize("n", [0, 1, 7])
def test_idx_bytes_round_trip(tmp_path, n):
    images = np.random.default_rng(n).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    data = idx_bytes(images)
    assert data[:16] == bytes.fromhex("00000803") + struct.pack(">III", n, 28, 28)  # the IDX3 header by hand
    write_idx(tmp_path / "mine", images)  # this file's own writer, from the format's definition
    assert data == (tmp_path / "mine").read_bytes()
    (tmp_path / "f").write_bytes(data)
    assert np.array_equal(read_idx_images(tmp_path / "f"), images)
    with pytest.raises(ValueError, match=r"idx_bytes: images must be uint8 \(N, rows, cols\), got int16"):
        idx_bytes(images.astype(np.int16))


def classic_pickle(train, valid, test) -> bytes:
    pair = lambda x: (np.asarray(x, np.float32).reshape(len(x), -1), np.zeros(len(x), np.int64))  # noqa: E731
    return gzip.compress(pickle.dumps((pair(train), pair(valid), pair(test)), protocol=2))


def test_mnist_pickle_conversion_and_what_it_refuses():
    rng = np.random.default_rng(1)
    train, valid, test = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for n in (3, 2, 4))
    got = mnist_pickle_images(classic_pickle(train / 256, valid / 256, test / 256))
    assert np.array_equal(got["train"], np.concatenate([train, valid])) and np.array_equal(got["test"], test)
    off_grid = test / 256
    off_grid[0, 3, 3] = 0.3  # 76.8 / 256: no uint8 value, so no silent rounding
    with pytest.raises(ValueError, match="test pixels are not multiples of 1 / 256"):
        mnist_pickle_images(classic_pickle(train / 256, valid / 256, off_grid))
    with pytest.raises(ValueError, match=r"train pixels outside \[0, 255 / 256\]"):
        mnist_pickle_images(classic_pickle(np.ones_like(train, np.float32), valid / 256, test / 256))  # 256 / 256
    with pytest.raises(ValueError, match="expected float"):
        mnist_pickle_images(classic_pickle(train / 256, valid / 256, test.reshape(4, 2, 392)[:, 0] / 256))
    with pytest.raises(ValueError, match="not the classic mnist.pkl.gz"):
        mnist_pickle_images(gzip.compress(pickle.dumps({"train": train}, protocol=2)))
    with pytest.raises(ValueError, match="not the classic mnist.pkl.gz"):
        mnist_pickle_images(b"not gzip")
