"""The predictor: the paper's parameter counts, hand-computed rollouts, and feedback of predictions."""

import pytest
import torch

from dfn.generators import DFN, PixelBaseline
from dfn.predictor import VideoPredictor


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_paper_parameter_counts():
    # REFERENCE §1: the authors' Moving MNIST DFN and its baseline.
    assert count(VideoPredictor(DFN(kernel_size=9))) == 637_361
    assert count(VideoPredictor(PixelBaseline(kernel_size=9))) == 637_443
    # ... and their highway network: buffer 2, hidden 64, 11x11 filters with dynamic bias.
    highway = dict(buffer_len=2, hidden=64, layout="highway", untied_input_bias=True, image_size=64)
    assert count(VideoPredictor(DFN(kernel_size=11, dynamic_bias=True), **highway)) == 368_122
    assert count(VideoPredictor(PixelBaseline(kernel_size=11, dynamic_bias=True), **highway)) == 368_245


def test_untied_input_bias_is_per_pixel_and_size_checked():
    predictor = VideoPredictor(DFN(kernel_size=3), layout="highway", untied_input_bias=True, image_size=8,
                               encoder_width=2, hidden=4, decoder_width=4, features=4)
    assert predictor.input_bias.shape == (2, 8, 8) and predictor.encoder[0].bias is None
    assert predictor(torch.rand(1, 2, 1, 8, 8), frames_out=1).shape == (1, 1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"built for \(8, 8\) frames; got \(16, 16\)"):
        predictor(torch.rand(1, 2, 1, 16, 16), frames_out=1)


def fixed_filter_predictor(offset: tuple[int, int], kernel_size: int = 3) -> VideoPredictor:
    """A predictor whose generator always emits the one-hot filter at `offset` (no softmax)."""
    generator = DFN(kernel_size=kernel_size, softmax=False)
    predictor = VideoPredictor(generator, encoder_width=2, hidden=4, decoder_width=4, features=4)
    with torch.no_grad():
        generator.head.weight.zero_()
        generator.head.bias.zero_()
        dy, dx = offset
        k = (dy + kernel_size // 2) * kernel_size + (dx + kernel_size // 2)  # row-major window order
        generator.head.bias[k] = 1.0
    return predictor


def test_centre_filter_reproduces_the_last_frame():
    frames = torch.rand(2, 4, 1, 12, 10)
    predictions = fixed_filter_predictor((0, 0))(frames, frames_out=3)
    assert predictions.shape == (2, 3, 1, 12, 10)
    for t in range(3):
        torch.testing.assert_close(predictions[:, t], frames[:, -1])


def test_rollout_feeds_back_its_own_predictions():
    # A filter reading the pixel one to the left moves the image one pixel right per step; fed back,
    # prediction n is the last input shifted by n pixels (with zeros entering from the left).
    frames = torch.rand(1, 3, 1, 8, 8)
    predictions = fixed_filter_predictor((0, -1))(frames, frames_out=3)
    last = frames[:, -1]
    for n in range(1, 4):
        expected = torch.zeros_like(last)
        expected[..., n:] = last[..., :-n]
        torch.testing.assert_close(predictions[:, n - 1], expected)


def test_softmax_filters_keep_predictions_in_unit_range():
    predictor = VideoPredictor(DFN(kernel_size=5), encoder_width=4, hidden=8, decoder_width=8, features=8)
    predictions = predictor(torch.rand(2, 3, 1, 16, 16), frames_out=4)
    assert predictions.min() >= 0 and predictions.max() <= 1 + 1e-6


def test_warm_up_frames_change_the_prediction():
    # The hidden state carries the past: the same last frame after different histories predicts differently.
    torch.manual_seed(0)
    predictor = VideoPredictor(DFN(kernel_size=5), encoder_width=4, hidden=8, decoder_width=8, features=8)
    a = torch.rand(1, 4, 1, 16, 16)
    b = a.clone()
    b[:, 0] = torch.rand(1, 1, 16, 16)
    assert not torch.allclose(predictor(a, 1), predictor(b, 1))


def test_buffer_and_channels():
    predictor = VideoPredictor(DFN(kernel_size=3, dynamic_bias=True), channels=3, buffer_len=2,
                               encoder_width=4, hidden=8, decoder_width=8, features=8)
    assert predictor(torch.rand(2, 3, 3, 9, 11), frames_out=2).shape == (2, 2, 3, 9, 11)
    with pytest.raises(ValueError, match="buffer_len=2"):
        predictor(torch.rand(2, 1, 3, 9, 11), frames_out=2)
    with pytest.raises(ValueError, match=r"\(B, T, C=3, H, W\)"):
        predictor(torch.rand(2, 3, 1, 9, 11), frames_out=2)


def test_filter_flow_of_a_shifting_filter():
    # A one-hot filter reading one pixel to the left (dx = -1) moves content one pixel right: flow (0, +1).
    from dfn.callbacks import filter_flow, flow_colours

    k = 3
    filters = torch.full((1, k * k, 4, 5), -1e4)
    filters[:, 1 * k + 0] = 0.0  # window row 1 (dy = 0), column 0 (dx = -1)
    flow = filter_flow(filters, k, softmax=True)
    torch.testing.assert_close(flow, torch.stack([torch.zeros(1, 4, 5), torch.ones(1, 4, 5)], dim=1))
    colours = flow_colours(flow, max_displacement=1.0)
    assert colours.shape == (1, 3, 4, 5) and colours.max() <= 1 and colours.amax(1).min() == 1  # full length
