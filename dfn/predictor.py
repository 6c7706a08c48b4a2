"""The video predictor: a recurrent filter-generating network unrolled over frames (De Brabandere et al. 2016; docs/paper.md).

One step reads the latest ``buffer_len`` frames, updates a convolutional hidden state and decodes
features; the generator turns the features into filters, and its filtering layer applies them to the
latest frame to predict the next one. Weights are shared over time.

Rollout for ``frames_in = 10``, ``frames_out = 10`` (the authors' Moving MNIST protocol): 19 steps.
Steps reading frames 1..9 only warm the hidden state; the step reading frame 10 predicts frame 11;
every later step reads its own previous prediction.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dfn.checks import check_choice, check_int, fail
from dfn.generators.base import FilterGenerator
from dfn.generators.initialisation import he_uniform_


def activation_format(device: torch.device) -> torch.memory_format:
    """The memory layout the rollout keeps its activations in: NHWC on CPU, NCHW elsewhere.

    On CPU, oneDNN's convolutions run 1.5-4x faster forward + backward on NHWC tensors than on NCHW
    ones, which it reorders on every call, and a 1x1 conv in NHWC hands the filtering layer filters
    with each pixel's K*K values contiguous (docs/speed.md). The GPU figures were measured NCHW
    (docs/speed.md); `dfn.speed.ChannelsLast` switches a run to NHWC weights. Values do not depend
    on the layout beyond float rounding.
    """
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)  # 'same' padding, as the authors


Layout = Literal["moving_mnist", "highway"]


class VideoPredictor(nn.Module):
    """Recurrent filter-generating network + pluggable filter generator.

    The authors wrote one network per experiment; ``layout`` picks which, with widths as multiples of
    ``encoder_width`` (e) and ``decoder_width`` (d). Leaky ReLU (slope 0.01) after every conv, h_0 = 0,
    no LSTM: the recurrence is two conv3x3 on the previous hidden state, added to the mid layer.

    - ``moving_mnist`` (default): encoder conv3x3 e, e (stride 2), 2e, 2e; mid ``hidden``; decoder
      conv3x3 d, d, nearest upsample x2, d, d, conv1x1 ``features``. With the defaults and
      `DFN(kernel_size=9)`: the authors' 637,361 parameters.
    - ``highway``: encoder e, e (stride 2), 2e; mid ``hidden``; decoder d, upsample x2, d/2, d, conv1x1
      ``features``. With e = 32, d = 64, hidden 64, buffer 2, `DFN(11, dynamic_bias=True)` and
      ``untied_input_bias`` (the authors' first conv has one bias per channel *and pixel*, 131,072 of
      them at 64x64): the authors' 368,122 parameters.

    ``refinement`` (optional in the authors' code, off by default as in their experiments): after the
    filtering layer, concat(filtered frame, the step's ``buffer_len`` input frames) -> conv3x3 32, 64, 32,
    C (leaky ReLU on each, the last one too) is added to the filtered frame as a residual. +37,857
    parameters with one grayscale input frame, +38,145 with two. Predictions then leave the convex hull
    of the input pixels (no longer guaranteed in [0, 1]).

    Fully convolutional: frames of any size H, W >= 1 work, except with ``untied_input_bias`` (one bias
    per pixel of ``image_size`` x ``image_size`` frames).
    """

    def __init__(
        self,
        generator: FilterGenerator,
        *,
        channels: int = 1,
        buffer_len: int = 1,  # paper: 1 for Moving MNIST, 2 for highway
        encoder_width: int = 32,  # paper: 32 (then 2x after the stride-2 conv)
        hidden: int = 128,  # paper: 128 for Moving MNIST, 64 for highway
        decoder_width: int = 64,  # paper: 64
        features: int = 128,  # paper: the conv1x1 -> 128 before the filter layer
        layout: Layout = "moving_mnist",
        untied_input_bias: bool = False,  # paper: on in the highway network only
        image_size: int | None = None,  # frame side; needed by the untied input bias only
        refinement: bool = False,  # authors' code: refinement_network=False in their experiments
    ) -> None:
        super().__init__()
        for name, value in dict(channels=channels, buffer_len=buffer_len, encoder_width=encoder_width,
                                hidden=hidden, decoder_width=decoder_width, features=features).items():
            check_int("VideoPredictor", name, value)
        check_choice("VideoPredictor", "layout", layout, ("moving_mnist", "highway"))
        if untied_input_bias:
            check_int("VideoPredictor", "image_size", image_size, meaning="with untied_input_bias: one bias per pixel")
        self.channels, self.buffer_len, self.hidden = channels, buffer_len, hidden
        e, d = encoder_width, decoder_width
        mnist = layout == "moving_mnist"
        encoder = [e, e, 2 * e, 2 * e] if mnist else [e, e, 2 * e]
        low, high = ([d, d], [d, d]) if mnist else ([d], [max(d // 2, 1), d])
        ins = [buffer_len * channels, *encoder[:-1]]
        self.encoder = nn.ModuleList([conv3x3(i, o, stride=2 if k == 1 else 1)
                                      for k, (i, o) in enumerate(zip(ins, encoder))])
        self.mid = conv3x3(encoder[-1], hidden)
        self.recurrence = nn.ModuleList([conv3x3(hidden, hidden), conv3x3(hidden, hidden)])
        self.decoder_low = nn.ModuleList([conv3x3(i, o) for i, o in zip([hidden, *low[:-1]], low)])  # half res
        self.decoder_high = nn.ModuleList([*(conv3x3(i, o) for i, o in zip([low[-1], *high[:-1]], high)),
                                           nn.Conv2d(high[-1], features, 1)])
        he_uniform_(self)
        self.input_bias = None
        if untied_input_bias:  # replaces the first conv's bias: (e, S, S), zero-initialised as all biases
            self.encoder[0].bias = None
            self.input_bias = nn.Parameter(torch.zeros(e, image_size, image_size))
        self.refinement = None
        if refinement:  # authors' refinement network: (1 + buffer_len)·C -> 32 -> 64 -> 32 -> C, conv3x3
            widths = [(1 + buffer_len) * channels, 32, 64, 32, channels]
            self.refinement = he_uniform_(nn.ModuleList([conv3x3(i, o) for i, o in zip(widths[:-1], widths[1:])]))
        self.generator = generator
        generator.build(features, channels)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        """Leaky ReLU, slope 0.01 (paper), in place: x is always a fresh layer output here, which no
        backward reads (a conv's backward reads its input), so no new tensor and no extra pass."""
        return F.leaky_relu(x, 0.01, inplace=True)

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """Encoder and mid layer, the part of a step that reads frames only (not the hidden state).

        inputs (N, buffer_len*C, H, W), newest frame last; N is any batch (the rollout passes B·T
        ground-truth windows at once). Returns (N, hidden, H/2, W/2).
        """
        x = self.encoder[0](inputs)
        if self.input_bias is not None:  # the authors' highway network: one bias per channel and pixel
            if x.shape[-2:] != self.input_bias.shape[-2:]:
                h, w = self.input_bias.shape[-2:]
                raise fail("VideoPredictor", "frames", f"{h}x{w} with the untied input bias", inputs,
                           meaning=f"the authors' highway network: one bias per pixel for {h}x{w} frames; predict "
                                   f"at {h}x{w} (data image_size {h}), or train with untied_input_bias: false for "
                                   f"a fully convolutional model", shown=f"{tuple(x.shape[-2:])} frames")
            x = x + self.input_bias
        x = self.act(x)
        for conv in self.encoder[1:]:
            x = self.act(conv(x))
        return self.act(self.mid(x))

    def recur(self, hidden: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """The recurrence: two conv3x3 on the previous hidden state (B, hidden, H/2, W/2).

        ``hidden=None`` is h_0 = 0, where the first conv returns its bias at every pixel exactly (a sum
        of zero products plus the bias), so it is not run; ``like`` (the mid layer's output) gives the
        shape. Returns (B, hidden, H/2, W/2), to be added to the mid layer's output.
        """
        first, second = self.recurrence
        if hidden is None:
            # conv of zeros = its bias at every pixel; written into `like`'s layout (NHWC on CPU)
            r = torch.empty_like(like).copy_(F.leaky_relu(first.bias, 0.01).view(1, -1, 1, 1))
        else:
            r = self.act(first(hidden))
        return self.act(second(r))

    def step(self, inputs: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
        """One recurrent update: encoder, mid layer and recurrence.

        inputs (B, buffer_len*C, H, W), newest frame last; hidden (B, hidden, H/2, W/2) or None (h_0 = 0).
        Returns the new hidden state h = mid + recurrence(h_prev), (B, hidden, H/2, W/2).
        """
        h = self.encode(inputs)
        return h + self.recur(hidden, h)

    def decode(self, hidden: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Decoder: hidden (B, hidden, H/2, W/2) -> features (B, features, H, W) for the generator."""
        x = hidden
        for conv in self.decoder_low:
            x = self.act(conv(x))
        x = F.interpolate(x, size=size, mode="nearest")  # nearest upsample x2 (exact size for odd H, W)
        for conv in self.decoder_high:
            x = self.act(conv(x))
        return x

    def refine(self, filtered: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The authors' refinement network: filtered (B, C, H, W) + residual(concat(filtered, inputs)).

        inputs (B, buffer_len*C, H, W): the frames this step read. Returns (B, C, H, W), unbounded.
        """
        x = torch.cat([filtered, inputs], dim=1)  # (B, (1 + buffer_len)*C, H, W)
        x = x.to(memory_format=activation_format(x.device))  # cat of mixed layouts comes out NCHW
        for conv in self.refinement:
            x = self.act(conv(x))  # leaky ReLU on every layer, the last one too (authors' code)
        return filtered + x

    def predict_frame(self, hidden: torch.Tensor, frame: torch.Tensor, inputs: torch.Tensor):
        """Decoder, generator and filtering layer (and refinement) of one prediction step.

        hidden (B, hidden, H/2, W/2); frame (B, C, H, W), the newest frame the step read, which the
        filters are applied to; inputs (B, buffer_len*C, H, W), the step's window (for refinement).
        Returns the prediction (B, C, H, W) and the filters that made it (as the generator returns them).
        """
        filters = self.generator(self.decode(hidden, frame.shape[-2:]))
        prediction = self.generator.filtering(frame, filters)  # filter the frame this step read
        if self.refinement is not None:
            prediction = self.refine(prediction, inputs)
        return prediction, filters

    def _check_rollout(self, frames: torch.Tensor, frames_out: int, truth: torch.Tensor | None,
                       feed_truth: torch.Tensor | None) -> None:
        owner = "VideoPredictor"
        if frames.dim() != 5 or frames.shape[2] != self.channels:
            raise fail(owner, "frames", f"(B, T, C={self.channels}, H, W)", frames, shown=str(tuple(frames.shape)))
        if frames.shape[1] < self.buffer_len:
            raise fail(owner, "the number of input frames T", f">= buffer_len={self.buffer_len}", frames.shape[1])
        if (truth is None) != (feed_truth is None):
            missing, given = ("feed_truth", "truth") if feed_truth is None else ("truth", "feed_truth")
            raise fail(owner, missing, f"given with {given}", None, meaning="scheduled sampling needs both")
        if feed_truth is not None and (truth.shape[:2] != (frames.shape[0], frames_out)
                                       or feed_truth.shape != (frames.shape[0], frames_out)):
            raise fail(owner, "truth and feed_truth", f"(B, frames_out={frames_out}, C, H, W) and (B, frames_out)",
                       truth, shown=f"{tuple(truth.shape)} and {tuple(feed_truth.shape)}")

    def forward(self, frames: torch.Tensor, frames_out: int, keep_filters: bool = False, *,
                truth: torch.Tensor | None = None, feed_truth: torch.Tensor | None = None):
        """Predict `frames_out` frames after the given ones.

        frames: (B, T_in, C, H, W) in [0, 1], T_in >= buffer_len. Returns predictions (B, frames_out, C, H, W)
        (in [0, 1] with softmax-normalised filters and no refinement), and with ``keep_filters`` also the list of the filters
        that made each prediction (as the generator returns them).

        Scheduled sampling (training only, ours; Bengio et al. 2015): with ``truth`` (B, frames_out, C, H, W)
        and ``feed_truth`` (B, frames_out) bool, the frame read after predicting frame k is ``truth[:, k]``
        where ``feed_truth[:, k]`` and the prediction elsewhere. Without them (the paper, and always at
        evaluation) every prediction is fed back.

        The steps that read ground truth only (the warm-up steps and the first prediction step) run
        their encoder and mid layer, which do not depend on the hidden state, as one call over all
        their windows; the recurrence and the later steps run one by one. The predictions are those
        of `rollout_stepwise` (tests/test_predictor.py), up to float rounding.
        """
        self._check_rollout(frames, frames_out, truth, feed_truth)
        B, L = frames.shape[0], self.buffer_len
        layout = activation_format(frames.device)
        # Ground-truth windows of the steps t = L-1 .. T_in-1, step-major: n = T_in - L + 1 of them.
        windows = rearrange(frames.unfold(1, L, 1), "b n c h w l -> (n b) (l c) h w")  # (n*B, L*C, H, W)
        encoded = self.encode(windows.to(memory_format=layout))  # (n*B, hidden, H/2, W/2)
        hidden = None
        for h in encoded.split(B):  # (B, hidden, H/2, W/2) per step, in step order
            hidden = h + self.recur(hidden, h)
        inputs = windows[-B:]  # (B, L*C, H, W): the window of the first prediction step
        sequence = list(frames.unbind(1))  # ground truth now, fed-back frames appended as they come
        predictions, filters_kept = [], []
        for k in range(frames_out):
            if k:  # later steps read the frames fed back
                window = torch.stack(sequence[-L:], dim=1)  # (B, L, C, H, W)
                inputs = rearrange(window, "b l c h w -> b (l c) h w")  # (B, L*C, H, W)
                hidden = self.step(inputs.to(memory_format=layout), hidden)
            prediction, filters = self.predict_frame(hidden, sequence[-1], inputs)
            if feed_truth is None:
                sequence.append(prediction)
            else:  # (B, 1, 1, 1) mask: per sample, read the true frame instead of the prediction
                sequence.append(torch.where(feed_truth[:, k, None, None, None], truth[:, k], prediction))
            predictions.append(prediction)
            if keep_filters:
                filters_kept.append(filters)
        out = torch.stack(predictions, dim=1)  # (B, frames_out, C, H, W)
        return (out, filters_kept) if keep_filters else out

    def rollout_stepwise(self, frames: torch.Tensor, frames_out: int, keep_filters: bool = False, *,
                         truth: torch.Tensor | None = None, feed_truth: torch.Tensor | None = None):
        """The reference rollout `forward` must equal: every step one by one, in the frames' own
        layout, the recurrence run on h_0 = 0 too. Same arguments and results as `forward`; slower."""
        self._check_rollout(frames, frames_out, truth, feed_truth)
        t_in = frames.shape[1]
        sequence = list(frames.unbind(1))  # ground truth now, own predictions appended as they come
        predictions, filters_kept = [], []
        hidden = None
        for t in range(self.buffer_len - 1, t_in + frames_out - 1):
            window = torch.stack(sequence[t - self.buffer_len + 1 : t + 1], dim=1)  # (B, L, C, H, W)
            inputs = rearrange(window, "b l c h w -> b (l c) h w")  # (B, L*C, H, W)
            h = self.encode(inputs)
            r = torch.zeros_like(h) if hidden is None else hidden
            for conv in self.recurrence:
                r = self.act(conv(r))
            hidden = h + r
            if t < t_in - 1:
                continue  # warm-up: only the hidden state matters; decoding would be thrown away
            prediction, filters = self.predict_frame(hidden, sequence[t], inputs)
            k = len(predictions)
            if feed_truth is None:
                sequence.append(prediction)
            else:
                sequence.append(torch.where(feed_truth[:, k, None, None, None], truth[:, k], prediction))
            predictions.append(prediction)
            if keep_filters:
                filters_kept.append(filters)
        out = torch.stack(predictions, dim=1)  # (B, frames_out, C, H, W)
        return (out, filters_kept) if keep_filters else out
