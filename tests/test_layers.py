"""dfn.layers: the paper's dynamic filtering layers (softmax, dynamic bias, both filter layouts)."""

from __future__ import annotations

import re

import pytest
import torch

from dfn.layers import DynamicConvolution, DynamicLocalFiltering
from dfn.ops import local_filter_reference

LAYERS = [DynamicLocalFiltering, DynamicConvolution]


RULES = {"kernel_size": "a positive odd integer", "dilation": "an integer >= 1",
         "padding_mode": "one of 'zeros', 'replicate', 'reflect'"}


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("key, value", [("kernel_size", 4), ("kernel_size", 0), ("kernel_size", -3),
                                        ("kernel_size", 3.0), ("dilation", 0), ("dilation", 1.5),
                                        ("padding_mode", "circular"), ("padding_mode", None)])
def test_constructor_validation(cls, key, value):
    message = f"{cls.__name__}: {key} must be {RULES[key]}, got {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cls(**{key: value})


@pytest.mark.parametrize("cls", LAYERS)
def test_defaults_and_filter_channels(cls):
    layer = cls()
    assert (layer.kernel_size, layer.dilation, layer.softmax) == (9, 1, True)
    assert layer.filter_channels == 81
    assert cls(11, dynamic_bias=True).filter_channels == 122
    assert list(layer.parameters()) == []  # parameter-free: filters come from the generator


@pytest.mark.parametrize("per_channel", [False, True])
def test_softmax_keeps_constant_image_constant_in_interior(per_channel):
    torch.manual_seed(0)
    K, d, H, W = 5, 2, 12, 13
    layer = DynamicLocalFiltering(K, dilation=d)
    frame = torch.full((2, 3, H, W), 0.7)
    shape = (2, 3, K * K, H, W) if per_channel else (2, K * K, H, W)
    out = layer(frame, 5 * torch.randn(shape))
    r = d * (K // 2)  # pixels whose whole window lies inside the frame
    torch.testing.assert_close(out[..., r:H - r, r:W - r], torch.full_like(out[..., r:H - r, r:W - r], 0.7))
    assert out.min() >= 0 and out.max() <= 0.7 + 1e-6  # convex combinations (zeros outside)


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("mode", ["replicate", "reflect"])
def test_border_padding_keeps_constant_image_constant_everywhere(cls, mode):
    # With replicate/reflect every tap reads the frame, so a softmax-normalised filter
    # maps a constant frame to itself up to and including the border (zeros only in the interior).
    torch.manual_seed(4)
    layer = cls(5, dilation=2, padding_mode=mode)
    assert f"padding_mode='{mode}'" in repr(layer)
    frame = torch.full((2, 3, 9, 10), 0.4)
    shape = (2, 25, 9, 10) if cls is DynamicLocalFiltering else (2, 25)
    torch.testing.assert_close(layer(frame, 5 * torch.randn(shape)), frame)
    zeros = cls(5, dilation=2)
    assert zeros.padding_mode == "zeros" and "padding_mode='zeros'" in repr(zeros)
    assert (zeros(frame, 5 * torch.randn(shape))[..., 0, :] < 0.4 - 1e-4).all()


def test_softmax_output_in_unit_interval():
    torch.manual_seed(1)
    out = DynamicLocalFiltering(3)(torch.rand(2, 1, 8, 8), 10 * torch.randn(2, 9, 8, 8))
    assert out.min() >= 0 and out.max() <= 1


def test_dynamic_bias_is_added_before_filtering_by_hand():
    # All-ones 3x3 filter (softmax off) on a 3x3 frame; bias channel constant b. Filtering the
    # biased frame sums 9 values at the centre: sum(frame) + 9b (bias after filtering would give +b).
    layer = DynamicLocalFiltering(3, softmax=False, dynamic_bias=True)
    frame = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3)
    b = 0.5
    filters = torch.ones(1, 10, 3, 3)
    filters[:, 9] = b
    out = layer(frame, filters)
    assert out[0, 0, 1, 1].item() == pytest.approx(36 + 9 * b)
    # Corner (0, 0) sees the 2x2 block {0, 1, 3, 4} plus 4 biases; the rest is zero padding.
    assert out[0, 0, 0, 0].item() == pytest.approx(8 + 4 * b)


def test_dynamic_bias_shifts_with_the_frame():
    # One-hot filter at offset (0, +1): out[i, j] = frame[i, j+1] + bias[i, j+1]; zero in last column.
    layer = DynamicLocalFiltering(3, softmax=False, dynamic_bias=True)
    frame, bias = torch.rand(1, 2, 4, 5), torch.rand(1, 4, 5)
    filters = torch.zeros(1, 10, 4, 5)
    filters[:, 1 * 3 + 2] = 1.0
    filters[:, 9] = bias
    out = layer(frame, filters)
    torch.testing.assert_close(out[..., :4], (frame + bias[:, None])[..., 1:])
    assert out[..., 4].abs().max() == 0


