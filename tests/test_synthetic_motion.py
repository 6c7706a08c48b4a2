"""SyntheticMotion (ours): layered natural images in constant-velocity motion, rendered on the fly."""

from __future__ import annotations

import math
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

pytest.importorskip("skimage", reason="the built-in textures are the photographs of the scikit-image wheel")

from dfn.data import SyntheticMotion  # noqa: E402
from dfn.data.synthetic_motion import (BUILTIN_SPLIT, Motion, builtin_image_files, render,  # noqa: E402
                                       split_image_files, texture_atlas)

from conftest import ROOT, run_train  # noqa: E402

TINY = dict(image_size=16, batch_size=2, train_batches_per_epoch=2, val_size=3, test_size=4, predict_size=2,
            texture_size=64)


def still(**overrides) -> dict:
    """Settings under which nothing moves or changes: no motion, shake, drift or noise."""
    return {**TINY, "max_speed": 0.0, "max_zoom": 0.0, "max_rotation": 0.0, "shake": 0.0, "brightness_drift": 0.0,
            "noise": 0.0, **overrides}


def first_batch(dm: SyntheticMotion) -> torch.Tensor:
    return next(iter(dm.train_dataloader()))


def test_shapes_and_ranges_gray_rgb_non_square():
    for color, channels in (("gray", 1), ("rgb", 3)):
        dm = SyntheticMotion(**{**TINY, "image_size": [12, 20]}, color=color)
        assert (dm.frames_in, dm.frames_out, dm.channels, dm.frame_size()) == (3, 3, channels, (12, 20))
        batch = first_batch(dm)
        assert batch.shape == (2, 6, channels, 12, 20) and batch.dtype == torch.float32
        assert 0 <= batch.min() and batch.max() <= 1 and batch.std() > 0.02  # natural images, not a blank
        dm.setup()
        assert len(dm.val_set) == 3 and len(dm.test_set) == 4
        assert dm.val_set[0].shape == (6, channels, 12, 20)
        assert torch.equal(torch.stack([dm.predict_set[i] for i in range(2)]),
                           torch.stack([dm.test_set[i] for i in range(2)]))  # predict = the test set's prefix


def test_a_pure_function_of_seed_epoch_index():
    a, b = SyntheticMotion(**TINY), SyntheticMotion(**TINY)
    assert torch.equal(first_batch(a), first_batch(b))
    stream = a.train_dataloader().dataset
    assert torch.equal(stream.batch(0, 1), stream.batch(0, 1))
    assert not torch.equal(stream.batch(0, 1), stream.batch(1, 1))  # the epoch changes the data
    assert not torch.equal(first_batch(a), first_batch(SyntheticMotion(**TINY, seed=1)))
    a.setup(), b.setup()
    assert np.array_equal(a.val_set.clips, b.val_set.clips) and np.array_equal(a.test_set.clips, b.test_set.clips)
    assert not np.array_equal(a.val_set.clips[:3], a.test_set.clips[:3])


def test_builtin_split_is_disjoint_and_in_the_wheel():
    files = builtin_image_files(sklearn_images=False)
    names = {split: {p.name for p in paths} for split, paths in files.items()}
    assert names == {split: set(n) for split, n in BUILTIN_SPLIT.items()}
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
    assert all(p.is_file() for paths in files.values() for p in paths)


def write_images(folder: Path, colours: list[tuple[int, int, int]]) -> None:
    folder.mkdir()
    for i, colour in enumerate(colours):
        iio.imwrite(folder / f"img{i}.png", np.full((40, 50, 3), colour, np.uint8))


