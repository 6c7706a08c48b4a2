"""VideoPrediction: what model selection monitors, bad settings refused at construction, test metric names."""

from __future__ import annotations

import imageio.v3 as iio
import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dfn.data import VideoFolder
from dfn.generators import DFN, PixelBaseline
from dfn.module import VideoPrediction

SMALL = dict(frames_in=2, frames_out=2, encoder_width=4, hidden=4, decoder_width=4, features=4, image_size=16)


class Spread(VideoPrediction):
    """Predictions stretched far outside [0, 1] (an un-squashed pixel predictor early in training can do this),
    so that scoring the raw and the clamped prediction give different numbers."""

    def forward(self, inputs, frames_out=None):
        out = super().forward(inputs, frames_out)
        return (out - out.mean()) / out.std() * 0.8 + 0.5  # mean 0.5, std 0.8


def trainer() -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)


def clips(n: int = 6, seed: int = 0) -> torch.Tensor:
    """(n, 4, 1, 16, 16) in [0, 1]: sparse bright pixels, like digits on black."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 4, 1, 16, 16, generator=g) > 0.8).float() * torch.rand(n, 4, 1, 16, 16, generator=g)


@pytest.mark.parametrize("loss, generator, module", [("mse", PixelBaseline(kernel_size=3), Spread),
                                                     ("bce", DFN(kernel_size=3), Spread),
                                                     ("bce", DFN(kernel_size=3), VideoPrediction)])
def test_val_loss_is_the_training_loss_per_frame(loss, generator, module):
    torch.manual_seed(0)
    model = module(generator, loss=loss, **SMALL).eval()
    data = clips()
    inputs, targets = model.split(data)
    with torch.no_grad():
        predictions = model(inputs)
        training_loss = model.loss(predictions, targets).item()  # what training_step optimises, per pixel
    if module is Spread:
        assert predictions.min() < -0.5 and predictions.max() > 1.5  # the clamp would matter
    logged = trainer().validate(model, dataloaders=DataLoader(data, batch_size=len(data)), verbose=False)[0]
    pixels = 1 * 16 * 16
    assert logged["val/loss"] == pytest.approx(training_loss * pixels, rel=1e-5)


@pytest.mark.parametrize("name, value, allowed", [
    ("lr_decay_every", 0, ">= 1"), ("lr_decay_every", -3, ">= 1"),
    ("bce_eps", 0.0, "(0, 0.5)"), ("bce_eps", 0.5, "(0, 0.5)"), ("bce_eps", -1e-7, "(0, 0.5)"),
    ("lr", 0.0, "> 0"), ("lr", -1e-3, "> 0"),
    ("lr_decay", 0.0, "(0, 1]"), ("lr_decay", 1.5, "(0, 1]"),
    ("buffer_len", 3, "<= frames_in (2)"),
    ("lr_schedule", "cosine", "one of 'step', 'onecycle'"), ("warmup_fraction", 0.0, "(0, 1)"),
    ("warmup_fraction", 1.0, "(0, 1)"), ("lr_decay_unit", "iteration", "one of 'epoch', 'step'"),
    ("scheduled_sampling", 1.5, "[0, 1]"), ("scheduled_sampling", -0.1, "[0, 1]"),
])
def test_bad_training_settings_fail_at_construction(name, value, allowed):
    with pytest.raises(ValueError) as err:
        VideoPrediction(DFN(kernel_size=3), **{**SMALL, name: value})
    assert name in str(err.value) and allowed in str(err.value) and str(value) in str(err.value)


def scheduled_lrs(config: dict, steps: int) -> list[float]:
    """The learning rate of each of `steps` optimiser steps under `configure_optimizers`' scheduler, stepped
    once per step (as Lightning does for interval "step")."""
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_onecycle_schedule_warms_up_to_lr_then_anneals_to_zero_per_step():
    """lr_schedule: onecycle (ours): torch's OneCycleLR over the run's length, lr is the peak; by hand:
    start lr/25 (its default div_factor), peak lr after warmup_fraction of the steps, then down to ~0."""
    import types

    model = VideoPrediction(DFN(kernel_size=3), **{**SMALL, "lr": 3e-3, "lr_schedule": "onecycle",
                                                   "warmup_fraction": 0.2})
    model._trainer = types.SimpleNamespace(estimated_stepping_batches=10)  # what Lightning derives from max_steps
    config = model.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = scheduled_lrs(config, 10)
    assert lrs[0] == pytest.approx(3e-3 / 25)
    assert max(lrs) == pytest.approx(3e-3) and lrs.index(max(lrs)) == 1  # 0.2 * 10 steps, peak at the 2nd
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] < 3e-3 * 1e-3


def test_step_decay_counts_optimiser_steps_with_lr_decay_unit_step():
    """lr_decay_unit: step: StepLR stepped by Lightning after every optimiser step; by hand, with
    lr_decay_every 3 and lr_decay 0.5 the 7 first steps run at lr, lr, lr, lr/2, lr/2, lr/2, lr/4."""
    model = VideoPrediction(DFN(kernel_size=3), **{**SMALL, "lr": 1e-3, "lr_decay_every": 3,
                                                   "lr_decay_unit": "step"})
    config = model.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = scheduled_lrs(config, 7)
    assert lrs == pytest.approx([1e-3] * 3 + [5e-4] * 3 + [2.5e-4])
    default = VideoPrediction(DFN(kernel_size=3), **SMALL).configure_optimizers()
    assert default["lr_scheduler"]["interval"] == "epoch"  # the paper's: every 20 epochs


def test_scheduled_sampling_probability_falls_linearly_to_zero():
    """By hand: 100 steps, scheduled_sampling 0.5 -> p = 1 - step/50 until step 50, then 0; off by default."""
    import types

    model = VideoPrediction(DFN(kernel_size=3), **{**SMALL, "scheduled_sampling": 0.5})
    probabilities = {}
    for step in (0, 10, 25, 49, 50, 80):
        model._trainer = types.SimpleNamespace(estimated_stepping_batches=100, global_step=step)
        probabilities[step] = model.truth_probability()
    assert probabilities == pytest.approx({0: 1.0, 10: 0.8, 25: 0.5, 49: 0.02, 50: 0.0, 80: 0.0})
    model = VideoPrediction(DFN(kernel_size=3), **SMALL)
    model._trainer = types.SimpleNamespace(estimated_stepping_batches=100, global_step=0)
    assert model.truth_probability() == 0.0  # the paper: predictions always fed back


def test_edge_values_are_accepted():
    model = VideoPrediction(DFN(kernel_size=3), **{**SMALL, "buffer_len": 2, "lr_decay": 1.0, "lr_decay_every": 1,
                                                   "bce_eps": 0.49})
    assert model.hparams.lr_decay == 1.0


def test_test_metrics_are_logged_under_the_prefix_given_to_run_test():
    torch.manual_seed(0)
    model = VideoPrediction(DFN(kernel_size=3), **SMALL)
    loader = DataLoader(clips(), batch_size=4)
    best_trainer, final_trainer = trainer(), trainer()
    best_result = model.run_test(best_trainer, dataloaders=loader)
    final_result = model.run_test(final_trainer, dataloaders=loader, prefix="test_final")
    best, final = best_trainer.callback_metrics, final_trainer.callback_metrics
    assert not any(k.startswith("test/") for k in final) and not any(k.startswith("test_final/") for k in best)
    # The same weights and data under two names: the same numbers, logged and returned.
    for key in ("bce_per_frame", "mse_per_frame", "ssim", "ssim_openstl", "copy_last/bce_per_frame", "loss"):
        assert final[f"test_final/{key}"] == best[f"test/{key}"], key
    assert (best_result.prefix, final_result.prefix) == ("test", "test_final")
    assert final_result.metrics == best_result.metrics and final_result.sequences == 6
    assert final_result.summary()["test_final/loss"] == final_result.metrics["bce_per_frame"]  # the monitored metric
    assert len(final_result.summary()["test_final/bce_per_frame/horizon"]) == SMALL["frames_out"]
    assert model.run_test(trainer(), dataloaders=loader).prefix == "test"  # the prefix lasts one pass


def test_an_empty_validation_split_is_an_error_saying_how_to_fix_it(tmp_path):
    frames = np.zeros((30, 32, 32, 3), np.uint8)
    for t in range(len(frames)):
        frames[t, 8:16, t % 20: t % 20 + 8] = 255
    video = tmp_path / "clip.mp4"
    iio.imwrite(video, frames, fps=10, macro_block_size=1)
    data = VideoFolder(str(video), frames_in=2, frames_out=2, image_size=16, batch_size=2,
                       val_fraction=0.0, test_fraction=0.2)
    with pytest.raises(ValueError, match="val_fraction is 0, so there is no val split.*use a fraction > 0"):
        data.setup("fit")  # at setup, before any training (bad input up front)


def test_scheduled_sampling_masks_are_a_pure_function_of_seed_step_and_sample(monkeypatch):
    """The masks do not touch or depend on the global RNG (a resumed run draws the same ones), change with
    the seed, the step and the batch, and rank r of w gets rows r, r + w, ... of the one-device batch."""
    import types

    model = VideoPrediction(DFN(kernel_size=3), **{**SMALL, "scheduled_sampling": 0.5})

    def mask(step, batch=0, seed="0", world=1, rank=0, size=8):
        monkeypatch.setenv("PL_GLOBAL_SEED", seed)
        model._trainer = types.SimpleNamespace(estimated_stepping_batches=100, global_step=step, world_size=world,
                                               global_rank=rank)
        return model.truth_mask(size, torch.device("cpu"), batch)

    torch.manual_seed(0)
    first = mask(10)
    state = torch.get_rng_state()
    torch.manual_seed(123)  # another global RNG state
    assert torch.equal(mask(10), first)
    torch.set_rng_state(state)
    mask(10)
    assert torch.equal(torch.get_rng_state(), state)  # and it draws nothing from it
    assert first.shape == (8, SMALL["frames_out"]) and first.dtype == torch.bool
    assert not torch.equal(mask(11), first) and not torch.equal(mask(10, batch=1), first)
    assert not torch.equal(mask(10, seed="1"), first)
    whole = mask(10, size=8)  # one device, batch 8 = the global batch of 2 ranks x 4
    assert torch.equal(torch.stack([mask(10, world=2, rank=r, size=4) for r in (0, 1)], 1).flatten(0, 1), whole)
    p = model.truth_probability()  # 1 - 10/50 = 0.8
    assert abs(float(mask(10, size=4000).float().mean()) - p) < 0.02
    assert mask(60) is None  # probability 0 after half the run
