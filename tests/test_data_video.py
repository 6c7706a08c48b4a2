"""VideoFolder on small mp4/gif files written by the tests; corrupt and too-short files."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from dfn.data import VideoFolder


def moving_square(frames: int, h: int = 48, w: int = 64, speed: int = 2) -> np.ndarray:
    """(T, H, W, 3) uint8: a white 12x12 square moving right over a dark background."""
    v = np.full((frames, h, w, 3), 20, np.uint8)
    for t in range(frames):
        x = (speed * t) % (w - 12)
        v[t, 18:30, x:x + 12] = 235
    return v


def write_mp4(path, frames=30, **kw):
    iio.imwrite(path, moving_square(frames, **kw), fps=10, macro_block_size=1)
    return path


def square_column(clip: torch.Tensor) -> np.ndarray:
    """Mean column of the bright pixels in each frame of (T, C, S, S)."""
    g = clip.mean(1)  # (T, S, S)
    cols = torch.arange(g.shape[-1], dtype=torch.float32)
    mass = (g > 0.5).float()
    return ((mass.sum(1) * cols).sum(-1) / mass.sum((1, 2)).clamp_min(1)).numpy()


def test_single_mp4_split_in_time(tmp_path):
    path = write_mp4(tmp_path / "square.mp4", frames=40, speed=1)  # no wrap-around within 40 frames
    dm = VideoFolder(str(path), frames_in=3, frames_out=2, image_size=32, batch_size=4,
                     val_fraction=0.2, test_fraction=0.2)
    assert (dm.frames_in, dm.frames_out, dm.channels, dm.image_size) == (3, 2, 1, 32)
    dm.setup()
    spans = {k: [(s, s + 5) for _, s in d.clips] for k, d in
             (("train", dm.train_set), ("val", dm.val_set), ("test", dm.test_set))}
    assert all(spans.values())
    # splits never overlap in time: max frame of one split < min frame of the next
    assert max(e for _, e in spans["train"]) <= min(s for s, _ in spans["val"])
    assert max(e for _, e in spans["val"]) <= min(s for s, _ in spans["test"])
    b = next(iter(dm.train_dataloader()))
    assert b.shape == (4, 5, 1, 32, 32) and b.dtype == torch.float32 and 0 <= b.min() and b.max() <= 1
    # the square moves right 1 px per frame, i.e. 2/3 px after resizing (short side 48 -> 32)
    col = square_column(dm.val_set[0])
    assert np.all(np.diff(col) > 0) and abs((col[-1] - col[0]) / 4 - 2 / 3) < 0.2


def test_cache_and_seek_paths_agree(tmp_path):
    path = write_mp4(tmp_path / "square.mp4", frames=24)
    a = VideoFolder(str(path), image_size=32, cache_mb=64, val_fraction=0.25, test_fraction=0.25)
    b = VideoFolder(str(path), image_size=32, cache_mb=0, val_fraction=0.25, test_fraction=0.25)
    a.setup("fit")
    b.setup("fit")
    for i in (0, 5, 3):
        assert torch.allclose(a.train_set[i], b.train_set[i], atol=1.5 / 255)


def test_folder_split_by_file_rgb_gif_and_predict(tmp_path):
    for k in range(3):
        write_mp4(tmp_path / f"clip{k}.mp4", frames=12)
    iio.imwrite(tmp_path / "anim.gif", moving_square(12)[..., 0], duration=100, loop=0)
    (tmp_path / "notes.txt").write_text("ignored")
    dm = VideoFolder(str(tmp_path), frames_in=2, frames_out=2, image_size=24, color="rgb", stride=4,
                     predict_path=str(tmp_path / "anim.gif"), batch_size=2)
    assert dm.channels == 3 and len(dm.files) == 4
    dm.setup()
    files = {k: {f for f, _ in d.clips} for k, d in
             (("train", dm.train_set), ("val", dm.val_set), ("test", dm.test_set))}
    assert not files["train"] & files["val"] and not files["train"] & files["test"] and not files["val"] & files["test"]
    assert next(iter(dm.val_dataloader())).shape[1:] == (4, 3, 24, 24)
    pred = torch.cat(list(dm.predict_dataloader()))
    assert pred.shape == (3, 4, 3, 24, 24)  # starts 0, 4, 8 of the 12-frame gif


def test_corrupt_file_named(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    dm = VideoFolder(str(bad))
    with pytest.raises(ValueError, match="broken.mp4"):
        dm.setup()


def test_too_short_video_named(tmp_path):
    path = write_mp4(tmp_path / "short.mp4", frames=4)
    dm = VideoFolder(str(path), frames_in=3, frames_out=3)
    with pytest.raises(ValueError, match=r"short\.mp4.*4 frames, shorter than one clip"):
        dm.setup()
    ok = write_mp4(tmp_path / "eight.mp4", frames=8)  # one clip fits, but not three splits
    with pytest.raises(ValueError, match="eight.mp4.*too short for a"):
        VideoFolder(str(ok), frames_in=3, frames_out=3).setup()


def test_bad_paths_and_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VideoFolder(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no video files"):
        VideoFolder(str(tmp_path))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="a.txt"):
        VideoFolder(str(tmp_path / "a.txt"))
    write_mp4(tmp_path / "v.mp4")
    with pytest.raises(ValueError, match="color"):
        VideoFolder(str(tmp_path), color="bgr")
    with pytest.raises(ValueError, match="frames_in"):
        VideoFolder(str(tmp_path), frames_in=0)
    with pytest.raises(ValueError, match="stride"):
        VideoFolder(str(tmp_path), stride=0)


def test_every_bad_file_named_in_one_error_or_skipped(tmp_path):
    """Issue 10: all unreadable, corrupt and too-short files in one message at setup, not one per run."""
    for k in range(3):
        write_mp4(tmp_path / f"good{k}.mp4", frames=12)
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    good = (tmp_path / "good0.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(good[: len(good) // 3])
    write_mp4(tmp_path / "short.mp4", frames=3)
    with pytest.raises(ValueError) as err:
        VideoFolder(str(tmp_path), frames_in=2, frames_out=2, image_size=24).setup("fit")
    message = str(err.value)
    assert "3 of the 6" in message and "skip_bad_files" in message
    for name in ("garbage.mp4", "truncated.mp4", "short.mp4: video has 3 frames"):
        assert name in message, message
    assert "good" not in message
    dm = VideoFolder(str(tmp_path), frames_in=2, frames_out=2, image_size=24, skip_bad_files=True)
    with pytest.warns(UserWarning, match="skipping 3 of the 6"):
        dm.setup("fit")
    assert [p.name for p in dm.files] == ["good0.mp4", "good1.mp4", "good2.mp4"]
    assert next(iter(dm.train_dataloader())).shape[1:] == (4, 1, 24, 24)


def test_empty_validation_or_test_split_is_an_error(tmp_path):
    path = write_mp4(tmp_path / "v.mp4", frames=30)
    for split in ("val", "test"):
        with pytest.raises(ValueError, match=f"{split}_fraction is 0, so there is no {split} split"):
            fractions = {"val_fraction": 0.3, "test_fraction": 0.3, f"{split}_fraction": 0.0}
            VideoFolder(str(path), frames_in=2, frames_out=2, **fractions).setup("fit")
