"""Weight initialisation shared by the predictor and the generators.

- `he_uniform_`: the authors' initialisation (docs/paper.md): Lasagne's ``HeUniform()`` with its default
  gain 1, i.e. U(±√(3 / fan_in)) with fan_in = in_channels·kh·kw for a conv (in_features for a linear
  layer), and zero biases. This is *not* PyTorch's ``kaiming_uniform_`` for leaky ReLU, whose bound is
  √2 larger (gain √(2 / (1 + a²))).
- Identity start (ours): a filter head whose output logits favour the window centre, so that
  after the softmax over the K*K taps the filter is ≈ the one-hot centre filter and an untrained model
  predicts ≈ the last frame instead of a random blur. `identity_logit` is the centre logit that gives
  the centre tap exactly `CENTRE_WEIGHT` when every other logit is 0; the head's weights start
  `IDENTITY_WEIGHT_SCALE` times their He bound, so the features barely perturb that start but every
  tap still gets a gradient (the softmax weight of an off-centre tap is ≈ 1.25e-4, not 0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dfn.checks import check_int

CENTRE_WEIGHT = 0.99  # ours: the identity start keeps 1 % of the mass off-centre, so every tap learns
IDENTITY_WEIGHT_SCALE = 0.01  # ours: the identity-start head's weights, relative to their He bound


def he_bound(fan_in: int) -> float:
    """Lasagne HeUniform(gain=1) bound √(3 / fan_in) (the DFN authors' code; docs/paper.md)."""
    check_int("he_bound", "fan_in", fan_in)
    return math.sqrt(3.0 / fan_in)


def he_uniform_(module: nn.Module, scale: float = 1.0) -> nn.Module:
    """Every Conv2d / Linear in ``module``: weights U(±scale·√(3 / fan_in)), zero biases (the authors' init).

    fan_in = weight[0].numel(): in_channels·kh·kw for a conv, in_features for a linear layer (Lasagne's
    convention). Returns ``module`` (so ``he_uniform_(nn.Conv2d(...))`` can be used inline).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            bound = scale * he_bound(m.weight[0].numel())
            with torch.no_grad():
                m.weight.uniform_(-bound, bound)
                if m.bias is not None:
                    m.bias.zero_()
    return module


def identity_logit(kernel_size: int) -> float:
    """Centre logit L such that softmax([L, 0, …, 0]) over K*K taps puts `CENTRE_WEIGHT` on the centre.

    L = log(CENTRE_WEIGHT / (1 - CENTRE_WEIGHT) · (K*K - 1)); 0 for K = 1 (a single tap is always 1).
    For K = 9: ≈ 8.98.
    """
    others = kernel_size**2 - 1
    return math.log(CENTRE_WEIGHT / (1 - CENTRE_WEIGHT) * others) if others else 0.0


def centre_tap(kernel_size: int) -> int:
    """Index of the window centre in the row-major K*K filter channels (the authors' layout): K*K // 2."""
    return kernel_size**2 // 2


def identity_head_(head: nn.Conv2d | nn.Linear, kernel_size: int,
                   weight_scale: float = IDENTITY_WEIGHT_SCALE) -> nn.Module:
    """Make a filter head start at the centre filter: He weights times ``weight_scale``, bias L on the
    centre tap, else 0.

    ``head`` outputs the K*K tap logits first (then, possibly, a dynamic-bias channel, which starts at 0).
    """
    he_uniform_(head, scale=weight_scale)
    with torch.no_grad():
        head.bias[centre_tap(kernel_size)] = identity_logit(kernel_size)
    return head


__all__ = ["he_uniform_", "he_bound", "identity_logit", "identity_head_", "centre_tap",
           "CENTRE_WEIGHT", "IDENTITY_WEIGHT_SCALE"]
