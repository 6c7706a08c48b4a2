"""Stereo prediction (De Brabandere et al. 2016, Section 4): predict the right view from the left.

The filter-generating network reads the left view (``condition="left"``, the paper's: disparity must
come from monocular cues) or both views (``"both"``, ours: then the layer is unsupervised stereo
matching by view synthesis) and outputs, per pixel, 13 logits and a dynamic bias. The softmax of the
logits is a 1×13 horizontal filter, taps at column offsets −6..+6, applied to the left view plus the
bias (``dfn.ops.row_filter``); the loss is the MSE to the true right view. The paper's baseline
(``baseline=True``) instead maps the 14 channels to the right view's pixels with one more 1×1 conv.

Because each filter is a convex combination of shifts, its expected shift d = Σₖ wₖ (k − 6) is a
disparity estimate (right(y, x) ≈ left(y, x + d), ``dfn.data.stereo``), scored at test against the
ground truth: end-point error (mean |d − d_true| in px over pixels with ground truth) and the share
of pixels off by more than 1 px, beside the zero disparity (what copying the left view amounts to)
and OpenCV's StereoSGBM on the same pixels. Right-view MSE per pixel is reported for the model and
for copying the left view. Every test pair is drawn to ``<run dir>/stereo_test/`` (``pair_figure``)
and the first four to ``<run dir>/stereo_test.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import imageio.v3 as iio
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor, nn
from torchmetrics import SumMetric

from dfn.callbacks import run_dir
from dfn.checks import check_bool, check_choice, check_int, check_number, check_positive, fail
from dfn.data.stereo import DISPARITY, LEFT, REACH, RIGHT, SGBM
from dfn.generators.initialisation import he_uniform_
from dfn.ops import row_filter
from dfn.predictor import activation_format

TAPS = 2 * REACH + 1  # paper: 13×1 filters, shifts −6..+6
EPE_TARGET = 0.5  # px, ours (the paper reports no disparity score)
FIGURE_PAIRS = 4  # pairs in <run dir>/stereo_test.png
Condition = Literal["left", "both"]


class StereoNetwork(nn.Module):
    """The authors' stereo filter-generating network (no recurrence), 'same' padding throughout:

    conv3×3 32, 32 (stride 2), 64, 64, 128 (one bias per channel *and* position, 128×32×32 at 64×64:
    Lasagne's untied biases in the authors' code), 64, 64, nearest upsample ×2, conv3×3 64, 64,
    conv1×1 128, conv1×1 14 (linear); leaky ReLU 0.01 after every other layer; He-uniform weights,
    zero biases. 464,494 parameters on one 64×64 input channel, the authors' count.
    ``out_channels``: 14 (13 filter logits and the dynamic bias), or 13 without the bias.
    forward: (B, in_channels, S, S) -> (B, out_channels, S, S).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 64, out_channels: int = TAPS + 1) -> None:
        super().__init__()
        if image_size % 2:
            raise fail("StereoNetwork", "image_size", "even", image_size, meaning="a stride-2 layer, then upsampling x2")

        def conv(cin: int, cout: int, size: int = 3, stride: int = 1, bias: bool = True) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, size, stride, padding=size // 2, bias=bias)

        act = nn.LeakyReLU(0.01)  # paper: leaky ReLU, slope 0.01 (Lasagne's leaky_rectify)
        self.encoder = nn.Sequential(conv(in_channels, 32), act, conv(32, 32, stride=2), act, conv(32, 64), act,
                                     conv(64, 64), act, conv(64, 128, bias=False))
        self.mid_bias = nn.Parameter(torch.zeros(128, image_size // 2, image_size // 2))  # untied, authors'
        self.decoder = nn.Sequential(act, conv(128, 64), act, conv(64, 64), act, nn.Upsample(scale_factor=2),
                                     conv(64, 64), act, conv(64, 64), act, conv(64, 128, 1), act,
                                     conv(128, out_channels, 1))  # 13 filter logits (+ the dynamic bias), linear
        he_uniform_(self)

    def forward(self, x: Tensor) -> Tensor:
        # NHWC on CPU, where oneDNN's convolutions run faster on it (forward + backward of this network,
        # batch 16, one thread: 0.76 vs 0.98 s float32, 0.38 vs 0.48 s bf16; docs/stereo.md); NCHW elsewhere.
        x = x.to(memory_format=activation_format(x.device))
        return self.decoder(self.encoder(x) + self.mid_bias)  # mid_bias (128, S/2, S/2) broadcasts over B


def disparity_readout(weights: Tensor) -> Tensor:
    """The filters' expected shift d = Σₖ wₖ (k − 6): weights (B, 13, H, W) -> (B, H, W) px."""
    shifts = torch.arange(TAPS, dtype=weights.dtype, device=weights.device) - REACH  # (13,) −6..+6
    # A product and a sum, not einsum: autocast would run einsum (a matrix product) in bfloat16.
    return (weights * shifts[:, None, None]).sum(1)


def colour_map(disparity: np.ndarray) -> np.ndarray:
    """(H, W) px -> uint8 (H, W, 3): −6 blue, 0 green, +6 red through cyan and yellow; unknown black."""
    anchors = np.array([[0, 0, 160], [0, 200, 255], [40, 200, 40], [255, 230, 0], [220, 0, 0]], float)
    t = np.clip((np.nan_to_num(disparity) + REACH) / (2 * REACH), 0, 1) * (len(anchors) - 1)  # (H, W) in [0, 4]
    low = np.minimum(t.astype(int), len(anchors) - 2)
    rgb = anchors[low] + (anchors[low + 1] - anchors[low]) * (t - low)[..., None]  # (H, W, 3)
    rgb[~np.isfinite(disparity)] = 0
    return rgb.round().astype(np.uint8)


def pair_figure(left: Tensor, predicted_disparity: Tensor | None, disparity: Tensor, predicted: Tensor,
                right: Tensor, sgbm: Tensor, gap: int = 2) -> np.ndarray:
    """One test pair as uint8 (H, 6W + 5 gap, 3): left | disparity from the filters (mid-gray for the
    baseline, which has none) | true disparity | predicted right | true right | StereoSGBM's disparity.
    Views (H, W) in [0, 1], disparities (H, W) px on one scale (``colour_map``)."""
    def gray(view: Tensor) -> np.ndarray:
        return np.repeat((view.float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)[..., None], 3, -1)

    none = np.full(gray(left).shape, 128, np.uint8)
    panels = [gray(left), none if predicted_disparity is None else colour_map(predicted_disparity.float().cpu().numpy()),
              colour_map(disparity.float().cpu().numpy()), gray(predicted), gray(right),
              colour_map(sgbm.float().cpu().numpy())]
    spacer = np.full((left.shape[0], gap, 3), 255, np.uint8)
    return np.concatenate([p for panel in panels for p in (panel, spacer)][:-1], axis=1)


class StereoPrediction(L.LightningModule):
    """Train the stereo network on ``dfn.data.SyntheticStereo`` / ``MiddleburyStereo`` batches (B, 4, H, W).

    Defaults are the paper's: filters (``baseline=False``) from the left view only, with the dynamic
    bias, MSE, Adam 1e-3 halved every 20 epochs, the authors' zero padding. With ``condition="both"``
    turn the bias off: a generator that sees the right view can write it into the bias (bias = right −
    left behind centred filters reproduces it exactly), and then the filters need not match anything
    (measured on Motorcycle: docs/stereo.md). ``image_size`` comes from the data (the untied
    biases are per position). Validation logs ``val/loss`` (the MSE per pixel, what checkpoints
    monitor); the test logs the scores of the module docstring and draws the test pairs.
    """

    def __init__(
        self,
        condition: Condition = "left",  # paper: the generator sees only the left view; "both": ours
        baseline: bool = False,  # paper's baseline: conv1×1 14 -> 1 predicts the right view's pixels
        dynamic_bias: bool = True,  # paper: on; off for condition "both" (class docstring)
        image_size: int = 64,  # paper: 64×64 (linked from the data)
        lr: float = 1e-3,  # paper: Adam 1e-3
        lr_decay_every: int = 20,  # paper: halved every 20 epochs
        lr_decay: float = 0.5,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_choice(name, "condition", condition, ("left", "both"),
                     meaning="'left': the generator reads the left view, the paper's; 'both': both views, ours")
        check_bool(name, "baseline", baseline)
        check_bool(name, "dynamic_bias", dynamic_bias)
        if check_int(name, "image_size", image_size, minimum=4) % 2:
            raise fail(name, "image_size", "an even integer >= 4", image_size, meaning="the data's")
        check_positive(name, "lr", lr)
        check_int(name, "lr_decay_every", lr_decay_every, meaning="epochs")
        check_number(name, "lr_decay", lr_decay, low=0, high=1, low_open=True, meaning="1 = constant")
        self.save_hyperparameters()
        channels = TAPS + int(dynamic_bias)  # filter logits (+ the bias)
        self.network = StereoNetwork(1 if condition == "left" else 2, image_size, channels)
        self.pixels = he_uniform_(nn.Conv2d(channels, 1, 1)) if baseline else None  # the paper's baseline head
        names = ["mse", "copy_left_mse", "pixels", "epe", "bad1", "zero_epe", "known",
                 "sgbm_epe", "sgbm_bad1", "epe_on_sgbm", "sgbm_known"]
        self.sums = nn.ModuleDict({stage: nn.ModuleDict({n: SumMetric() for n in names}) for stage in ("val", "test")})

    def forward(self, left: Tensor, right: Tensor) -> tuple[Tensor, Tensor | None]:
        """left, right (B, 1, H, W) in [0, 1] -> (predicted right view (B, 1, H, W), filter weights
        (B, 13, H, W) summing to 1 over the taps; None for the baseline). ``right`` is only read with
        ``condition="both"``."""
        inputs = left if self.hparams.condition == "left" else torch.cat([left, right], 1)  # (B, 1 or 2, H, W)
        # (B, 14, H, W); 13 without the dynamic bias. Float32 from here: under bf16-mixed the softmax and the
        # filtering are computed in float32 (a no-op otherwise), as the video model's (docs/speed.md).
        out = self.network(inputs).float()
        if self.pixels is not None:
            return self.pixels(out), None
        weights = out[:, :TAPS].softmax(1)  # (B, 13, H, W), paper: softmax over the taps
        source = left + out[:, TAPS:] if self.hparams.dynamic_bias else left  # paper: bias added before filtering
        return row_filter(source, weights), weights

    @staticmethod
    def split(batch: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """batch (B, 4, H, W) -> left, right (B, 1, H, W), disparity, SGBM's (B, H, W) px (NaN unknown)."""
        if batch.dim() != 4 or batch.shape[1] != 4:
            raise fail("StereoPrediction", "batch", "(B, 4, H, W)", batch, shown=str(tuple(batch.shape)),
                       meaning="left, right, disparity, SGBM: dfn.data.SyntheticStereo or MiddleburyStereo")
        return batch[:, LEFT:LEFT + 1], batch[:, RIGHT:RIGHT + 1], batch[:, DISPARITY], batch[:, SGBM]

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        left, right, _, _ = self.split(batch)
        predicted, _ = self(left, right)
        loss = F.mse_loss(predicted, right)  # paper: MSE, mean over pixels
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: Tensor, stage: str) -> None:
        left, right, disparity, sgbm = self.split(batch)
        predicted, weights = self(left, right)
        sums = self.sums[stage]
        sums["mse"].update((predicted - right).pow(2).sum())
        sums["copy_left_mse"].update((left - right).pow(2).sum())
        sums["pixels"].update(right.numel())
        estimate = None if weights is None else disparity_readout(weights)  # (B, H, W)
        known = torch.isfinite(disparity)  # (B, H, W)
        both = known & torch.isfinite(sgbm)
        sums["known"].update(known.sum())
        sums["sgbm_known"].update(both.sum())
        sums["zero_epe"].update(disparity[known].abs().sum())  # copying the left view: d = 0
        sums["sgbm_epe"].update((sgbm - disparity)[both].abs().sum())
        sums["sgbm_bad1"].update(((sgbm - disparity)[both].abs() > 1).sum())
        if estimate is not None:
            error = (estimate - disparity).abs()  # (B, H, W), NaN where unknown
            sums["epe"].update(error[known].sum())
            sums["bad1"].update((error[known] > 1).sum())
            sums["epe_on_sgbm"].update(error[both].sum())
        if stage == "test" and self.trainer.is_global_zero and self.trainer.world_size == 1:
            self.draw(left, estimate, disparity, predicted, right, sgbm)

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def draw(self, left, estimate, disparity, predicted, right, sgbm) -> None:
        """Write ``<run dir>/stereo_test/pair_NNNN.png`` (``pair_figure``, NNNN: the pair's place in the
        test set) for every pair of a test batch; keep the first FIGURE_PAIRS for ``stereo_test.png``."""
        folder = run_dir(self.trainer) / "stereo_test"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(len(left)):
            image = pair_figure(left[i, 0], None if estimate is None else estimate[i], disparity[i],
                                predicted[i, 0], right[i, 0], sgbm[i])
            iio.imwrite(folder / f"pair_{len(self.drawn):04d}.png", image)
            self.drawn.append(image if len(self.drawn) < FIGURE_PAIRS else None)

    def on_test_epoch_start(self) -> None:
        self.drawn: list[np.ndarray | None] = []  # one entry per pair drawn, the image for the first few

    def _log_scores(self, stage: str) -> dict[str, float]:
        """Ratios of the summed scores (reduced over ranks by torchmetrics), logged under ``stage/``."""
        s = {name: float(metric.compute()) for name, metric in self.sums[stage].items()}
        for metric in self.sums[stage].values():
            metric.reset()
        scores = {"mse": s["mse"] / s["pixels"], "copy_left/mse": s["copy_left_mse"] / s["pixels"]}
        if s["known"]:
            scores["zero_disparity/epe"] = s["zero_epe"] / s["known"]
            if self.pixels is None:
                scores.update({"disparity_epe": s["epe"] / s["known"], "disparity_bad1": s["bad1"] / s["known"]})
        if s["sgbm_known"]:
            scores.update({"sgbm/disparity_epe": s["sgbm_epe"] / s["sgbm_known"],
                           "sgbm/disparity_bad1": s["sgbm_bad1"] / s["sgbm_known"]})
            if self.pixels is None:
                scores["disparity_epe_on_sgbm_pixels"] = s["epe_on_sgbm"] / s["sgbm_known"]
        results = {f"{stage}/{name}": value for name, value in scores.items()}
        if stage == "val":
            results["val/loss"] = results["val/mse"]  # what checkpoints monitor
        self.log_dict(results, sync_dist=False)
        return results

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        r = self._log_scores("test")
        if not self.trainer.is_global_zero:
            return
        if getattr(self, "drawn", None):
            self.write_figure(run_dir(self.trainer) / "stereo_test.png")
        line = (f"stereo prediction: right-view MSE per pixel {r['test/mse']:.6f} "
                f"(copy-left {r['test/copy_left/mse']:.6f})")
        if "test/disparity_epe" in r:
            epe = r["test/disparity_epe"]
            line += (f"; disparity EPE {epe:.3f} px (target <= {EPE_TARGET} on the synthetic pairs: "
                     f"{'met' if epe <= EPE_TARGET else 'NOT met'}), > 1 px {100 * r['test/disparity_bad1']:.1f} %, "
                     f"zero disparity {r['test/zero_disparity/epe']:.3f} px")
        if "test/sgbm/disparity_epe" in r and "test/disparity_epe_on_sgbm_pixels" in r:
            ours, sgbm = r["test/disparity_epe_on_sgbm_pixels"], r["test/sgbm/disparity_epe"]
            line += (f"; on StereoSGBM's pixels {ours:.3f} px vs StereoSGBM {sgbm:.3f} px "
                     f"({'no worse' if ours <= sgbm else 'WORSE'})")
        print(line)

    def write_figure(self, path: Path, zoom: int = 3) -> None:
        """The first FIGURE_PAIRS test pairs stacked, ``zoom`` times enlarged (and to wandb)."""
        rows = [image for image in self.drawn if image is not None]
        gap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
        stacked = np.concatenate([p for row in rows for p in (row, gap)][:-1])
        iio.imwrite(path, stacked.repeat(zoom, 0).repeat(zoom, 1))
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("test/pairs", [str(path)], step=self.trainer.global_step)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, self.hparams.lr_decay_every, self.hparams.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
