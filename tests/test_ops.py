"""dfn.ops: fast paths against the einops references, gradients, hand-computed cases, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import dfn.ops.softmax_local_filter as softmax_filter_module
from dfn.ops import (dynamic_conv, dynamic_conv_loop, dynamic_conv_reference, local_filter,
                     local_filter_reference)
from dfn.ops.softmax_local_filter import softmax_local_filter

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _filters(B: int, C: int, K: int, H: int, W: int, per_channel: bool, **kw) -> torch.Tensor:
    shape = (B, C, K * K, H, W) if per_channel else (B, K * K, H, W)
    return torch.randn(shape, **kw)


# ---------------------------------------------------------------- local_filter: values and grads

@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("K,dilation,C,H,W", [
    (1, 1, 2, 5, 7), (3, 1, 1, 6, 9), (3, 2, 3, 7, 5), (5, 1, 2, 8, 6), (5, 3, 1, 9, 11),
    (9, 1, 1, 12, 10), (3, 5, 2, 4, 6),  # dilation so large some taps miss the frame entirely
])
def test_local_filter_matches_reference(K, dilation, C, H, W, per_channel):
    torch.manual_seed(K * 100 + dilation * 10 + C)
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    f = _filters(2, C, K, H, W, per_channel, dtype=torch.float64)
    out = local_filter(x, f, dilation)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, local_filter_reference(x, f, dilation))


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("K,dilation,C", [(3, 1, 1), (3, 2, 3), (5, 1, 2)])
def test_local_filter_gradcheck(K, dilation, C, per_channel):
    torch.manual_seed(0)
    x = torch.randn(2, C, 5, 6, dtype=torch.float64, requires_grad=True)
    f = _filters(2, C, K, 5, 6, per_channel, dtype=torch.float64, requires_grad=True)
    # fast_mode checks random projections of the Jacobian: same guarantee in practice, much cheaper.
    assert torch.autograd.gradcheck(lambda a, b: local_filter(a, b, dilation), (x, f),
                                    fast_mode=K > 3)


def test_local_filter_gradients_match_reference():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    f = torch.randn(2, 25, 9, 8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    fast = torch.autograd.grad(local_filter(x, f, 2), (x, f), g)
    ref = torch.autograd.grad(local_filter_reference(x, f, 2), (x, f), g)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b)


def test_local_filter_grad_only_for_filters():
    x = torch.randn(1, 1, 4, 4)
    f = torch.randn(1, 9, 4, 4, requires_grad=True)
    (gf,) = torch.autograd.grad(local_filter(x, f).sum(), (f,))
    assert gf.shape == f.shape


@pytest.mark.parametrize("dy,dx", [(-1, 0), (1, 2), (-2, -2), (0, 0), (2, -1)])
def test_one_hot_filter_shifts_image(dy, dx):
    K, H, W = 5, 6, 7
    x = torch.arange(H * W, dtype=torch.float32).reshape(1, 1, H, W) + 1
    f = torch.zeros(1, K * K, H, W)
    f[:, (dy + K // 2) * K + (dx + K // 2)] = 1.0  # row-major window: channel of offset (dy, dx)
    out = local_filter(x, f)
    expected = torch.zeros_like(x)  # out[i, j] = x[i + dy, j + dx], zero where that leaves the image
    for i in range(H):
        for j in range(W):
            if 0 <= i + dy < H and 0 <= j + dx < W:
                expected[0, 0, i, j] = x[0, 0, i + dy, j + dx]
    torch.testing.assert_close(out, expected)


def test_dilated_one_hot_filter_shift():
    x = torch.rand(1, 2, 9, 9)
    f = torch.zeros(1, 9, 9, 9)
    f[:, 0] = 1.0  # offset (-1, -1) times dilation 3 -> (-3, -3)
    out = local_filter(x, f, dilation=3)
    torch.testing.assert_close(out[..., 3:, 3:], x[..., :-3, :-3])
    assert out[..., :3, :].abs().max() == 0 and out[..., :, :3].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_channel", [False, True])
def test_local_filter_half_precision(dtype, per_channel):
    torch.manual_seed(2)
    x = torch.rand(2, 3, 10, 12)
    f = torch.softmax(_filters(2, 3, 5, 10, 12, per_channel), dim=-3)
    ref = local_filter_reference(x, f)
    xh, fh = x.to(dtype).requires_grad_(), f.to(dtype).requires_grad_()
    out = local_filter(xh, fh)
    assert out.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    out.float().sum().backward()
    assert xh.grad.dtype == dtype and fh.grad.dtype == dtype
    xr, fr = x.clone().requires_grad_(), f.clone().requires_grad_()
    local_filter_reference(xr, fr).sum().backward()
    torch.testing.assert_close(xh.grad.float(), xr.grad, atol=5 * tol, rtol=tol)
    torch.testing.assert_close(fh.grad.float(), fr.grad, atol=5 * tol, rtol=tol)


@CUDA
@pytest.mark.parametrize("per_channel", [False, True])
def test_local_filter_cuda(per_channel):
    x = torch.rand(2, 3, 16, 16, device="cuda", requires_grad=True)
    f = _filters(2, 3, 5, 16, 16, per_channel, device="cuda").requires_grad_()
    out = local_filter(x, f, 2)
    torch.testing.assert_close(out, local_filter_reference(x, f, 2))
    out.sum().backward()
    assert x.grad.device.type == "cuda" and f.grad.shape == f.shape


# ---------------------------------------------------------------- padding modes

MODES = ["zeros", "replicate", "reflect"]


def _source_index(i: int, n: int, mode: str) -> int | None:
    """Which pixel of an axis of length n position i reads (None: a zero), by the textbook rules."""
    if 0 <= i < n:
        return i
    if mode == "zeros":
        return None
    if mode == "replicate":
        return min(max(i, 0), n - 1)
    return -i if i < 0 else 2 * (n - 1) - i  # reflect about the edge pixel, edge not repeated


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fn", [local_filter, local_filter_reference])
@pytest.mark.parametrize("dy,dx,d", [(-2, 1, 1), (2, -2, 1), (1, 1, 2), (-1, 2, 2), (0, -1, 3)])
def test_one_hot_filter_shift_by_padding_mode(fn, mode, dy, dx, d):
    # Hand-computed truth: out[i, j] = x[src(i + d·dy), src(j + d·dx)] with the mode's index rule.
    K, H, W = 5, 7, 8
    x = torch.arange(2 * H * W, dtype=torch.float64).reshape(1, 2, H, W) + 1
    f = torch.zeros(1, K * K, H, W, dtype=torch.float64)
    f[:, (dy + K // 2) * K + (dx + K // 2)] = 1.0
    out = fn(x, f, d, padding_mode=mode)
    expected = torch.zeros_like(x)
    for i in range(H):
        for j in range(W):
            si, sj = _source_index(i + d * dy, H, mode), _source_index(j + d * dx, W, mode)
            if si is not None and sj is not None:
                expected[0, :, i, j] = x[0, :, si, sj]
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("mode", ["replicate", "reflect"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("K,dilation,C,H,W", [
    (1, 1, 2, 5, 7), (3, 1, 1, 6, 9), (3, 2, 3, 7, 5), (5, 1, 2, 8, 6), (5, 3, 1, 9, 11),
    (9, 1, 1, 12, 10), (3, 5, 2, 6, 7),  # pad 5: reflect still fits (5 < 6)
])
def test_local_filter_padding_modes_match_reference(K, dilation, C, H, W, per_channel, mode):
    torch.manual_seed(K * 100 + dilation * 10 + C)
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    f = _filters(2, C, K, H, W, per_channel, dtype=torch.float64)
    out = local_filter(x, f, dilation, padding_mode=mode)
    torch.testing.assert_close(out, local_filter_reference(x, f, dilation, padding_mode=mode))
    assert not torch.allclose(out, local_filter(x, f, dilation)) or K == 1  # the mode matters


@pytest.mark.parametrize("mode", ["replicate", "reflect"])  # zeros: test_local_filter_gradcheck
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("K,dilation,C", [(3, 1, 2), (3, 2, 1), (5, 1, 2)])
def test_local_filter_gradcheck_padding_modes(K, dilation, C, per_channel, mode):
    torch.manual_seed(0)
    x = torch.randn(1, C, 4, 5, dtype=torch.float64, requires_grad=True)
    f = _filters(1, C, K, 4, 5, per_channel, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: local_filter(a, b, dilation, padding_mode=mode),
                                    (x, f), fast_mode=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_local_filter_padding_mode_gradients_match_reference(mode, per_channel):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    f = _filters(2, 3, 5, 9, 8, per_channel, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    fast = torch.autograd.grad(local_filter(x, f, 2, padding_mode=mode), (x, f), g)
    ref = torch.autograd.grad(local_filter_reference(x, f, 2, padding_mode=mode), (x, f), g)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_normalised_filter_keeps_constant_frame_constant(mode, per_channel):
    # Invariant: a convex combination of equal values is that value. With replicate/reflect every
    # window tap reads the frame, so this holds at every pixel; with zeros only in the interior.
    torch.manual_seed(6)
    K, d, H, W = 5, 2, 9, 11
    x = torch.full((2, 3, H, W), 0.6, dtype=torch.float64)
    f = torch.softmax(3 * _filters(2, 3, K, H, W, per_channel, dtype=torch.float64), dim=-3)
    for fn in (local_filter, local_filter_reference):
        out = fn(x, f, d, padding_mode=mode)
        r = d * (K // 2)
        torch.testing.assert_close(out[..., r:H - r, r:W - r], x[..., r:H - r, r:W - r])
        if mode == "zeros":
            assert (out[..., 0, :] < 0.6 - 1e-3).all()  # the border loses mass to the zeros
        else:
            torch.testing.assert_close(out, x)


@pytest.mark.parametrize("mode,pads", [
    ("replicate", (1, 1, 1, 1)), ("replicate", (2, 0, 1, 3)), ("replicate", (7, 0, 0, 6)),  # > frame
    ("reflect", (1, 1, 1, 1)), ("reflect", (2, 0, 1, 3)), ("reflect", (0, 5, 4, 4)),  # 4 < H=5
])
def test_pad_frame_matches_f_pad_values_and_gradient(mode, pads):
    # Our padding's hand-written backward (a fold, deterministic on CUDA) against F.pad's autograd.
    from dfn.ops.border import pad_frame

    torch.manual_seed(10)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    ours, ref = pad_frame(x, pads, mode), F.pad(x, pads, mode=mode)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0])


@CUDA
@pytest.mark.parametrize("mode", ["replicate", "reflect"])
def test_border_modes_backward_is_deterministic_on_cuda(mode):
    # F.pad's replicate/reflect backward raises under deterministic algorithms on CUDA; ours folds.
    x = torch.rand(2, 3, 16, 16, device="cuda", requires_grad=True)
    f = torch.rand(2, 25, 16, 16, device="cuda", requires_grad=True)
    w = torch.rand(2, 4, 3, 3, 3, device="cuda", requires_grad=True)
    torch.use_deterministic_algorithms(True)
    try:
        for backend in ("torch", "triton"):
            local_filter(x, f, padding_mode=mode, backend=backend).sum().backward()
        dynamic_conv(x, w, padding_mode=mode).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    assert x.grad is not None and f.grad is not None and w.grad is not None


@pytest.mark.parametrize("mode", ["circular", "constant", "", None, 0])
def test_bad_padding_mode(mode):
    for fn in (local_filter, local_filter_reference):
        with pytest.raises(ValueError, match="padding_mode must be one of 'zeros', 'replicate'"):
            fn(X, torch.randn(2, 9, 8, 8), padding_mode=mode)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        dynamic_conv(X, torch.randn(2, 4, 3, 3, 3), padding_mode=mode)


def test_reflect_wider_than_frame_raises():
    x = torch.randn(1, 1, 4, 9)
    with pytest.raises(ValueError, match=r"local_filter: padding_mode must be 'zeros' or 'replicate' here: "
                                         r"'reflect' needs .*pad < size.*x of shape \(1, 1, 4, 9\).*got 'reflect'$"):
        local_filter(x, torch.randn(1, 9, 4, 9), 4, padding_mode="reflect")  # reaches 4 rows out
    local_filter(x, torch.randn(1, 9, 4, 9), 4, padding_mode="replicate")  # replicate has no limit
    with pytest.raises(ValueError, match=r"dynamic_conv: padding_mode must be .*\(pad < size\).*got 'reflect'$"):
        dynamic_conv(x, torch.randn(1, 1, 1, 9, 9), padding_mode="reflect")


def test_local_filter_bad_backend():
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'torch', 'triton'"):
        local_filter(X, torch.randn(2, 9, 8, 8), backend="cuda")


# ---------------------------------------------------------------- dynamic_conv

CONV_CASES = [
    dict(),
    dict(groups=2),
    dict(stride=2, padding="valid"),
    dict(stride=(2, 1), padding=1, groups=2),
    dict(padding=(1, 2), dilation=2),
    dict(padding="same", dilation=(2, 1), groups=4),
]


@pytest.mark.parametrize("kwargs", CONV_CASES)
@pytest.mark.parametrize("use_bias", [False, True])
def test_dynamic_conv_matches_loop_and_reference(kwargs, use_bias):
    torch.manual_seed(3)
    B, C, O = 3, 4, 8
    groups = kwargs.get("groups", 1)
    x = torch.randn(B, C, 9, 10, dtype=torch.float64)
    w = torch.randn(B, O, C // groups, 3, 3, dtype=torch.float64)
    b = torch.randn(B, O, dtype=torch.float64) if use_bias else None
    out = dynamic_conv(x, w, b, **kwargs)
    per_sample = torch.cat([F.conv2d(x[i:i + 1], w[i], None if b is None else b[i],
                                     **{"padding": "same", **kwargs}) for i in range(B)])
    torch.testing.assert_close(out, per_sample)
    torch.testing.assert_close(dynamic_conv_loop(x, w, b, **kwargs), per_sample)
    torch.testing.assert_close(dynamic_conv_reference(x, w, b, **kwargs), per_sample)


def test_dynamic_conv_even_kernel_same_padding():
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    w = torch.randn(2, 5, 3, 2, 4, dtype=torch.float64)
    out = dynamic_conv(x, w)
    assert out.shape == (2, 5, 7, 8)
    torch.testing.assert_close(dynamic_conv_reference(x, w), out)
    torch.testing.assert_close(dynamic_conv_loop(x, w), out)


@pytest.mark.parametrize("kwargs", [dict(groups=2), dict(stride=2, padding="valid"),
                                    dict(padding=1, dilation=2)])
def test_dynamic_conv_gradcheck(kwargs):
    torch.manual_seed(4)
    groups = kwargs.get("groups", 1)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4, 4 // groups, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: dynamic_conv(x, w, b, **kwargs), (x, w, b),
                                    fast_mode=True)


@pytest.mark.parametrize("mode", ["replicate", "reflect"])
@pytest.mark.parametrize("kwargs", [dict(), dict(groups=2, dilation=2), dict(stride=2, padding=1),
                                    dict(padding=(1, 2))])
def test_dynamic_conv_padding_modes_match_conv2d_module(kwargs, mode):
    # Independent truth: nn.Conv2d's own padding_mode, one module per sample.
    torch.manual_seed(7)
    B, C, O = 2, 4, 6
    groups = kwargs.get("groups", 1)
    x = torch.randn(B, C, 7, 9, dtype=torch.float64)
    w = torch.randn(B, O, C // groups, 3, 3, dtype=torch.float64)
    b = torch.randn(B, O, dtype=torch.float64)
    expected = []
    for i in range(B):
        conv = torch.nn.Conv2d(C, O, 3, bias=True, padding_mode=mode, dtype=torch.float64,
                               **{"padding": "same", **kwargs})
        with torch.no_grad():
            conv.weight.copy_(w[i])
            conv.bias.copy_(b[i])
            expected.append(conv(x[i:i + 1]))
    expected = torch.cat(expected)
    for fn in (dynamic_conv, dynamic_conv_reference, dynamic_conv_loop):
        torch.testing.assert_close(fn(x, w, b, padding_mode=mode, **kwargs), expected)


@pytest.mark.parametrize("mode", MODES)
def test_dynamic_conv_gradcheck_padding_modes(mode):
    torch.manual_seed(8)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: dynamic_conv(x, w, b, groups=2, dilation=2, padding_mode=mode), (x, w, b),
        fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dynamic_conv_half_precision(dtype):
    torch.manual_seed(5)
    x, w = torch.rand(2, 4, 8, 8), torch.randn(2, 4, 4, 3, 3) * 0.2
    out = dynamic_conv(x.to(dtype), w.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), dynamic_conv(x, w), atol=5e-2, rtol=5e-2)


def test_dynamic_conv_same_with_stride_raises():
    with pytest.raises(ValueError, match=r"dynamic_conv: stride must be 1 with padding='same' \(as in F.conv2d\), got 2$"):
        dynamic_conv(torch.randn(1, 2, 8, 8), torch.randn(1, 2, 2, 3, 3), stride=2)


# ---------------------------------------------------------------- bad input

X = torch.randn(2, 3, 8, 8)

LOCAL_BAD = [
    (X, torch.randn(2, 80, 8, 8), 1, "(2, 80, 8, 8)"),  # not a square
    (X, torch.randn(2, 16, 8, 8), 1, "(2, 16, 8, 8)"),  # even K
    (X, torch.randn(3, 9, 8, 8), 1, "(3, 9, 8, 8)"),  # batch
    (X, torch.randn(2, 9, 7, 8), 1, "(2, 9, 7, 8)"),  # height
    (X, torch.randn(2, 9, 8, 9), 1, "(2, 9, 8, 9)"),  # width
    (X, torch.randn(2, 4, 9, 8, 8), 1, "(2, 4, 9, 8, 8)"),  # channels (per-channel)
    (X, torch.randn(2, 9, 8), 1, "(2, 9, 8)"),  # dims
    (X, torch.randn(2, 9, 8, 8, dtype=torch.float64), 1, "(2, 9, 8, 8)"),  # dtype
    (torch.randn(3, 8, 8), torch.randn(3, 9, 8, 8), 1, "(3, 8, 8)"),  # x dims
    (X, torch.randn(2, 9, 8, 8), 0, "0"),  # dilation
]


@pytest.mark.parametrize("x,f,dilation,shape", LOCAL_BAD)
@pytest.mark.parametrize("fn", [local_filter, local_filter_reference])
def test_local_filter_bad_input(fn, x, f, dilation, shape):
    with pytest.raises(ValueError) as err:
        fn(x, f, dilation)
    assert shape in str(err.value)


def test_local_filter_error_message_names_expected_shape():
    with pytest.raises(ValueError, match=r"\(2, K\*K, 8, 8\).*got \(2, 80, 8, 8\): 80 is not"):
        local_filter(X, torch.randn(2, 80, 8, 8))


CONV_BAD = [
    (X, torch.randn(2, 4, 3, 3), None, {}, "(2, 4, 3, 3)"),  # dims
    (X, torch.randn(3, 4, 3, 3, 3), None, {}, "(3, 4, 3, 3, 3)"),  # batch
    (X, torch.randn(2, 4, 2, 3, 3), None, {}, "(2, 4, 2, 3, 3)"),  # in channels
    (X, torch.randn(2, 4, 3, 3, 3), torch.randn(2, 5), {}, "(2, 5)"),  # bias
    (X, torch.randn(2, 4, 3, 3, 3, dtype=torch.float64), None, {}, "(2, 4, 3, 3, 3)"),  # dtype
    (X, torch.randn(2, 4, 1, 3, 3), None, {"groups": 2}, "(2, 3, 8, 8)"),  # C % groups
    (X, torch.randn(2, 4, 3, 3, 3), None, {"padding": "full"}, "'full'"),
    (X, torch.randn(2, 4, 3, 9, 9), None, {"padding": "valid"}, "(2, 3, 8, 8)"),  # too big
]


@pytest.mark.parametrize("x,w,b,kwargs,shape", CONV_BAD)
@pytest.mark.parametrize("fn", [dynamic_conv, dynamic_conv_reference, dynamic_conv_loop])
def test_dynamic_conv_bad_input(fn, x, w, b, kwargs, shape):
    with pytest.raises(ValueError) as err:
        fn(x, w, b, **kwargs)
    assert shape in str(err.value)


# ---------------------------------------------------------------- benchmark smoke test

@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("K,dilation", [(3, 1), (5, 2), (3, 3)])
def test_bench_baselines_compute_local_filtering(K, dilation, per_channel):
    # The peers' implementations we time against must compute the same thing, or the ratios lie.
    from dfn.bench.ops import im2col_local_filter, unfold_local_filter

    torch.manual_seed(9)
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    f = _filters(2, 3, K, 7, 9, per_channel, dtype=torch.float64)
    ref = local_filter_reference(x, f, dilation)
    torch.testing.assert_close(unfold_local_filter(x, f, dilation), ref)
    torch.testing.assert_close(im2col_local_filter(x, f, dilation), ref)


def test_bench_ops_quick_prints_json():
    # One thread, one repeat: a smoke test of the output, not a measurement (fast on a busy machine).
    proc = subprocess.run([sys.executable, "-m", "dfn.bench", "ops", "--quick", "--json",
                           "--device", "cpu", "--threads", "1", "--repeats", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert {r["operator"] for r in rows} == {"local_filter", "dynamic_conv"}
    for r in rows:
        for key in ("shape", "K", "dilation", "implementation", "fast_fwd_ms", "fast_fwdbwd_ms",
                    "baseline_fwd_ms", "fast_peak_mib", "speedup_fwd", "speedup_fwdbwd",
                    "memory_ratio", "bound_fwdbwd_ms", "fast_vs_bound_fwdbwd"):
            assert key in r
        if r["operator"] == "local_filter":
            assert r["implementations"] == ["unfold", "im2col", "fast"]  # no triton column on CPU
            assert r["baseline"] == "unfold"
            assert r["speedup_fwd"] == pytest.approx(r["unfold_fwd_ms"] / r["fast_fwd_ms"])
            assert r["im2col/fast_fwdbwd"] == pytest.approx(r["im2col_fwdbwd_ms"]
                                                            / r["fast_fwdbwd_ms"])
        else:
            assert r["baseline"] == "loop"


# ---------------------------------------------------------------- filters laid out with the K*K axis fastest

def _taps_last(f: torch.Tensor) -> torch.Tensor:
    """The same values with the K*K axis fastest in memory (what a 1x1 conv in NHWC returns)."""
    axis = f.dim() - 3
    return f.movedim(axis, -1).contiguous().movedim(-1, axis)


@pytest.mark.parametrize("mode", ["zeros", "replicate", "reflect"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("K,dilation,C", [(3, 1, 1), (5, 2, 3), (3, 4, 2)])  # dilation 4: taps off the frame
def test_local_filter_taps_last_matches_reference(K, dilation, C, per_channel, mode):
    """Filters with the K*K axis fastest go to dfn.ops.local_filter_taps_last (strided windows, a gather
    backward); values and both gradients equal the unfold reference."""
    if mode == "reflect" and dilation * (K // 2) >= 7:
        pytest.skip("reflect needs the padding inside the frame")
    torch.manual_seed(K + 10 * dilation + C)
    x = torch.randn(2, C, 9, 7, dtype=torch.float64, requires_grad=True)
    f = _taps_last(_filters(2, C, K, 9, 7, per_channel, dtype=torch.float64)).requires_grad_()
    assert f.stride(-3) == 1
    out = local_filter(x, f, dilation, padding_mode=mode)
    ref = local_filter_reference(x, f, dilation, padding_mode=mode)
    torch.testing.assert_close(out, ref)
    g = torch.randn(out.shape, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(out, (x, f), g), torch.autograd.grad(ref, (x, f), g)):
        torch.testing.assert_close(a, b)


def test_local_filter_taps_last_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    f = _taps_last(torch.randn(2, 9, 5, 6, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: local_filter(a, b, 2), (x, f))


# ---------------------------------------------------------------- softmax_local_filter

@pytest.mark.parametrize("chunk_bytes", [1 << 20, 100])  # one chunk; one sample per chunk
@pytest.mark.parametrize("layout", ["planes", "taps_last"])
@pytest.mark.parametrize("mode", ["zeros", "replicate", "reflect"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("K,dilation,C", [(1, 1, 2), (3, 1, 1), (5, 2, 3), (3, 4, 2)])
def test_softmax_local_filter_is_softmax_then_local_filter(K, dilation, C, per_channel, mode, layout,
                                                           chunk_bytes, monkeypatch):
    """The fused operator against the two steps it replaces (softmax over the K*K axis, then the unfold
    reference), values and gradients, in both memory layouts and with the batch split into chunks."""
    if mode == "reflect" and dilation * (K // 2) >= 7:
        pytest.skip("reflect needs the padding inside the frame")
    monkeypatch.setattr(softmax_filter_module, "CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(K + 10 * dilation + C)
    x = torch.rand(3, C, 9, 7, dtype=torch.float64, requires_grad=True)
    logits = 3 * _filters(3, C, K, 9, 7, per_channel, dtype=torch.float64)
    logits = (_taps_last(logits) if layout == "taps_last" else logits).requires_grad_()
    axis = 2 if per_channel else 1
    out = softmax_local_filter(x, logits, dilation, padding_mode=mode)
    ref = local_filter_reference(x, torch.softmax(logits, axis), dilation, padding_mode=mode)
    torch.testing.assert_close(out, ref)
    g = torch.randn(out.shape, dtype=torch.float64)
    fast, slow = torch.autograd.grad(out, (x, logits), g), torch.autograd.grad(ref, (x, logits), g)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b)
    assert fast[1].stride() == logits.stride()  # the gradient keeps the logits' layout


def test_softmax_local_filter_gradcheck():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 6, 5, dtype=torch.float64, requires_grad=True)
    logits = _taps_last(torch.randn(2, 9, 6, 5, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: softmax_local_filter(a, b, 2), (x, logits))


def test_softmax_local_filter_bfloat16_logits_of_a_float32_frame():
    """bf16-mixed: bfloat16 logits, float32 frames; computed and returned in float32."""
    torch.manual_seed(0)
    x = torch.rand(2, 1, 8, 8)
    logits = _taps_last(torch.randn(2, 81, 8, 8)).bfloat16().requires_grad_()
    out = softmax_local_filter(x, logits)
    assert out.dtype == torch.float32
    ref = local_filter_reference(x, torch.softmax(logits.detach().float(), 1))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()


def test_softmax_local_filter_bad_input():
    with pytest.raises(ValueError, match=r"local_filter: filters must be .* 80 is not the square of an odd K"):
        softmax_local_filter(torch.rand(2, 1, 8, 8), torch.randn(2, 80, 8, 8))
    with pytest.raises(ValueError, match=r"local_filter: filters must be .*floating"):
        softmax_local_filter(torch.rand(2, 1, 8, 8), torch.ones(2, 9, 8, 8, dtype=torch.long))


# ---------------------------------------------------------------- one input check per public call

CHECKING_MODULES = ("dfn.ops.local_filter", "dfn.ops.softmax_local_filter", "dfn.ops.local_filter_triton")


@pytest.fixture
def check_calls(monkeypatch) -> list[tuple]:
    """The arguments of every ``check_local_filter`` call, wherever an operator looks the check up."""
    import importlib

    from dfn.ops import _checks

    calls: list[tuple] = []

    def counting(*args, **kwargs):
        calls.append(args)
        return _checks.check_local_filter(*args, **kwargs)

    for name in CHECKING_MODULES:
        monkeypatch.setattr(importlib.import_module(name), "check_local_filter", counting)
    return calls


@pytest.mark.parametrize("op", ["local_filter", "softmax_local_filter", "local_filter_reference"])
@pytest.mark.parametrize("layout", ["planes", "taps_last"])  # the loop over offsets / the strided windows
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("mode", ["zeros", "replicate"])  # without / with a padded copy of x
def test_each_public_call_checks_its_inputs_once(check_calls, op, layout, per_channel, mode):
    """Every CPU path of the filtering operators, forward and backward: one check per public call,
    and the values of the reference (softmax applied first for softmax_local_filter)."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    f = _filters(2, 3, 3, 6, 5, per_channel, dtype=torch.float64)
    f = (_taps_last(f) if layout == "taps_last" else f).requires_grad_()
    fn = {"local_filter": local_filter, "softmax_local_filter": softmax_local_filter,
          "local_filter_reference": local_filter_reference}[op]
    out = fn(x, f, 2, padding_mode=mode)
    out.square().sum().backward()
    assert len(check_calls) == 1, f"{op} checked its inputs {len(check_calls)} times"
    weights = torch.softmax(f.detach(), dim=f.dim() - 3) if op == "softmax_local_filter" else f.detach()
    torch.testing.assert_close(out.detach(), local_filter_reference(x.detach(), weights, 2, padding_mode=mode))
