"""Metrics against hand-computed values, numpy formulas and scikit-image: never against themselves."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from skimage.util.dtype import dtype_range

from dfn.metrics import NAMES, OPENSTL_SSIM_RANGE, FrameMetrics, frame_scores, ssim_uniform


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
    assert math.isnan(s["ssim_openstl"].item())  # 2x2 is smaller than the 7x7 window: undefined, not 0


def test_clipping_bounds_bce_of_a_wrong_certain_prediction():
    p = torch.zeros(1, 1, 1, 1, 1)
    y = torch.ones(1, 1, 1, 1, 1)
    assert math.isclose(frame_scores(p, y, eps=1e-7)["bce_per_frame"].item(), -math.log(1e-7), rel_tol=1e-6)


def test_mse_and_mae_score_the_raw_prediction_while_ssim_and_psnr_clamp():
    # A 8x8 frame predicted 1.3 where the target is 1, and -0.2 where it is 0 (left / right halves).
    y = torch.zeros(1, 1, 1, 8, 8)
    y[..., :4] = 1.0
    p = torch.where(y > 0, torch.tensor(1.3), torch.tensor(-0.2))
    s = frame_scores(p, y)
    # Raw errors: 32 pixels off by 0.3, 32 by 0.2 (a clamped prediction would score 0 everywhere).
    assert math.isclose(s["mse_per_frame"].item(), 32 * 0.09 + 32 * 0.04, rel_tol=1e-6)
    assert math.isclose(s["mse_per_pixel"].item(), (0.09 + 0.04) / 2, rel_tol=1e-6)
    assert math.isclose(s["mae_per_frame"].item(), 32 * 0.3 + 32 * 0.2, rel_tol=1e-6)
    # Clamped to [0, 1] the prediction is the target: PSNR at its 100 dB cap, SSIMs exactly 1.
    assert s["psnr"].item() == pytest.approx(100.0)
    assert s["ssim"].item() == pytest.approx(1.0, abs=1e-6)
    assert s["ssim_openstl"].item() == pytest.approx(1.0, abs=1e-12)
    # BCE clips to [eps, 1 - eps] in the predictions' float32, as the training loss does: 1.3 -> 1 - eps
    # (which rounds to 1 - 2^-23 in float32) costs -log(1 - 2^-23), -0.2 -> eps costs -log(1 - eps).
    high, low = float(torch.tensor(1 - 1e-7)), float(torch.tensor(1e-7))
    assert high == 1 - 2**-23
    assert s["bce_per_frame"].item() == pytest.approx(-32 * math.log(high) - 32 * math.log1p(-low), rel=1e-6)


def test_ssim_of_flat_frames_is_the_luminance_term_by_hand():
    # Constant frames have zero variances, so SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1), C1 = (K1 R)^2.
    p, y = torch.full((1, 1, 1, 16, 16), 0.2), torch.full((1, 1, 1, 16, 16), 0.6)
    s = frame_scores(p, y)
    for name, data_range, tolerance in (("ssim", 1.0, 1e-4), ("ssim_openstl", 2.0, 1e-12)):  # ssim: float32
        c1 = (0.01 * data_range) ** 2
        mx, my = float(p.flatten()[0]), float(y.flatten()[0])  # 0.2 and 0.6 as stored in float32
        expected = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
        assert s[name].item() == pytest.approx(expected, abs=tolerance), name


def test_openstl_data_range_is_what_their_scikit_image_inferred():
    # OpenSTL calls structural_similarity without data_range; scikit-image <= 0.19 then took the dtype's
    # range, which for floats is [-1, 1].
    low, high = dtype_range[np.float32]
    assert OPENSTL_SSIM_RANGE == high - low == 2.0


def structured_frames(rng: np.random.Generator, channels: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) pairs with structure: a bright square that moves one pixel, plus a gradient and noise."""
    a = np.zeros((channels, h, w))
    a[:, 4:12, 5:13] = 1.0
    b = np.roll(a, 1, axis=-1) * 0.9
    ramp = np.linspace(0, 0.3, w)[None, None, :]
    return np.clip(a + ramp, 0, 1), np.clip(b + ramp + 0.05 * rng.standard_normal(a.shape), 0, 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_openstl_equals_scikit_image(channels):
    rng = np.random.default_rng(0)
    pairs = [structured_frames(rng, channels, 20, 23)]
    for _ in range(3):
        x = rng.random((channels, 20, 23))
        pairs.append((x, np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)))
    pairs.append((np.zeros((channels, 20, 23)), rng.random((channels, 20, 23))))
    preds = torch.from_numpy(np.stack([p for p, _ in pairs]))[:, None]  # (N, 1, C, H, W): N sequences of 1 frame
    targets = torch.from_numpy(np.stack([t for _, t in pairs]))[:, None]
    ours = frame_scores(preds, targets)["ssim_openstl"][:, 0]

    def skimage_ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
        if channels == 1:
            return structural_similarity(x[0], y[0], data_range=data_range)
        return structural_similarity(x, y, data_range=data_range, channel_axis=0)

    reference = torch.tensor([skimage_ssim(p, t, OPENSTL_SSIM_RANGE) for p, t in pairs], dtype=torch.float64)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    # The same window and statistics with data range 1 (scikit-image's explicit data_range=1).
    ours_1 = ssim_uniform(preds[:, 0], targets[:, 0], data_range=1.0)
    reference_1 = torch.tensor([skimage_ssim(p, t, 1.0) for p, t in pairs], dtype=torch.float64)
    torch.testing.assert_close(ours_1, reference_1, rtol=0, atol=1e-6)


