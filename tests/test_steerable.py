"""Learning steerable filters (De Brabandere et al. 2016, Section 4.1): the targets against independent code,
the authors' parameter count, the scores against hand-set filters (right, transposed, softmax-normalised),
deterministic data, and the config through the real CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import lightning as L
import numpy as np
import pytest
import torch
from scipy.ndimage import correlate1d
from torch import nn

from conftest import ROOT, only, run_train
from dfn.data import SteerableFilters
from dfn.data.steerable import ANGLE, IMAGE, TARGET, TEST_IMAGES, TRAIN_IMAGES, VAL_IMAGES, steer, steerable_filter
from dfn.ops import local_filter
from dfn.tasks import SteerableFilterTask
from dfn.tasks.steerable import CORRELATION_TARGET, REL_L2_TARGET, SteerableFilterGenerator, filter_figure

CONFIG = str(ROOT / "experiments" / "steerable" / "dfn.yaml")
TINY_DATA = ["--data.init_args.image_size", "32", "--data.init_args.batch_size", "4",
             "--data.init_args.train_batches_per_epoch", "3", "--data.init_args.val_size", "8",
             "--data.init_args.test_size", "12"]


def separable_target(image: np.ndarray, theta: float) -> np.ndarray:
    """cos θ·Ix + sin θ·Iy by scipy, each derivative a 9-tap Gaussian derivative along one axis times a 9-tap
    Gaussian along the other (σ = 1, unnormalised), 'same' correlation with zero padding."""
    k = np.arange(-4, 5, dtype=np.float64)
    gauss, derivative = np.exp(-k**2 / 2), -k * np.exp(-k**2 / 2)
    ix = correlate1d(correlate1d(image, derivative, axis=1, mode="constant"), gauss, axis=0, mode="constant")
    iy = correlate1d(correlate1d(image, gauss, axis=1, mode="constant"), derivative, axis=0, mode="constant")
    return math.cos(theta) * ix + math.sin(theta) * iy


def test_the_filter_has_the_hand_computed_taps():
    g = steerable_filter(torch.tensor([0.0, math.pi / 2], dtype=torch.float64))  # (2, 9, 9)
    centre = 4
    assert g[0, centre, centre + 1] == pytest.approx(-math.exp(-0.5))  # θ = 0: r = 0, c = +1
    assert g[0, centre, centre - 1] == pytest.approx(math.exp(-0.5))
    assert g[1, centre + 1, centre] == pytest.approx(-math.exp(-0.5))  # θ = π/2: r = +1, c = 0
    assert g[0, centre + 1, centre] == pytest.approx(0.0) and g[1, centre, centre + 1] == pytest.approx(0.0)
    assert g.abs().amax((1, 2)).tolist() == pytest.approx([math.exp(-0.5)] * 2)
    assert g.sum((1, 2)).abs().max() < 1e-12


def test_targets_match_an_independent_separable_implementation():
    rng = np.random.default_rng(3)
    images, theta = rng.random((5, 20, 23)), rng.random(5) * 2 * math.pi
    ours = steer(torch.from_numpy(images), torch.from_numpy(theta)).numpy()
    for image, t, target in zip(images, theta, ours):
        np.testing.assert_allclose(target, separable_target(image, t), atol=1e-12)


@pytest.mark.parametrize("source", ["natural", "random"])
def test_batches_hold_image_angle_and_its_target(source):
    data = SteerableFilters(source=source, image_size=32, batch_size=3, val_size=2, test_size=4)
    data.setup("fit")
    data.setup("test")
    train = next(iter(data.train_dataloader()))
    for batch in (train, data.val_set, data.test_set):
        assert batch.dtype == torch.float32 and batch.shape[1:] == (3, 32, 32)
        images, angles = batch[:, IMAGE].double().numpy(), batch[:, ANGLE].double().numpy()
        assert images.min() >= 0 and images.max() <= 1
        assert (angles == angles[:, :1, :1]).all() and angles.min() >= 0 and angles.max() < 2 * math.pi
        for image, angle, target in zip(images, angles[:, 0, 0], batch[:, TARGET].double().numpy()):
            np.testing.assert_allclose(target, separable_target(image, angle), atol=2e-5)
    np.testing.assert_allclose(data.test_set[:, ANGLE, 0, 0], 2 * math.pi * np.arange(4) / 4, rtol=1e-6)


def test_data_is_a_pure_function_of_seed_epoch_and_index():
    a, b, other = (SteerableFilters(image_size=16, batch_size=2, train_batches_per_epoch=3, val_size=3,
                                    test_size=3, seed=s) for s in (0, 0, 1))
    first, second = ([batch.clone() for batch in loader] for loader in [a.train_dataloader()] * 2)  # 2 passes
    assert len(first) == 3
    for i, batch in enumerate(first):  # pass 0 without a trainer is epoch 0
        assert torch.equal(batch, b.train_dataloader().dataset.batch(0, i))
        assert torch.equal(second[i], b.train_dataloader().dataset.batch(1, i))  # pass 1: epoch 1
        assert not torch.equal(batch, second[i])
        assert not torch.equal(batch, other.train_dataloader().dataset.batch(0, i))
    for data in (a, b, other):
        data.setup("fit")
        data.setup("test")
    assert torch.equal(a.val_set, b.val_set) and torch.equal(a.test_set, b.test_set)
    assert not torch.equal(a.val_set, other.val_set) and not torch.equal(a.test_set, other.test_set)
    assert not set(TRAIN_IMAGES) & set(VAL_IMAGES) and not set(TRAIN_IMAGES) & set(TEST_IMAGES)
    assert not set(VAL_IMAGES) & set(TEST_IMAGES)


def test_bad_arguments_are_refused_at_construction():
    with pytest.raises(ValueError, match="SteerableFilters: source must be one of 'natural', 'random' .*got 'noise'$"):
        SteerableFilters(source="noise")
    with pytest.raises(ValueError, match=r"image_size must be an integer in 1\.\.\d+ "
                                         r"\(the smallest photograph's side.*got 400$"):
        SteerableFilters(image_size=400)
    with pytest.raises(ValueError, match="test_size must be an integer >= 1, got 0$"):
        SteerableFilters(test_size=0)
    with pytest.raises(ValueError, match="angle_input must be one of 'radians', 'centred' .*got 'degrees'$"):
        SteerableFilterTask(angle_input="degrees")
    varying = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="the angle map must be a single angle per image .*got maps that vary"):
        SteerableFilterTask.split(varying)


def test_the_generator_has_the_authors_18897_parameters_and_init():
    generator = SteerableFilterGenerator()
    convs = [m for m in generator.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 64, (1, 1)), (64, 128, (1, 1)),
                                                                            (128, 81, (1, 1))]
    assert sum(p.numel() for p in SteerableFilterTask().parameters()) == 18_897  # the paper's count
    for conv in convs:  # Lasagne HeUniform(gain 1): U(±√(3 / fan_in)), zero biases
        assert conv.weight.abs().max() <= math.sqrt(3 / conv.in_channels) and not conv.bias.any()


def test_the_one_pixel_shortcut_equals_the_network_on_the_full_map_and_local_filtering():
    torch.manual_seed(0)
    task = SteerableFilterTask(angle_input="centred").double()  # float64: compare sums without rounding noise
    data = SteerableFilters(source="random", image_size=12, test_size=3)
    data.setup("test")
    batch = data.test_set.double()
    images, theta, _ = task.split(batch)
    full = task.generator(batch[:, ANGLE:ANGLE + 1])  # (3, 81, 12, 12): the paper's per-pixel network
    predictions, filters = task(images, theta)
    torch.testing.assert_close(full, filters[:, :, None, None].expand_as(full), rtol=1e-12, atol=1e-12)
    by_pixel = local_filter(images, full)  # the paper's dynamic local filtering, filter map as generated
    torch.testing.assert_close(predictions, by_pixel, rtol=1e-10, atol=1e-10)
    grads = [torch.autograd.grad(out.square().sum(), list(task.parameters())) for out in (predictions, by_pixel)]
    for ours, paper in zip(*grads):
        torch.testing.assert_close(ours, paper, rtol=1e-9, atol=1e-9)


class HandSetFilters(nn.Module):
    """A 'generator' that outputs the true G_θ, transposed, or softmax-normalised, at every pixel."""

    def __init__(self, broken: str | None) -> None:
        super().__init__()
        self.broken = broken

    def forward(self, angle_map: torch.Tensor) -> torch.Tensor:
        B, _, H, W = angle_map.shape
        g = steerable_filter(angle_map[:, 0, 0, 0].double()).float()  # (B, 9, 9)
        if self.broken == "transposed":
            g = g.transpose(1, 2)
        g = g.reshape(B, 81)
        if self.broken == "softmax":
            g = g.softmax(dim=1)
        return g[:, :, None, None].expand(B, 81, H, W)


@pytest.mark.parametrize("broken", [None, "transposed", "softmax"])
def test_the_true_filter_passes_the_targets_and_broken_ones_fail(broken, tmp_path):
    task = SteerableFilterTask()
    task.generator = HandSetFilters(broken)
    data = SteerableFilters(source="random", image_size=24, batch_size=16, test_size=36)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    results = trainer.test(task, datamodule=data, verbose=False)[0]
    passes = results["test/filter_correlation"] >= CORRELATION_TARGET and results["test/filter_rel_l2"] <= REL_L2_TARGET
    figure = iio.imread(tmp_path / "steerable_filters.png")
    assert figure.shape == (4 * (9 * 12 + 4) + 4, 8 * (9 * 12 + 4) + 4, 3)
    if broken is None:
        assert passes and results["test/filter_correlation_min"] > 1 - 1e-6 and results["test/filter_rel_l2_max"] < 1e-6
        assert results["test/relative_mse"] < 1e-10  # the task applies the filter as generated: no softmax, no bias
        difference_rows = figure[2 * (9 * 12 + 4) + 4:]
        assert (difference_rows[np.any(difference_rows != 128, axis=-1)] == 255).all()  # white: zero difference
    else:
        assert not passes and results["test/relative_mse"] > 0.1
    if broken == "transposed":  # G_θ transposed is G_(π/2 − θ): correlation cos(π/2 − 2θ), zero on average
        assert abs(results["test/filter_correlation"]) < 0.05


def test_the_figure_maps_signs_to_colours():
    truth = steerable_filter(torch.zeros(1)).numpy()
    figure = filter_figure(truth, truth, zoom=1, gap=1)  # rows: learned, true, difference, difference x 10
    assert figure.shape == (4 * 10 + 1, 10 + 1, 3)
    tile = figure[1:10, 1:10]  # the learned filter at θ = 0: negative right of the centre, positive left
    assert tuple(tile[4, 5]) == (0, 0, 255) and tuple(tile[4, 3]) == (255, 0, 0) and tuple(tile[4, 4]) == (255,) * 3
    assert (figure[21:30, 1:10] == 255).all()  # zero difference is white


def test_fast_dev_run_through_the_cli(tmp_path):
    proc = run_train(["fit", "--config", CONFIG, "--trainer.fast_dev_run=true"], tmp_path)
    assert "max_steps=1" in proc.stdout + proc.stderr


def test_a_tiny_fit_logs_tests_and_draws_like_every_run(tmp_path):
    proc = run_train(["fit", "--config", CONFIG, "--trainer.max_epochs", "2", "--trainer.enable_progress_bar",
                      "false", "--trainer.log_every_n_steps", "1", *TINY_DATA], tmp_path)
    summary_path = only(sorted(tmp_path.glob("runs/dfn/*/summary.json")))
    summary, directory = json.loads(summary_path.read_text()), summary_path.parent
    assert summary["parameters"] == 18_897 and summary["global_step"] == 6
    assert "steerable filters on 12 test angles: correlation with G_θ" in proc.stdout
    assert (directory / "steerable_filters.png").is_file() and (directory / "checkpoints" / "last.ckpt").is_file()
    logged = {line.split(",")[1] for line in (directory / "metrics.csv").read_text().splitlines()[1:]}
    assert {"train/loss", "val/loss", "val/filter_correlation", "test/filter_correlation"} <= logged
    assert list(tmp_path.glob("runs/wandb/offline-run-*"))
    # The test scored the final weights (last.ckpt): recompute the correlation by numpy at the 12 test angles.
    task = SteerableFilterTask.load_from_checkpoint(directory / "checkpoints" / "last.ckpt", map_location="cpu")
    theta = 2 * np.pi * np.arange(12) / 12
    with torch.no_grad():
        filters = task.filters(torch.tensor(theta, dtype=torch.float32)).double().numpy()  # (12, 81)
    r, c = np.mgrid[-4:5, -4:5]
    truth = [(-(c * np.cos(t) + r * np.sin(t)) * np.exp(-(r**2 + c**2) / 2)).ravel() for t in theta]
    correlation = np.mean([np.corrcoef(f, g)[0, 1] for f, g in zip(filters, truth)])
    assert summary["test/filter_correlation"] == pytest.approx(correlation, abs=1e-5)
    assert summary["test/relative_mse"] > 0


def test_the_config_is_the_papers_protocol():
    cli_config = Path(CONFIG).read_text()
    assert "class_path: dfn.tasks.SteerableFilterTask" in cli_config and "max_epochs: 50" in cli_config
    data, task = SteerableFilters(), SteerableFilterTask()
    assert (data.batch_size, data.train_batches_per_epoch, data.image_size, data.test_size) == (64, 100, 64, 360)
    assert (task.hparams.lr, task.hparams.lr_decay_every, task.hparams.lr_decay) == (1e-3, 10, 0.5)
