"""DynamicConv (Chen et al., CVPR 2020) as a filter generator: softmax attention over learned kernels.

Dynamic convolution aggregates K learned kernels (and their biases) with input-dependent attention,
``W̃ = Σ_k π_k W_k``, ``b̃ = Σ_k π_k b_k``, ``π = softmax(FC(ReLU(FC(GAP(x)))) / τ)``, Σπ = 1 (REFERENCE §3).
The temperature τ starts large (30) so that π is near uniform and every kernel is trained, and is
annealed linearly to 1 over the first epochs; the paper reports that without this schedule training
is markedly worse. `dfn.generators.schedule.TemperatureAnnealing` sets ``temperature`` during training.

Adaptation to frame prediction: the K kernels are K×K *next-frame filters*; a kernel's "bias" is the
DFN dynamic-bias channel (the extra filter channel when ``dynamic_bias=True``), mixed with the same π.

- ``mode="conv"`` (as published): π (B, K) from pooled features; one filter per sample, applied by
  dynamic convolution.
- ``mode="local"``: the attention MLP is two 1x1 convs, π (B, K, H, W) per pixel; one filter per pixel,
  applied by dynamic local filtering.

Filters are mixed before DFN's softmax over the K*K values (applied by the filtering layer), so with
``softmax=True`` predictions are convex combinations of neighbourhood pixels and stay in [0, 1].
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


class DynamicConv(FilterGenerator):
    """Per-sample (conv) or per-pixel (local) softmax(·/τ) attention over ``kernels`` learned filters.

    forward(features (B, F, H, W)) returns the mixed, un-normalised filters:
      - local: (B, K*K[+1], H, W);  conv: (B, K*K[+1]).
    ``temperature`` is a (persistent) buffer so a checkpoint evaluates with the τ it was trained at.
    """

    temperature: torch.Tensor

    def __init__(
        self,
        kernel_size: int = 9,  # DFN paper, Moving MNIST: 9x9 filters
        mode: Mode = "conv",  # DynamicConv paper: one aggregated kernel per example
        kernels: int = 4,  # DynamicConv paper: K = 4 kernels
        reduction: int = 4,  # DynamicConv paper: attention hidden width = C / 4
        temperature: float = 30.0,  # DynamicConv paper: τ starts at 30 (annealed to 1 by the callback)
        dilation: int = 1,
        softmax: bool = True,  # DFN paper: softmax over the K*K filter values
        dynamic_bias: bool = False,  # DFN paper: on for highway, off for Moving MNIST
    ) -> None:
        super().__init__(kernel_size, mode)
        if kernels < 1:
            raise ValueError(f"DynamicConv: kernels must be >= 1, got {kernels}")
        if reduction < 1:
            raise ValueError(f"DynamicConv: reduction must be >= 1, got {reduction}")
        if not temperature > 0:
            raise ValueError(f"DynamicConv: temperature must be > 0, got {temperature}")
        if dilation < 1:
            raise ValueError(f"DynamicConv: dilation must be >= 1, got {dilation}")
        self.num_kernels, self.reduction, self.dilation = kernels, reduction, dilation
        self.softmax, self.dynamic_bias = softmax, dynamic_bias
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def _build(self, features: int, channels: int) -> None:
        layer = DynamicLocalFiltering if self.mode == "local" else DynamicConvolution
        self.filtering = layer(self.kernel_size, self.dilation, self.softmax, self.dynamic_bias)
        values = self.filtering.filter_channels  # K*K (+1: the kernel's bias = DFN's dynamic bias)
        hidden = max(1, features // self.reduction)
        # Unit-variance filter values (uniform on ±√3), the scale of the DFN head's outputs at init.
        # The kernels must differ from each other at init, or the attention gets no gradient signal.
        bound = math.sqrt(3.0)
        self.kernels = nn.Parameter(torch.empty(self.num_kernels, values).uniform_(-bound, bound))  # (K, K*K[+1])
        if self.mode == "local":
            self.attention = nn.Sequential(nn.Conv2d(features, hidden, 1), nn.ReLU(),
                                           nn.Conv2d(hidden, self.num_kernels, 1))
        else:
            self.attention = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, self.num_kernels))
        he_uniform_(self.attention)

    def attention_weights(self, features: torch.Tensor) -> torch.Tensor:
        """π = softmax(logits / τ) over the kernels: (B, K, H, W) local / (B, K) conv; sums to 1."""
        if self.mode == "local":
            logits = self.attention(features)  # (B, kernels, H, W): per-pixel MLP of 1x1 convs
        else:
            logits = self.attention(pooled(features))  # (B, kernels): GAP -> FC -> ReLU -> FC (paper)
        return torch.softmax(logits / self.temperature, dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, F, H, W) -> Σ_k π_k W_k: (B, K*K[+1], H, W) local / (B, K*K[+1]) conv."""
        pi = self.attention_weights(features)
        if self.mode == "local":
            return einsum(pi, self.kernels, "b n h w, n k -> b k h w")  # (B, K*K[+1], H, W)
        return einsum(pi, self.kernels, "b n, n k -> b k")  # (B, K*K[+1])

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "kernels": self.num_kernels, "reduction": self.reduction,
                "temperature": float(self.temperature), "dilation": self.dilation,
                "softmax": self.softmax, "dynamic_bias": self.dynamic_bias}


__all__ = ["DynamicConv"]
