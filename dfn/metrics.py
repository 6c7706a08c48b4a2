"""Video prediction metrics, each named with its convention (conventions differ by paper: docs/metrics.md).

All metrics are computed per predicted frame and kept per prediction horizon (frame 1..N), so that
``compute()`` returns both the average over horizons and the curve. States are sums with
``dist_reduce_fx="sum"``, so under DDP every rank's shard counts exactly once.

Which prediction each metric scores (each metric scores what its name says):

- ``bce_per_frame``: binary cross-entropy summed over a frame's pixels (and channels), averaged over
  predicted frames and sequences, on predictions clipped to [eps, 1 - eps] -- the DFN paper's
  convention and exactly the training loss's clip (same eps, clipped in the predictions' precision).
- ``bce_per_pixel``: the same, averaged over pixels (the authors' later 0.068914 figure).
- ``mse_per_frame``, ``mae_per_frame``: squared / absolute error of the RAW prediction (no clamping)
  summed over a frame's pixels, averaged over frames and sequences. OpenSTL's convention (it scores
  MSE/MAE before clipping) and the quantity an MSE loss optimises.
- ``mse_per_pixel``: raw squared error averaged over pixels (the DFN highway figure, 0.003270).
- ``ssim``: predictions clamped to the data range [0, 1]; 11x11 Gaussian window (sigma 1.5, Wang et
  al. 2004, via torchmetrics in float32: within ~1e-4), data range 1, shrunk only for frames smaller
  than 11 pixels.
- ``ssim_openstl``: OpenSTL's SSIM: predictions clamped to [0, 1], then scikit-image's
  ``structural_similarity`` defaults as OpenSTL calls it (7x7 uniform window, sample covariance, K1 .01,
  K2 .03, mean over the window-valid region, channels averaged) with data range **2**: OpenSTL passes
  no ``data_range`` and pins scikit-image <= 0.19.3, which then takes the float dtype's range [-1, 1].
  NaN for frames smaller than 7x7 (scikit-image refuses them).
- ``psnr``: predictions clamped to [0, 1], data range 1, per frame (capped at 100 dB for a perfect
  frame), averaged over frames and sequences.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure

NAMES = ("bce_per_frame", "bce_per_pixel", "mse_per_frame", "mse_per_pixel", "mae_per_frame", "ssim",
         "ssim_openstl", "psnr")
# Which way is better, for every metric above (and for ``loss``, the monitored one): the one place that
# says so; dfn.module, dfn.cli, dfn.wandb_extras and dfn.report read it.
BETTER: dict[str, Literal["min", "max"]] = {**{name: "min" for name in NAMES}, "ssim": "max", "ssim_openstl": "max",
                                            "psnr": "max", "loss": "min"}
# What ``val/loss`` (model selection) and ``test/loss`` are for each training loss: the loss's own
# quantity, summed over a frame's pixels (dfn.module's docstring).
MONITORED = {"bce": "bce_per_frame", "mse": "mse_per_frame"}


def better(name: str) -> Literal["min", "max"]:
    """``"min"`` or ``"max"``: the better direction of a metric, by its last name part (``test/copy_last/ssim``
    -> ``ssim`` -> ``"max"``); a ValueError for a name that is not a metric here."""
    metric = name.rsplit("/", 1)[-1]
    if metric not in BETTER:
        raise ValueError(f"better: {name!r} is not one of the metrics {', '.join(BETTER)}")
    return BETTER[metric]


def monitored_metric(loss: str) -> str:
    """The metric that ``<stage>/loss`` is for training loss `loss` (``bce`` -> ``bce_per_frame``)."""
    if loss not in MONITORED:
        raise ValueError(f"monitored_metric: loss must be one of {', '.join(map(repr, MONITORED))}, got {loss!r}")
    return MONITORED[loss]
OPENSTL_SSIM_RANGE = 2.0  # scikit-image <= 0.19's implicit data range for float images (dtype range [-1, 1])


def ssim_uniform(predictions: torch.Tensor, targets: torch.Tensor, data_range: float = 1.0, window: int = 7,
                 k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """SSIM with scikit-image's ``structural_similarity`` defaults, one value per image, in float64.

    predictions, targets: (N, C, H, W), used as given (clamp them first if they may leave the data
    range). A ``window`` x ``window`` uniform window with the sample-covariance correction
    (N / (N - 1), N = window**2), constants (k1 R)^2 and (k2 R)^2 with R = ``data_range``; the SSIM map
    is averaged over the positions where the window fits (scikit-image crops a (window-1)/2 border)
    and over channels (scikit-image's ``channel_axis`` averages the per-channel means, which have
    equal sizes). Returns (N,) in [-1, 1]; NaN where a frame is smaller than the window.
    """
    if predictions.shape != targets.shape or predictions.dim() != 4:
        raise ValueError(f"ssim_uniform: predictions and targets must both be (N, C, H, W); "
                         f"got {tuple(predictions.shape)} and {tuple(targets.shape)}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"ssim_uniform: window must be a positive odd integer, got {window}")
    x, y = predictions.double(), targets.double()
    if min(x.shape[-2:]) < window:
        return torch.full(x.shape[:1], float("nan"), dtype=torch.float64, device=x.device)
    def mean(v: torch.Tensor) -> torch.Tensor:  # window means where the window fits: (N, C, H-w+1, W-w+1)
        return F.avg_pool2d(v, window, stride=1)
    norm = window**2 / (window**2 - 1)  # sample covariance, scikit-image's default
    mx, my = mean(x), mean(y)
    vx, vy, vxy = norm * (mean(x * x) - mx**2), norm * (mean(y * y) - my**2), norm * (mean(x * y) - mx * my)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = (2 * mx * my + c1) * (2 * vxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return reduce(ssim_map, "n c h w -> n", "mean")


def frame_scores(predictions: torch.Tensor, targets: torch.Tensor, eps: float = 1e-7) -> dict[str, torch.Tensor]:
    """Per-sequence, per-frame scores.

    predictions: (B, T, C, H, W), ideally in [0, 1] (values outside count as they are in MSE/MAE, are
    clipped for BCE and clamped for SSIM/PSNR); targets: (B, T, C, H, W) in [0, 1]. Returns name ->
    (B, T) float64 tensor, one value per predicted frame of each sequence, with the conventions of the
    module docstring.
    """
    if predictions.shape != targets.shape or predictions.dim() != 5:
        raise ValueError(f"frame_scores: predictions and targets must both be (B, T, C, H, W); "
                         f"got {tuple(predictions.shape)} and {tuple(targets.shape)}")
    # The DFN evaluation clips to [eps, 1 - eps]; clipping before the cast to float64 is the training
    # loss's clip exactly (1 - eps rounds in float32), so val/loss and the training loss agree.
    p = predictions.detach().clamp(eps, 1 - eps).double()
    y = targets.detach().double()
    bce = -(y * p.log() + (1 - y) * (1 - p).log())
    err = predictions.detach().double() - y  # raw: MSE/MAE score what the model output, as an MSE loss does
    pixels = p[0, 0].numel()
    scores = {
        "bce_per_frame": reduce(bce, "b t c h w -> b t", "sum"),
        "mse_per_frame": reduce(err**2, "b t c h w -> b t", "sum"),
        "mae_per_frame": reduce(err.abs(), "b t c h w -> b t", "sum"),
    }
    scores["bce_per_pixel"] = scores["bce_per_frame"] / pixels
    scores["mse_per_pixel"] = scores["mse_per_frame"] / pixels
    b, t = p.shape[:2]
    flat_p = rearrange(predictions.detach().double().clamp(0, 1), "b t c h w -> (b t) c h w")
    flat_y = rearrange(targets.detach().double(), "b t c h w -> (b t) c h w")
    side = min(p.shape[-2:])
    window = min(11, side - (side + 1) % 2)  # 11x11 Gaussian window, sigma 1.5; smaller on tiny frames
    # torchmetrics in float32 (within ~1e-4 of float64, whose CPU convolutions are ~7x slower)
    ssim = structural_similarity_index_measure(flat_p.float(), flat_y.float(), data_range=1.0, reduction="none",
                                              kernel_size=window, sigma=1.5 * window / 11)
    mse = reduce((flat_p - flat_y) ** 2, "n c h w -> n", "mean").clamp(min=1e-10)  # a perfect frame: 100 dB, not inf
    psnr = 10 * torch.log10(1.0 / mse)
    scores["ssim"] = rearrange(ssim.double(), "(b t) -> b t", b=b, t=t)
    ssim_openstl = ssim_uniform(flat_p, flat_y, data_range=OPENSTL_SSIM_RANGE)  # (B*T,)
    scores["ssim_openstl"] = rearrange(ssim_openstl, "(b t) -> b t", b=b, t=t)
    scores["psnr"] = rearrange(psnr.double(), "(b t) -> b t", b=b, t=t)
    return scores


class FrameMetrics(Metric):
    """Accumulates `frame_scores` over batches (and ranks) per prediction horizon.

    ``compute()`` returns ``{name: mean over horizons}`` plus ``{f"{name}/horizon": (T,) curve}``.
    With ``keep_sequences`` it also keeps every scored sequence's scores (mean over its predicted frames),
    on the device and for this rank only: ``batch_scores`` after each update, `sequence_scores` at the end.
    """

    full_state_update = False

    def __init__(self, frames_out: int, eps: float = 1e-7, keep_sequences: bool = False) -> None:
        super().__init__()
        self.frames_out, self.eps, self.keep_sequences = frames_out, eps, keep_sequences
        for name in NAMES:
            self.add_state(name, default=torch.zeros(frames_out, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sequences", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.kept: list[torch.Tensor] = []  # (B, len(NAMES)) per batch; not a synced state (rank-local rows)
        self.batch_scores: dict[str, torch.Tensor] = {}  # name -> (B,) of the latest batch (keep_sequences)

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        """predictions, targets: (B, frames_out, C, H, W) in [0, 1]."""
        if predictions.shape[1] != self.frames_out:
            raise ValueError(f"FrameMetrics: expected {self.frames_out} predicted frames, got {predictions.shape[1]}")
        scores = frame_scores(predictions, targets, self.eps)
        for name, values in scores.items():
            state = getattr(self, name)
            state += values.sum(0).to(state.device)  # (T,) summed over sequences
        self.sequences += predictions.shape[0]
        if self.keep_sequences:
            self.batch_scores = {name: scores[name].mean(1) for name in NAMES}  # (B,) each, mean over frames
            self.kept.append(torch.stack([self.batch_scores[name] for name in NAMES], dim=1))  # (B, len(NAMES))

    def sequence_scores(self) -> dict[str, torch.Tensor]:
        """name -> (N,) float64 on the device: every sequence this rank scored, in order (``keep_sequences``)."""
        if not self.kept:
            return {}
        rows = torch.cat(self.kept)  # (N, len(NAMES))
        return {name: rows[:, i] for i, name in enumerate(NAMES)}

    def reset(self) -> None:
        super().reset()
        self.kept, self.batch_scores = [], {}

    def compute(self) -> dict[str, torch.Tensor]:
        if self.sequences.item() == 0:  # an empty evaluation set must not read as a perfect 0.0
            raise ValueError("FrameMetrics: no sequences were scored (the evaluation set is empty); "
                             "check the data module's validation/test size or fraction")
        out = {}
        for name in NAMES:
            curve = getattr(self, name) / self.sequences  # (T,) mean over sequences
            out[name] = curve.mean()
            out[f"{name}/horizon"] = curve
        out["sequences"] = self.sequences  # how many sequences were scored, over all ranks
        return out
