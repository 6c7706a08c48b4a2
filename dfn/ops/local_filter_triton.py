"""Triton backend of dynamic local filtering: fused forward and backward kernels.

Same semantics as :func:`dfn.ops.local_filter` (which dispatches here with ``backend="triton"``,
or ``"auto"`` on CUDA tensors). One kernel per pass, each a loop over the K*K taps on a tile of
output pixels (``dfn.ops._triton_kernels``):

* forward: out = Σ_k f_k · shift_k(x), one read of x per tap from cache, one write of out;
* grad x: a gather with the transposed window (no atomics);
* grad filters: g · shift_k(x), summed over the channels in-register for shared filters.

Nothing K*K times the frame is ever materialised beyond the filters and their gradient themselves.
Zero padding is done by masking; replicate/reflect pad x once (``dfn.ops.border.pad_frame``,
whose deterministic backward folds the border gradient back) and run the kernels on the padded frame without masks.
Accumulation is float32 for every input dtype (float32, bfloat16, float16).

Triton needs CUDA tensors, or CPU tensors with ``TRITON_INTERPRET=1`` set (its interpreter; slow,
for tests). The kernels are ``triton.jit``-ed on first use, once per interpreter setting.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import torch
from torch import Tensor

from dfn.checks import fail
from dfn.ops._checks import PaddingMode, check_local_filter
from dfn.ops.border import pad_frame

NUM_WARPS = 4  # a 4-warp CTA per tile: enough loads in flight for these memory-bound loops
MAX_GRID_ROWS = 65535  # CUDA's limit on grid axis 1, which walks (sample, channel tile)
_KERNELS: dict[bool, tuple] = {}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(x: Tensor) -> str | None:
    """None when these kernels can run on ``x``'s device, else why not (for error messages)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton; Linux only)"
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return (f"the Triton kernels take float32, bfloat16 or float16, not {x.dtype} "
                f"(use backend='torch', e.g. for float64 gradcheck)")
    if x.dim() == 4 and x.shape[0] * x.shape[1] > MAX_GRID_ROWS:
        return (f"B·C = {x.shape[0] * x.shape[1]} exceeds the {MAX_GRID_ROWS} (sample, channel) "
                f"rows a CUDA grid axis holds")
    if x.is_cuda or (x.device.type == "cpu" and _interpreting()):
        return None
    return (f"x is on {x.device}; Triton runs CUDA tensors, or CPU tensors under its interpreter "
            f"(set TRITON_INTERPRET=1)")


def _kernels() -> tuple:
    """(forward, grad x, grad filters) kernels, jitted for the current TRITON_INTERPRET setting."""
    interpret = _interpreting()
    if interpret not in _KERNELS:
        import triton

        from dfn.ops import _triton_kernels as src

        _KERNELS[interpret] = tuple(triton.jit(fn) for fn in (
            src.local_filter_fwd, src.local_filter_bwd_x, src.local_filter_bwd_f))
    return _KERNELS[interpret]


