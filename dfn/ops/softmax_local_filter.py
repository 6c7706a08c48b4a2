"""The paper's filtering layer in one operator: softmax over each pixel's K*K filter values, then
dynamic local filtering (De Brabandere et al. 2016: 9×9 filters normalised by a softmax).

    softmax_local_filter(x, logits) == local_filter(x, softmax(logits over the K*K axis))

Done as those two steps, the normalised filters are a tensor K*K times the frame (81 frames at 9×9)
written by the softmax, read by the filtering, and backward streams four more such tensors through
memory (the filter gradient, the softmax backward's inputs and output). On a CPU these passes, not
the arithmetic, are what the layer costs. Here, for logits whose K*K axis is the fastest in memory
(what a 1x1 conv in NHWC returns: the predictor on CPU), the batch is walked in chunks of about
`CHUNK_BYTES`; each chunk's softmax, windowed product and sum stay in cache, and only the logits,
the normalised filters (kept for backward: reading them again is cheaper than a second exp per
value, measured), the output and the logit gradient go to memory. Backward forms w·g per chunk once
and derives both gradients from it:

    ∂L/∂logits_k = w_k · Σ_c g_c · (window_k(x)_c − out_c),   w = softmax(logits),

and, for the frame, the gather of ``dfn.ops.local_filter_taps_last`` (no scatter).

On CPU, for float32 or bfloat16 logits, a C++ kernel does the same in one pass per pixel, keeping
each pixel's K*K values in registers (``dfn/ops/softmax_local_filter_cpu.cpp``, built on first use by
``dfn.ops._cpu_kernels``; 2-3x faster than the chunks: docs/speed.md, section 6). The chunked torch code
stays as its reference and as the fallback when the kernel cannot be built or ``DFN_NO_CPU_KERNEL=1``
is set (one warning says which); float64 takes the torch code too.

Other layouts (K*K planes first: the predictor on GPU) and CUDA tensors take the two steps
(``torch.softmax``, then ``local_filter``, Triton on CUDA). Same values either way up to float
rounding (tests/test_ops.py compares with ``local_filter_reference`` after a softmax).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from dfn.checks import fail
from dfn.ops import _cpu_kernels
from dfn.ops._checks import PaddingMode, check_local_filter
from dfn.ops.border import pad_frame
from dfn.ops.local_filter import local_filter_unchecked
from dfn.ops.local_filter_taps_last import _as_windows, _compute_dtype, _windows, taps_last

CHUNK_BYTES = 1 << 20  # float32 softmax values per chunk: about one core's L2 (1 MiB on the AMD EPYC measured)


def _chunks(batch: int, per_sample: int) -> list[slice]:
    """Batch slices of about CHUNK_BYTES of float32 filter values each (at least one sample)."""
    n = max(1, CHUNK_BYTES // (4 * per_sample))
    return [slice(b, min(b + n, batch)) for b in range(0, batch, n)]


def _chunked_forward(x: Tensor, logits: Tensor, K: int, dilation: int, padded: bool) -> tuple[Tensor, Tensor]:
    """The torch code: x (B, C, H, W) — or padded by p = d·(K//2) when ``padded`` —, logits (B, 1 or C,
    K*K, H, W) with the K*K axis fastest -> out (B, C, H, W) and the softmax of the logits (B, 1 or C,
    H, W, K, K), both in the compute dtype."""
    B, C = x.shape[:2]
    H, W = logits.shape[-2:]
    p = dilation * (K // 2)
    cd = _compute_dtype(torch.promote_types(x.dtype, logits.dtype))
    xp = x.to(cd) if padded else F.pad(x.to(cd), (p, p, p, p))  # (B, C, H + 2p, W + 2p)
    windows = _windows(xp, K, dilation, H, W)  # (B, C, H, W, K, K) view
    taps = _as_windows(logits, K)  # (B, 1 or C, H, W, K, K) view
    out = torch.empty(B, C, H, W, dtype=cd, device=x.device)
    weights = torch.empty(taps.shape, dtype=cd, device=x.device)  # the softmax, kept for backward
    chunks = _chunks(B, logits[0].numel())
    product = torch.empty((chunks[0].stop, C, H, W, K, K), dtype=cd, device=x.device)  # reused
    for rows in chunks:
        n = rows.stop - rows.start
        torch.softmax(taps[rows].flatten(-2), dim=-1, dtype=cd, out=weights[rows].flatten(-2))
        torch.mul(weights[rows], windows[rows], out=product[:n])
        torch.sum(product[:n], dim=(-2, -1), out=out[rows])
    return out, weights


def _chunked_backward(grad_out: Tensor, x: Tensor, weights: Tensor, out: Tensor, K: int, dilation: int,
                      padded: bool, need_x: bool, need_logits: bool,
                      logits_dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of :func:`_chunked_forward`: of x (its shape, in the compute dtype) and of the logits
    (B, 1 or C, K*K, H, W), K*K fastest, in ``logits_dtype``; None where not asked for."""
    B, C = x.shape[:2]
    H, W = weights.shape[2:4]
    p = dilation * (K // 2)
    cd = out.dtype
    g = grad_out.to(cd)[..., None, None]  # (B, C, H, W, 1, 1)
    xp = x.to(cd) if padded else F.pad(x.to(cd), (p, p, p, p))
    windows = _windows(xp, K, dilation, H, W)  # (B, C, H, W, K, K) view
    per_channel = weights.shape[1] == C
    chunks = _chunks(B, weights[0].numel())
    n0 = chunks[0].stop
    gx = gl = None
    # w·g of every pixel, channel and tap, per chunk: both gradients are built from it. It is written
    # into the interior of a buffer with q rows/columns of zeros around it (q = p for a frame whose zero
    # padding the windows read, 2p for a frame padded by p), from which the frame gradient is one gather
    # (as in dfn.ops.local_filter_taps_last._gather_transpose).
    q = (2 * p if padded else p) if need_x else 0
    buffer = torch.zeros((n0, C, H + 2 * q, W + 2 * q, K, K), dtype=cd, device=x.device)  # reused
    tB, tC, tH, tW = buffer.stride()[:4]
    if need_x:
        gx = torch.empty(x.shape, dtype=cd, device=x.device)
        gather = ((C, x.shape[-2], x.shape[-1], K, K), (tC, tH, tW, dilation * tH - K, dilation * tW - 1))
    if need_logits:  # written in the logits' layout (K*K fastest) and dtype
        gl = torch.empty(weights.shape, dtype=logits_dtype, device=x.device)
        term = torch.empty((n0, C, H, W, K, K), dtype=cd, device=x.device)  # reused per chunk
    for rows in chunks:
        n = rows.stop - rows.start
        wg = torch.mul(weights[rows], g[rows], out=buffer[:n, :, q:H + q, q:W + q])  # (n, C, H, W, K, K)
        if need_logits:  # w_k · g · (window_k − out), summed over the channels of shared filters
            t = torch.sub(windows[rows], out[rows, ..., None, None], out=term[:n])
            if per_channel:
                torch.mul(t, wg, out=gl[rows])
            elif gl.dtype == cd:
                torch.sum(t.mul_(wg), dim=1, keepdim=True, out=gl[rows])
            else:  # a sum with a bfloat16 out= accumulates in bfloat16: sum in the compute dtype, then round once
                gl[rows] = t.mul_(wg).sum(dim=1, keepdim=True)
        if need_x:
            view = buffer.as_strided((n, *gather[0]), (tB, *gather[1]), buffer.storage_offset() + K * K - 1)
            torch.sum(view, dim=(-2, -1), out=gx[rows])
    if gl is not None:
        gl = gl.flatten(-2).movedim(-1, 2)  # (B, 1 or C, K*K, H, W), K*K fastest like the logits
    return gx, gl


@functools.lru_cache(maxsize=None)
def _warn_no_kernel(reason: str) -> None:
    """One warning per process (and reason) that the torch code runs instead of the C++ kernel."""
    warnings.warn(f"softmax_local_filter: not using the C++ CPU kernel: {reason}. Running the torch code "
                  "instead (same results, about 2x slower; docs/speed.md, section 6)", RuntimeWarning, stacklevel=5)


def _use_kernel(x: Tensor, logits: Tensor) -> bool:
    """Whether the C++ kernel computes this call; warns once when it would but cannot."""
    if not _cpu_kernels.serves(x, logits):
        return False
    reason = _cpu_kernels.unavailable_reason()
    if reason is not None:
        _warn_no_kernel(reason)
    return reason is None


class _SoftmaxLocalFilterFunction(torch.autograd.Function):
    """x (B, C, H, W) — or padded by p = d·(K//2) when ``padded`` —, logits (B, 1 or C, K*K, H, W)
    with the K*K axis fastest -> (B, C, H, W) in the compute dtype.

    Two implementations of one contract: the C++ kernel of ``dfn.ops._cpu_kernels`` (float32 or
    bfloat16 logits on CPU, when it builds; saves the padded frame and the logits, recomputes the
    softmax in backward), else the chunked torch code above (saves x, the softmax and out)."""

    @staticmethod
    def forward(ctx, x: Tensor, logits: Tensor, K: int, dilation: int, padded: bool) -> Tensor:
        ctx.K, ctx.dilation, ctx.padded, ctx.logits_dtype, ctx.x_dtype = K, dilation, padded, logits.dtype, x.dtype
        ctx.kernel = _use_kernel(x, logits)
        if ctx.kernel:
            p = dilation * (K // 2)
            xp = (x if padded else F.pad(x, (p, p, p, p))).to(torch.float32).contiguous()  # (B, C, H + 2p, W + 2p)
            taps = logits.movedim(2, -1).contiguous()  # (B, 1 or C, H, W, K*K): a view for an NHWC conv's output
            ctx.save_for_backward(xp, taps)
            return _cpu_kernels.forward(xp, taps, K, dilation)
        out, weights = _chunked_forward(x, logits, K, dilation, padded)
        ctx.save_for_backward(x, weights, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        K, dilation, padded = ctx.K, ctx.dilation, ctx.padded
        need_x, need_logits = ctx.needs_input_grad[:2]
        if ctx.kernel:
            xp, taps = ctx.saved_tensors
            gx, gl = _cpu_kernels.backward(grad_out, xp, taps, K, dilation, need_x, need_logits)
            if gx is not None and not padded:  # the gradient of the zero padding is dropped
                p = dilation * (K // 2)
                gx = gx[..., p:gx.shape[-2] - p, p:gx.shape[-1] - p].contiguous()
            x_dtype = ctx.x_dtype
            gl = None if gl is None else gl.movedim(-1, 2)  # (B, 1 or C, K*K, H, W), K*K fastest like the logits
        else:
            x, weights, out = ctx.saved_tensors
            gx, gl = _chunked_backward(grad_out, x, weights, out, K, dilation, padded, need_x, need_logits,
                                       ctx.logits_dtype)
            x_dtype = x.dtype
        return (None if gx is None else gx.to(x_dtype)), gl, None, None, None


def softmax_local_filter(x: Tensor, logits: Tensor, dilation: int = 1, *,
                         padding_mode: PaddingMode = "zeros") -> Tensor:
    """``local_filter(x, softmax(logits, dim=K*K axis))``: the paper's normalised dynamic filtering.

    Args:
        x: (B, C, H, W) floating.
        logits: (B, K*K, H, W) shared by the channels or (B, C, K*K, H, W) per channel, the raw
            generator output (window channel k is the offset (d·(k//K − K//2), d·(k%K − K//2))).
            Any floating dtype: under ``bf16-mixed`` the generator's are bfloat16 and the frames
            float32; the softmax and the sums are computed in the wider of the two (float32 for half).
        dilation, padding_mode: as in ``local_filter``.

    Returns:
        (B, C, H, W) in the wider of the two dtypes; each pixel a convex combination of its window
        (in [0, 1] for x in [0, 1]). Differentiable in x and logits.

    Raises:
        ValueError: as ``local_filter`` (shapes, devices, padding mode), except that the dtypes of x
            and the logits may differ.
    """
    if not (isinstance(x, Tensor) and isinstance(logits, Tensor) and x.is_floating_point()
            and logits.is_floating_point()):
        check_local_filter(x, logits, dilation, padding_mode)  # raises, naming the argument
    dtype = torch.promote_types(x.dtype, logits.dtype)
    # Shapes checked on data-free copies in one dtype (the dtypes may differ on purpose), then the devices.
    K, per_channel = check_local_filter(x.to("meta", dtype), logits.to("meta", dtype), dilation, padding_mode)
    if logits.device != x.device:
        raise fail("softmax_local_filter", "logits", f"on {x.device} like x", logits,
                   meaning=f"x of shape {tuple(x.shape)}", shown=f"{logits.device} with shape {tuple(logits.shape)}")
    f = logits if per_channel else logits.unsqueeze(1)  # (B, 1 or C, K*K, H, W)
    if x.is_cuda or not taps_last(f):
        weights = torch.softmax(logits, dim=2 if per_channel else 1, dtype=dtype)  # the logits' shape
        # Checked above: the filtering takes the arguments as they are (one check per call).
        return local_filter_unchecked(x.to(dtype), weights, K, per_channel, dilation, padding_mode, "auto")
    if padding_mode != "zeros":  # one padded copy of x, whose backward folds the border back
        x = pad_frame(x, dilation * (K // 2), padding_mode)
    return _SoftmaxLocalFilterFunction.apply(x, f, K, dilation, padding_mode != "zeros").to(dtype)