def test_own_folder_split_and_held_out_textures(tmp_path):
    """Five flat-coloured images: each split's clips show only its own images' colours."""
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250)]
    write_images(tmp_path / "imgs", colours)
    split = split_image_files(tmp_path / "imgs", 0.2, 0.2)
    assert [len(split[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert sorted(p.name for s in split.values() for p in s) == [f"img{i}.png" for i in range(5)]
    dm = SyntheticMotion(images=str(tmp_path / "imgs"), val_fraction=0.2, test_fraction=0.2, **still(max_speed=2.0))
    dm.setup()
    for name, clips in (("val", dm.val_set.clips), ("test", dm.test_set.clips)):
        colour = colours[int(split[name][0].stem[3:])]
        pixels = clips.transpose(0, 1, 3, 4, 2).reshape(-1, 3)  # (N*T*H*W, 3); mask edges blend equal colours
        assert np.abs(pixels.astype(int) - np.array(colour)).max() <= 1, name
    train_colours = {colours[int(p.stem[3:])] for p in split["train"]}
    pixels = (first_batch(dm) * 255).round().permute(0, 1, 3, 4, 2).reshape(-1, 3)
    near = lambda c: (pixels - torch.tensor(c)).abs().amax(1) <= 1  # noqa: E731
    assert torch.stack([near(c) for c in train_colours]).any(0).float().mean() > 0.3  # soft edges blend the rest
    assert not any(near(c).any() for c in set(colours) - train_colours)  # no held-out colour in training


def background_motion(rects: torch.Tensor, velocity: tuple[float, float], frames: int, size: tuple[int, int],
                      channels: int) -> Motion:
    """One clip: the background alone (first texture, scale 1), translating by `velocity` px per frame."""
    one = lambda v: torch.tensor([[float(v)]])  # noqa: E731  (N=1, L=1)
    return Motion(texture=torch.zeros(1, 1, dtype=torch.long), scale=one(1.0), velocity=torch.tensor([[velocity]]),
                  zoom=one(0), spin=one(0), start=torch.zeros(1, 1, 2), source=rects[:1, None, 2:] / 2,
                  radii=torch.ones(1, 1, 2), power=one(2), edge=one(1), active=torch.ones(1, 1, dtype=torch.bool),
                  jitter=torch.zeros(1, frames, 2), drift=torch.zeros(1), sigma=torch.zeros(1),
                  white=torch.zeros(1, frames, channels, *size))


def test_translation_moves_content_by_the_velocity():
    """Independent check: content moving (dx, dy) px per frame means frame t+1 at (y + dy, x + dx) is frame t
    at (y, x) -- compared with a plain integer shift of the frame, away from the borders."""
    files = tuple(builtin_image_files(False)["train"][:2])
    atlas, rects = texture_atlas(files, "gray", 64)
    size, m = (24, 32), 6
    for velocity, shift, steps in (((3.0, -2.0), (3, -2), 1), ((0.5, 1.5), (1, 3), 2)):
        video = render(atlas, rects, background_motion(rects, velocity, 5, size, 1), size)[0, :, 0]  # (T, H, W)
        dx, dy = shift
        for t in range(5 - steps):
            later, earlier = video[t + steps], video[t]
            moved = later[m + dy:size[0] - m + dy, m + dx:size[1] - m + dx]
            assert torch.allclose(moved, earlier[m:size[0] - m, m:size[1] - m], atol=1e-5), (velocity, t)
            assert (later - earlier).abs().mean() > 0.01  # and the content did move
        # the direction matters: a shift the other way does not match
        wrong = video[steps][m - dy:size[0] - m - dy, m - dx:size[1] - m - dx]
        assert not torch.allclose(wrong, video[0][m:size[0] - m, m:size[1] - m], atol=1e-2)


def test_speeds_stay_within_max_speed():
    """Each clip's background displacement, found by brute-force search over integer shifts (independent of
    the renderer), is at most max_speed (+ rounding to the pixel grid) and spans the range."""
    dm = SyntheticMotion(**still(max_speed=2.0, max_layers=0, image_size=32, batch_size=24, texture_size=128),
                         color="gray")
    clips = first_batch(dm)[:, :2, 0]  # (B, 2, H, W): two consecutive frames
    m, reach = 8, 6
    earlier = clips[:, 0, m:-m, m:-m]
    shifts = [(dx, dy) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)]
    errors = torch.stack([(clips[:, 1, m + dy:32 - m + dy, m + dx:32 - m + dx] - earlier).abs().mean((1, 2))
                          for dx, dy in shifts], 1)  # (B, shifts)
    found = torch.tensor([shifts[k] for k in errors.argmin(1).tolist()], dtype=torch.float32)  # (B, 2)
    speed = found.norm(dim=1)
    assert speed.max() <= 2.0 + math.sqrt(0.5) and speed.max() >= 1.0, speed


def test_nothing_moves_when_motion_is_off():
    clips = first_batch(SyntheticMotion(**still(max_layers=3, batch_size=4)))
    assert torch.equal(clips, clips[:, :1].expand_as(clips))
    # still layers: with still_fraction 1 nothing moves, whatever the speed, zoom and rotation ranges
    clips = first_batch(SyntheticMotion(**still(max_speed=3.0, max_zoom=0.02, max_rotation=1.0, still_fraction=1.0,
                                                batch_size=4)))
    assert torch.equal(clips, clips[:, :1].expand_as(clips))
    moving = first_batch(SyntheticMotion(**still(max_speed=3.0, still_fraction=0.0, batch_size=4)))
    assert not torch.equal(moving, moving[:, :1].expand_as(moving))


@pytest.mark.parametrize("kwargs, match", [
    (dict(color="hsv"), "SyntheticMotion: color must be one of 'gray', 'rgb', got 'hsv'$"),
    (dict(image_size=[16]), r"image_size must be an integer >= 8 or \[height, width\] of such, got \[16\]$"),
    (dict(image_size=4), r"image_size must be an integer >= 8 or \[height, width\] of such, got 4$"),
    (dict(max_speed=-1.0), r"max_speed must be a number in \[0, 32\], got -1\.0$"),
    (dict(max_layers=9), r"max_layers must be an integer in 0\.\.8 \(foreground patches\), got 9$"),
    (dict(val_size=0), "val_size must be an integer >= 1, got 0$"),
    (dict(still_fraction=1.5), r"still_fraction must be a number in \[0, 1\], got 1\.5$"),
    (dict(val_fraction=0.6, test_fraction=0.5), r"val_fraction \+ test_fraction must be < 1 \(.*got 1\.1$"),
    (dict(images="/nonexistent/x"), "no such folder"),
])
def test_bad_arguments_named(kwargs, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        SyntheticMotion(**kwargs)


def test_too_few_images(tmp_path):
    write_images(tmp_path / "imgs", [(1, 2, 3), (4, 5, 6)])
    with pytest.raises(ValueError, match="need >= 3"):
        SyntheticMotion(images=str(tmp_path / "imgs"))


SMALL_NET = ["--model.encoder_width", "4", "--model.hidden", "8", "--model.decoder_width", "4", "--model.features", "8",
             "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
SMALL_DATA = ["--data.init_args.image_size", "16", "--data.init_args.batch_size", "2",
              "--data.init_args.val_size", "2", "--data.init_args.test_size", "2", "--data.init_args.texture_size", "64"]


def test_cli_fast_dev_run_with_the_config(tmp_path):
    config = str(ROOT / "experiments" / "pretrain" / "natural_video.yaml")
    run_train(["fit", "--config", config, *SMALL_NET, *SMALL_DATA, "--trainer.fast_dev_run", "1"], tmp_path)


def test_checkpoint_scores_zero_shot_on_another_data_module(tmp_path, capsys):
    """A model trained on SyntheticMotion's 16x16 frames is tested on a video's clips (24x24, another data
    module) by `train.py test` with the real-video config, and `dfn.bench anchors --ckpt` scores it on the
    same clips: two code paths (Lightning's test loop, the anchors' loop) must agree on its MSE."""
    from dfn.bench import anchors

    config = str(ROOT / "experiments" / "pretrain" / "natural_video.yaml")
    run_train(["fit", "--config", config, *SMALL_NET, *SMALL_DATA, "--trainer.max_steps", "1",
               "--data.init_args.train_batches_per_epoch", "1"], tmp_path)
    checkpoint = next(tmp_path.glob("runs/dfn/*/checkpoints/last.ckpt"))
    rng = np.random.default_rng(0)
    big = (np.kron(rng.random((10, 32)), np.ones((4, 4))) * 200 + 20).astype(np.uint8)  # blocky texture
    frames = np.stack([np.repeat(big[:, 80 - t:120 - t, None], 3, -1) for t in range(80)])  # pans 1 px/frame
    video, again = tmp_path / "pan.mp4", tmp_path / "pan_again.mp4"
    for path in (video, again):
        iio.imwrite(path, frames, fps=10, macro_block_size=1)
    real = str(ROOT / "experiments" / "real_video" / "dfn.yaml")
    out = run_train(["test", "--config", real, "--data.init_args.path", str(video), "--data.init_args.image_size",
                     "24", "--ckpt_path", str(checkpoint), "--trainer.enable_progress_bar", "false"], tmp_path)
    found = re.search(r"test/mse_per_frame\W+([0-9.]+(?:e[-+]?[0-9]+)?)", out.stdout)
    assert found, out.stdout[-3000:]
    results = anchors.main(anchors.argparse.Namespace(
        config=real, path=[str(video), str(again)], frames_in=None, frames_out=None, image_size=24,
        keep_aspect=None, split="test", limit=None, ckpt=str(checkpoint)))
    printed = capsys.readouterr().out
    assert "model" in printed and "pooled over the 2 videos" in printed
    one = results["per_path"][str(video)]
    assert results["model"]["clips"] == results["copy_last"]["clips"] == 2 * one["copy_last"]["clips"]
    assert math.isclose(one["model"]["mse_per_frame"], float(found.group(1)), rel_tol=1e-3)
    assert one["model"]["mse_per_frame"] != one["copy_last"]["mse_per_frame"]  # the model, not an anchor


def test_preview_png_sheet_rows_are_clips(tmp_path):
    from dfn.data.preview import clips_to_sheet, main

    batch = torch.rand(2, 3, 1, 4, 5)  # (N, T, C, H, W)
    sheet = clips_to_sheet(batch, frames_in=2, scale=1)
    assert sheet.shape == (2 * (4 + 2), 3 * (5 + 2), 3)
    # clip 1, frame 0 (an input frame: no bar) sits in row 1, column 0
    assert np.array_equal(sheet[6:10, 0:5, 0], (batch[1, 0, 0] * 255).round().to(torch.uint8).numpy())
    assert (sheet[6:8, 2 * 7:2 * 7 + 5] == 255).all()  # the frame to predict carries the white bar
    out = tmp_path / "sheet.png"
    main(["--data", "dfn.data.SyntheticMotion", "--init", "image_size=[12, 20]", "--init", "texture_size=64",
          "--clips", "3", "--scale", "1", "--out", str(out)])
    assert iio.imread(out).shape == (3 * 14, 6 * 22, 3)