def test_per_channel_bias_and_matches_reference():
    torch.manual_seed(2)
    layer = DynamicLocalFiltering(3, dilation=2, dynamic_bias=True)
    frame, filters = torch.rand(2, 3, 6, 7), torch.randn(2, 3, 10, 6, 7)
    expected = local_filter_reference(frame + filters[:, :, 9], torch.softmax(filters[:, :, :9], 2), 2)
    torch.testing.assert_close(layer(frame, filters), expected)


@pytest.mark.parametrize("dynamic_bias", [False, True])
@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("dilation", [1, 2])
def test_dynamic_convolution_equals_local_filtering_with_constant_filters(dynamic_bias, softmax,
                                                                          dilation):
    # A per-sample filter is a per-pixel filter that happens to be the same at every pixel.
    torch.manual_seed(3)
    K, B, C, H, W = 5, 2, 3, 9, 8
    conv = DynamicConvolution(K, dilation, softmax, dynamic_bias)
    local = DynamicLocalFiltering(K, dilation, softmax, dynamic_bias)
    frame, filters = torch.rand(B, C, H, W), torch.randn(B, conv.filter_channels)
    per_pixel = filters[:, :, None, None].expand(B, conv.filter_channels, H, W)
    torch.testing.assert_close(conv(frame, filters), local(frame, per_pixel))


def test_dynamic_convolution_constant_image_interior():
    layer = DynamicConvolution(3)
    out = layer(torch.full((2, 4, 6, 6), 0.3), torch.randn(2, 9))
    torch.testing.assert_close(out[..., 1:-1, 1:-1], torch.full((2, 4, 4, 4), 0.3))


@pytest.mark.parametrize("cls", LAYERS)
def test_gradients_reach_filters_and_frame(cls):
    layer = cls(3, dynamic_bias=True)
    frame = torch.rand(2, 2, 5, 5, requires_grad=True)
    shape = (2, 10, 5, 5) if cls is DynamicLocalFiltering else (2, 10)
    filters = torch.randn(shape, requires_grad=True)
    layer(frame, filters).square().sum().backward()
    assert frame.grad is not None and filters.grad is not None
    assert filters.grad[:, 9].abs().sum() > 0  # the bias channel is used


@pytest.mark.parametrize("cls,bad", [
    (DynamicLocalFiltering, (2, 80, 6, 6)),
    (DynamicLocalFiltering, (2, 82, 6, 6)),  # bias channel without dynamic_bias
    (DynamicLocalFiltering, (2, 81, 5, 6)),
    (DynamicLocalFiltering, (2, 81)),
    (DynamicConvolution, (2, 80)),
    (DynamicConvolution, (3, 81)),
    (DynamicConvolution, (2, 81, 6, 6)),
])
def test_bad_filter_shapes(cls, bad):
    with pytest.raises(ValueError) as err:
        cls()(torch.rand(2, 1, 6, 6), torch.randn(bad))
    assert str(tuple(bad)) in str(err.value)


@pytest.mark.parametrize("dynamic_bias", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("taps_last", [False, True])
def test_local_filtering_layer_by_hand_in_both_filter_layouts(taps_last, per_channel, dynamic_bias):
    """The layer = softmax over the first K*K channels, bias channel added to the frame, then the unfold
    reference, written out here by hand; values and gradients, for filters laid out NCHW or with the
    K*K[+1] axis fastest (an NHWC conv's output, what the predictor hands over on CPU)."""
    torch.manual_seed(3)
    K, C = 3, 2
    layer = DynamicLocalFiltering(K, dynamic_bias=dynamic_bias)
    frame = torch.rand(2, C, 6, 5, dtype=torch.float64, requires_grad=True)
    shape = (2, C, layer.filter_channels, 6, 5) if per_channel else (2, layer.filter_channels, 6, 5)
    filters = torch.randn(shape, dtype=torch.float64)
    axis = filters.dim() - 3
    if taps_last:
        filters = filters.movedim(axis, -1).contiguous().movedim(-1, axis)
    filters.requires_grad_()
    out = layer(frame, filters)
    weights = torch.softmax(filters.narrow(axis, 0, K * K), axis)
    shifted = frame
    if dynamic_bias:
        bias = filters.select(axis, K * K)
        shifted = frame + (bias.unsqueeze(1) if axis == 1 else bias)
    expected = local_filter_reference(shifted, weights)
    torch.testing.assert_close(out, expected)
    g = torch.randn(out.shape, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(out, (frame, filters), g), torch.autograd.grad(expected, (frame, filters), g)):
        torch.testing.assert_close(a, b)
