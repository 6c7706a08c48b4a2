"""CondConv (Yang et al., NeurIPS 2019) as a filter generator: a routed mixture of learned expert filters.

CondConv replaces a static kernel W by a per-example mixture ``α₁W₁ + … + α_N W_N`` of N learned
"expert" kernels, with routing weights ``α = sigmoid(FC(GAP(x)))`` — not normalised, so several experts
can be fully on at once (Yang et al., NeurIPS 2019). Because the mixing is linear, the mixture is one kernel and one
convolution, not N.

Adaptation to frame prediction: the experts are K×K *next-frame filters* (K*K values each, plus the
dynamic-bias channel when enabled) and the mixture is what the DFN filtering layer applies:

- ``mode="conv"`` (the paper; default): α (B, N) from globally pooled features; one mixed filter per
  sample, applied by dynamic convolution.
- ``mode="local"`` (our extension): α (B, N, H, W) per pixel from a 1x1 conv; one mixed filter per pixel,
  applied by dynamic local filtering — every pixel's filter lies in the span of the N experts.

Normalisation (``softmax=True``, DFN's): each expert is softmax-normalised over its K*K taps and the
normalised experts are mixed with the raw sigmoid weights, so the filter is still the paper's linear
mixture ``Σ αᵢ softmax(Wᵢ)``. Its taps sum to ``Σ αᵢ`` ∈ (0, N): a prediction is a *scaled* convex
combination of its neighbourhood and may leave [0, 1] (the BCE loss clips, as for the baseline).
Normalising α to sum to 1 would make it convex but would no longer be CondConv's routing, so we don't.
The router's bias starts at logit(1/N) (α ≈ 1/N, Σα ≈ 1; ours, an initialisation). With
``identity_init`` (ours; default on) the router's weights also start small and the experts at
the centre filter, so an untrained model copies the last frame.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dfn.generators.base import Mode, check_int, pooled
from dfn.ops import PaddingMode
from dfn.generators.initialisation import IDENTITY_WEIGHT_SCALE, he_uniform_
from dfn.generators.mixture import KernelMixture


class CondConv(KernelMixture):
    """Per-sample (conv, paper) or per-pixel (local, ours) sigmoid-routed mixture of N learned expert filters.

    forward(features (B, F, H, W)) -> Σ αₙ Wₙ (experts tap-normalised with ``softmax``):
    (B, K*K[+1], H, W) local / (B, K*K[+1]) conv. Parameters: ``bank`` (N, K*K[+1]) and ``router``.
    """

    def __init__(
        self,
        kernel_size: int = 9,  # DFN paper, Moving MNIST: 9x9 filters
        mode: Mode = "conv",  # CondConv paper: one mixed kernel per example ("local" is ours)
        experts: int = 8,  # CondConv paper: 8 experts in its main (EfficientNet) results
        dilation: int = 1,
        softmax: bool = True,  # DFN paper: softmax over the K*K taps (here: of each expert, see module doc)
        dynamic_bias: bool = False,  # DFN paper: on for highway, off for Moving MNIST
        identity_init: bool = True,  # ours: start at copy-last with Σα = 1 (see module doc)
        padding_mode: PaddingMode = "zeros",  # paper (black background); replicate/reflect for natural video
    ) -> None:
        check_int("CondConv", "experts", experts)
        super().__init__(kernel_size, mode, experts, dilation, softmax, dynamic_bias, identity_init,
                         normalise_experts=True, padding_mode=padding_mode)

    @property
    def num_experts(self) -> int:
        return self.size

    @property
    def experts(self) -> torch.Tensor:
        """The learned expert filters (N, K*K[+1]), before normalisation."""
        return self.bank

    def _build_coefficients(self, features: int) -> None:
        n = self.size
        self.router = nn.Conv2d(features, n, 1) if self.mode == "local" else nn.Linear(features, n)
        he_uniform_(self.router, scale=IDENTITY_WEIGHT_SCALE if self.identity_init else 1.0)
        # Ours (an init, not a change of method): bias logit(1/N), so α starts ≈ 1/N and Σα ≈ 1. With a
        # zero bias α ≈ 1/2 and the normalised experts would sum to N/2: every fed-back prediction would
        # be ~N/2 times brighter than its input (measured: MSE to copy-last 1.6 after one step, 544 after 3).
        with torch.no_grad():
            self.router.bias.fill_(-math.log(n - 1) if n > 1 else 20.0)  # sigmoid(20) = 1 in float32

    def coefficients(self, features: torch.Tensor) -> torch.Tensor:
        """CondConv's routing: α = sigmoid(r(features)) in (0, 1), (B, N, H, W) local / (B, N) conv."""
        if self.mode == "local":
            return torch.sigmoid(self.router(features))  # (B, N, H, W): per pixel, 1x1 conv
        return torch.sigmoid(self.router(pooled(features)))  # (B, N): GAP -> FC -> sigmoid (paper)

    routing = coefficients

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "experts": self.size, "routing": "sigmoid"}


__all__ = ["CondConv"]
