"""The paper's filter generator (De Brabandere et al., NIPS 2016): filter values straight from the decoder.

In the Moving MNIST network the decoder ends with ``conv1x1 -> 128`` (owned by the predictor) and then
``conv1x1 -> 81`` with identity activation, followed by a softmax over the 81 values (De Brabandere et al. 2016; docs/paper.md);
this class is that last layer, plus its pooled counterpart for dynamic convolution.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from dfn.generators.base import FilterGenerator, Mode, check_choice, check_int, check_positive, fail, pooled
from dfn.ops import PaddingMode
from dfn.generators.initialisation import IDENTITY_WEIGHT_SCALE, he_uniform_, identity_head_


class DFN(FilterGenerator):
    """Filters generated directly by a linear layer on the decoder's features.

    - ``mode="local"``: a 1x1 conv F -> K*K (+1 with dynamic bias): filters (B, K*K[+1], H, W), one per
      pixel, applied by dynamic local filtering.
    - ``mode="conv"``: global average pooling then a linear map F -> K*K (+1): filters (B, K*K[+1]), one per
      sample, applied by dynamic convolution (same filter for every channel and position).

    Softmax over the K*K values is on by default (paper); ``dynamic_bias`` adds one generated channel that
    is added to the frame before filtering (the paper's highway setting).

    ``identity_init`` (ours; off by default = the authors' He init): the head starts with small
    weights and a large centre-tap bias, so an untrained model predicts ≈ the last frame (99 % centre
    weight) instead of a random blur. It helps on natural video (highway configs turn it on), where the
    last frame is already a good prediction; the Moving MNIST paper config keeps the authors' init.
    ``identity_weight_scale`` sets the head's starting weights as a fraction of their He bound (default
    1 %). With 1 % the gradient reaching the trunk at the start is ~1e-8 per weight on real footage, the
    size of Adam's eps, so the encoder and decoder barely move for the first hundreds of steps; 1.0
    (the head's usual He init, plus the centre bias) gives ~1e-5 and still starts at copy-last
    (docs/real_video.md, "Measured on the sample clips").
    """

    def __init__(
        self,
        kernel_size: int = 9,  # paper, Moving MNIST: 9x9
        mode: Mode = "local",
        dilation: int = 1,
        softmax: bool = True,  # paper: softmax over the K*K filter values
        dynamic_bias: bool = False,  # paper: on for highway, off for Moving MNIST
        identity_init: bool = False,  # paper: He init; True is ours (start at copy-last)
        identity_weight_scale: float = IDENTITY_WEIGHT_SCALE,  # ours: head weights / He bound at the identity start
        padding_mode: PaddingMode = "zeros",  # paper (black background); replicate/reflect for natural video
    ) -> None:
        super().__init__(kernel_size, mode, padding_mode)
        check_int("DFN", "dilation", dilation)
        if identity_init and not softmax:
            raise fail("DFN", "identity_init", "false unless softmax=True", identity_init,
                       meaning="the centre logit only wins under softmax")
        self.dilation, self.softmax, self.dynamic_bias = dilation, softmax, dynamic_bias
        check_positive("DFN", "identity_weight_scale", identity_weight_scale, maximum=1,
                       meaning="the head's starting weights as a fraction of their He bound")
        self.identity_init, self.identity_weight_scale = identity_init, float(identity_weight_scale)

    def _build(self, features: int, channels: int) -> None:
        self.filtering = self.filter_layer(self.dilation, self.softmax, self.dynamic_bias)
        out = self.filtering.filter_channels
        self.head = nn.Conv2d(features, out, 1) if self.mode == "local" else nn.Linear(features, out)
        if self.identity_init:
            identity_head_(self.head, self.kernel_size, self.identity_weight_scale)
        else:
            he_uniform_(self.head)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "dilation": self.dilation, "softmax": self.softmax,
                "dynamic_bias": self.dynamic_bias, "identity_init": self.identity_init,
                "identity_weight_scale": self.identity_weight_scale}

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
    K*K(+1) -> C. With K = 9 on Moving MNIST this is the authors' 637,443-parameter baseline (docs/paper.md).

    ``output``: ``"linear"`` (the authors': identity activation; predictions are unbounded, clipped only
    where the BCE loss/metric clip them, and fed back raw) or ``"sigmoid"`` (ours: squashes pixels into
    (0, 1), so feedback and MSE see valid frames).
    """

    def __init__(
        self,
        kernel_size: int = 9,  # paper: 81 intermediate channels, as the DFN's filter channels
        dynamic_bias: bool = False,  # paper (highway): one more intermediate channel
        output: Literal["linear", "sigmoid"] = "linear",  # paper: linear; "sigmoid" is ours
    ) -> None:
        super().__init__(kernel_size, "local")
        check_choice("PixelBaseline", "output", output, ("linear", "sigmoid"))
        self.dynamic_bias, self.output = dynamic_bias, output

    def _build(self, features: int, channels: int) -> None:
        hidden = self.kernel_size**2 + int(self.dynamic_bias)
        self.head = he_uniform_(nn.Sequential(nn.Conv2d(features, hidden, 1), nn.Conv2d(hidden, channels, 1)))
        self.filtering = PassThrough()

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "dynamic_bias": self.dynamic_bias, "output": self.output}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, F, H, W) -> pixels (B, C, H, W): unbounded ("linear") or in (0, 1) ("sigmoid")."""
        pixels = self.head(features)  # (B, C, H, W)
        return torch.sigmoid(pixels) if self.output == "sigmoid" else pixels


__all__ = ["DFN", "PixelBaseline", "he_uniform_"]  # he_uniform_ re-exported for old imports
