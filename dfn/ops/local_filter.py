"""Dynamic local filtering: one K×K filter per sample and per pixel (De Brabandere et al. 2016).

    out[b, c, i, j] = Σ_k filters[b, (c,) k, i, j] · x[b, c, i + d·(k//K − K//2), j + d·(k%K − K//2)]

cross-correlation, window ordered row-major exactly like ``F.unfold(x, K, dilation=d,
padding=d*(K//2))`` (De Brabandere et al. 2016; docs/paper.md). Outside the image the window reads zeros (the paper's choice,
default) or, with ``padding_mode`` "replicate" / "reflect", the edge pixel / the mirrored frame
(ours): then a normalised filter keeps a constant frame constant up to the border.

Two implementations:

* ``local_filter_reference`` — unfold + einsum with named axes. Short and obviously right, and the
  semantic truth the tests compare against, but it materialises K*K copies of x (and of its
  gradient): 81× the frame at 9×9.
* ``local_filter`` — a custom autograd Function that loops over the K*K offsets and accumulates
  shifted slices of x in place (zeros: without a padded copy of x; replicate/reflect: on one
  padded copy of x, whose backward folds the border gradient back, ``dfn.ops.border``). Forward and backward allocate only the output/gradients (plus a
  float32 working copy for half inputs), i.e. O(size of x + size of filters), and every pass is over
  a frame-sized tensor that stays in cache, which is why it is also much faster on CPU.

  It reads filter plane k as ``filters[:, k]``: right for filters laid out (B, K*K, H, W) in memory.
  Filters whose K*K axis is the fastest (what a 1x1 conv run in NHWC returns) go to
  ``dfn.ops.local_filter_taps_last`` instead, which reads them contiguously (same results).

CPU caveat: the offset loop issues K*K small ops (3·K*K in backward). Each multi-threaded op is an
OpenMP fork/join, so when other processes compete for the cores a descheduled worker thread
stalls every op; with one intra-op thread (``torch.set_num_threads(1)``) it is immune to that.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from dfn.checks import check_choice, fail
from dfn.ops._checks import PaddingMode, check_local_filter
from dfn.ops.border import pad_frame
from dfn.ops.local_filter_taps_last import local_filter_taps_last, taps_last

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")


def local_filter_reference(x: Tensor, filters: Tensor, dilation: int = 1, *,
                           padding_mode: PaddingMode = "zeros") -> Tensor:
    """Readable reference for :func:`local_filter` (same arguments and result, K*K× the memory)."""
    K, per_channel = check_local_filter(x, filters, dilation, padding_mode)
    B, C, H, W = x.shape
    p = dilation * (K // 2)
    if padding_mode == "zeros":
        patches = F.unfold(x, K, dilation=dilation, padding=p)  # (B, C*K*K, H*W)
    else:
        xp = F.pad(x, (p, p, p, p), mode=padding_mode)  # (B, C, H + 2p, W + 2p)
        patches = F.unfold(xp, K, dilation=dilation)  # (B, C*K*K, H*W)
    patches = rearrange(patches, "b (c k) (h w) -> b c k h w", c=C, h=H)  # (B, C, K*K, H, W)
    if per_channel:
        return einsum(patches, filters, "b c k h w, b c k h w -> b c h w")
    return einsum(patches, filters, "b c k h w, b k h w -> b c h w")


def _overlap(shift: int, n: int) -> tuple[slice, slice]:
    """For ``dst[i] ← src[i + shift]`` along an axis of length n: the (dst, src) index ranges that
    stay inside the image. Everything outside ``dst`` reads zero padding and contributes nothing, so
    we never build a padded copy of x."""
    return slice(max(0, -shift), n - max(0, shift)), slice(max(0, shift), n + min(0, shift))


def _windows(K: int, dilation: int, H: int, W: int, padded: bool):
    """Yield ``(k, dst, src)`` per window offset: ``out[..., *dst] += f[k][..., *dst] * x[..., *src]``.

    ``padded=False``: x is the (H, W) frame with implicit zeros outside; offsets that fall entirely
    outside the frame (large dilation on small frames) are skipped. ``padded=True``: x is already
    padded by d·(K//2) on each side, so every offset reads a full-frame (H, W) slice of it."""
    r = K // 2
    if padded:
        for k in range(K * K):
            oy, ox = dilation * (k // K), dilation * (k % K)
            yield k, (slice(0, H), slice(0, W)), (slice(oy, oy + H), slice(ox, ox + W))
        return
    for k in range(K * K):
        rows = _overlap(dilation * (k // K - r), H)
        cols = _overlap(dilation * (k % K - r), W)
        if rows[0].start < rows[0].stop and cols[0].start < cols[0].stop:
            yield k, (rows[0], cols[0]), (rows[1], cols[1])


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # A K*K-term sum in float16/bfloat16 loses ~2–3 significant bits; accumulate in float32 instead.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _forward(x: Tensor, filters: Tensor, K: int, dilation: int, padded: bool) -> Tensor:
    """x (B, C, H, W) — or (B, C, H + 2p, W + 2p) when ``padded`` —; filters (B, 1 or C, K*K, H, W)
    -> (B, C, H, W) in the compute dtype."""
    B, C = x.shape[:2]
    H, W = filters.shape[-2:]
    # Half inputs: only the accumulator is float32; addcmul_ into it promotes per element, so no
    # float32 copy of the (K*K times larger) filters is ever made.
    out = torch.zeros(B, C, H, W, dtype=_compute_dtype(x.dtype), device=x.device)
    for k, (di, dj), (si, sj) in _windows(K, dilation, H, W, padded):
        # filters[:, :, k] is (B, 1 or C, H, W): broadcasts over the channels for shared filters.
        out[:, :, di, dj].addcmul_(x[:, :, si, sj], filters[:, :, k, di, dj])
    return out


def _backward(grad_out: Tensor, x: Tensor, filters: Tensor, K: int, dilation: int, padded: bool,
              need_x: bool, need_f: bool) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of :func:`_forward`; filters (B, 1 or C, K*K, H, W). Returns grad_x shaped like x
    and grad_filters shaped like ``filters`` (float32 for half inputs where terms are summed)."""
    B, C = x.shape[:2]
    H, W = filters.shape[-2:]
    cd = _compute_dtype(x.dtype)
    g = grad_out
    shared = filters.shape[1] == 1 and C > 1
    gx = torch.zeros(x.shape, dtype=cd, device=x.device) if need_x else None
    # A per-channel filter gradient is a single product per element: exact enough in x's dtype,
    # which halves the largest allocation for half inputs. Shared filters sum over C: float32.
    gf_dtype = cd if shared else x.dtype
    # The filter gradient is written with full-frame slices of a zero-padded x, so every element
    # of it is written exactly once: ``empty`` instead of ``zeros`` saves a pass over the largest
    # tensor here (K*K frames), at the price of one padded copy of x (none when x comes padded).
    gf = torch.empty(filters.shape, dtype=gf_dtype, device=x.device) if need_f else None
    if need_x:
        for k, (di, dj), (si, sj) in _windows(K, dilation, H, W, padded):
            # The forward read x[src] into out[dst], so x[src] receives filter·grad at dst.
            gx[:, :, si, sj].addcmul_(g[:, :, di, dj], filters[:, :, k, di, dj])
    if need_f:
        p = dilation * (K // 2)
        xp = x if padded else F.pad(x, (p, p, p, p))  # (B, C, H + 2p, W + 2p)
        for k in range(K * K):
            oy, ox = dilation * (k // K), dilation * (k % K)
            xs = xp[:, :, oy:oy + H, ox:ox + W]  # (B, C, H, W) view: x shifted by offset k
            gf_k = gf[:, :, k]  # (B, 1 or C, H, W) view
            torch.mul(g[:, :1] if shared else g, xs[:, :1] if shared else xs, out=gf_k)
            # Shared filters: accumulate the remaining channels in place rather than reducing a
            # (B, C, H, W) temporary over its strided C axis (slower, and one more allocation).
            for c in range(1, C if shared else 1):
                gf_k.addcmul_(g[:, c:c + 1], xs[:, c:c + 1])
    return gx, gf


class _LocalFilterFunction(torch.autograd.Function):
    """Memory-light local filtering. Saves only x (or its padded copy) and filters; no unfolded
    copies anywhere. ``padded``: x arrives padded by d·(K//2) (replicate/reflect; the F.pad in
    front of this Function folds the border gradient back)."""

    @staticmethod
    def forward(ctx, x: Tensor, filters: Tensor, K: int, dilation: int, padded: bool) -> Tensor:
        ctx.save_for_backward(x, filters)
        ctx.K, ctx.dilation, ctx.padded = K, dilation, padded
        return _forward(x, filters, K, dilation, padded).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, filters = ctx.saved_tensors
        gx, gf = _backward(grad_out.contiguous(), x, filters, ctx.K, ctx.dilation, ctx.padded,
                           ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        gx = None if gx is None else gx.to(x.dtype)
        gf = None if gf is None else gf.to(filters.dtype)
        return gx, gf, None, None, None


def _triton_usable(x: Tensor) -> str | None:
    """None when the Triton backend can serve x, else the reason it cannot (triton missing,
    dtype, device). Importing the wrapper module does not import triton itself."""
    from dfn.ops import local_filter_triton

    return local_filter_triton.unavailable_reason(x)


def local_filter(x: Tensor, filters: Tensor, dilation: int = 1, *,
                 padding_mode: PaddingMode = "zeros", backend: Backend = "auto") -> Tensor:
    """Apply per-pixel dynamic filters to ``x``.

    Args:
        x: (B, C, H, W), any floating dtype and device.
        filters: (B, K*K, H, W) — one K×K filter per sample and pixel, shared by the channels — or
            (B, C, K*K, H, W), one per channel (HDFNet style). K odd; window channel k is the offset
            ``(dy, dx) = (d·(k//K − K//2), d·(k%K − K//2))``. Same dtype and device as x. Values are
            used as given (normalise them, e.g. softmax, before calling).
        dilation: spacing d ≥ 1 between window taps.
        padding_mode: what the window reads outside the image: "zeros" (paper, default),
            "replicate" (the nearest edge pixel) or "reflect" (mirrored about the edge pixel;
            needs d·(K//2) < H and < W).
        backend: "torch" (the loop over offsets below, or for filters with the K*K axis fastest
            in memory the strided-window sum of ``dfn.ops.local_filter_taps_last``; any device),
            "triton" (fused kernels of ``dfn.ops.local_filter_triton``; CUDA tensors, or CPU tensors under
            ``TRITON_INTERPRET=1``; float32/bfloat16/float16), or "auto" (Triton for CUDA tensors
            of those dtypes when triton is installed, else torch).

    Returns:
        (B, C, H, W) in x's dtype. Differentiable in x and filters with O(size of x + size of
        filters) extra memory in forward and backward.

    Raises:
        ValueError: on any shape, dtype or device mismatch (the message names both shapes), an
            unknown padding_mode/backend, reflect padding wider than the frame, or
            backend="triton" on tensors Triton cannot serve (the message says why).
    """
    K, per_channel = check_local_filter(x, filters, dilation, padding_mode)
    check_choice("local_filter", "backend", backend, BACKENDS)
    return local_filter_unchecked(x, filters, K, per_channel, dilation, padding_mode, backend)


def local_filter_unchecked(x: Tensor, filters: Tensor, K: int, per_channel: bool, dilation: int,
                           padding_mode: str, backend: str) -> Tensor:
    """:func:`local_filter` on arguments already validated (``(K, per_channel)`` as
    ``check_local_filter`` returned them, `backend` one of BACKENDS): what the operators that check
    their own inputs (``softmax_local_filter``) call, so that a public call checks once. x (B, C, H, W),
    filters (B, K*K, H, W) or (B, C, K*K, H, W) -> (B, C, H, W)."""
    if backend == "triton" or (backend == "auto" and x.is_cuda):
        reason = _triton_usable(x)
        if reason is None:
            from dfn.ops.local_filter_triton import local_filter_triton_unchecked

            return local_filter_triton_unchecked(x, filters, K, per_channel, dilation, padding_mode)
        if backend == "triton":
            raise fail("local_filter", "backend", "'torch' or 'auto' here", backend,
                       meaning=f"backend='triton' cannot run here: {reason}")
    f = filters if per_channel else filters.unsqueeze(1)  # (B, 1 or C, K*K, H, W)
    if taps_last(f):  # K*K values of a pixel adjacent in memory (an NHWC conv's output)
        return local_filter_taps_last(x, f, K, dilation, padding_mode)
    if padding_mode == "zeros":
        return _LocalFilterFunction.apply(x, f, K, dilation, False)
    # Replicate/reflect: one padded copy of x (B, C, H + 2p, W + 2p), then full-frame slices.
    return _LocalFilterFunction.apply(pad_frame(x, dilation * (K // 2), padding_mode), f, K,
                                      dilation, True)

