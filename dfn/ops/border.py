"""Replicate/reflect padding of a frame with a deterministic backward.

``F.pad``'s replicate/reflect backward on CUDA scatters with atomic adds, so it raises under
``torch.use_deterministic_algorithms(True)`` (Lightning's ``deterministic=True``). Padding is a
fixed linear map, and its transpose is a fold of the border strips back onto the rows and columns
they copied: a few slice additions, deterministic on every device. The operators' fast paths pad
through :func:`pad_frame`; the references keep ``F.pad`` (the tests compare the two).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _fold_axis(g: Tensor, lo: int, hi: int, mode: str, dim: int) -> Tensor:
    """Transpose of padding one axis by ``lo`` before and ``hi`` after: (.., lo + n + hi, ..) ->
    (.., n, ..)."""
    n = g.shape[dim] - lo - hi
    core = g.narrow(dim, lo, n).clone()
    before, after = g.narrow(dim, 0, lo), g.narrow(dim, lo + n, hi)
    if mode == "replicate":  # every padded row is a copy of the edge row
        core.narrow(dim, 0, 1).add_(before.sum(dim, keepdim=True))
        core.narrow(dim, n - 1, 1).add_(after.sum(dim, keepdim=True))
    else:  # reflect: padded row t < lo copies row lo − t; row lo + n + t copies row n − 2 − t
        core.narrow(dim, 1, lo).add_(before.flip(dim))
        core.narrow(dim, n - 1 - hi, hi).add_(after.flip(dim))
    return core


class _PadFrame(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, pads: tuple[int, int, int, int], mode: str) -> Tensor:
        ctx.pads, ctx.mode = pads, mode
        return F.pad(x, pads, mode=mode)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # Padding is separable (columns, then rows), so its transpose folds columns, then rows.
        left, right, top, bottom = ctx.pads
        g = _fold_axis(grad, left, right, ctx.mode, -1)
        return _fold_axis(g, top, bottom, ctx.mode, -2), None, None


def pad_frame(x: Tensor, pad: int | tuple[int, int, int, int], padding_mode: str) -> Tensor:
    """(B, C, H, W) -> (B, C, H + top + bottom, W + left + right) with ``padding_mode``
    "replicate" or "reflect"; ``pad``: one amount for all sides or (left, right, top, bottom) as in
    F.pad (reflect needs each < H, W; callers validate). Differentiable, deterministic backward."""
    pads = (pad,) * 4 if isinstance(pad, int) else tuple(pad)
    if not any(pads):
        return x
    return _PadFrame.apply(x, pads, padding_mode)
