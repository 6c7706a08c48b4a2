"""The LightningModule: training, evaluation and prediction of a `VideoPredictor`.

Losses (set in the config): ``bce`` for Moving MNIST (the paper's binary cross-entropy on predictions
clipped to [eps, 1 - eps]), ``mse`` for highway. Validation and test report every metric of
`dfn.metrics` for the model and for the trivial copy-last-frame predictor on the same batches, per
prediction horizon too. ``val/loss`` is what model selection monitors: the training loss itself, summed
over a frame's pixels instead of averaged (``bce``: ``bce_per_frame``, the same clip and eps; ``mse``:
``mse_per_frame`` of the raw predictions), i.e. training loss x C*H*W; the test set is never seen during
fit. Test metrics are logged under ``test_prefix`` (``test`` by default; the CLI tests the final weights
of a fit under ``test_final``).
"""

from __future__ import annotations

import warnings
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from einops import repeat

from dfn.generators.base import FilterGenerator
from dfn.metrics import FrameMetrics
from dfn.predictor import Layout, VideoPredictor

# Through LightningCLI the generator is saved in the hyperparameters as its config (class_path and
# init_args) and its weights in the state dict; Lightning's advice to ignore it would break
# `load_from_checkpoint` without arguments, so its warning is noise here.
warnings.filterwarnings("ignore", message="Attribute 'generator' is an instance of `nn.Module`")


def check_training_config(frames_in: int, buffer_len: int, lr: float, lr_decay_every: int, lr_decay: float,
                          bce_eps: float, lr_schedule: str = "step", warmup_fraction: float = 0.1,
                          lr_decay_unit: str = "epoch", scheduled_sampling: float = 0.0) -> None:
    """Raise a ValueError naming the argument and its allowed range for a training setting that cannot work."""
    if buffer_len > frames_in:
        raise ValueError(f"buffer_len must be <= frames_in ({frames_in}): the generator reads the last buffer_len "
                         f"input frames; got buffer_len={buffer_len}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if isinstance(lr_decay_every, bool) or not isinstance(lr_decay_every, int) or lr_decay_every < 1:
        raise ValueError(f"lr_decay_every must be an integer >= 1 (epochs, or steps with lr_decay_unit: step, "
                         f"between learning-rate decays), got {lr_decay_every!r}")
    if not 0 < lr_decay <= 1:
        raise ValueError(f"lr_decay must be in (0, 1] (the factor applied every lr_decay_every epochs or steps; "
                         f"1 = constant), got {lr_decay}")
    if not 0 < bce_eps < 0.5:
        raise ValueError(f"bce_eps must be in (0, 0.5) (predictions are clipped to [bce_eps, 1 - bce_eps]), "
                         f"got {bce_eps}")
    if lr_schedule not in ("step", "onecycle"):
        raise ValueError(f"lr_schedule must be 'step' or 'onecycle', got {lr_schedule!r}")
    if lr_decay_unit not in ("epoch", "step"):
        raise ValueError(f"lr_decay_unit must be 'epoch' or 'step' (what lr_decay_every counts), got {lr_decay_unit!r}")
    if not 0 < warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be in (0, 1) (the share of the run spent warming up), "
                         f"got {warmup_fraction!r}")
    if isinstance(scheduled_sampling, bool) or not 0 <= scheduled_sampling <= 1:
        raise ValueError(f"scheduled_sampling must be in [0, 1] (the fraction of the run over which the chance "
                         f"of feeding the true frame falls from 1 to 0; 0 = off), got {scheduled_sampling!r}")


