"""HDFNet (Pang et al., ECCV 2020) as a filter generator: per-pixel depthwise filters at several dilations.

HDFNet's dynamic dilated pyramid module generates, from a second stream (depth), per-pixel and
per-channel (depthwise) 3×3 kernels for several dilation rates (1, 3, 5), applies each to the RGB
features (unfold × kernel, summed over the window) and fuses the branches by concatenation and a
conv (Pang et al., ECCV 2020).

Adaptation to frame prediction (what is generated, from what, and how it becomes the next frame):

- A 1x1 conv on the predictor's features generates, per pixel, a 3×3 filter for every frame channel
  and every dilation — (B, D, C, 9, H, W) — plus D branch logits per pixel (B, D, H, W).
- `MultiDilationFiltering` applies each branch's filters to the *latest frame* (not to features) with
  `dfn.ops.local_filter` (per-channel filters, no unfold), then fuses the D branch outputs with the
  per-pixel softmax of the branch logits. HDFNet's concat + conv fusion is replaced by these generated
  convex weights, which keeps the filtering layer parameter-free and, together with the softmax over
  each 3×3 window (DFN's normalisation, ``softmax=True``), makes every predicted pixel a convex
  combination of input pixels — predictions stay in [0, 1].

``identity_init`` (ours; default on): the head starts with small weights and a large bias on
every branch's centre tap, so an untrained model predicts ≈ the last frame instead of a random blur.

A dilated 3×3 reaches as far as a (2d+1)×(2d+1) window with 9 taps, so dilations (1, 3, 5) cover an
11×11 neighbourhood sparsely; motion between the taps needs the branches to blend.
Only ``mode="local"`` exists: the method's filters are per pixel (its per-sample counterpart is DMNet).
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange, reduce
from torch import nn

from dfn.checks import fail
from dfn.generators.base import FilterGenerator, Mode
from dfn.generators.initialisation import IDENTITY_WEIGHT_SCALE, centre_tap, he_uniform_, identity_logit
from dfn.layers import same_dtype
from dfn.ops import PaddingMode, local_filter


class MultiDilationFiltering(nn.Module):
    """Per-pixel, per-channel K×K filtering at several dilations, fused by per-pixel branch weights.

    forward(frame (B, C, H, W), (filters (B, D, C, K*K, H, W), branch_logits (B, D, H, W))) -> (B, C, H, W).
    Parameter-free: softmax over each window (if ``softmax``) and over the D branches, both here.
    """

    def __init__(self, kernel_size: int, dilations: tuple[int, ...], softmax: bool,
                 padding_mode: PaddingMode = "zeros") -> None:
        super().__init__()
        self.kernel_size, self.dilations, self.softmax = kernel_size, tuple(dilations), softmax
        self.padding_mode = padding_mode

    def forward(self, frame: torch.Tensor, filters: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        kernels, branch_logits = filters
        D = len(self.dilations)
        if kernels.dim() != 6 or kernels.shape[1] != D or kernels.shape[3] != self.kernel_size**2:
            raise fail("MultiDilationFiltering", "filters", f"(B, {D}, C, {self.kernel_size**2}, H, W)", kernels,
                       shown=str(tuple(kernels.shape)))
        if self.softmax:
            kernels = torch.softmax(kernels, dim=3)  # over the window: each branch is a convex combination
        weights = torch.softmax(branch_logits, dim=1)  # (B, D, H, W): convex weights over the branches
        branches = torch.stack([  # one (B, C, H, W) per dilation -> (B, D, C, H, W)
            local_filter(*same_dtype(frame, kernels[:, i]), dilation=d, padding_mode=self.padding_mode)
            for i, d in enumerate(self.dilations)], dim=1)
        return reduce(branches * rearrange(weights, "b d h w -> b d 1 h w"), "b d c h w -> b c h w", "sum")


class HDFNet(FilterGenerator):
    """Per-pixel, per-channel dilated filters (default 3×3 at dilations 1, 3, 5) with per-pixel fusion.

    forward(features (B, F, H, W)) -> (filters (B, D, C, K*K, H, W), branch_logits (B, D, H, W)), un-normalised.
    """

    def __init__(
        self,
        kernel_size: int = 3,  # HDFNet paper: 3x3 kernels
        mode: Mode = "local",  # HDFNet: per-pixel kernels; "conv" is rejected (see DMNet)
        dilations: tuple[int, ...] = (1, 3, 5),  # HDFNet paper: dilation rates 1, 3, 5
        softmax: bool = True,  # DFN paper: softmax over the filter values (keeps frames in [0, 1])
        identity_init: bool = True,  # ours: start at copy-last (see module docstring)
        padding_mode: PaddingMode = "zeros",  # paper (black background); replicate/reflect for natural video
    ) -> None:
        if identity_init and not softmax:
            raise fail("HDFNet", "identity_init", "false unless softmax=True", identity_init,
                       meaning="the centre logit only wins under softmax")
        if mode != "local":
            raise fail("HDFNet", "mode", "'local'", mode,
                       meaning="its filters are per pixel; for per-sample multi-scale filters use DMNet")
        super().__init__(kernel_size, mode, padding_mode)
        dilations = tuple(dilations) if isinstance(dilations, (list, tuple)) else dilations
        if (not isinstance(dilations, tuple) or not dilations
                or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dilations)):
            raise fail("HDFNet", "dilations", "a non-empty sequence of integers >= 1", dilations)
        self.dilations, self.softmax, self.identity_init = dilations, softmax, identity_init

    def _build(self, features: int, channels: int) -> None:
        self.filtering = MultiDilationFiltering(self.kernel_size, self.dilations, self.softmax, self.padding_mode)
        D, kk = len(self.dilations), self.kernel_size**2
        # One 1x1 conv makes everything: D·C·K*K filter values and D branch logits per pixel (none for a
        # single branch: a softmax over one value is constant). HDFNet's kernel generator is conv3x3 +
        # dense block + conv1x1; the predictor's decoder plays that role.
        self.logits = D if D > 1 else 0
        self.head = he_uniform_(nn.Conv2d(features, D * channels * kk + self.logits, 1),
                                scale=IDENTITY_WEIGHT_SCALE if self.identity_init else 1.0)
        if self.identity_init:
            with torch.no_grad():  # the centre tap of every (branch, channel) filter: channels (d, c, k) row-major
                self.head.bias[centre_tap(self.kernel_size): D * channels * kk: kk] = identity_logit(self.kernel_size)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, F, H, W) -> (filters (B, D, C, K*K, H, W), branch_logits (B, D, H, W))."""
        D = len(self.dilations)
        out = self.head(features)  # (B, D*C*K*K [+ D], H, W)
        values = out[:, : out.shape[1] - self.logits]  # (B, D*C*K*K, H, W)
        if self.logits:
            branch_logits = out[:, -D:]  # (B, D, H, W)
        else:
            branch_logits = out.new_zeros(out.shape[0], 1, *out.shape[2:])  # (B, 1, H, W): the only branch
        filters = rearrange(values, "b (d c k) h w -> b d c k h w", d=D, c=self.channels)  # (B, D, C, K*K, H, W)
        return filters, branch_logits

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "dilations": list(self.dilations), "softmax": self.softmax,
                "identity_init": self.identity_init,
                "fusion": "per-pixel softmax branch weights"}


__all__ = ["HDFNet", "MultiDilationFiltering"]
