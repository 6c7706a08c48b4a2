"""Dynamic convolution: one (O, C/groups, kh, kw) kernel per sample, shared by every position.

The result equals ``F.conv2d(x[b:b+1], weight[b], bias[b], ...)`` for each sample b. The fast path
folds the batch into the channel axis and runs one grouped convolution with ``groups = B·groups``
(the CondConv / DynamicConv trick; docs/generators.md): sample b's channels only meet sample b's kernels.
Two references: an unfold + einsum form with named axes, and the plain per-sample loop.
``padding_mode`` ("zeros" default, "replicate", "reflect") says what the kernel reads
outside the frame, as F.conv2d's module-level ``padding_mode`` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from dfn.ops._checks import PaddingMode, check_dynamic_conv
from dfn.ops.border import pad_frame

Padding = str | int | tuple[int, int]
IntPair = int | tuple[int, int]


def _explicit_pad(x: Tensor, pads: tuple[int, int, int, int], padding_mode: str
                  ) -> tuple[Tensor, int | tuple[int, int]]:
    """F.conv2d takes symmetric zero padding only; pad asymmetric cases ("same" with even kernels)
    and replicate/reflect padding here."""
    left, right, top, bottom = pads
    if padding_mode == "zeros" and left == right and top == bottom:
        return x, (top, left)
    if padding_mode == "zeros":
        return F.pad(x, pads), 0
    return pad_frame(x, pads, padding_mode), 0  # deterministic backward, unlike F.pad's on CUDA


def _pad(x: Tensor, pads: tuple[int, int, int, int], padding_mode: str) -> Tensor:
    """F.pad with our mode names ("zeros" is F.pad's "constant"); a no-op without padding."""
    if not any(pads):
        return x
    return F.pad(x, pads, mode="constant" if padding_mode == "zeros" else padding_mode)


def dynamic_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: IntPair = 1,
                 padding: Padding = "same", dilation: IntPair = 1, groups: int = 1, *,
                 padding_mode: PaddingMode = "zeros") -> Tensor:
    """Convolve each sample with its own kernel, without a Python loop over the batch.

    Args:
        x: (B, C, H, W) floating tensor.
        weight: (B, O, C/groups, kh, kw), same dtype/device as x.
        bias: (B, O) or None.
        stride, dilation: int or (int, int), ≥ 1.
        padding: "same" (stride 1 only, like F.conv2d), "valid", int or (int, int).
        groups: as in F.conv2d, applied within each sample.
        padding_mode: "zeros" (default), "replicate" or "reflect" (needs padding < frame size).

    Returns:
        (B, O, H_out, W_out), H_out as for F.conv2d.

    Raises:
        ValueError: on bad shapes/arguments, including padding="same" with stride > 1.
    """
    stride, pads, dilation = check_dynamic_conv(x, weight, bias, stride, padding, dilation, groups,
                                                padding_mode)
    B, C, H, W = x.shape
    _, O, Cg, kh, kw = weight.shape
    x, pad = _explicit_pad(x, pads, padding_mode)
    xf = x.reshape(1, B * C, x.shape[2], x.shape[3])  # (1, B*C, H', W'): batch folded into channels
    wf = weight.reshape(B * O, Cg, kh, kw)  # (B*O, C/groups, kh, kw)
    bf = None if bias is None else bias.reshape(B * O)  # (B*O,)
    out = F.conv2d(xf, wf, bf, stride=stride, padding=pad, dilation=dilation, groups=B * groups)
    return out.view(B, O, out.shape[2], out.shape[3])  # (B, O, H_out, W_out)


def dynamic_conv_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                           stride: IntPair = 1, padding: Padding = "same", dilation: IntPair = 1,
                           groups: int = 1, *, padding_mode: PaddingMode = "zeros") -> Tensor:
    """Readable reference for :func:`dynamic_conv`: unfold every window, then one named einsum."""
    stride, pads, dilation = check_dynamic_conv(x, weight, bias, stride, padding, dilation, groups,
                                                padding_mode)
    B, C, H, W = x.shape
    _, O, Cg, kh, kw = weight.shape
    x = _pad(x, pads, padding_mode)  # (B, C, H', W')
    Ho = (x.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    cols = F.unfold(x, (kh, kw), dilation=dilation, stride=stride)  # (B, C*kh*kw, Ho*Wo)
    cols = rearrange(cols, "b (g c k) (h w) -> b g c k h w", g=groups, k=kh * kw, h=Ho)
    w = rearrange(weight, "b (g o) c kh kw -> b g o c (kh kw)", g=groups)  # (B, G, O/G, C/G, kh*kw)
    out = einsum(cols, w, "b g c k h w, b g o c k -> b g o h w")
    out = rearrange(out, "b g o h w -> b (g o) h w")  # (B, O, Ho, Wo)
    if bias is not None:
        out = out + rearrange(bias, "b o -> b o 1 1")
    return out


def dynamic_conv_loop(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: IntPair = 1,
                      padding: Padding = "same", dilation: IntPair = 1, groups: int = 1, *,
                      padding_mode: PaddingMode = "zeros") -> Tensor:
    """The definition, literally: one F.conv2d per sample (benchmark baseline and test oracle)."""
    stride, pads, dilation = check_dynamic_conv(x, weight, bias, stride, padding, dilation, groups,
                                                padding_mode)
    x = _pad(x, pads, padding_mode)  # (B, C, H', W')
    outs = [F.conv2d(x[b:b + 1], weight[b], None if bias is None else bias[b], stride=stride,
                     dilation=dilation, groups=groups) for b in range(x.shape[0])]
    return torch.cat(outs, dim=0)
