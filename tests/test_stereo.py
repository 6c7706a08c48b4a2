"""Stereo prediction: the horizontal filter operator, the stereo pairs and their disparity, the network,
the disparity readout and the configs through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from scipy.ndimage import gaussian_filter

from conftest import ROOT
from dfn.cli import main
from dfn.data import MiddleburyStereo, SyntheticStereo, synthetic_highway
from dfn.data.highway import render_highway
from dfn.data.stereo import DISPARITY, LEFT, REACH, RIGHT, SGBM, fill_background, motorcycle, sgbm_disparity
from dfn.ops import local_filter, row_filter, row_filter_reference
from dfn.tasks import StereoPrediction
from dfn.tasks.stereo import TAPS, disparity_readout

CONFIGS = sorted((ROOT / "experiments" / "stereo").glob("*.yaml"))


def numpy_row_filter(x: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """The operator's definition, one pixel at a time: x (B, C, H, W), filters (B, K, H, W), zeros outside."""
    B, C, H, W = x.shape
    K = filters.shape[1]
    out = np.zeros_like(x)
    for b, c, i, j, k in np.ndindex(B, C, H, W, K):
        column = j + k - K // 2
        if 0 <= column < W:
            out[b, c, i, j] += filters[b, k, i, j] * x[b, c, i, column]
    return out


def shift_rows(image: np.ndarray, d: np.ndarray) -> np.ndarray:
    """right(y, x) = image(y, x + d(y, x)), linear interpolation, NaN where x + d leaves the row."""
    H, W = image.shape
    source = np.arange(W)[None, :] + np.nan_to_num(d, nan=-W)  # (H, W) columns to read; unknown: outside
    low = np.floor(source).astype(int)
    t = source - low
    inside = (low >= 0) & (low + 1 < W) | (source == W - 1)
    low = np.clip(low, 0, W - 2)
    rows = np.arange(H)[:, None]
    out = image[rows, low] * (1 - t) + image[rows, low + 1] * t
    return np.where(inside & np.isfinite(d), out, np.nan)


def test_row_filter_matches_its_definition_and_the_references():
    rng = np.random.default_rng(0)
    x, filters = rng.normal(size=(2, 3, 4, 9)), rng.normal(size=(2, 5, 4, 9))
    expected = numpy_row_filter(x, filters)
    xt, ft = torch.as_tensor(x), torch.as_tensor(filters)
    assert np.allclose(row_filter(xt, ft).numpy(), expected)
    assert np.allclose(row_filter_reference(xt, ft).numpy(), expected)
    square = torch.zeros(2, 25, 4, 9, dtype=torch.float64)
    square[:, 10:15] = ft  # a 5x5 window that is zero off its middle row
    assert torch.allclose(row_filter(xt, ft), local_filter(xt, square))
    for mode in ("replicate", "reflect"):
        assert torch.allclose(row_filter(xt, ft, padding_mode=mode), row_filter_reference(xt, ft, padding_mode=mode))
    xt.requires_grad_(True), ft.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: row_filter(a, b, padding_mode="reflect"), (xt[:1, :1], ft[:1]))


def test_row_filter_rejects_bad_filters():
    x = torch.rand(2, 1, 4, 8)
    with pytest.raises(ValueError, match=r"row_filter: filters must be \(B, K, H, W\) = \(2, K, 4, 8\)"):
        row_filter(x, torch.rand(2, 4, 4, 8))  # even K
    with pytest.raises(ValueError, match="row_filter: filters"):
        row_filter(x, torch.rand(2, 5, 4, 7))  # wrong width
    with pytest.raises(ValueError, match="padding_mode"):
        row_filter(x, torch.rand(2, 5, 4, 8), padding_mode="wrap")


