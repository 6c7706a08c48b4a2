"""The real CLI end to end, as a user runs it: fit, resume, predict, test on 1 and 2 processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import lightning as L
import numpy as np
import pytest
import torch

from conftest import ROOT, TINY, only, read_summary, run_train
from dfn.data import MovingMNIST
from dfn.module import VideoPrediction
from wandb_records import logged_history

# "Best" = the epoch with the HIGHEST validation loss: the first, as the loss falls while training, so the
# best-by-validation checkpoint and the final weights differ and test/ vs test_final/ cannot be mixed up.
# Only the best (first) epoch is kept (save_top_k 1): last.ckpt must still hold the final weights, which
# Lightning's ModelCheckpoint alone does not refresh after a non-improving epoch (RunGuard does).
WORST_IS_BEST = ["--checkpoint.mode", "max"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two fits of the same tiny config in the same folder: the second must not trip over the first."""
    cwd = tmp_path_factory.mktemp("fit")
    first = run_train(["fit", *TINY, *WORST_IS_BEST], cwd)
    second = run_train(["fit", *TINY, *WORST_IS_BEST], cwd)
    return cwd, first, second


def numpy_test_bce(checkpoint: str) -> tuple[float, float]:
    """Test BCE per frame of a checkpoint on TINY's test set, by numpy (not dfn.metrics): (model, copy-last)."""
    model = VideoPrediction.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    data = MovingMNIST(image_size=32, frames_in=3, frames_out=2, test_size=10, seed=0)
    data.setup("test")
    clips = torch.stack([data.test_set[i] for i in range(len(data.test_set))])  # (10, 5, 1, 32, 32)
    with torch.no_grad():
        predictions = model(clips[:, :3]).clamp(1e-7, 1 - 1e-7).double().numpy()  # the paper's clip, in float32
    targets = clips[:, 3:].double().numpy()
    copy_last = np.repeat(clips[:, 2:3].clamp(1e-7, 1 - 1e-7).double().numpy(), 2, axis=1)  # clipped in float32 too

    def bce(p):  # summed over a frame's pixels, mean over frames and sequences
        return float(np.mean(np.sum(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)), axis=(2, 3, 4))))
    return bce(predictions), bce(copy_last)


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
    # The test metrics of the best checkpoint (test/) and of the final weights (test_final/), recomputed
    # here by numpy from the checkpoint files and the regenerated test set.
    assert "best-000-" in summary["checkpoint"]  # WORST_IS_BEST: the first epoch, not the final weights
    assert summary["test/sequences"] == summary["test_final/sequences"] == 10
    best_bce, copy_bce = numpy_test_bce(summary["checkpoint"])
    final_bce, _ = numpy_test_bce(str(directory / "checkpoints" / "last.ckpt"))
    assert best_bce != pytest.approx(final_bce, rel=1e-4)  # 10x the tolerance below, else it could not tell them apart
    assert summary["test/bce_per_frame"] == pytest.approx(best_bce, rel=1e-5)
    assert summary["test_final/bce_per_frame"] == pytest.approx(final_bce, rel=1e-5)
    assert summary["test/copy_last/bce_per_frame"] == pytest.approx(copy_bce, rel=1e-5)
    assert summary["test_final/bce_per_frame"] < summary["test/copy_last/bce_per_frame"]  # beats copying
    assert len(summary["test/bce_per_frame/horizon"]) == len(summary["test_final/bce_per_frame/horizon"]) == 2
    assert (f"test bce_per_frame: best-by-val checkpoint {summary['test/bce_per_frame']:.2f}, "
            f"final weights {summary['test_final/bce_per_frame']:.2f}") in first.stdout
    assert summary["parameters"] > 0 and summary["flops_per_step"] > 0
    assert f"dfn: run {directory}" in first.stdout
    # wandb: an offline run on disk, whose logged metrics can be read back.
    wandb_run = only(sorted((cwd / "runs" / "wandb").glob(f"offline-run-*-{directory.name}")))
    logged = {}
    for row in logged_history(only(list(wandb_run.glob("run-*.wandb")))):
        logged.update(row)
    assert logged["test/bce_per_frame"] == pytest.approx(summary["test/bce_per_frame"], rel=1e-5)
    assert logged["test_final/bce_per_frame"] == pytest.approx(summary["test_final/bce_per_frame"], rel=1e-5)
    assert "val/loss" in logged and "train/loss" in logged and "lr-Adam" in logged
    assert logged["test/horizon/_type"] == "table-file"  # per-horizon metrics as a wandb table
    for key in ("val/predictions", "test/predictions", "val/filter_flow"):  # the GIFs, as wandb videos
        assert logged[f"{key}/_type"] == "videos", key
    assert (directory / "horizon_test.csv").read_text().startswith("horizon,test/")
    assert (directory / "horizon_test_final.csv").read_text().startswith("horizon,test_final/")


