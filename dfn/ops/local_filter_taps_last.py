"""Dynamic local filtering for filters whose K*K window axis is the fastest-varying one.

A 1x1 convolution run in NHWC (``torch.channels_last``, what oneDNN's CPU convolutions are fastest
in) returns filters (B, K*K, H, W) whose K*K values of a pixel sit next to each other in memory
(strides (H*W*K*K, 1, W*K*K, K*K)). The softmax over those values is then a softmax over a
contiguous axis, but the offset loop of ``dfn.ops.local_filter`` would read each of its K*K filter
planes with a stride of K*K elements, i.e. touch every cache line of the filters K*K times. This
module computes the same sum with the window as a strided *view* of the padded frame:

    windows[b, c, i, j, a, e] = x_padded[b, c, i + d·a, j + d·e]        (no copy: ``as_strided``)
    out[b, c, i, j]           = Σ_{a,e} filters[b, c|0, i, j, a, e] · windows[b, c, i, j, a, e]

and, backward, the frame gradient as a gather from a padded copy of ``filters · grad`` read through
another strided view (each output pixel sums its K*K contributions, written nowhere twice: no
scatter, no atomics). Every pass runs over contiguous memory of the filters' size.

Same semantics, arguments and result as ``local_filter`` (which dispatches here on the layout);
``local_filter_reference`` stays the truth the tests compare against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dfn.ops.border import pad_frame


def taps_last(filters: Tensor) -> bool:
    """Whether filters (B, 1 or C, K*K, H, W) have their K*K axis fastest in memory (stride 1)."""
    return filters.shape[2] > 1 and filters.stride(2) == 1


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # A K*K-term sum in float16/bfloat16 loses ~2–3 significant bits; compute in float32 instead.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _windows(xp: Tensor, K: int, dilation: int, H: int, W: int) -> Tensor:
    """xp (B, C, H + 2p, W + 2p) padded frame -> (B, C, H, W, K, K) view:
    ``[b, c, i, j, a, e] = xp[b, c, i + d·a, j + d·e]``, the window of output pixel (i, j)."""
    sB, sC, sH, sW = xp.stride()
    return xp.as_strided((xp.shape[0], xp.shape[1], H, W, K, K),
                         (sB, sC, sH, sW, dilation * sH, dilation * sW), xp.storage_offset())


def _as_windows(filters: Tensor, K: int) -> Tensor:
    """filters (B, 1 or C, K*K, H, W), taps last in memory -> (B, 1 or C, H, W, K, K) view."""
    return filters.movedim(2, -1).unflatten(-1, (K, K))


def _gather_transpose(taps: Tensor, g: Tensor, K: int, dilation: int, q: int, out_h: int, out_w: int) -> Tensor:
    """The transpose of reading windows, for the frame gradient: ``taps`` (B, 1 or C, H, W, K, K)
    the filters, ``g`` (B, C, H, W, 1, 1) the output gradient; returns the gradient of the frame the
    windows were read from, (B, C, out_h, out_w): with q = p = d·(K//2) the (H, W) frame whose zero
    padding the windows read, with q = 2p the (H + 2p, W + 2p) frame already padded by p.

    filter·grad of every output pixel and tap is written once into a buffer padded by q zero rows
    and columns; frame pixel (y, z) then sums the buffer at [y + d·a', z + d·e', K-1-a', K-1-e']
    over (a', e'), an affine function of (y, z, a', e') with non-negative strides: one reduction
    over a strided view, no scatter."""
    B, C, H, W = g.shape[:4]
    padded = torch.empty(B, C, H + 2 * q, W + 2 * q, K, K, dtype=g.dtype, device=g.device)
    if q:  # zero only the border strips; the interior is written right after
        padded[:, :, :q].zero_()
        padded[:, :, H + q:].zero_()
        padded[:, :, q:H + q, :q].zero_()
        padded[:, :, q:H + q, W + q:].zero_()
    torch.mul(taps, g, out=padded[:, :, q:H + q, q:W + q])  # (B, C, H, W, K, K): filter · grad
    tB, tC, tH, tW = padded.stride()[:4]
    view = padded.as_strided((B, C, out_h, out_w, K, K),
                             (tB, tC, tH, tW, dilation * tH - K, dilation * tW - 1),
                             padded.storage_offset() + K * K - 1)
    return view.sum((-2, -1))


class _TapsLastFunction(torch.autograd.Function):
    """x (B, C, H, W) — or already padded by p = d·(K//2) when ``padded`` (replicate/reflect; the
    ``pad_frame`` in front folds the border gradient back) —, filters (B, 1 or C, K*K, H, W) with
    taps last in memory -> (B, C, H, W). Saves x and the filters only."""

    @staticmethod
    def forward(ctx, x: Tensor, filters: Tensor, K: int, dilation: int, padded: bool) -> Tensor:
        ctx.save_for_backward(x, filters)
        ctx.K, ctx.dilation, ctx.padded = K, dilation, padded
        H, W = filters.shape[-2:]
        p = dilation * (K // 2)
        cd = _compute_dtype(x.dtype)
        xp = x if padded else F.pad(x, (p, p, p, p))  # (B, C, H + 2p, W + 2p)
        windows = _windows(xp.to(cd), K, dilation, H, W)  # (B, C, H, W, K, K) view
        taps = _as_windows(filters, K).to(cd)  # (B, 1 or C, H, W, K, K) view (a copy for half inputs)
        # The product is materialised once (contiguous, filter-sized) and summed over its last axes.
        product = torch.empty(windows.shape, dtype=cd, device=x.device)
        torch.mul(windows, taps, out=product)
        return product.sum((-2, -1)).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, filters = ctx.saved_tensors
        K, dilation, padded = ctx.K, ctx.dilation, ctx.padded
        H, W = filters.shape[-2:]
        p = dilation * (K // 2)
        cd = _compute_dtype(x.dtype)
        g = grad_out.to(cd)[..., None, None]  # (B, C, H, W, 1, 1)
        taps = _as_windows(filters, K)  # (B, 1 or C, H, W, K, K) view
        gx = gf = None
        if ctx.needs_input_grad[0]:
            q = 2 * p if padded else p
            gx = _gather_transpose(taps, g, K, dilation, q, x.shape[-2], x.shape[-1]).to(x.dtype)
        if ctx.needs_input_grad[1]:
            xp = x if padded else F.pad(x, (p, p, p, p))  # (B, C, H + 2p, W + 2p)
            windows = _windows(xp.to(cd), K, dilation, H, W)  # (B, C, H, W, K, K) view
            if taps.shape[1] == windows.shape[1]:  # per-channel filters, or one channel
                gf = torch.empty(windows.shape, dtype=filters.dtype, device=x.device)
                torch.mul(windows, g, out=gf)
            else:  # filters shared by C > 1 channels: sum the channels' contributions
                gf = (windows * g).sum(1, keepdim=True).to(filters.dtype)
            gf = gf.flatten(-2).movedim(-1, 2)  # (B, 1 or C, K*K, H, W), taps last like the filters
        return gx, gf, None, None, None


def local_filter_taps_last(x: Tensor, filters: Tensor, K: int, dilation: int, padding_mode: str) -> Tensor:
    """``local_filter`` for validated arguments with ``taps_last(filters)``: x (B, C, H, W), filters
    (B, 1 or C, K*K, H, W) -> (B, C, H, W) in x's dtype."""
    if padding_mode == "zeros":
        return _TapsLastFunction.apply(x, filters, K, dilation, False)
    return _TapsLastFunction.apply(pad_frame(x, dilation * (K // 2), padding_mode), filters, K, dilation, True)