def test_accumulation_is_the_mean_over_sequences_and_horizons_numpy():
    rng = np.random.default_rng(0)
    p, y = rng.random((5, 3, 1, 8, 8)) * 1.2 - 0.1, rng.random((5, 3, 1, 8, 8))  # a few predictions outside [0, 1]
    metric = FrameMetrics(frames_out=3)
    metric.update(torch.from_numpy(p[:2]).float(), torch.from_numpy(y[:2]).float())
    metric.update(torch.from_numpy(p[2:]).float(), torch.from_numpy(y[2:]).float())
    out = metric.compute()
    p32 = p.astype(np.float32).astype(np.float64)  # what the metric saw
    y32 = y.astype(np.float32).astype(np.float64)
    per_frame = ((p32 - y32) ** 2).sum(axis=(2, 3, 4))  # (5, 3): raw squared error summed over a frame
    np.testing.assert_allclose(out["mse_per_frame/horizon"].numpy(), per_frame.mean(0), rtol=1e-9)
    np.testing.assert_allclose(out["mse_per_frame"].item(), per_frame.mean(), rtol=1e-9)
    clamped = np.clip(p32, 0, 1)
    psnr = 10 * np.log10(1 / ((clamped - y32) ** 2).mean(axis=(2, 3, 4)))  # (5, 3)
    np.testing.assert_allclose(out["psnr/horizon"].numpy(), psnr.mean(0), rtol=1e-5)
    assert out["sequences"].item() == 5


def test_an_empty_evaluation_set_raises_instead_of_scoring_zero():
    metric = FrameMetrics(frames_out=2)
    with pytest.raises(ValueError, match="no sequences"):
        metric.compute()


def test_which_way_is_better_and_what_loss_monitors_are_defined_once():
    from dfn.metrics import BETTER, better, monitored_metric

    assert {name for name in NAMES if better(name) == "max"} == {"ssim", "ssim_openstl", "psnr"}
    assert better("test/copy_last/ssim_openstl") == "max" and better("val/loss") == "min" and set(BETTER) > set(NAMES)
    assert (monitored_metric("bce"), monitored_metric("mse")) == ("bce_per_frame", "mse_per_frame")
    with pytest.raises(ValueError, match="not one of the metrics"):
        better("test/sequences")
    with pytest.raises(ValueError, match="loss must be one of 'bce', 'mse', got 'l1'"):
        monitored_metric("l1")


def evaluation_pass(evaluation, stage: str, clips: torch.Tensor, complete: bool = True):
    """Score `clips` (N, 4, C, H, W: 2 input frames, 2 targets) in batches of 3 with a fixed 'model' (the
    mean of the two inputs), as validation_step / test_step do."""
    for batch in clips.split(3):
        inputs, targets = batch[:, :2], batch[:, 2:]
        evaluation.update(stage, inputs, targets, inputs.mean(1, keepdim=True).expand_as(targets))
    return evaluation.result(stage, stage, "bce_per_frame", complete=complete)


def test_copy_last_is_scored_once_per_fixed_set_and_a_changed_set_is_refused():
    from dfn.evaluation import Evaluation

    clips = torch.rand(7, 4, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    evaluation = Evaluation(frames_out=2, eps=1e-7)
    scored = []
    update = evaluation.copy_last["val"].update
    evaluation.copy_last["val"].update = lambda *args: (scored.append(len(args[0])), update(*args))
    sanity = evaluation_pass(evaluation, "val", clips[:3], complete=False)  # Lightning's sanity check: not kept
    first, second = evaluation_pass(evaluation, "val", clips), evaluation_pass(evaluation, "val", clips)
    assert scored == [3, 3, 3, 1]  # the sanity pass and the first full pass only
    reference = FrameMetrics(2)
    reference.update(clips[:, 1:2].expand(-1, 2, -1, -1, -1), clips[:, 2:])  # copy-last, scored from scratch
    expected = reference.compute()
    for result in (first, second):
        assert result.copy_last == pytest.approx({n: float(expected[n]) for n in NAMES}, rel=1e-12)
        assert result.sequences == 7 and result.logged()["val/loss"] == result.metrics["bce_per_frame"]
    assert second == first and sanity.sequences == 3
    with pytest.raises(RuntimeError, match="the val set changed between passes"):
        evaluation_pass(evaluation, "val", torch.cat([clips[:6], clips[:1]]))  # one sequence replaced


def test_a_test_pass_returns_every_sequences_own_scores():
    from dfn.evaluation import Evaluation

    clips = torch.rand(5, 4, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    result = evaluation_pass(Evaluation(frames_out=2, eps=1e-7), "test", clips)
    predictions = clips[:, :2].mean(1, keepdim=True).expand(-1, 2, -1, -1, -1)
    by_hand = frame_scores(predictions, clips[:, 2:])  # name -> (5, 2)
    for name in NAMES:
        assert result.per_sequence[name] == pytest.approx(by_hand[name].mean(1).tolist(), rel=1e-12), name
        assert np.mean(result.per_sequence[name]) == pytest.approx(result.metrics[name], rel=1e-9), name
        assert result.horizon[name] == pytest.approx(by_hand[name].mean(0).tolist(), rel=1e-12), name
