"""DynamicConv (Chen et al., CVPR 2020) as a filter generator: softmax attention over learned kernels.

Dynamic convolution aggregates K learned kernels (and their biases) with input-dependent attention,
``W̃ = Σ_k π_k W_k``, ``b̃ = Σ_k π_k b_k``, ``π = softmax(FC(ReLU(FC(GAP(x)))) / τ)``, Σπ = 1
(Chen et al., CVPR 2020).
τ starts large (30) so that π is near uniform and every kernel is trained, and is annealed linearly to 1
over the first 10 % of training; the paper reports markedly worse training without this schedule.
`dfn.generators.TemperatureAnnealing` (a callback) sets ``temperature``; training without it warns once.

Adaptation to frame prediction: the K kernels are K×K *next-frame filters*; a kernel's "bias" is the
DFN dynamic-bias channel (the extra filter channel when ``dynamic_bias=True``), mixed with the same π.

- ``mode="conv"`` (the paper; default): π (B, K) from pooled features; one filter per sample, applied by
  dynamic convolution.
- ``mode="local"`` (our extension): the attention MLP is two 1x1 convs, π (B, K, H, W) per pixel; one
  filter per pixel, applied by dynamic local filtering.

Normalisation (``softmax=True``, DFN's): each kernel is softmax-normalised over its K*K taps and then
mixed with π. The filter is still the paper's linear aggregation Σ π_k softmax(W_k), and because Σπ = 1
it is itself normalised: predictions are convex combinations of neighbourhood pixels, in [0, 1].

Initialisation: random kernels (``identity_init=False``, default), as the paper. Our identity start
(every kernel ≈ the centre filter) is available but off: the one-hot centre filter is an extreme
point of the set of normalised filters, so a mixture can only start at it if *every* kernel does; the
kernels then look alike, ∂L/∂π_k = <∂L/∂W̃, W_k> is nearly the same for every k and the softmax removes
that common part, so the attention gets ~50× less gradient than from random kernels (measured; tested in
``tests/test_generators.py``) and stays uniform — per-sample and per-pixel DynamicConv then trained to the
same model (docs/highway.md, to three digits). τ = 30 exists to train all kernels from a random start.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from dfn.generators.base import Mode, check_int, check_positive, pooled
from dfn.ops import PaddingMode
from dfn.generators.initialisation import he_uniform_
from dfn.generators.mixture import KernelMixture


class DynamicConv(KernelMixture):
    """Per-sample (conv, paper) or per-pixel (local, ours) softmax(·/τ) attention over ``kernels`` filters.

    forward(features (B, F, H, W)) -> Σ π_k W_k (kernels tap-normalised with ``softmax``):
    (B, K*K[+1], H, W) local / (B, K*K[+1]) conv.
    ``temperature`` is a (persistent) buffer so a checkpoint evaluates with the τ it was trained at.
    """

    temperature: torch.Tensor

    def __init__(
        self,
        kernel_size: int = 9,  # DFN paper, Moving MNIST: 9x9 filters
        mode: Mode = "conv",  # DynamicConv paper: one aggregated kernel per example ("local" is ours)
        kernels: int = 4,  # DynamicConv paper: K = 4 kernels
        reduction: int = 4,  # DynamicConv paper: attention hidden width = C / 4
        temperature: float = 30.0,  # DynamicConv paper: τ starts at 30 (annealed to 1 by the callback)
        dilation: int = 1,
        softmax: bool = True,  # DFN paper: softmax over the K*K taps (here: of each kernel, see module doc)
        dynamic_bias: bool = False,  # DFN paper: on for highway, off for Moving MNIST
        identity_init: bool = False,  # paper: random kernels (see the module doc for why not the identity start)
        padding_mode: PaddingMode = "zeros",  # paper (black background); replicate/reflect for natural video
    ) -> None:
        check_int("DynamicConv", "kernels", kernels)
        check_int("DynamicConv", "reduction", reduction)
        check_positive("DynamicConv", "temperature", temperature)
        super().__init__(kernel_size, mode, kernels, dilation, softmax, dynamic_bias, identity_init,
                         normalise_experts=True, padding_mode=padding_mode)
        self.reduction = reduction
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        # Set by `dfn.generators.schedule.set_temperature` (the TemperatureAnnealing callback): without
        # the schedule τ stays at its start value, which is not the method (warned once in training).
        self.temperature_scheduled = False
        self._warned_unscheduled = False

    @property
    def num_kernels(self) -> int:
        return self.size

    @property
    def kernels(self) -> torch.Tensor:
        """The learned kernels (K, K*K[+1]), before normalisation."""
        return self.bank

    def _build_coefficients(self, features: int) -> None:
        hidden = max(1, features // self.reduction)
        if self.mode == "local":
            self.attention = nn.Sequential(nn.Conv2d(features, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, self.size, 1))
        else:
            self.attention = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, self.size))
        he_uniform_(self.attention)

    def coefficients(self, features: torch.Tensor) -> torch.Tensor:
        """π = softmax(logits / τ) over the kernels: (B, K, H, W) local / (B, K) conv; sums to 1."""
        if self.training and not self.temperature_scheduled and not self._warned_unscheduled:
            self._warned_unscheduled = True
            warnings.warn(
                f"DynamicConv is training with a fixed temperature τ = {float(self.temperature):g}: no "
                f"TemperatureAnnealing callback has set it. The paper anneals τ from 30 to 1 over the first "
                f"10 % of training; add `trainer.callbacks: [{{class_path: dfn.generators.TemperatureAnnealing}}]` "
                f"(see experiments/*/dynamicconv.yaml).", UserWarning, stacklevel=2)
        if self.mode == "local":
            logits = self.attention(features)  # (B, kernels, H, W): per-pixel MLP of 1x1 convs
        else:
            logits = self.attention(pooled(features))  # (B, kernels): GAP -> FC -> ReLU -> FC (paper)
        return torch.softmax(logits / self.temperature, dim=1)

    attention_weights = coefficients

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "kernels": self.size, "reduction": self.reduction,
                "temperature": float(self.temperature)}


__all__ = ["DynamicConv"]