def test_parameter_counts_are_the_authors():
    assert sum(p.numel() for p in StereoPrediction().parameters()) == 464_494
    assert sum(p.numel() for p in StereoPrediction(baseline=True).parameters()) == 464_509
    # ours: both views into the first conv (9*32 more weights), no dynamic bias (128 weights and 1 bias fewer)
    both = StereoPrediction(condition="both", dynamic_bias=False)
    assert sum(p.numel() for p in both.parameters()) == 464_494 + 9 * 32 - 129


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="condition must be one of 'left', 'both'"):
        StereoPrediction(condition="right")
    with pytest.raises(ValueError, match="dynamic_bias must be true or false"):
        StereoPrediction(dynamic_bias="no")
    with pytest.raises(ValueError, match=r"SyntheticStereo: baseline must be a number in \(0, 0\.307692\] "
                                         r"\(metres.*got 1\.0$"):
        SyntheticStereo(baseline=1.0)  # disparities beyond the filter's reach
    with pytest.raises(ValueError, match=r"MiddleburyStereo: offset must be one that puts the disparities "
                                         r"within the filter's ±6 px.*got 7$"):
        MiddleburyStereo(downscale=2)
    with pytest.raises(ValueError, match=r"StereoPrediction: batch must be \(B, 4, H, W\) .*got \(2, 3, 64, 64\)$"):
        StereoPrediction().training_step(torch.rand(2, 3, 64, 64), 0)


def test_the_left_camera_is_the_highway_camera():
    views, _ = render_highway(3, 2, 64, np.random.default_rng(5), camera_offsets=(0.0, 0.3))
    assert np.array_equal(views[0], synthetic_highway(3, 2, 64, np.random.default_rng(5)))
    assert not np.array_equal(views[0], views[1])
    grained, _ = render_highway(3, 2, 64, np.random.default_rng(5), grain=True)
    changed = grained[0] != views[0]  # (3, 2, 64, 64): the grain lies on the ground, below the horizon
    assert changed[..., 40:, :].mean() > 0.5 and not changed[..., :12, :].any()


def warp_errors(pairs: torch.Tensor) -> tuple[float, float, float]:
    """Mean |right − left shifted by d|, by −d and by 0 (copying the left view), over the pixels where
    both shifts stay inside the image and the ground truth is known."""
    errors = {+1: [], -1: [], 0: []}
    for pair in pairs.double().numpy():
        left, right, d = pair[LEFT], pair[RIGHT], pair[DISPARITY]
        inside = np.isfinite(shift_rows(left, d)) & np.isfinite(shift_rows(left, -d))
        for sign in errors:
            errors[sign].append(np.abs(shift_rows(left, sign * d) - right)[inside])
    return tuple(float(np.concatenate(errors[s]).mean()) for s in (+1, -1, 0))


def test_rendered_disparity_warps_the_left_view_onto_the_right():
    data = SyntheticStereo(val_size=16, test_size=1)
    data.setup("fit")
    pairs = data.val_set  # (16, 4, 64, 64)
    d = pairs[:, DISPARITY]
    assert d.min() >= 0 and d.max() <= REACH and d.max() > 4  # a right camera: 0 at infinity, 5+ px near
    right_sign, wrong_sign, copy = warp_errors(pairs)
    # Off the object edges (aliased, occluding) the warp is exact; the wrong sign is worse than copying.
    assert right_sign < 0.25 * copy < wrong_sign


def test_motorcycle_sign_and_mirror():
    left, right, disparity = skimage.data.stereo_motorcycle()  # Middlebury: left(y, x) ≈ right(y, x − d)
    gray_l, gray_r = left.mean(-1)[100:400], right.mean(-1)[100:400]
    d = np.where(np.isfinite(disparity), disparity, np.nan)[100:400]
    columns = np.arange(gray_l.shape[1])[None, :] - np.nan_to_num(np.round(d)).astype(int)
    ok = np.isfinite(d) & (columns >= 0)
    matched = gray_r[np.arange(300)[:, None].repeat(gray_l.shape[1], 1)[ok], columns[ok]]
    assert np.abs(matched - gray_l[ok]).mean() < 0.4 * np.abs(gray_r - gray_l)[ok].mean()
    # Our mirrored, downscaled pair follows our convention right(y, x) ≈ left(y, x + d):
    small_left, small_right, small_d = motorcycle(5)
    pair = torch.stack([torch.as_tensor(a, dtype=torch.float64) for a in (small_left, small_right, small_d)])[None]
    right_sign, wrong_sign, copy = warp_errors(pair)
    assert right_sign < 0.4 * copy and wrong_sign > copy
    data = MiddleburyStereo()
    data.setup("test")
    d = data.test_set[:, DISPARITY]
    assert d[torch.isfinite(d)].abs().max() <= REACH  # the offset crops fit the filter
    right_sign, _, copy = warp_errors(data.test_set)
    assert right_sign < 0.4 * copy


