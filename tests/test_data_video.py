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
    with pytest.raises(ValueError, match="VideoFolder: color must be one of 'gray', 'rgb', got 'bgr'$"):
        VideoFolder(str(tmp_path), color="bgr")
    with pytest.raises(ValueError, match="VideoFolder: frames_in must be an integer >= 1, got 0$"):
        VideoFolder(str(tmp_path), frames_in=0)
    with pytest.raises(ValueError, match="VideoFolder: stride must be an integer >= 1, got 0$"):
        VideoFolder(str(tmp_path), stride=0)
    with pytest.raises(ValueError, match=r"VideoFolder: val_fraction \+ test_fraction must be < 1 .*got 1\.0$"):
        VideoFolder(str(tmp_path), val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="VideoFolder: path must be a video file or folder when predict_path is null"):
        VideoFolder(None)


def test_every_bad_file_named_in_one_error_or_skipped(tmp_path):
    """All unreadable, corrupt and too-short files in one message at setup, not one per run."""
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


# --- frame geometry: keep_aspect --------------------------------------------------------------------

def write_ramp_mp4(path, frames=20, h=48, w=64):
    """A gray horizontal ramp 0 -> 255 across the full width: which columns survive shows the crop."""
    ramp = np.round(np.linspace(0, 255, w)).astype(np.uint8)
    iio.imwrite(path, np.tile(ramp[None, None, :, None], (frames, h, 1, 3)), fps=10, macro_block_size=1)
    return path


def test_aspect_size_hand_values():
    from dfn.data.decoding import aspect_size
    assert aspect_size(144, 176, 72) == (72, 88)      # carphone QCIF at half size: exact
    assert aspect_size(272, 640, 72) == (72, 168)     # 169.4 -> 169 -> multiple of 4: 168
    assert aspect_size(720, 1280, 64) == (64, 112)    # 113.8 -> 114 -> 112
    assert aspect_size(1280, 720, 64) == (112, 64)    # portrait
    assert aspect_size(48, 64, 30) == (28, 40)        # the short side is rounded down to a multiple of 4 too


def test_keep_aspect_keeps_the_whole_width(tmp_path):
    path = write_ramp_mp4(tmp_path / "ramp.mp4")
    wide = VideoFolder(str(path), frames_in=2, frames_out=1, image_size=32, keep_aspect=True,
                       val_fraction=0.2, test_fraction=0.2, batch_size=2)
    square = VideoFolder(str(path), frames_in=2, frames_out=1, image_size=32,
                         val_fraction=0.2, test_fraction=0.2, batch_size=2)
    assert wide.frame_size() == (32, 40) and square.frame_size() == (32, 32)  # 64 * 32/48 = 42.7 -> 40
    wide.setup("fit")
    square.setup("fit")
    assert next(iter(wide.train_dataloader())).shape == (2, 3, 1, 32, 40)
    a, b = wide.test_set[0][0, 0].mean(0), square.test_set[0][0, 0].mean(0)  # column profiles
    assert a.shape == (40,) and b.shape == (32,)
    # 40 of 42.7 columns kept: the ramp nearly spans 0..1; the square crop keeps only the middle 32/42.7
    assert a[0] < 0.06 and a[-1] > 0.94 and b[0] > 0.1 and b[-1] < 0.9
    assert np.all(np.diff(a.numpy()) > 0)


def test_square_default_unchanged_and_tuple_size_matches_independent_resize():
    from dfn.data.decoding import frames_to_tensor
    import torch.nn.functional as F
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 48, 64), dtype=np.uint8)
    x = torch.from_numpy(frames).float()[:, None] / 255  # (T, 1, 48, 64)
    square = F.interpolate(x, size=(32, 43), mode="area")[..., :, 5:37]  # short side 48 -> 32, centre 32 of 43
    assert torch.allclose(frames_to_tensor(frames, "gray", 32), square, atol=1e-6)
    assert torch.equal(frames_to_tensor(frames, "gray", 32), frames_to_tensor(frames, "gray", (32, 32)))
    wide = F.interpolate(x, size=(32, 43), mode="area")[..., :, 1:41]  # cover 32 x 40, centre crop
    assert torch.allclose(frames_to_tensor(frames, "gray", (32, 40)), wide, atol=1e-6)


def test_keep_aspect_predict_path_has_its_own_geometry(tmp_path):
    train = write_ramp_mp4(tmp_path / "wide.mp4", h=48, w=64)
    tall = write_mp4(tmp_path / "tall.mp4", frames=12, h=64, w=48)
    dm = VideoFolder(str(train), predict_path=str(tall), frames_in=2, frames_out=1, image_size=32,
                     keep_aspect=True, val_fraction=0.2, test_fraction=0.2)
    dm.setup("predict")
    assert dm.frame_size() == (32, 40) and dm.frame_size(predicting=True) == (40, 32)
    assert dm.predict_set[0].shape == (3, 1, 40, 32)


def test_keep_aspect_bad_values(tmp_path):
    path = write_ramp_mp4(tmp_path / "ramp.mp4")
    with pytest.raises(ValueError, match=r"VideoFolder: image_size must be an integer >= 4 \(with keep_aspect.*got 2$"):
        VideoFolder(str(path), image_size=2, keep_aspect=True)
    with pytest.raises(ValueError, match="VideoFolder: keep_aspect must be true or false, got 'yes'$"):
        VideoFolder(str(path), keep_aspect="yes")


