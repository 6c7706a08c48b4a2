"""CondInst (Tian et al., ECCV 2020) as a filter generator: generate the weights of a tiny network.

CondInst's controller predicts, per instance, all the parameters of a small mask head — three 1x1
conv layers with 8 channels, ReLU between them — that reads the mask-branch features plus two
relative-coordinate channels: (8+2)·8+8 + 8·8+8 + 8·1+1 = 169 parameters per instance. The per-instance
heads run as one grouped convolution with one group per instance (Tian et al., ECCV 2020).

Adaptation to frame prediction (what is generated, from what, and how it becomes the next frame):

- The controller is a linear map of the globally pooled predictor features; it outputs, *per sample*,
  the flattened weights and biases of a head ``C+2 -> 8 -> 8 -> C`` of 1x1 convs (C = frame channels):
  for C = 1, (1+2)·8+8 + 8·8+8 + 8·1+1 = 113 numbers per sample and step.
- The head reads the latest frame's C channels plus two coordinate channels. CondInst's coordinates are
  relative to the instance's location; a frame has no instance, so they are the absolute pixel
  coordinates normalised to [-1, 1] (relative to the frame centre), which lets the head vary over space.
- `HeadFiltering` splits the parameters into per-layer weights/biases and runs the head on the frame
  with `dfn.ops.dynamic_conv` (1x1 weights, one kernel set per sample = grouped conv, no batch loop),
  ReLU between layers; the output passes a sigmoid (as CondInst's mask logits do) so the predicted
  frame is in (0, 1). This is *not* a convex combination of input pixels: a 1x1 head cannot move
  content, it can only remap intensities per position — a deliberately weak baseline for motion.

Only ``mode="conv"`` exists (a head per sample); a per-pixel head would be a per-pixel MLP of the frame
and is not CondInst.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dfn.checks import check_choice, check_int, fail
from dfn.generators.base import FilterGenerator, Mode, pooled
from dfn.layers import same_dtype
from dfn.ops import dynamic_conv


def coordinate_channels(frame: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates normalised to [-1, 1] for a frame (B, C, H, W): (B, 2, H, W), (x, y) order."""
    B, _, H, W = frame.shape
    ys = torch.linspace(-1.0, 1.0, H, dtype=frame.dtype, device=frame.device)
    xs = torch.linspace(-1.0, 1.0, W, dtype=frame.dtype, device=frame.device)
    y, x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    return torch.stack([x, y]).expand(B, 2, H, W)  # (B, 2, H, W)


class HeadFiltering(nn.Module):
    """Runs a generated per-sample head of 1x1 convs on the frame (parameter-free).

    forward(frame (B, C, H, W), params (B, P)) -> (B, C, H, W). ``params`` is the concatenation of every
    layer's weight (out·in values, row-major (out, in)) and then every layer's bias, as CondInst lays
    out its controller output.
    """

    def __init__(self, widths: list[int], coordinates: bool, output: Literal["sigmoid", "linear"]) -> None:
        super().__init__()
        self.widths, self.coordinates, self.output = list(widths), coordinates, output
        pairs = list(zip(self.widths[:-1], self.widths[1:]))  # (in, out) per layer
        self.weight_sizes = [cin * cout for cin, cout in pairs]
        self.bias_sizes = [cout for _, cout in pairs]

    @property
    def num_params(self) -> int:
        return sum(self.weight_sizes) + sum(self.bias_sizes)

    def forward(self, frame: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        if params.dim() != 2 or params.shape[1] != self.num_params:
            raise fail("HeadFiltering", "params", f"(B, {self.num_params})", params, shown=str(tuple(params.shape)))
        B = frame.shape[0]
        x = torch.cat([frame, coordinate_channels(frame)], dim=1) if self.coordinates else frame  # (B, C[+2], H, W)
        chunks = torch.split(params, self.weight_sizes + self.bias_sizes, dim=1)
        layers = len(self.weight_sizes)
        weights, biases = chunks[:layers], chunks[layers:]
        for i, (w, b) in enumerate(zip(weights, biases)):
            cin, cout = self.widths[i], self.widths[i + 1]
            w = w.reshape(B, cout, cin, 1, 1)  # (B, out, in, 1, 1): one 1x1 conv per sample
            x, w = same_dtype(x, w)  # bf16-mixed: generated weights may be bf16, frames float32
            x = dynamic_conv(x, w, b.to(w.dtype))  # (B, out, H, W), b: (B, out)
            if i < layers - 1:
                x = F.relu(x)
        return torch.sigmoid(x) if self.output == "sigmoid" else x


class CondInst(FilterGenerator):
    """Generates the parameters of a per-sample head of 1x1 convs that maps the frame to the next frame.

    forward(features (B, F, H, W)) -> params (B, P), P = head parameters (113 for C = 1 with defaults).
    """

    def __init__(
        self,
        mode: Mode = "conv",  # CondInst: one head per instance (here: per sample); "local" is rejected
        head_channels: int = 8,  # CondInst paper: 8 channels
        head_layers: int = 3,  # CondInst paper: 3 layers of 1x1 convs
        coordinates: bool = True,  # CondInst paper: two (relative) coordinate input channels
        output: Literal["sigmoid", "linear"] = "sigmoid",  # CondInst: sigmoid on the mask logits
    ) -> None:
        if mode != "conv":
            raise fail("CondInst", "mode", "'conv'", mode,
                       meaning="one generated head per sample, as CondInst makes one per instance; a per-pixel "
                               "head is not CondInst: use DFN, CondConv, DynamicConv or DyNet for mode='local'")
        super().__init__(kernel_size=1, mode=mode)  # the head's convs are 1x1
        check_int("CondInst", "head_channels", head_channels)
        check_int("CondInst", "head_layers", head_layers)
        check_choice("CondInst", "output", output, ("sigmoid", "linear"))
        self.head_channels, self.head_layers = head_channels, head_layers
        self.coordinates, self.output = coordinates, output

    def _build(self, features: int, channels: int) -> None:
        widths = [channels + 2 * int(self.coordinates)] + [self.head_channels] * (self.head_layers - 1) + [channels]
        self.filtering = HeadFiltering(widths, self.coordinates, self.output)
        self.controller = nn.Linear(features, self.filtering.num_params)
        # CondInst initialises its controller with N(0, 0.01) weights and zero bias: the generated head
        # starts small, so early predictions are ~sigmoid(0) everywhere rather than exploding.
        nn.init.normal_(self.controller.weight, std=0.01)
        nn.init.zeros_(self.controller.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, F, H, W) -> the head's parameters (B, P) from globally pooled features."""
        return self.controller(pooled(features))  # (B, P)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "head_widths": self.filtering.widths if self.filtering else None,
                "head_parameters_per_sample": self.filtering.num_params if self.filtering else None,
                "coordinates": self.coordinates, "output": self.output}


__all__ = ["CondInst", "HeadFiltering", "coordinate_channels"]