def _tiles(C: int, per_channel: bool, pixels: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK): shared filters tile up to 8 channels so each filter value loaded serves
    them all; per-channel filters gain nothing from channel tiles. ~1024 elements per program, fewer
    for frames smaller than that (tiny frames, and the interpreter, whose cost grows with BLOCK)."""
    block_c = 1 if per_channel else min(8, _pow2(C))
    return block_c, max(16, min(max(128, 1024 // block_c), _pow2(pixels)))


def _pow2(n: int) -> int:
    """The smallest power of two ≥ n (≥ 1)."""
    return 1 << max(n - 1, 0).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _on_device(t: Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it t's (tensors on cuda:1 and the like)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class _TritonLocalFilter(torch.autograd.Function):
    """x (B, C, Hx, Wx) — the frame, or the padded frame when ``padded`` —; filters
    (B, K*K, H, W) or (B, C, K*K, H, W); returns (B, C, H, W). Saves only x and filters."""

    @staticmethod
    def forward(ctx, x: Tensor, filters: Tensor, K: int, dilation: int, padded: bool,
                per_channel: bool) -> Tensor:
        x, filters = x.contiguous(), filters.contiguous()
        B, C, Hx, Wx = x.shape
        H, W = filters.shape[-2:]
        P = 0 if padded else dilation * (K // 2)
        block_c, block = _tiles(C, per_channel, Hx * Wx)
        out = torch.empty(B, C, H, W, dtype=x.dtype, device=x.device)
        fwd, _, _ = _kernels()
        with _on_device(x):
            fwd[(_cdiv(H * W, block), B * _cdiv(C, block_c))](
                x, filters, out, C, H, W, Hx, Wx, P, K=K, DIL=dilation, PER_CHANNEL=per_channel,
                BLOCK_C=block_c, BLOCK=block, num_warps=NUM_WARPS)
        ctx.save_for_backward(x, filters)
        ctx.cfg = (K, dilation, P, per_channel)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, filters = ctx.saved_tensors
        K, dilation, P, per_channel = ctx.cfg
        g = grad_out.contiguous()
        B, C, Hx, Wx = x.shape
        H, W = filters.shape[-2:]
        block_c, block = _tiles(C, per_channel, Hx * Wx)
        _, bwd_x, bwd_f = _kernels()
        meta = dict(K=K, DIL=dilation, PER_CHANNEL=per_channel, BLOCK_C=block_c, BLOCK=block,
                    num_warps=NUM_WARPS)
        gx = gf = None
        with _on_device(x):
            if ctx.needs_input_grad[0]:
                gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # every element written
                bwd_x[(_cdiv(Hx * Wx, block), B * _cdiv(C, block_c))](
                    g, filters, gx, C, H, W, Hx, Wx, P, **meta)
            if ctx.needs_input_grad[1]:
                gf = torch.empty(filters.shape, dtype=filters.dtype, device=x.device)
                rows = B * _cdiv(C, block_c) if per_channel else B
                bwd_f[(_cdiv(H * W, block), rows)](g, x, gf, C, H, W, Hx, Wx, P, **meta)
        return gx, gf, None, None, None, None


def local_filter_triton(x: Tensor, filters: Tensor, dilation: int = 1, *,
                        padding_mode: PaddingMode = "zeros") -> Tensor:
    """:func:`dfn.ops.local_filter` with the Triton kernels (same arguments, shapes and result).

    Args:
        x: (B, C, H, W) float32/bfloat16/float16, on CUDA (or CPU under TRITON_INTERPRET=1).
        filters: (B, K*K, H, W) or (B, C, K*K, H, W), K odd, same dtype/device as x.
        dilation: tap spacing d ≥ 1.
        padding_mode: "zeros" (paper, default), "replicate" or "reflect" (needs d·(K//2) < H, W).

    Returns:
        (B, C, H, W) in x's dtype (float32 accumulation); differentiable in x and filters.

    Raises:
        ValueError: bad shapes/arguments (as local_filter), or tensors Triton cannot serve.
    """
    K, per_channel = check_local_filter(x, filters, dilation, padding_mode)
    reason = unavailable_reason(x)
    if reason is not None:
        raise fail("local_filter_triton", "x", "a tensor the Triton kernels can serve", x,
                   meaning=reason, shown=f"{x.dtype} on {x.device} with shape {tuple(x.shape)}")
    return local_filter_triton_unchecked(x, filters, K, per_channel, dilation, padding_mode)


def local_filter_triton_unchecked(x: Tensor, filters: Tensor, K: int, per_channel: bool, dilation: int,
                                  padding_mode: str) -> Tensor:
    """:func:`local_filter_triton` on arguments already validated and tensors Triton can serve
    (``dfn.ops.local_filter`` checks them once): x (B, C, H, W), filters (B, [C,] K*K, H, W) -> (B, C, H, W)."""
    if padding_mode == "zeros":
        return _TritonLocalFilter.apply(x, filters, K, dilation, False, per_channel)
    xp = pad_frame(x, dilation * (K // 2), padding_mode)  # (B, C, H + 2p, W + 2p)
    return _TritonLocalFilter.apply(xp, filters, K, dilation, True, per_channel)
