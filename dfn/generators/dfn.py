"""The paper's filter generator (De Brabandere et al., NIPS 2016): filter values straight from the decoder.

In the Moving MNIST network the decoder ends with ``conv1x1 -> 128`` (owned by the predictor) and then
``conv1x1 -> 81`` with identity activation, followed by a softmax over the 81 values (REFERENCE §1);
this class is that last layer, plus its pooled counterpart for dynamic convolution.
"""

from __future__ import annotations

import torch
from torch import nn

from dfn.generators.base import FilterGenerator, Mode, pooled
from dfn.layers import DynamicConvolution, DynamicLocalFiltering


def he_uniform_(module: nn.Module) -> nn.Module:
    """He-uniform weights and zero biases, as the authors initialise every layer (REFERENCE §1)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=0.01, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class DFN(FilterGenerator):
    """Filters generated directly by a linear layer on the decoder's features.

    - ``mode="local"``: a 1x1 conv F -> K*K (+1 with dynamic bias): filters (B, K*K[+1], H, W), one per
      pixel, applied by dynamic local filtering.
    - ``mode="conv"``: global average pooling then a linear map F -> K*K (+1): filters (B, K*K[+1]), one per
      sample, applied by dynamic convolution (same filter for every channel and position).

    Softmax over the K*K values is on by default (paper); ``dynamic_bias`` adds one generated channel that
    is added to the frame before filtering (the paper's highway setting).
    """

    def __init__(
        self,
        kernel_size: int = 9,  # paper, Moving MNIST: 9x9
        mode: Mode = "local",
        dilation: int = 1,
        softmax: bool = True,  # paper: softmax over the K*K filter values
        dynamic_bias: bool = False,  # paper: on for highway, off for Moving MNIST
    ) -> None:
        super().__init__(kernel_size, mode)
        self.dilation, self.softmax, self.dynamic_bias = dilation, softmax, dynamic_bias

    def _build(self, features: int, channels: int) -> None:
        layer = DynamicLocalFiltering if self.mode == "local" else DynamicConvolution
        self.filtering = layer(self.kernel_size, self.dilation, self.softmax, self.dynamic_bias)
        out = self.filtering.filter_channels
        self.head = he_uniform_(nn.Conv2d(features, out, 1) if self.mode == "local" else nn.Linear(features, out))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, F, H, W) -> filters (B, K*K[+1], H, W) in local mode, (B, K*K[+1]) in conv mode."""
        if self.mode == "local":
            return self.head(features)
        return self.head(pooled(features))


class PassThrough(nn.Module):
    """'Filtering' that ignores the frame and returns what the generator made: the paper's baseline."""

    def forward(self, frame: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return pixels


class PixelBaseline(FilterGenerator):
    """The paper's baseline: the dynamic filtering layer is replaced by a 1x1 conv that predicts pixels.

    Same network as `DFN` up to its K*K (+1) output channels (identity activation), then a 1x1 conv
    K*K(+1) -> C and a sigmoid, so pixels stay in [0, 1]. With K = 9 on Moving MNIST this is the authors'
    637,443-parameter baseline (REFERENCE §1).
    """

    def __init__(self, kernel_size: int = 9, dynamic_bias: bool = False) -> None:
        super().__init__(kernel_size, "local")
        self.dynamic_bias = dynamic_bias

    def _build(self, features: int, channels: int) -> None:
        hidden = self.kernel_size**2 + int(self.dynamic_bias)
        self.head = he_uniform_(nn.Sequential(nn.Conv2d(features, hidden, 1), nn.Conv2d(hidden, channels, 1)))
        self.filtering = PassThrough()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, F, H, W) -> pixels (B, C, H, W) in (0, 1)."""
        return torch.sigmoid(self.head(features))


__all__ = ["DFN", "PixelBaseline", "he_uniform_"]
