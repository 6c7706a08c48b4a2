"""Video prediction metrics, each named with its convention (REFERENCE §2: conventions differ by paper).

All metrics are computed per predicted frame and kept per prediction horizon (frame 1..N), so that
``compute()`` returns both the average over horizons and the curve. States are sums with
``dist_reduce_fx="sum"``, so under DDP every rank's shard counts exactly once.

- ``bce_per_frame``: binary cross-entropy summed over a frame's pixels (and channels), averaged over
  predicted frames and sequences; predictions clipped to [eps, 1 - eps]. The DFN paper's convention.
- ``bce_per_pixel``: the same, averaged over pixels (the authors' later 0.068914 figure).
- ``mse_per_frame``, ``mae_per_frame``: squared / absolute error summed over a frame's pixels, averaged
  over frames and sequences. OpenSTL's convention.
- ``mse_per_pixel``: squared error averaged over pixels (the DFN highway figure).
- ``ssim``, ``psnr``: per frame with data range 1 (PSNR capped at 100 dB for a perfect frame; SSIM's 11x11 Gaussian window, shrunk
  only for frames smaller than 11 pixels), averaged over frames and sequences.
"""

from __future__ import annotations

import torch
from einops import rearrange, reduce
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure

NAMES = ("bce_per_frame", "bce_per_pixel", "mse_per_frame", "mse_per_pixel", "mae_per_frame", "ssim", "psnr")


def frame_scores(predictions: torch.Tensor, targets: torch.Tensor, eps: float = 1e-7) -> dict[str, torch.Tensor]:
    """Per-sequence, per-frame scores.

    predictions, targets: (B, T, C, H, W) in [0, 1]. Returns name -> (B, T) float64 tensor, one value per
    predicted frame of each sequence, with the conventions of the module docstring.
    """
    if predictions.shape != targets.shape or predictions.dim() != 5:
        raise ValueError(f"frame_scores: predictions and targets must both be (B, T, C, H, W); "
                         f"got {tuple(predictions.shape)} and {tuple(targets.shape)}")
    p = predictions.detach().double().clamp(eps, 1 - eps)  # the DFN evaluation clips to [eps, 1 - eps]
    y = targets.detach().double()
    bce = -(y * p.log() + (1 - y) * (1 - p).log())
    err = predictions.detach().double().clamp(0, 1) - y
    pixels = p[0, 0].numel()
    scores = {
        "bce_per_frame": reduce(bce, "b t c h w -> b t", "sum"),
        "mse_per_frame": reduce(err**2, "b t c h w -> b t", "sum"),
        "mae_per_frame": reduce(err.abs(), "b t c h w -> b t", "sum"),
    }
    scores["bce_per_pixel"] = scores["bce_per_frame"] / pixels
    scores["mse_per_pixel"] = scores["mse_per_frame"] / pixels
    b, t = p.shape[:2]
    flat_p = rearrange(predictions.detach().float().clamp(0, 1), "b t c h w -> (b t) c h w")
    flat_y = rearrange(targets.detach().float(), "b t c h w -> (b t) c h w")
    side = min(p.shape[-2:])
    window = min(11, side - (side + 1) % 2)  # 11x11 Gaussian window, sigma 1.5; smaller on tiny frames
    ssim = structural_similarity_index_measure(flat_p, flat_y, data_range=1.0, reduction="none",
                                              kernel_size=window, sigma=1.5 * window / 11)
    mse = reduce((flat_p - flat_y) ** 2, "n c h w -> n", "mean").clamp(min=1e-10)  # a perfect frame: 100 dB, not inf
    psnr = 10 * torch.log10(1.0 / mse)
    scores["ssim"] = rearrange(ssim.double(), "(b t) -> b t", b=b, t=t)
    scores["psnr"] = rearrange(psnr.double(), "(b t) -> b t", b=b, t=t)
    return scores


class FrameMetrics(Metric):
    """Accumulates `frame_scores` over batches (and ranks) per prediction horizon.

    ``compute()`` returns ``{name: mean over horizons}`` plus ``{f"{name}/horizon": (T,) curve}``.
    """

    full_state_update = False

    def __init__(self, frames_out: int, eps: float = 1e-7) -> None:
        super().__init__()
        self.frames_out, self.eps = frames_out, eps
        for name in NAMES:
            self.add_state(name, default=torch.zeros(frames_out, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sequences", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        """predictions, targets: (B, frames_out, C, H, W) in [0, 1]."""
        if predictions.shape[1] != self.frames_out:
            raise ValueError(f"FrameMetrics: expected {self.frames_out} predicted frames, got {predictions.shape[1]}")
        for name, values in frame_scores(predictions, targets, self.eps).items():
            state = getattr(self, name)
            state += values.sum(0).to(state.device)  # (T,) summed over sequences
        self.sequences += predictions.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in NAMES:
            curve = getattr(self, name) / self.sequences.clamp(min=1)  # (T,) mean over sequences
            out[name] = curve.mean()
            out[f"{name}/horizon"] = curve
        out["sequences"] = self.sequences  # how many sequences were scored, over all ranks
        return out