def test_sgbm_reference_estimates_the_disparity():
    data = SyntheticStereo(val_size=1, test_size=16)
    data.setup("test")
    d, sgbm = data.test_set[:, DISPARITY], data.test_set[:, SGBM]
    assert torch.isfinite(sgbm).all()  # holes filled
    assert (sgbm - d).abs().mean() < 0.3 * d.abs().mean()  # far better than zero disparity: the sign is right


def test_sgbm_reference_is_the_right_views_disparity():
    """A scene built here: two textured fronto-parallel planes, the background at disparity 2, a
    foreground strip at 8; right(y, x) = left(y, x + d) with d the right view's (it differs from the left
    view's at the strip's edges, by 6 px over 6 columns on each side)."""
    rng = np.random.default_rng(0)
    H, W = 48, 64

    def texture() -> np.ndarray:  # (H, 120) smooth random texture in [0, 1]
        t = gaussian_filter(rng.random((H, 120)), 1.0)
        return (t - t.min()) / (t.max() - t.min())

    background, strip = texture(), texture()
    x = np.arange(W)[None].repeat(H, 0)  # (H, W) columns
    left = np.where((x >= 24) & (x < 44), strip[:, 30:30 + W], background[:, 30:30 + W])
    on_strip = (x + 8 >= 24) & (x + 8 < 44)  # right-view pixels that see the strip
    right = np.where(on_strip, np.take_along_axis(strip, x + 38, 1), np.take_along_axis(background, x + 32, 1))
    truth = np.where(on_strip, 8.0, 2.0)
    estimate = fill_background(sgbm_disparity(*((view * 255).round().astype(np.uint8) for view in (left, right))))
    assert np.abs(estimate - truth).mean() < 0.5  # the left view's disparity scores 1.4+ here


def test_fill_background_takes_the_farther_neighbour():
    rows = np.array([[np.nan, 2, np.nan, np.nan, 5, np.nan], [np.nan] * 6, [7, np.nan, 3, 1, np.nan, 4]])
    expected = np.array([[2, 2, 2, 2, 5, 5], [np.nan] * 6, [7, 3, 3, 1, 1, 4]])
    assert np.array_equal(fill_background(rows), expected, equal_nan=True)


def test_disparity_readout_of_hand_made_filters():
    weights = torch.zeros(3, TAPS, 1, 2)
    weights[0, 0], weights[1, 6], weights[2, 12, :, 0] = 1, 1, 1  # one-hot at taps 0, 6, 12
    weights[2, 2, :, 1], weights[2, 9, :, 1] = 0.5, 0.5  # a 50/50 mix of offsets −4 and +3
    assert disparity_readout(weights).flatten().tolist() == [-6, -6, 0, 0, 6, -0.5]


class FixedNetwork(torch.nn.Module):
    """Stands in for the generator: fixed logits whose softmax splits each pixel's filter between the
    two taps around its disparity (linear interpolation: expected shift = the disparity), zero bias."""

    def __init__(self, disparity: torch.Tensor) -> None:
        super().__init__()
        position = disparity + REACH  # (B, H, W) in tap units, 0..12
        low = position.floor().clamp(0, TAPS - 2)
        t = (position - low)[:, None]  # (B, 1, H, W) share of the upper tap
        taps = torch.arange(TAPS)[None, :, None, None]  # (1, 13, 1, 1)
        weights = (taps == low[:, None]) * (1 - t) + (taps == low[:, None] + 1) * t  # (B, 13, H, W)
        self.logits = weights.clamp_min(1e-30).log()  # softmax(log w) = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.logits.float(), torch.zeros_like(x[:, :1])], 1)


