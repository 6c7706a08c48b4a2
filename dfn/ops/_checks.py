"""Input validation shared by the dynamic filtering operators.

Every check raises ``ValueError`` naming the expected and the received shape, so a caller with a
wrongly shaped generator output reads what went wrong instead of a stack trace from inside torch; the
messages have the shape of `dfn.checks` (``local_filter: dilation must be an integer >= 1, got 0``).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from dfn.checks import check_choice, check_int, fail

# How the window reads pixels outside the frame (docs/operators.md). "zeros" is the paper's choice (and right
# for Moving MNIST's black background); "replicate" repeats the edge pixel, "reflect" mirrors the
# frame about its edge pixel (no repeat), both keep a constant frame constant up to the border.
PaddingMode = Literal["zeros", "replicate", "reflect"]
PADDING_MODES: tuple[str, ...] = get_args(PaddingMode)


def shape_str(t: Tensor) -> str:
    """``(2, 81, 8, 8)`` — a tensor's shape as a plain tuple string."""
    return str(tuple(t.shape))


def odd_window(kk: int) -> int | None:
    """The odd ``K`` with ``K*K == kk``, or None when ``kk`` is not the square of an odd integer."""
    if kk < 1:
        return None
    k = math.isqrt(kk)
    return k if k * k == kk and k % 2 == 1 else None


def check_tensor(name: str, what: str, t: object, dims: int | tuple[int, ...]) -> Tensor:
    """``t`` must be a floating tensor with ``dims`` dimensions."""
    if not isinstance(t, Tensor):
        raise fail(name, what, "a torch.Tensor", t, shown=type(t).__name__)
    ok = (dims,) if isinstance(dims, int) else dims
    if t.dim() not in ok:
        raise fail(name, what, f"a tensor with {' or '.join(map(str, ok))} dimensions", t, shown=f"shape {shape_str(t)}")
    if not t.is_floating_point():
        raise fail(name, what, "a floating-point tensor", t, shown=f"{t.dtype} with shape {shape_str(t)}")
    return t


def check_same_dtype_device(name: str, x: Tensor, other: Tensor, what: str) -> None:
    """``other`` must share ``x``'s dtype and device (we never silently cast generated filters)."""
    if other.dtype != x.dtype:
        raise fail(name, what, f"{x.dtype} like x", other, meaning=f"x of shape {shape_str(x)}",
                   shown=f"{other.dtype} with shape {shape_str(other)}")
    if other.device != x.device:
        raise fail(name, what, f"on {x.device} like x", other, meaning=f"x of shape {shape_str(x)}",
                   shown=f"{other.device} with shape {shape_str(other)}")


def check_padding_mode(name: str, padding_mode: object) -> str:
    """``padding_mode`` must be one of :data:`PADDING_MODES`."""
    return check_choice(name, "padding_mode", padding_mode, PADDING_MODES)


def check_reflect_fits(name: str, padding_mode: str, pad_h: int, pad_w: int, x: Tensor) -> None:
    """Reflect padding mirrors about the edge pixel, so it needs pad < size along each axis."""
    H, W = x.shape[-2:]
    if padding_mode == "reflect" and (pad_h >= H or pad_w >= W):
        raise fail(name, "padding_mode", "'zeros' or 'replicate' here: 'reflect' needs the padding smaller than "
                   "the frame (pad < size)", padding_mode,
                   meaning=f"the window reaches {pad_h} rows and {pad_w} columns beyond the edge of x of shape "
                           f"{shape_str(x)}; or use a smaller kernel or dilation")


