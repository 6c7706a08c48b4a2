"""CondConv (Yang et al., NeurIPS 2019) as a filter generator: a routed mixture of learned expert filters.

CondConv replaces a static kernel W by a per-example mixture ``(α₁W₁ + … + α_N W_N)`` of N learned
"expert" kernels, with routing weights ``α = sigmoid(FC(GAP(x)))`` — not normalised, so several experts
can be fully on at once (REFERENCE §3). Because the mixing is linear, the mixture is one kernel and one
convolution, not N.

Adaptation to frame prediction: the experts are K×K *next-frame filters* (K*K values each, plus the
dynamic-bias channel when enabled) and the mixture is what the DFN filtering layer applies to the
latest frame:

- ``mode="conv"`` (CondConv as published): α (B, N) from globally pooled features; one mixed filter
  per sample, applied by dynamic convolution (`dfn.layers.DynamicConvolution`).
- ``mode="local"``: α (B, N, H, W) per pixel from a 1x1 conv; one mixed filter per pixel, applied by
  dynamic local filtering (`dfn.layers.DynamicLocalFiltering`). This is a rank-N, sigmoid-gated
  version of the DFN head: every pixel's filter lies in the span of the N experts.

The experts are mixed *before* DFN's softmax over the K*K values (the filtering layer applies it), so
with ``softmax=True`` every prediction is a convex combination of its neighbourhood and stays in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import einsum
from torch import nn

from dfn.generators.base import FilterGenerator, Mode, pooled
from dfn.generators.dfn import he_uniform_
from dfn.layers import DynamicConvolution, DynamicLocalFiltering


class CondConv(FilterGenerator):
    """Per-sample (conv) or per-pixel (local) sigmoid-routed mixture of N learned expert filters.

    forward(features (B, F, H, W)) returns the mixed, un-normalised filters:
      - local: (B, K*K[+1], H, W);  conv: (B, K*K[+1]).
    Learned parameters: ``experts`` (N, K*K[+1]) and the router (F -> N, linear or 1x1 conv).
    """

    def __init__(
        self,
        kernel_size: int = 9,  # DFN paper, Moving MNIST: 9x9 filters
        mode: Mode = "conv",  # CondConv paper: one mixed kernel per example
        experts: int = 8,  # CondConv paper: 8 experts in its main (EfficientNet) results
        dilation: int = 1,
        softmax: bool = True,  # DFN paper: softmax over the K*K filter values
        dynamic_bias: bool = False,  # DFN paper: on for highway, off for Moving MNIST
    ) -> None:
        super().__init__(kernel_size, mode)
        if experts < 1:
            raise ValueError(f"CondConv: experts must be >= 1, got {experts}")
        if dilation < 1:
            raise ValueError(f"CondConv: dilation must be >= 1, got {dilation}")
        self.num_experts, self.dilation = experts, dilation
        self.softmax, self.dynamic_bias = softmax, dynamic_bias

    def _build(self, features: int, channels: int) -> None:
        layer = DynamicLocalFiltering if self.mode == "local" else DynamicConvolution
        self.filtering = layer(self.kernel_size, self.dilation, self.softmax, self.dynamic_bias)
        values = self.filtering.filter_channels  # K*K (+1 with dynamic bias)
        n = self.num_experts
        # Each expert initialised like a He-uniform layer N -> K*K, so that at init (α ≈ 1/2) the
        # mixed filter has the same scale as the DFN head's output.
        bound = math.sqrt(6.0 / ((1 + 0.01**2) * n))
        self.experts = nn.Parameter(torch.empty(n, values).uniform_(-bound, bound))  # (N, K*K[+1])
        self.router = he_uniform_(nn.Conv2d(features, n, 1) if self.mode == "local" else nn.Linear(features, n))

    def routing(self, features: torch.Tensor) -> torch.Tensor:
        """CondConv's routing function: features (B, F, H, W) -> α in (0, 1), (B, N, H, W) local / (B, N) conv."""
        if self.mode == "local":
            return torch.sigmoid(self.router(features))  # (B, N, H, W): per pixel, 1x1 conv
        return torch.sigmoid(self.router(pooled(features)))  # (B, N): GAP -> FC -> sigmoid (paper)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, F, H, W) -> Σ_n α_n W_n: (B, K*K[+1], H, W) local / (B, K*K[+1]) conv."""
        alpha = self.routing(features)
        if self.mode == "local":
            return einsum(alpha, self.experts, "b n h w, n k -> b k h w")  # (B, K*K[+1], H, W)
        return einsum(alpha, self.experts, "b n, n k -> b k")  # (B, K*K[+1])

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "experts": self.num_experts, "routing": "sigmoid",
                "dilation": self.dilation, "softmax": self.softmax, "dynamic_bias": self.dynamic_bias}


__all__ = ["CondConv"]
