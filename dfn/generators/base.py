"""The seam between the filter-generating network and the dynamic filtering layer.

The predictor (`dfn.predictor.VideoPredictor`) owns the encoder, the recurrence and the rollout; it hands
the decoder's features to a `FilterGenerator`, which turns them into filters; the generator's
`filtering` layer (parameter-free where the method allows, built from `dfn.layers` / `dfn.ops`) applies
them to the latest frame. A generator never applies its filters inside `forward`, and the operators
never build filters.

Plug-in through configs, not registries: a generator is any subclass, picked in YAML with
``generator: {class_path: dfn.generators.CondConv, init_args: {...}}``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from dfn.checks import check_choice, check_int, check_odd, check_positive, fail  # the generators' checks, re-exported
from dfn.layers import DynamicConvolution, DynamicLocalFiltering
from dfn.ops import PADDING_MODES, PaddingMode

__all__ = ["FilterGenerator", "Mode", "check_choice", "check_int", "check_odd", "check_positive", "fail", "pooled"]

Mode = Literal["local", "conv"]


class FilterGenerator(nn.Module):
    """Base class of every filter generator.

    Lifecycle: a generator is constructed (from YAML) with its own hyperparameters only; the predictor
    then calls ``build(features, channels)`` exactly once, which creates the parameters and
    ``self.filtering``, the module that applies what ``forward`` returns.

    Contract:
      - ``forward(features)``: features (B, F, H, W) float, any range -> ``filters``, whatever
        ``self.filtering`` takes (a tensor or a tuple of tensors).
      - ``self.filtering(frame, filters)``: frame (B, C, H, W) -> predicted next frame (B, C, H, W).
        With softmax-normalised filters and a frame in [0, 1] the prediction stays in [0, 1].

    ``mode`` says how many filters are made: ``"local"`` one per sample and pixel (dynamic local
    filtering, the paper's Moving MNIST and highway setting), ``"conv"`` one per sample shared by every
    position (dynamic convolution, from globally pooled features).
    """

    mode: Mode

    def __init__(self, kernel_size: int = 9, mode: Mode = "local", padding_mode: PaddingMode = "zeros") -> None:
        super().__init__()
        name = type(self).__name__
        check_odd(name, "kernel_size", kernel_size)
        check_choice(name, "mode", mode, ("local", "conv"))
        check_choice(name, "padding_mode", padding_mode, PADDING_MODES)
        self.kernel_size = kernel_size
        self.mode = mode
        # What the filters read outside the frame: zeros is the paper's (a black Moving MNIST
        # background); natural video wants replicate or reflect, or every border darkens.
        self.padding_mode = padding_mode
        self.filtering: nn.Module | None = None
        self.features: int | None = None
        self.channels: int | None = None

    def build(self, features: int, channels: int) -> None:
        """Create the parameters for `features` input channels and frames of `channels` channels."""
        if self.filtering is not None:
            raise RuntimeError(f"{type(self).__name__}.build() was called twice")
        self.features, self.channels = features, channels
        self._build(features, channels)
        if self.filtering is None:
            raise RuntimeError(f"{type(self).__name__}._build() must set self.filtering")

    def _build(self, features: int, channels: int) -> None:
        raise NotImplementedError

    def filter_layer(self, dilation: int, softmax: bool, dynamic_bias: bool) -> nn.Module:
        """The DFN filtering layer for ``self.mode``: dynamic local filtering (local) or convolution (conv)."""
        layer = DynamicLocalFiltering if self.mode == "local" else DynamicConvolution
        return layer(self.kernel_size, dilation, softmax, dynamic_bias, padding_mode=self.padding_mode)

    def forward(self, features: torch.Tensor) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """Facts worth logging with the run (wandb config): the generator's name, mode and size."""
        return {
            "generator": type(self).__name__,
            "mode": self.mode,
            "kernel_size": self.kernel_size,
            "padding_mode": self.padding_mode,
            "generator_parameters": sum(p.numel() for p in self.parameters() if p.requires_grad),
        }


def pooled(features: torch.Tensor) -> torch.Tensor:
    """Global average pooling (B, F, H, W) -> (B, F): what a per-sample ("conv") generator reads."""
    return features.mean(dim=(2, 3))
