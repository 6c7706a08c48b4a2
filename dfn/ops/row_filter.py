"""Dynamic horizontal filtering: one 1×K filter per sample and per pixel, along the image row.

    out[b, c, i, j] = Σ_k filters[b, k, i, j] · x[b, c, i, j + k − K//2]

cross-correlation over a horizontal window, tap k ↔ column offset k − K//2 (the DFN paper's 13×1
stereo filters, De Brabandere et al. 2016, Section 4: taps 0..12 read offsets −6..+6). It is what
``local_filter`` would do with a K×K filter that is zero off its middle row, at 1/K of the cost.
Outside the image the window reads zeros (the paper's choice, default), or the edge pixel
("replicate") or the mirrored row ("reflect").

* ``row_filter_reference`` — ``F.unfold`` with a (1, K) window + einsum: short, obviously right,
  the semantic truth the tests compare against (it materialises K copies of x).
* ``row_filter`` — a sum of K shifted slices of one (horizontally) padded copy of x; autograd
  through plain tensor ops. K is small (13), so this is already fast and light.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from dfn.checks import fail
from dfn.ops._checks import (PaddingMode, check_padding_mode, check_reflect_fits, check_same_dtype_device,
                             check_tensor, shape_str)
from dfn.ops.border import pad_frame


def check_row_filter(x: object, filters: object, padding_mode: object = "zeros") -> int:
    """Validate ``row_filter`` arguments: x (B, C, H, W), filters (B, K, H, W) with K odd; returns K."""
    name = "row_filter"
    x = check_tensor(name, "x", x, 4)
    B, C, H, W = x.shape
    expected = f"(B, K, H, W) = ({B}, K, {H}, {W}) with K odd"
    if not isinstance(filters, Tensor) or filters.dim() != 4:
        got = shape_str(filters) if isinstance(filters, Tensor) else type(filters).__name__
        raise fail(name, "filters", expected, filters, meaning="one 1xK filter per pixel", shown=got)
    if filters.shape[0] != B or filters.shape[-2:] != (H, W) or filters.shape[1] % 2 == 0:
        raise fail(name, "filters", expected, filters, meaning="one 1xK filter per pixel",
                   shown=f"{shape_str(filters)} for x of shape {shape_str(x)}")
    check_tensor(name, "filters", filters, 4)
    check_same_dtype_device(name, x, filters, "filters")
    check_padding_mode(name, padding_mode)
    K = filters.shape[1]
    check_reflect_fits(name, padding_mode, 0, K // 2, x)
    return K


def _padded(x: Tensor, r: int, padding_mode: str, deterministic: bool) -> Tensor:
    """x (B, C, H, W) -> (B, C, H, W + 2r), padded left and right only."""
    if padding_mode == "zeros":
        return F.pad(x, (r, r))
    return pad_frame(x, (r, r, 0, 0), padding_mode) if deterministic else F.pad(x, (r, r, 0, 0), mode=padding_mode)


def row_filter_reference(x: Tensor, filters: Tensor, *, padding_mode: PaddingMode = "zeros") -> Tensor:
    """Readable reference for :func:`row_filter` (same arguments and result, K× the memory)."""
    K = check_row_filter(x, filters, padding_mode)
    B, C, H, W = x.shape
    patches = F.unfold(_padded(x, K // 2, padding_mode, False), (1, K))  # (B, C*K, H*W), window row-major
    patches = rearrange(patches, "b (c k) (h w) -> b c k h w", c=C, h=H)  # (B, C, K, H, W)
    return einsum(patches, filters, "b c k h w, b k h w -> b c h w")


def row_filter(x: Tensor, filters: Tensor, *, padding_mode: PaddingMode = "zeros") -> Tensor:
    """Apply per-pixel horizontal dynamic filters to ``x``.

    Args:
        x: (B, C, H, W), any floating dtype and device.
        filters: (B, K, H, W), K odd: one 1×K filter per sample and pixel, shared by the channels;
            tap k reads column offset k − K//2. Same dtype and device as x. Used as given (normalise
            them, e.g. softmax, before calling).
        padding_mode: what the window reads beyond the left and right edges: "zeros" (paper,
            default), "replicate" or "reflect" (needs K//2 < W).

    Returns:
        (B, C, H, W) in x's dtype, differentiable in x and filters.

    Raises:
        ValueError: on a shape, dtype or device mismatch (the message names both shapes), an even K,
            an unknown padding_mode, or reflect padding wider than the frame.
    """
    K = check_row_filter(x, filters, padding_mode)
    W = x.shape[-1]
    xp = _padded(x, K // 2, padding_mode, True)  # (B, C, H, W + 2r)
    out = xp[..., 0:W] * filters[:, 0:1]  # (B, C, H, W): tap 0 reads offset -r
    for k in range(1, K):
        out = out + xp[..., k:k + W] * filters[:, k:k + 1]  # filters[:, k:k+1] (B, 1, H, W) broadcasts over C
    return out


__all__ = ["row_filter", "row_filter_reference", "check_row_filter"]