def test_real_video_config_trains_and_writes_gifs_at_the_clips_aspect(tmp_path):
    """experiments/real_video/dfn.yaml through the real CLI on a small 48x64 clip: fit, test, GIFs."""
    import inspect
    import json
    from pathlib import Path

    from conftest import ROOT, run_train
    from dfn.generators import DFN
    if not {"padding_mode", "identity_init"} <= set(inspect.signature(DFN).parameters):
        pytest.skip("experiments/real_video needs DFN(padding_mode=..., identity_init=...)")
    video = write_mp4(tmp_path / "clip.mp4", frames=70, h=48, w=64)
    run_train(["fit", "--config", str(ROOT / "experiments" / "real_video" / "dfn.yaml"),
               "--data.init_args.path", str(video), "--data.init_args.image_size", "16",
               "--data.init_args.batch_size", "4", "--trainer.max_epochs", "1",
               "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false"], tmp_path)
    summary = json.loads(next(Path(tmp_path).glob("runs/dfn/*/summary.json")).read_text())
    assert summary["test/sequences"] == 2  # the last 10% of 70 frames: 7 frames, 2 clips of 3 + 3
    assert summary["test/mse_per_frame"] >= 0 and summary["test/copy_last/mse_per_frame"] > 0
    gif = iio.imread(Path(summary["run_dir"]) / "gifs" / "test.gif", index=None)
    # 48x64 at its own aspect, short side 16: 16 x 20 (21.3 rounded down to a multiple of 4); GIF rows
    # stack the test clips, columns show truth | prediction | error
    assert gif.shape[1:3] == (16 * summary["test/sequences"], 3 * 20)


# --- scene cuts: clips never span one -----------------------------------------------------------------

def write_shots_mp4(path, cuts, frames, h=48, w=64):
    """An mp4 whose shots start at ``cuts``: each shot a different scene (a moving square on dark, its
    negative, a panning ramp), so every cut is a hard one."""
    ramp = np.round(np.linspace(30, 220, 2 * w)).astype(np.uint8)
    scenes = [moving_square(frames, h, w, speed=1), 255 - moving_square(frames, h, w, speed=1),
              np.stack([np.tile(ramp[None, t:t + w, None], (h, 1, 3)) for t in range(frames)])]
    shot = np.searchsorted(cuts, np.arange(frames), side="right")  # frame -> index of its shot
    iio.imwrite(path, np.stack([scenes[shot[t] % 3][t] for t in range(frames)]), fps=10, macro_block_size=1)
    return path


def spanning(clips, frames, cuts):
    """The (file, start) clips holding frames of two shots."""
    return [(f, s) for f, s in clips if any(s < c < s + frames for c in cuts)]


def test_clips_never_span_a_scene_cut(tmp_path, capsys):
    from dfn.data.shots import detect_file_cuts
    cuts = [20, 42, 53]  # one in each of train [0, 36), val [36, 48), test [48, 60)
    path = write_shots_mp4(tmp_path / "shots.mp4", cuts, frames=60)
    assert detect_file_cuts(path) == cuts
    kw = dict(frames_in=3, frames_out=2, image_size=16, val_fraction=0.2, test_fraction=0.2, batch_size=2)
    on = VideoFolder(str(path), predict_path=str(path), **kw)
    on.setup()
    assert "shots.mp4: 3 scene cuts (at frames 20, 42, 53)" in capsys.readouterr().out
    off = VideoFolder(str(path), predict_path=str(path), cut_threshold=None, **kw)
    off.setup()
    for name in ("train_set", "val_set", "test_set", "predict_set"):
        kept, all_clips = getattr(on, name).clips, getattr(off, name).clips
        assert kept and not spanning(kept, 5, cuts), name
        assert spanning(all_clips, 5, cuts), name  # without detection the same split has clips across it
        assert set(kept) == set(all_clips) - set(spanning(all_clips, 5, cuts)), name  # only those go
    # the time split's boundaries are unchanged: the test split is still frames 48..59
    assert [s for _, s in on.test_set.clips] == [48, 53, 54, 55]
    # split by file (3 files): every file's clips avoid its cuts
    for k in range(3):
        (tmp_path / "folder").mkdir(exist_ok=True)
        (tmp_path / "folder" / f"v{k}.mp4").write_bytes(path.read_bytes())
    folder = VideoFolder(str(tmp_path / "folder"), **kw)
    folder.setup("fit")
    for d in (folder.train_set, folder.val_set, folder.test_set):
        assert d.clips and not spanning(d.clips, 5, cuts)


def test_cut_threshold_bad_values_and_empty_split_error(tmp_path):
    path = write_shots_mp4(tmp_path / "v.mp4", [27], frames=30)
    for bad in (-0.1, 1.0, 2, "high", True):
        with pytest.raises(ValueError, match=r"VideoFolder: cut_threshold must be None or a number in \[0, 1\) "
                                             r"\(mean absolute difference"):
            VideoFolder(str(path), cut_threshold=bad)
    assert VideoFolder(str(path), cut_threshold=0).cut_threshold is None  # 0 turns detection off
    # test split = frames 24..29; the cut at 27 leaves no 5 frames of one shot there
    kw = dict(frames_in=3, frames_out=2, val_fraction=0.2, test_fraction=0.2)
    with pytest.raises(ValueError, match=r"too short for a test split.*1 scene cut \(at frames 27\).*cut_threshold"):
        VideoFolder(str(path), **kw).setup("fit")
    VideoFolder(str(path), cut_threshold=None, **kw).setup("fit")  # without detection: fine
