"""DMNet (He et al., ICCV 2019) as a filter generator: multi-scale filters by adaptive pooling of features.

DMNet's dynamic convolutional module makes, for each scale k, a per-sample, per-channel (depthwise)
k×k kernel by adaptive average pooling of (1x1-conv-reduced) features to k×k, convolves the features
with it (depthwise grouped conv, ``groups = B·C``), and concatenates the branches for k = 1, 3, 5, 7
(He et al., ICCV 2019). The kernel is a thumbnail of the features themselves, so it carries their spatial
layout at scale k.

Adaptation to frame prediction (what is generated, from what, and how it becomes the next frame):

- For every scale k a 1x1 conv maps the predictor's features to C channels (one per frame channel),
  and adaptive average pooling turns that map into a k×k kernel per sample and channel: (B, C, k, k).
  A linear map of the globally pooled features gives S per-sample branch logits (B, S).
- `MultiScaleFiltering` applies each kernel to the *latest frame* (not to features) as a depthwise
  dynamic convolution (`dfn.ops.dynamic_conv`, groups = C within each sample, no batch loop) and fuses
  the branches with the softmax of the branch logits. DMNet's concat + conv fusion is replaced by these
  convex weights; with DFN's softmax over each kernel's k*k values (``softmax=True``) every predicted
  pixel is a convex combination of input pixels, so predictions stay in [0, 1].

Only ``mode="conv"`` exists: the filters are per sample (the per-pixel counterpart is HDFNet).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from dfn.checks import fail
from dfn.generators.base import FilterGenerator, Mode, pooled
from dfn.generators.initialisation import he_uniform_
from dfn.layers import same_dtype
from dfn.ops import PaddingMode, dynamic_conv


class MultiScaleFiltering(nn.Module):
    """Depthwise per-sample k×k convolution at several k, fused by per-sample branch weights.

    forward(frame (B, C, H, W), (kernels: one (B, C, k, k) per scale, branch_logits (B, S))) -> (B, C, H, W).
    Parameter-free: softmax over each kernel's k*k values (if ``softmax``) and over the S branches.
    """

    def __init__(self, scales: tuple[int, ...], softmax: bool, padding_mode: PaddingMode = "zeros") -> None:
        super().__init__()
        self.scales, self.softmax, self.padding_mode = tuple(scales), softmax, padding_mode

    def forward(self, frame: torch.Tensor, filters: tuple[tuple[torch.Tensor, ...], torch.Tensor]) -> torch.Tensor:
        kernels, branch_logits = filters
        if len(kernels) != len(self.scales):
            raise fail("MultiScaleFiltering", "kernels", f"{len(self.scales)} tensors, one per scale", kernels,
                       shown=f"{len(kernels)}")
        weights = torch.softmax(branch_logits, dim=1)  # (B, S): convex weights over the scales
        branches = []
        for kernel, k in zip(kernels, self.scales):
            if kernel.shape[-2:] != (k, k):
                raise fail("MultiScaleFiltering", f"the scale-{k} kernel", f"(B, C, {k}, {k})", kernel,
                           shown=str(tuple(kernel.shape)))
            if self.softmax:
                kernel = rearrange(torch.softmax(rearrange(kernel, "b c kh kw -> b c (kh kw)"), dim=-1),
                                   "b c (kh kw) -> b c kh kw", kh=k)  # (B, C, k, k), each sums to 1
            weight = rearrange(kernel, "b c kh kw -> b c 1 kh kw")  # (B, O=C, C/groups=1, k, k): depthwise
            branches.append(dynamic_conv(*same_dtype(frame, weight), None, padding="same", groups=frame.shape[1],
                                         padding_mode=self.padding_mode))  # (B, C, H, W)
        stacked = torch.stack(branches, dim=1)  # (B, S, C, H, W)
        return reduce(stacked * rearrange(weights, "b s -> b s 1 1 1"), "b s c h w -> b c h w", "sum")


class DMNet(FilterGenerator):
    """Per-sample, per-channel k×k filters (default k = 1, 3, 5, 7) by adaptive pooling, fused per sample.

    forward(features (B, F, H, W)) -> (kernels: tuple of (B, C, k, k) per scale, branch_logits (B, S)), un-normalised.
    """

    def __init__(
        self,
        mode: Mode = "conv",  # DMNet: per-sample kernels; "local" is rejected (see HDFNet)
        scales: tuple[int, ...] = (1, 3, 5, 7),  # DMNet paper: filter sizes 1, 3, 5, 7
        softmax: bool = True,  # DFN paper: softmax over the filter values (keeps frames in [0, 1])
        padding_mode: PaddingMode = "zeros",  # paper (black background); replicate/reflect for natural video
    ) -> None:
        if mode != "conv":
            raise fail("DMNet", "mode", "'conv'", mode,
                       meaning="its filters are per sample; for per-pixel multi-dilation filters use HDFNet")
        scales = tuple(scales) if isinstance(scales, (list, tuple)) else scales
        if (not isinstance(scales, tuple) or not scales
                or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in scales)):
            raise fail("DMNet", "scales", "a non-empty sequence of positive odd integers", scales)
        if len(set(scales)) != len(scales):
            raise fail("DMNet", "scales", "distinct", scales)
        super().__init__(kernel_size=max(scales), mode=mode, padding_mode=padding_mode)
        self.scales, self.softmax = scales, softmax

    def _build(self, features: int, channels: int) -> None:
        self.filtering = MultiScaleFiltering(self.scales, self.softmax, self.padding_mode)
        # With softmax a 1x1 kernel normalises to exactly 1 (that branch copies the frame), so its kernel
        # is not generated: its parameters could never receive a gradient.
        self.generated = [k for k in self.scales if not (self.softmax and k == 1)]
        # DMNet reduces the features with a 1x1 conv before pooling them into kernels; here one 1x1 conv
        # per generated scale maps them to the C frame channels (all at once: len(generated)*C channels).
        if self.generated:
            self.reduce = he_uniform_(nn.Conv2d(features, len(self.generated) * channels, 1))
        # Branch logits only when there is more than one branch (a softmax over one value is constant).
        self.branch = he_uniform_(nn.Linear(features, len(self.scales))) if len(self.scales) > 1 else None

    def forward(self, features: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """features (B, F, H, W) -> ((B, C, k, k) for each k, branch_logits (B, S))."""
        B, C = features.shape[0], self.channels
        pooled_maps = {}
        if self.generated:
            maps = rearrange(self.reduce(features), "b (s c) h w -> s b c h w",
                             s=len(self.generated))  # (S', B, C, H, W)
            pooled_maps = {k: F.adaptive_avg_pool2d(m, k) for m, k in zip(maps, self.generated)}  # (B, C, k, k) each
        ones = features.new_ones(B, C, 1, 1)  # the softmax-normalised 1x1 kernel: copy the frame
        kernels = tuple(pooled_maps.get(k, ones) for k in self.scales)
        logits = self.branch(pooled(features)) if self.branch is not None else features.new_zeros(B, 1)
        return kernels, logits  # branch logits (B, S)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "scales": list(self.scales), "softmax": self.softmax,
                "fusion": "per-sample softmax branch weights"}


__all__ = ["DMNet", "MultiScaleFiltering"]