def oracle_mse(filter_op) -> tuple[float, float, float]:
    """Right-view MSE of the model's filtering path with filters on the true disparity, ``filter_op``
    standing in for ``row_filter``; of copying the left view; and the EPE of the filters' readout.
    MSEs over the pixels whose match x + d lies inside the left view (the others are out of its sight)."""
    data = SyntheticStereo(val_size=16, test_size=1)
    data.setup("fit")
    pairs = data.val_set
    model = StereoPrediction()
    model.network = FixedNetwork(pairs[:, DISPARITY])
    import dfn.tasks.stereo as task
    original, task.row_filter = task.row_filter, filter_op
    try:
        predicted, weights = model(pairs[:, LEFT:LEFT + 1], pairs[:, RIGHT:RIGHT + 1])
    finally:
        task.row_filter = original
    seen = torch.arange(64) + pairs[:, DISPARITY] <= 63  # (16, 64, 64)
    mse = (predicted[:, 0] - pairs[:, RIGHT]).pow(2)[seen].mean()
    copy = (pairs[:, LEFT] - pairs[:, RIGHT]).pow(2)[seen].mean()
    epe = (disparity_readout(weights) - pairs[:, DISPARITY]).abs().mean()
    return float(mse), float(copy), float(epe)


def test_filters_on_the_true_disparity_predict_the_right_view_and_a_flipped_window_does_not():
    mse, copy, epe = oracle_mse(row_filter)
    assert mse < 0.1 * copy and epe < 1e-4
    flipped, _, _ = oracle_mse(lambda x, filters: row_filter(x, filters.flip(1)))  # the window mirrored
    assert flipped > copy


def test_dynamic_bias_is_added_to_the_left_view_before_filtering():
    pairs = torch.rand(2, 4, 64, 64)
    pairs[:, DISPARITY] = 2.0  # every filter one-hot on offset +2
    model = StereoPrediction()
    model.network = FixedNetwork(pairs[:, DISPARITY])
    bias = torch.rand(2, 1, 64, 64) - 0.5  # varies over the image: shifted with the view, or not
    model.network.forward = lambda x: torch.cat([model.network.logits.float(), bias], 1)
    predicted, _ = model(pairs[:, LEFT:LEFT + 1], pairs[:, RIGHT:RIGHT + 1])
    expected = (pairs[:, LEFT] + bias[:, 0])[:, :, 2:]  # right(y, x) = (left + bias)(y, x + 2), inside the view
    assert torch.allclose(predicted[:, 0, :, :-2], expected, atol=1e-6)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_config_fast_dev_run(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", str(config), "--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar",
                "false", "--trainer.enable_model_summary", "false", "--data.init_args.batch_size", "2",
                "--data.init_args.val_size", "2"])
    assert cli.trainer.global_step == 1 and isinstance(cli.model, StereoPrediction)


def test_fit_tests_the_final_weights_and_draws_the_pairs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / "experiments" / "stereo" / "dfn.yaml"), "--trainer.max_steps", "2",
          "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false", "--data.init_args.batch_size", "4",
          "--data.init_args.val_size", "2", "--data.init_args.test_size", "5"])  # test batches of 4 and 1
    summary = json.loads(next(tmp_path.glob("runs/dfn/*/summary.json")).read_text())
    assert summary["parameters"] == 464_494 and summary["global_step"] == 2
    for key in ("test/mse", "test/copy_left/mse", "test/disparity_epe", "test/disparity_bad1",
                "test/sgbm/disparity_epe", "test/disparity_epe_on_sgbm_pixels"):
        assert np.isfinite(summary[key]), key
    directory = Path(summary["run_dir"])
    assert len(list((directory / "stereo_test").glob("pair_*.png"))) == 5 and (directory / "stereo_test.png").is_file()