def test_same_config_twice_gives_the_same_metrics(trained):
    cwd, *_ = trained
    first, second = (json.loads(p.read_text()) for p in run_dirs(cwd))
    assert first["run_dir"] != second["run_dir"]
    for key in ("test/bce_per_frame", "test/mse_per_frame", "test/ssim", "test/ssim_openstl",
                "test_final/bce_per_frame", "global_step", "parameters"):
        assert first[key] == second[key], key


def test_checkpoint_loads_without_extra_arguments(trained):
    cwd, *_ = trained
    summary = json.loads(run_dirs(cwd)[0].read_text())
    model = VideoPrediction.load_from_checkpoint(summary["checkpoint"], map_location="cpu")
    assert model.parameter_count() == summary["parameters"]
    assert model(torch.rand(2, 3, 1, 32, 32)).shape == (2, 2, 1, 32, 32)


def newest_summary(cwd) -> dict:
    return json.loads(max(cwd.glob("runs/dfn/*/summary.json"), key=lambda p: p.stat().st_mtime).read_text())


def test_resume_restores_the_weights_and_continues_the_optimizer(tmp_path):
    run_train(["fit", *TINY, *WORST_IS_BEST, "--trainer.max_epochs", "1"], tmp_path)
    last = only(sorted(tmp_path.glob("runs/dfn/*/checkpoints/last.ckpt")))
    assert torch.load(last, weights_only=False)["global_step"] == 3
    # Resumed with nothing left to train, the final weights tested after fit are the checkpoint's own.
    restored = run_train(["fit", *TINY, *WORST_IS_BEST, "--trainer.max_epochs", "1", "--ckpt_path", str(last)], tmp_path)
    assert "final weights" in restored.stdout
    assert newest_summary(tmp_path)["test_final/bce_per_frame"] == pytest.approx(numpy_test_bce(str(last))[0], rel=1e-5)
    # Resumed for one more epoch: 3 more steps, and Adam's own step count goes on from the checkpoint's 3
    # (a fresh optimizer would count 3 again). Exact equality with an uninterrupted run is not asserted here.
    run_train(["fit", *TINY, *WORST_IS_BEST, "--trainer.max_epochs", "2", "--ckpt_path", str(last)], tmp_path)
    summary = newest_summary(tmp_path)
    assert summary["global_step"] == 6  # 3 more steps, not 6 from scratch
    resumed = torch.load(Path(summary["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == 6
    assert all(state["step"].item() == 6 for state in resumed["optimizer_states"][0]["state"].values())


def run_failing(args: list[str], cwd) -> subprocess.CompletedProcess:
    """`python train.py <args>` expected to fail; returns the finished process."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "WANDB_MODE": "offline",
                                                                      "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)})


def test_a_bad_setting_stops_the_cli_with_its_name_and_range(tmp_path):
    proc = run_failing(["fit", "--config", str(ROOT / "experiments" / "quickstart.yaml"), "--model.lr_decay_every", "0"],
                       tmp_path)
    assert proc.returncode != 0
    assert "lr_decay_every must be an integer >= 1" in proc.stderr
    assert not list(tmp_path.glob("runs/dfn/*/checkpoints/*.ckpt"))


def test_paper_protocol_refuses_a_test_file_that_is_not_there(tmp_path):
    proc = run_failing(["fit", "--config", str(ROOT / "experiments" / "moving_mnist" / "paper_protocol.yaml"),
                        "--data.init_args.mnist_dir", str(tmp_path), "--data.init_args.download", "false",
                        "--data.init_args.test_file", "data/mnist_test_seq.npy"], tmp_path)
    assert proc.returncode != 0
    assert "test_file data/mnist_test_seq.npy: no such file" in proc.stderr


def test_predict_writes_gifs_and_frames(trained, tmp_path):
    cwd, *_ = trained
    checkpoint = json.loads(run_dirs(cwd)[0].read_text())["checkpoint"]
    out = tmp_path / "predictions"
    proc = run_train(["predict", *TINY, "--ckpt_path", checkpoint, "--prediction_files.output_dir", str(out)], tmp_path)
    frames = np.load(only(sorted(out.glob("*.npy"))))
    assert frames.shape == (4, 2, 1, 32, 32) and frames.min() >= 0 and frames.max() <= 1
    # The checkpoint's own predictions of the predict clips (the first 4 test sequences), recomputed here.
    data = MovingMNIST(image_size=32, frames_in=3, frames_out=2, test_size=10, predict_size=4, seed=0)
    data.setup("predict")
    clips = torch.stack([data.predict_set[i] for i in range(len(data.predict_set))])  # (4, 5, 1, 32, 32)
    model = VideoPrediction.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    with torch.no_grad():
        expected = model(clips[:, :3]).numpy()
    np.testing.assert_allclose(frames, expected, rtol=0, atol=1e-5)
    assert np.abs(frames - clips[:, 3:].numpy()).max() > 0.1  # the predictions, not the targets
    assert len(list(out.glob("*.gif"))) == 1
    assert "prediction GIFs" in proc.stdout


def test_fast_dev_run_and_a_run_without_logger_keep_the_current_directory_clean(tmp_path):
    """A smoke test writes nowhere the user sees (a temporary run directory); a run without a logger writes
    into its own run directory, runs/dfn/local-*; neither into the current directory."""
    smoke = tmp_path / "smoke"
    proc = run_train(["fit", *TINY, "--trainer.fast_dev_run=true"], smoke)
    assert "fast_dev_run" in proc.stdout + proc.stderr
    assert sorted(p.name for p in smoke.iterdir()) == []
    quiet = tmp_path / "quiet"
    run_train(["fit", *TINY, "--trainer.logger", "false", "--trainer.max_epochs", "1"], quiet)
    assert sorted(p.name for p in quiet.iterdir()) == ["runs"]
    run = only(sorted((quiet / "runs" / "dfn").iterdir()))
    assert run.name.startswith("local-") and sorted(p.name for p in (quiet / "runs").iterdir()) == ["dfn"]
    assert {"config.yaml", "checkpoints", "gifs", "metrics.csv", "summary.json"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "summary.json").read_text())["run_dir"] == str(run)


class StepLosses(L.Callback):
    """The training loss of every step, as the trainer returned it."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


# Measured on the 2-core AMD EPYC: first step 3.6e-7 (the same weights; only autocast differs), then at
# most 1.8e-4 relative over 8 steps; bf16-true, or BCE in bfloat16, differ by 4e-4 at the first step.
FIRST_STEP_TOLERANCE, BF16_TOLERANCE = 1e-5, 1e-3


def test_bf16_mixed_tracks_float32_with_the_quickstarts_settings(monkeypatch, tmp_path):
    """The quickstart as it ships (bf16-mixed, lr 2e-3, gradient norm clipped at 0.1), batch 4, 6 steps of
    the real fit, against the same run in 32-true: the same first loss and losses within 0.1% after."""
    from dfn.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    monkeypatch.setenv("WANDB_MODE", "offline")
    losses = {}
    for precision in ("bf16-mixed", "32-true"):
        override = [] if precision == "bf16-mixed" else ["--trainer.precision", precision]
        cli = main(["--config", str(ROOT / "experiments" / "quickstart.yaml"), *override, "--trainer.logger", "false",
                    "--trainer.max_steps", "6", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar",
                    "false", "--data.init_args.batch_size", "4"], run=False)
        assert (cli.trainer.precision, cli.trainer.gradient_clip_val, cli.model.hparams.lr) == (precision, 0.1, 2e-3)
        recorder = StepLosses()
        cli.trainer.callbacks.append(recorder)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        losses[precision] = recorder.values
    bf16, fp32 = losses["bf16-mixed"], losses["32-true"]
    assert len(bf16) == len(fp32) == 6
    assert bf16[0] == pytest.approx(fp32[0], rel=FIRST_STEP_TOLERANCE)
    for a, b in zip(fp32[1:], bf16[1:]):
        assert b == pytest.approx(a, rel=BF16_TOLERANCE)
    assert bf16 != fp32  # bf16 really was used


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
