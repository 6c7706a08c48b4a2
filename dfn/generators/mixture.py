"""Kernel mixtures: one filter = coefficients @ a bank of N kernels (CondConv, DynamicConv, DyNet).

CondConv (Σ αᵢWᵢ, sigmoid routing), DynamicConv (Σ πₖWₖ, softmax(·/τ) attention) and DyNet (Σ cⱼWⱼ,
predicted coefficients over "fixed" input-independent kernels) all make a filter as a *linear*
combination of a bank; they differ only in how the coefficients are predicted and what the bank is
(docs/paper.md, the dynamic-convolution family). This module is that shared piece:

- `mix`: coefficients (B, N) or (B, N, H, W) @ bank (N, V) -> filters (B, V) or (B, V, H, W).
- `normalise_taps`: softmax over each bank kernel's K*K taps (leaving a dynamic-bias column as is), so
  that mixing *normalised* kernels keeps the mixture linear in the experts (see `KernelMixture`).
- `init_bank`: the bank's initial values (random, or our identity start).
- `KernelMixture`: the generator skeleton; subclasses predict the coefficients.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import einsum
from torch import nn

from dfn.generators.base import FilterGenerator, Mode, check_int, fail
from dfn.ops import PaddingMode
from dfn.generators.initialisation import IDENTITY_WEIGHT_SCALE, centre_tap, identity_logit


def mix(coefficients: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Σ_n coefficients[:, n] · bank[n]: one filter per sample (conv) or per sample and pixel (local).

    coefficients: (B, N) or (B, N, H, W), any range; bank: (N, V) (V = K*K, plus 1 with dynamic bias).
    Returns (B, V) or (B, V, H, W). Linear in both arguments.
    """
    if not isinstance(bank, torch.Tensor) or bank.dim() != 2:
        raise fail("mix", "bank", "(N, V)", bank, shown=str(_shape(bank)))
    if not isinstance(coefficients, torch.Tensor) or coefficients.dim() not in (2, 4) \
            or coefficients.shape[1] != bank.shape[0]:
        N = bank.shape[0]
        raise fail("mix", "coefficients", f"(B, N={N}) or (B, N={N}, H, W)", coefficients,
                   meaning=f"for a bank of {N} kernels", shown=str(_shape(coefficients)))
    if coefficients.dim() == 4:
        return einsum(coefficients, bank, "b n h w, n v -> b v h w")  # (B, V, H, W)
    return einsum(coefficients, bank, "b n, n v -> b v")  # (B, V)


def _shape(x: Any) -> Any:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def normalise_taps(bank: torch.Tensor, taps: int) -> torch.Tensor:
    """Softmax over the first ``taps`` (= K*K) values of every kernel; later columns (dynamic bias) unchanged.

    bank (N, V) -> (N, V); each row's first ``taps`` values are >= 0 and sum to 1.
    """
    if bank.dim() != 2 or not 1 <= taps <= bank.shape[1]:
        raise fail("normalise_taps", "bank", f"(N, V >= {taps})", bank, shown=str(_shape(bank)))
    return torch.cat([torch.softmax(bank[:, :taps], dim=1), bank[:, taps:]], dim=1)  # (N, V)


def init_bank(n: int, kernel_size: int, extra: int, identity: bool) -> torch.Tensor:
    """Initial bank (n, K*K + extra).

    - random (ours; the papers initialise classification kernels, not next-frame filters): U(±√3),
      unit variance per value — the scale of a He-initialised head's output at unit-variance features.
      The kernels must differ, or the coefficients get no gradient (every kernel would look the same).
    - ``identity`` (ours): every tap logit small noise U(±0.01·√3), the centre tap `identity_logit`, so
      each kernel's softmax is ≈ the one-hot centre (copy the frame) and the kernels still differ a little.
    Extra (dynamic-bias) columns start at 0 for the identity start, random otherwise.
    """
    taps = kernel_size**2
    scale = math.sqrt(3.0) * (IDENTITY_WEIGHT_SCALE if identity else 1.0)
    bank = torch.empty(n, taps + extra).uniform_(-scale, scale)  # (N, K*K + extra)
    if identity:
        bank[:, centre_tap(kernel_size)] += identity_logit(kernel_size)
        bank[:, taps:] = 0.0
    return bank


class KernelMixture(FilterGenerator):
    """A generator whose filter is ``mix(coefficients(features), bank)``.

    Subclasses set ``self.bank`` (parameter or buffer, (N, K*K[+1])) in ``_build_bank`` and predict the
    coefficients in ``coefficients`` ((B, N, H, W) local / (B, N) conv).

    ``normalise_experts`` decides where DFN's softmax over the K*K taps goes when ``softmax=True``:
      - True (CondConv, DynamicConv): each bank kernel is normalised, *then* mixed: the filter stays the
        papers' linear mixture Σ αᵢ softmax(Wᵢ), and the filtering layer applies it as is.
      - False (DyNet): the mixed filter is normalised by the filtering layer, as DFN normalises its
        generated filter; the fused kernel Σ cⱼWⱼ is linear in the bank, its softmax is not.
    """

    bank: torch.Tensor

    def __init__(self, kernel_size: int, mode: Mode, size: int, dilation: int, softmax: bool,
                 dynamic_bias: bool, identity_init: bool, normalise_experts: bool,
                 padding_mode: PaddingMode = "zeros") -> None:
        super().__init__(kernel_size, mode, padding_mode)
        name = type(self).__name__
        check_int(name, "dilation", dilation)
        self.size, self.dilation, self.softmax, self.dynamic_bias = size, dilation, softmax, dynamic_bias
        self.identity_init, self.normalise_experts = bool(identity_init), bool(normalise_experts)

    @property
    def taps(self) -> int:
        return self.kernel_size**2

    def _build(self, features: int, channels: int) -> None:
        pre_normalised = self.softmax and self.normalise_experts
        self.filtering = self.filter_layer(self.dilation, self.softmax and not pre_normalised, self.dynamic_bias)
        self._build_bank()
        self._build_coefficients(features)

    def _build_bank(self) -> None:
        bank = init_bank(self.size, self.kernel_size, int(self.dynamic_bias), self.identity_init)
        self.bank = nn.Parameter(bank)  # (N, K*K[+1]): learned, input-independent kernels

    def _build_coefficients(self, features: int) -> None:
        raise NotImplementedError

    def coefficients(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, F, H, W) -> mixing coefficients (B, N, H, W) local / (B, N) conv."""
        raise NotImplementedError

    def mixing_bank(self) -> torch.Tensor:
        """The bank as it is mixed: (N, K*K[+1]), taps softmax-normalised when ``normalise_experts``."""
        if self.softmax and self.normalise_experts:
            return normalise_taps(self.bank, self.taps)
        return self.bank

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, F, H, W) -> Σ_n c_n W_n: (B, K*K[+1], H, W) local / (B, K*K[+1]) conv."""
        return mix(self.coefficients(features), self.mixing_bank())

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "bank_size": self.size, "dilation": self.dilation, "softmax": self.softmax,
                "dynamic_bias": self.dynamic_bias, "identity_init": self.identity_init,
                "normalise_experts": self.normalise_experts}


__all__ = ["mix", "normalise_taps", "init_bank", "KernelMixture"]
