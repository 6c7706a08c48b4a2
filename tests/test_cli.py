"""The real CLI end to end, as a user runs it: fit, resume, predict, test on 1 and 2 processes."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from conftest import TINY, only, read_summary, run_train
from dfn.module import VideoPrediction
from wandb_records import logged_history


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two fits of the same tiny config in the same folder: the second must not trip over the first."""
    cwd = tmp_path_factory.mktemp("fit")
    first = run_train(["fit", *TINY], cwd)
    second = run_train(["fit", *TINY], cwd)
    return cwd, first, second


def run_dirs(cwd):
    return sorted(cwd.glob("runs/dfn/*/summary.json"), key=lambda p: p.stat().st_mtime)


def test_fit_writes_checkpoints_gifs_wandb_and_a_summary(trained):
    cwd, first, _ = trained
    summary = json.loads(run_dirs(cwd)[0].read_text())
    directory = cwd / "runs" / "dfn" / run_dirs(cwd)[0].parent.name
    assert (directory / "checkpoints" / "last.ckpt").is_file()
    assert summary["checkpoint"].startswith(str(directory / "checkpoints" / "best-"))
    assert (directory / "config.yaml").is_file()
    val_gifs = sorted((directory / "gifs").glob("val_epoch*.gif"))
    assert len(val_gifs) == 2  # one per validation epoch
    assert len(list((directory / "gifs").glob("flow_epoch*.gif"))) == 2  # the filters' flow fields
    gif = iio.imread(directory / "gifs" / "test.gif")
    assert gif.shape[0] == 5 and gif.shape[2] == 3 * 32  # 3 input + 2 predicted frames; GT | prediction | error
    # The test metrics of the best checkpoint, for the model and for copying the last frame.
    assert summary["test/sequences"] == 10
    assert 0 < summary["test/bce_per_frame"] < 32 * 32 * -np.log(1e-7)
    assert summary["test/copy_last/bce_per_frame"] > 0
    assert len(summary["test/bce_per_frame/horizon"]) == 2
    assert summary["parameters"] > 0 and summary["flops_per_step"] > 0
    assert f"dfn: run {directory}" in first.stdout
    # wandb: an offline run on disk, whose logged metrics can be read back.
    wandb_run = only(sorted((cwd / "runs" / "wandb").glob(f"offline-run-*-{directory.name}")))
    logged = {}
    for row in logged_history(only(list(wandb_run.glob("run-*.wandb")))):
        logged.update(row)
    assert logged["test/bce_per_frame"] == pytest.approx(summary["test/bce_per_frame"], rel=1e-5)
    assert "val/loss" in logged and "train/loss" in logged and "lr-Adam" in logged
    assert logged["test/horizon/_type"] == "table-file"  # per-horizon metrics as a wandb table
    for key in ("val/predictions", "test/predictions", "val/filter_flow"):  # the GIFs, as wandb videos
        assert logged[f"{key}/_type"] == "videos", key
    assert (directory / "horizon_test.csv").read_text().startswith("horizon,")


def test_same_config_twice_gives_the_same_metrics(trained):
    cwd, *_ = trained
    first, second = (json.loads(p.read_text()) for p in run_dirs(cwd))
    assert first["run_dir"] != second["run_dir"]
    for key in ("test/bce_per_frame", "test/mse_per_frame", "test/ssim", "val/bce_per_frame"):
        if key in first:
            assert first[key] == second[key], key


def test_checkpoint_loads_without_extra_arguments(trained):
    cwd, *_ = trained
    summary = json.loads(run_dirs(cwd)[0].read_text())
    model = VideoPrediction.load_from_checkpoint(summary["checkpoint"], map_location="cpu")
    assert model.parameter_count() == summary["parameters"]
    assert model(torch.rand(2, 3, 1, 32, 32)).shape == (2, 2, 1, 32, 32)


def test_resume_continues_the_step_count(tmp_path):
    run_train(["fit", *TINY, "--trainer.max_epochs", "1"], tmp_path)
    last = only(sorted(tmp_path.glob("runs/dfn/*/checkpoints/last.ckpt")))
    assert torch.load(last, weights_only=False)["global_step"] == 3
    run_train(["fit", *TINY, "--trainer.max_epochs", "2", "--ckpt_path", str(last)], tmp_path)
    resumed = max(tmp_path.glob("runs/dfn/*/summary.json"), key=lambda p: p.stat().st_mtime)
    assert json.loads(resumed.read_text())["global_step"] == 6  # 3 more steps, not 6 from scratch


def test_predict_writes_gifs_and_frames(trained, tmp_path):
    cwd, *_ = trained
    checkpoint = json.loads(run_dirs(cwd)[0].read_text())["checkpoint"]
    out = tmp_path / "predictions"
    proc = run_train(["predict", *TINY, "--ckpt_path", checkpoint, "--prediction_files.output_dir", str(out)], tmp_path)
    frames = np.load(only(sorted(out.glob("*.npy"))))
    assert frames.shape == (4, 2, 1, 32, 32) and frames.min() >= 0 and frames.max() <= 1
    assert len(list(out.glob("*.gif"))) == 1
    assert "prediction GIFs" in proc.stdout


def test_two_processes_give_the_same_test_metrics_as_one(trained, tmp_path):
    cwd, *_ = trained
    checkpoint = json.loads(run_dirs(cwd)[0].read_text())["checkpoint"]
    # 9 sequences in batches of 4 over 2 ranks: shards of 5 and 4, two batches on one rank and one on
    # the other; nothing may be dropped, padded or counted twice.
    args = ["test", *TINY, "--ckpt_path", checkpoint, "--data.init_args.test_size", "9"]
    run_train(args, tmp_path / "one")
    run_train([*args, "--trainer.devices", "2", "--trainer.strategy", "ddp"], tmp_path / "two")
    one, two = read_summary(tmp_path / "one"), read_summary(tmp_path / "two")
    assert one["test/sequences"] == two["test/sequences"] == 9
    for key in ("test/bce_per_frame", "test/mse_per_frame", "test/ssim", "test/psnr", "test/copy_last/bce_per_frame"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key


def test_predict_on_the_users_own_video(trained, tmp_path):
    # A user's clip: a bright square moving right by 2 px per frame, as an mp4.
    frames = np.zeros((24, 48, 48, 3), dtype=np.uint8)
    for t in range(len(frames)):
        frames[t, 16:28, 4 + t : 16 + t] = 255
    video = tmp_path / "my_clip.mp4"
    iio.imwrite(video, frames, fps=10, codec="libx264")
    cwd, *_ = trained
    checkpoint = json.loads(run_dirs(cwd)[0].read_text())["checkpoint"]
    out = tmp_path / "predictions"
    model_args = TINY[:2] + [a for pair in zip(TINY[2::2], TINY[3::2]) if not pair[0].startswith("--data") for a in pair]
    run_train(["predict", *model_args, "--ckpt_path", checkpoint, "--prediction_files.output_dir", str(out),
               "--data", "dfn.data.VideoFolder", "--data.init_args.predict_path", str(video), "--data.init_args.image_size", "32",
               "--data.init_args.frames_in", "3", "--data.init_args.frames_out", "2",
               "--data.init_args.stride", "5", "--data.init_args.batch_size", "8"], tmp_path)
    predicted = np.load(only(sorted(out.glob("*.npy"))))
    assert predicted.shape == (4, 2, 1, 32, 32)  # clips start at frames 0, 5, 10, 15 of 24
    assert len(list(out.glob("*.gif"))) == 1
