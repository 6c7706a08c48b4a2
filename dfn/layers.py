"""The paper's dynamic filtering layers (De Brabandere et al. 2016) as parameter-free modules.

A filter-generating network produces the filters; these layers only apply them to a frame. They
never build filters themselves, so any generator (dfn.generators) can be combined with either.

* ``DynamicLocalFiltering`` — one K×K filter per sample and pixel (the Moving MNIST / highway
  models). Generator output: (B, K*K[+1], H, W), or per channel (B, C, K*K[+1], H, W).
* ``DynamicConvolution`` — one K×K filter per sample, shared by every position and channel.
  Generator output: (B, K*K[+1]).

Filter channel k is the window offset (dy, dx) = (k // K - K//2, k % K - K//2), row-major
(De Brabandere et al. 2016; docs/paper.md). With ``softmax=True`` the K*K values are normalised so each output pixel is a
convex combination of its neighbourhood. With ``dynamic_bias=True`` the last channel is a
generated bias added to the frame *before* filtering. ``padding_mode`` says what the window reads
outside the frame: "zeros" (the paper's, default), "replicate" or "reflect" (ours; docs/operators.md).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dfn.checks import check_int, check_odd, fail
from dfn.ops import dynamic_conv, local_filter
from dfn.ops.softmax_local_filter import softmax_local_filter
from dfn.ops._checks import PaddingMode, check_padding_mode


def same_dtype(frame: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Under autocast (``precision: bf16-mixed``) the generated filters come out in bfloat16 while the
    frames are float32 (docs/gpu.md): filter in the wider of the two types."""
    if frame.dtype == weights.dtype:
        return frame, weights
    dtype = torch.promote_types(frame.dtype, weights.dtype)
    return frame.to(dtype), weights.to(dtype)


class _DynamicFilterLayer(nn.Module):
    """What both dynamic filtering layers share: K, dilation, softmax and dynamic-bias settings."""

    def __init__(self, kernel_size: int = 9, dilation: int = 1, softmax: bool = True,
                 dynamic_bias: bool = False, *, padding_mode: PaddingMode = "zeros") -> None:
        # padding_mode "zeros": the paper's (Moving MNIST's background is black).
        super().__init__()
        name = type(self).__name__
        check_odd(name, "kernel_size", kernel_size)
        check_int(name, "dilation", dilation)
        check_padding_mode(name, padding_mode)
        self.kernel_size, self.dilation = kernel_size, dilation
        self.softmax, self.dynamic_bias = softmax, dynamic_bias
        self.padding_mode = padding_mode

    @property
    def filter_channels(self) -> int:
        """How many values the generator must produce per filter: K*K, plus one for the dynamic bias."""
        return self.kernel_size**2 + int(self.dynamic_bias)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, dilation={self.dilation}, "
                f"softmax={self.softmax}, dynamic_bias={self.dynamic_bias}, "
                f"padding_mode={self.padding_mode!r}")


class DynamicLocalFiltering(_DynamicFilterLayer):
    """Apply generated per-pixel filters to a frame (paper defaults: 9×9, softmax on).

    forward(frame, filters):
        frame: (B, C, H, W).
        filters: (B, K*K[+1], H, W) shared by the channels, or (B, C, K*K[+1], H, W) per channel;
            raw generator output (the softmax is applied here when enabled).
        returns: (B, C, H, W); in [0, 1] for frames in [0, 1] with softmax on and no bias.
    """

    def forward(self, frame: Tensor, filters: Tensor) -> Tensor:
        name, kk = type(self).__name__, self.kernel_size**2
        if not isinstance(filters, Tensor) or filters.dim() not in (4, 5) \
                or filters.shape[-3] != self.filter_channels:
            got = tuple(filters.shape) if isinstance(filters, Tensor) else type(filters).__name__
            raise fail(name, "filters", f"(B, {self.filter_channels}, H, W) or (B, C, {self.filter_channels}, H, W)",
                       filters, meaning=f"kernel_size={self.kernel_size}, dynamic_bias={self.dynamic_bias}",
                       shown=str(got))
        axis = filters.dim() - 3  # the K*K[+1] axis: 1 for shared, 2 for per-channel filters
        weights = filters  # (B, [C,] K*K, H, W); not a narrow(): its backward zero-fills a filter-sized copy
        if self.dynamic_bias:
            # split's backward is one concatenation of the two gradients
            weights, bias = filters.split([kk, 1], dim=axis)  # (B, [C,] K*K, H, W), (B, [C,] 1, H, W)
            # (B, 1, H, W) shared, broadcast over C; per-channel (B, C, H, W).
            frame = frame + (bias if axis == 1 else bias.squeeze(axis))
        if self.softmax:  # softmax and filtering in one operator, in the wider of the two dtypes
            return softmax_local_filter(frame, weights, self.dilation, padding_mode=self.padding_mode)
        return local_filter(*same_dtype(frame, weights), self.dilation, padding_mode=self.padding_mode)


class DynamicConvolution(_DynamicFilterLayer):
    """Apply one generated K×K filter per sample to every position and channel of a frame.

    forward(frame, filters):
        frame: (B, C, H, W).
        filters: (B, K*K[+1]) raw generator output (softmax applied here when enabled).
        returns: (B, C, H, W), 'same' padding (``padding_mode``), the filter applied depthwise to
            each channel.
    """

    def forward(self, frame: Tensor, filters: Tensor) -> Tensor:
        name, K = type(self).__name__, self.kernel_size
        if not isinstance(frame, Tensor) or frame.dim() != 4:
            got = tuple(frame.shape) if isinstance(frame, Tensor) else type(frame).__name__
            raise fail(name, "frame", "(B, C, H, W)", frame, shown=str(got))
        B, C = frame.shape[:2]
        if not isinstance(filters, Tensor) or tuple(filters.shape) != (B, self.filter_channels):
            got = tuple(filters.shape) if isinstance(filters, Tensor) else type(filters).__name__
            raise fail(name, "filters", f"(B, K*K[+1]) = ({B}, {self.filter_channels})", filters,
                       meaning=f"for frame {tuple(frame.shape)}", shown=str(got))
        weights = filters[:, :K * K]  # (B, K*K)
        if self.softmax:
            weights = torch.softmax(weights, dim=1)
        if self.dynamic_bias:
            frame = frame + filters[:, K * K].view(B, 1, 1, 1)  # (B,) bias, before filtering
        # The same K×K filter for every channel: depthwise conv, groups=C, weight (B, C, 1, K, K).
        weight = weights.reshape(B, 1, 1, K, K).expand(B, C, 1, K, K)
        frame, weight = same_dtype(frame, weight)
        return dynamic_conv(frame, weight, padding="same", dilation=self.dilation, groups=C,
                            padding_mode=self.padding_mode)