class VideoPrediction(L.LightningModule):
    """Train a `VideoPredictor` whose filter generator is picked in YAML.

    ``frames_in``, ``frames_out``, ``channels`` and ``image_size`` come from the data module (linked by
    ``train.py``); the network arguments are `VideoPredictor`'s.
    Defaults are the paper's Moving MNIST protocol: BCE, Adam lr 1e-3 halved every 20 epochs.
    """

    def __init__(
        self,
        generator: FilterGenerator,
        frames_in: int = 10,
        frames_out: int = 10,
        channels: int = 1,
        buffer_len: int = 1,
        encoder_width: int = 32,
        hidden: int = 128,
        decoder_width: int = 64,
        features: int = 128,
        layout: Layout = "moving_mnist",
        untied_input_bias: bool = False,
        image_size: int = 64,
        refinement: bool = False,
        loss: Literal["bce", "mse"] = "bce",
        lr: float = 1e-3,  # paper: 1e-3 (baseline 1e-4)
        lr_decay_every: int = 20,  # paper: halve the learning rate every 20 epochs
        lr_decay_unit: Literal["epoch", "step"] = "epoch",  # paper: epochs; "step" keeps a schedule independent
                                                            # of how many clips an epoch has (your own video)
        lr_decay: float = 0.5,
        bce_eps: float = 1e-7,
        lr_schedule: Literal["step", "onecycle"] = "step",  # paper: step (halve every lr_decay_every epochs)
        warmup_fraction: float = 0.1,  # onecycle only: fraction of the run spent warming up to lr
        scheduled_sampling: float = 0.0,  # paper: 0 (predictions always fed back); see training_step
    ) -> None:
        super().__init__()
        if loss not in ("bce", "mse"):
            raise ValueError(f"loss must be 'bce' or 'mse', got {loss!r}")
        if frames_in < 1 or frames_out < 1:
            raise ValueError(f"frames_in and frames_out must be >= 1, got {frames_in} and {frames_out}")
        check_training_config(frames_in, buffer_len, lr, lr_decay_every, lr_decay, bce_eps, lr_schedule,
                              warmup_fraction, lr_decay_unit, scheduled_sampling)
        self.save_hyperparameters()
        self.predictor = VideoPredictor(generator, channels=channels, buffer_len=buffer_len, encoder_width=encoder_width,
                                        hidden=hidden, decoder_width=decoder_width, features=features, layout=layout,
                                        untied_input_bias=untied_input_bias, image_size=image_size,
                                        refinement=refinement)
        self.frames_in, self.frames_out, self.channels, self.loss_name = frames_in, frames_out, channels, loss
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{who}": FrameMetrics(frames_out, bce_eps)
            for stage in ("val", "test") for who in ("model", "copy_last")
        })
        self.test_prefix = "test"  # the name test metrics are logged under (the CLI's after_fit: test_final)

    @property
    def generator(self) -> FilterGenerator:
        return self.predictor.generator

    def forward(self, inputs: torch.Tensor, frames_out: int | None = None) -> torch.Tensor:
        """inputs (B, frames_in, C, H, W) in [0, 1] -> predictions (B, frames_out, C, H, W)."""
        return self.predictor(inputs, frames_out or self.frames_out)

    def split(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """batch (B, T, C, H, W) -> inputs (B, frames_in, ...), targets (B, frames_out, ...)."""
        expected = self.frames_in + self.frames_out
        if batch.dim() != 5 or batch.shape[1] < expected:
            raise ValueError(f"batches must be (B, T>={expected}, C, H, W) float in [0, 1]; got {tuple(batch.shape)}")
        return batch[:, : self.frames_in], batch[:, self.frames_in : expected]

    def loss(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training loss, averaged over pixels (Adam is insensitive to the scale; metrics report sums).

        Computed in float32 outside autocast (issue 12): CUDA autocast refuses F.binary_cross_entropy,
        and in bfloat16 the clip 1 - eps rounds to 1, so a saturated prediction would give log(0).
        """
        with torch.autocast(predictions.device.type, enabled=False):
            predictions, targets = predictions.float(), targets.float()
            if self.loss_name == "bce":
                eps = self.hparams.bce_eps
                return F.binary_cross_entropy(predictions.clamp(eps, 1 - eps), targets)
            return F.mse_loss(predictions, targets)

    def truth_probability(self) -> float:
        """Scheduled sampling (ours, off by default): the chance that a training step reads the true frame
        instead of its own prediction, 1 at the start, falling linearly to 0 after ``scheduled_sampling``
        of the run (Bengio et al. 2015's linear decay; PredRNN trains Moving MNIST this way)."""
        fraction = self.hparams.get("scheduled_sampling", 0.0)
        if not fraction:
            return 0.0
        total = max(1.0, fraction * float(self.trainer.estimated_stepping_batches))
        return max(0.0, 1.0 - self.global_step / total)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        inputs, targets = self.split(batch)
        p = self.truth_probability()
        if p > 0:  # the global RNG: RunGuard checkpoints it, so a resumed run draws the same masks
            feed_truth = torch.rand(len(batch), self.frames_out, device=batch.device) < p  # (B, frames_out)
            predictions = self.predictor(inputs, self.frames_out, truth=targets, feed_truth=feed_truth)
            self.log("train/truth_probability", p)
        else:
            predictions = self(inputs)
        loss = self.loss(predictions, targets)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: torch.Tensor, stage: str) -> None:
        inputs, targets = self.split(batch)
        predictions = self(inputs)
        prefix = self.test_prefix if stage == "test" else stage
        self.log(f"{prefix}/loss_mean", self.loss(predictions, targets), sync_dist=True, batch_size=len(batch))
        self.metrics[f"{stage}_model"].update(predictions, targets)
        copy_last = repeat(inputs[:, -1], "b c h w -> b t c h w", t=self.frames_out)
        self.metrics[f"{stage}_copy_last"].update(copy_last, targets)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        inputs = batch[:, : self.frames_in]
        return {"inputs": inputs, "targets": batch[:, self.frames_in :], "predictions": self(inputs)}

    def _log_metrics(self, stage: str, name_prefix: str) -> dict[str, torch.Tensor]:
        """Compute (synchronised over ranks), log under `name_prefix` and reset; returns the scalars and
        horizon curves."""
        results = {}
        for who in ("model", "copy_last"):
            metric = self.metrics[f"{stage}_{who}"]
            prefix = name_prefix if who == "model" else f"{name_prefix}/copy_last"
            for name, value in metric.compute().items():
                results[f"{prefix}/{name}"] = value
            metric.reset()
        scalars = {k: v.float() for k, v in results.items() if not k.endswith("/horizon")}
        # What checkpointing monitors: the training loss's own quantity (module docstring), per frame.
        monitored = "bce_per_frame" if self.loss_name == "bce" else "mse_per_frame"
        scalars[f"{name_prefix}/loss"] = scalars[f"{name_prefix}/{monitored}"]
        self.log_dict(scalars, sync_dist=False)  # already reduced over ranks by torchmetrics
        return results

    def on_validation_epoch_end(self) -> None:
        self.last_val_results = self._log_metrics("val", "val")

    def on_test_epoch_end(self) -> None:
        self.last_test_results = self._log_metrics("test", self.test_prefix)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        if self.hparams.lr_schedule == "onecycle":
            # Ours (issue 9, short CPU budgets): warm up to lr, then cosine-anneal towards zero over the
            # whole run, per step; `lr` is the peak. The run's length is known from max_steps/max_epochs.
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=self.hparams.lr, total_steps=int(self.trainer.estimated_stepping_batches),
                pct_start=self.hparams.warmup_fraction, cycle_momentum=False)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, self.hparams.lr_decay_every, self.hparams.lr_decay)
        # StepLR counts its own .step() calls; Lightning calls it once per epoch or once per optimiser step.
        interval = self.hparams.get("lr_decay_unit", "epoch")  # checkpoints from before the option: epochs
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