def check_local_filter(x: object, filters: object, dilation: object,
                       padding_mode: object = "zeros") -> tuple[int, bool]:
    """Validate ``local_filter`` arguments; returns ``(K, per_channel)``.

    x: (B, C, H, W); filters: (B, K*K, H, W) shared by the channels or (B, C, K*K, H, W) per channel.
    """
    name = "local_filter"
    x = check_tensor(name, "x", x, 4)
    check_int(name, "dilation", dilation)
    B, C, H, W = x.shape
    expected = f"(B, K*K, H, W) = ({B}, K*K, {H}, {W}) or (B, C, K*K, H, W) = ({B}, {C}, K*K, {H}, {W})"
    if not isinstance(filters, Tensor):
        raise fail(name, "filters", expected, filters, shown=type(filters).__name__)
    got = shape_str(filters)
    if filters.dim() not in (4, 5):
        raise fail(name, "filters", expected, filters, shown=f"{got} ({filters.dim()} dimensions)")
    per_channel = filters.dim() == 5
    if filters.shape[0] != B or filters.shape[-2:] != (H, W):
        raise fail(name, "filters", expected, filters,
                   shown=f"{got}: batch/height/width do not match x of shape {shape_str(x)}")
    if per_channel and filters.shape[1] != C:
        raise fail(name, "filters", expected, filters, shown=f"{got}: {filters.shape[1]} filter channel groups "
                                                             f"for x with C = {C}")
    kk = filters.shape[-3]
    k = odd_window(kk)
    if k is None:
        raise fail(name, "filters", expected, filters, shown=f"{got}: {kk} is not the square of an odd K")
    if not filters.is_floating_point():
        raise fail(name, "filters", "a floating-point tensor", filters, shown=f"{filters.dtype} with shape {got}")
    check_same_dtype_device(name, x, filters, "filters")
    check_padding_mode(name, padding_mode)
    p = dilation * (k // 2)
    check_reflect_fits(name, padding_mode, p, p, x)
    return k, per_channel


def pair(name: str, what: str, v: object, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each ≥ ``minimum``, as a pair."""
    vals = (v, v) if isinstance(v, int) and not isinstance(v, bool) else v
    if (not isinstance(vals, (tuple, list)) or len(vals) != 2
            or not all(isinstance(a, int) and not isinstance(a, bool) and a >= minimum for a in vals)):
        raise fail(name, what, f"an int >= {minimum} or a pair of them", v)
    return int(vals[0]), int(vals[1])


def check_dynamic_conv(x: object, weight: object, bias: object, stride: object, padding: object,
                       dilation: object, groups: object, padding_mode: object = "zeros"
                       ) -> tuple[tuple[int, int], tuple[int, int, int, int], tuple[int, int]]:
    """Validate ``dynamic_conv`` arguments.

    Returns ``(stride, (left, right, top, bottom) padding, dilation)``, padding resolved to explicit
    amounts ("same" follows F.conv2d: the odd extra pixel of an even kernel goes right/bottom).
    """
    name = "dynamic_conv"
    x = check_tensor(name, "x", x, 4)
    B, C, H, W = x.shape
    g = check_int(name, "groups", groups)
    if C % g:
        raise fail(name, "groups", f"a divisor of x's {C} channels", g, meaning=f"x of shape {shape_str(x)}")
    expected = f"(B, O, C/groups, kh, kw) = ({B}, O, {C // g}, kh, kw)"
    if not isinstance(weight, Tensor) or weight.dim() != 5:
        got = shape_str(weight) if isinstance(weight, Tensor) else type(weight).__name__
        raise fail(name, "weight", expected, weight, shown=got)
    Bw, O, Cg, kh, kw = weight.shape
    if Bw != B or Cg != C // g or kh < 1 or kw < 1:
        raise fail(name, "weight", expected, weight, shown=f"{shape_str(weight)} for x of shape {shape_str(x)}")
    if O % g:
        raise fail(name, "groups", f"a divisor of the weight's O = {O} output channels", g,
                   meaning=f"weight of shape {shape_str(weight)}")
    check_same_dtype_device(name, x, weight, "weight")
    if bias is not None:
        if not isinstance(bias, Tensor) or tuple(bias.shape) != (B, O):
            got = shape_str(bias) if isinstance(bias, Tensor) else type(bias).__name__
            raise fail(name, "bias", f"(B, O) = ({B}, {O}) or None", bias, shown=got)
        check_same_dtype_device(name, x, bias, "bias")
    s = pair(name, "stride", stride, 1)
    d = pair(name, "dilation", dilation, 1)
    if padding == "same":
        if s != (1, 1):
            raise fail(name, "stride", "1 with padding='same'", stride, meaning="as in F.conv2d")
        th, tw = d[0] * (kh - 1), d[1] * (kw - 1)
        pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    elif padding == "valid":
        pads = (0, 0, 0, 0)
    else:
        ph, pw = pair(name, "padding ('same', 'valid', int or (int, int))", padding, 0)
        pads = (pw, pw, ph, ph)
    check_padding_mode(name, padding_mode)
    check_reflect_fits(name, padding_mode, max(pads[2:]), max(pads[:2]), x)
    Ho = (H + pads[2] + pads[3] - d[0] * (kh - 1) - 1) // s[0] + 1
    Wo = (W + pads[0] + pads[1] - d[1] * (kw - 1) - 1) // s[1] + 1
    if Ho < 1 or Wo < 1:
        raise fail(name, "padding", f"enough for a kernel {(kh, kw)} with dilation {d} to fit x of shape "
                   f"{shape_str(x)}", padding)
    return s, pads, d
