"""Metrics against hand-computed values and their conventions."""

import math

import torch

from dfn.metrics import FrameMetrics, frame_scores


def test_per_frame_sums_by_hand():
    # One 2x2 frame: prediction 0.5 everywhere, target half ones: BCE = 4 * ln 2 summed over the frame.
    p = torch.full((1, 1, 1, 2, 2), 0.5)
    y = torch.tensor([[[[[1.0, 0.0], [1.0, 0.0]]]]])
    s = frame_scores(p, y)
    assert math.isclose(s["bce_per_frame"].item(), 4 * math.log(2), rel_tol=1e-9)
    assert math.isclose(s["bce_per_pixel"].item(), math.log(2), rel_tol=1e-9)
    assert math.isclose(s["mse_per_frame"].item(), 4 * 0.25)
    assert math.isclose(s["mae_per_frame"].item(), 4 * 0.5)
    assert math.isclose(s["psnr"].item(), 10 * math.log10(1 / 0.25), rel_tol=1e-5)


def test_clipping_bounds_bce_of_a_wrong_certain_prediction():
    p = torch.zeros(1, 1, 1, 1, 1)
    y = torch.ones(1, 1, 1, 1, 1)
    assert math.isclose(frame_scores(p, y, eps=1e-7)["bce_per_frame"].item(), -math.log(1e-7), rel_tol=1e-6)


def test_accumulation_is_the_mean_over_sequences_and_horizons():
    torch.manual_seed(0)
    p, y = torch.rand(5, 3, 1, 8, 8), torch.rand(5, 3, 1, 8, 8)
    metric = FrameMetrics(frames_out=3)
    metric.update(p[:2], y[:2])
    metric.update(p[2:], y[2:])
    out = metric.compute()
    per = frame_scores(p, y)["mse_per_frame"]  # (5, 3)
    torch.testing.assert_close(out["mse_per_frame/horizon"], per.mean(0))
    torch.testing.assert_close(out["mse_per_frame"], per.mean())
    assert out["ssim"].item() <= 1
