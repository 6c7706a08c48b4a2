"""The LightningModule: training, evaluation and prediction of a `VideoPredictor`.

Losses (set in the config): ``bce`` for Moving MNIST (the paper's binary cross-entropy on predictions
clipped to [eps, 1 - eps]), ``mse`` for highway. Validation and test report every metric of
`dfn.metrics` for the model and for the trivial copy-last-frame predictor on the same batches, per
prediction horizon too. ``val/loss`` is what model selection monitors: the training loss itself, summed
over a frame's pixels instead of averaged (``bce``: ``bce_per_frame``, the same clip and eps; ``mse``:
``mse_per_frame`` of the raw predictions), i.e. training loss x C*H*W; the test set is never seen during
fit. Every pass returns a `dfn.evaluation.EvalResult` (``val_result``, ``test_result``); test metrics are
logged under the prefix given to `run_test` (``test`` by default; the CLI tests the final weights of a fit
under ``test_final``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F

from dfn.checkpoint_files import CheckpointError, differing_hyperparameters, resolve_checkpoint, shape_mismatch
from dfn.generators.base import FilterGenerator
from dfn.checks import check_choice, check_int, check_number, check_positive, fail
from dfn.evaluation import EvalResult, Evaluation
from dfn.metrics import monitored_metric
from dfn.predictor import Layout, VideoPredictor

# Through LightningCLI the generator is saved in the hyperparameters as its config (class_path and
# init_args) and its weights in the state dict; Lightning's advice to ignore it would break
# `load_from_checkpoint` without arguments, so its warning is noise here.
warnings.filterwarnings("ignore", message="Attribute 'generator' is an instance of `nn.Module`")


def check_training_config(*, frames_in: int, frames_out: int, buffer_len: int, loss: str, lr: float,
                          lr_decay_every: int, lr_decay: float, lr_decay_unit: str, lr_schedule: str,
                          warmup_fraction: float, bce_eps: float, scheduled_sampling: float) -> None:
    """Raise a ValueError naming the argument and its allowed range for a training setting that cannot work
    (`dfn.checks`' message shape)."""
    owner = "VideoPrediction"
    check_choice(owner, "loss", loss, ("bce", "mse"))
    check_int(owner, "frames_in", frames_in)
    check_int(owner, "frames_out", frames_out)
    if check_int(owner, "buffer_len", buffer_len) > frames_in:
        raise fail(owner, "buffer_len", f"<= frames_in ({frames_in})", buffer_len,
                   meaning="the generator reads the last buffer_len input frames")
    check_positive(owner, "lr", lr)
    check_int(owner, "lr_decay_every", lr_decay_every,
              meaning="epochs, or steps with lr_decay_unit: step, between learning-rate decays")
    check_number(owner, "lr_decay", lr_decay, low=0, high=1, low_open=True,
                 meaning="the factor applied every lr_decay_every epochs or steps; 1 = constant")
    check_choice(owner, "lr_decay_unit", lr_decay_unit, ("epoch", "step"), meaning="what lr_decay_every counts")
    check_choice(owner, "lr_schedule", lr_schedule, ("step", "onecycle"))
    check_number(owner, "warmup_fraction", warmup_fraction, low=0, high=1, low_open=True, high_open=True,
                 meaning="the share of the run spent warming up")
    check_number(owner, "bce_eps", bce_eps, low=0, high=0.5, low_open=True, high_open=True,
                 meaning="predictions are clipped to [bce_eps, 1 - bce_eps]")
    check_number(owner, "scheduled_sampling", scheduled_sampling, low=0, high=1,
                 meaning="the fraction of the run over which the chance of feeding the true frame falls from 1 "
                         "to 0; 0 = off")


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
        init_from: str | None = None,  # fine-tune: start fit from these weights (see on_fit_start)
    ) -> None:
        super().__init__()
        check_training_config(frames_in=frames_in, frames_out=frames_out, buffer_len=buffer_len, loss=loss, lr=lr,
                              lr_decay_every=lr_decay_every, lr_decay=lr_decay, lr_decay_unit=lr_decay_unit,
                              lr_schedule=lr_schedule, warmup_fraction=warmup_fraction, bce_eps=bce_eps,
                              scheduled_sampling=scheduled_sampling)
        if init_from is not None and (not isinstance(init_from, str) or not init_from.strip()):
            raise fail("VideoPrediction", "init_from", "a checkpoint file, a run directory or pretrained:<name>",
                       init_from, meaning="python -m dfn.pretrained list names the shipped models")
        # Whether fit still has to load `init_from`: not once weights came from a checkpoint (on_load_checkpoint).
        self.init_pending = init_from is not None
        self.save_hyperparameters()
        self.predictor = VideoPredictor(generator, channels=channels, buffer_len=buffer_len, encoder_width=encoder_width,
                                        hidden=hidden, decoder_width=decoder_width, features=features, layout=layout,
                                        untied_input_bias=untied_input_bias, image_size=image_size,
                                        refinement=refinement)
        self.frames_in, self.frames_out, self.channels, self.loss_name = frames_in, frames_out, channels, loss
        self.evaluation = Evaluation(frames_out, bce_eps)  # the model's and copy-last-frame's scores
        self.val_result: EvalResult | None = None  # the latest validation pass
        self.test_result: EvalResult | None = None  # the latest test pass
        self._test_prefix = "test"  # what test metrics are logged under: set only by run_test, for one pass

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
            raise fail("VideoPrediction", "batch", f"(B, T>={expected}, C, H, W) float in [0, 1]", batch,
                       shown=str(tuple(batch.shape)))
        return batch[:, : self.frames_in], batch[:, self.frames_in : expected]

    def loss(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training loss, averaged over pixels (Adam is insensitive to the scale; metrics report sums).

        Computed in float32 outside autocast: CUDA autocast refuses F.binary_cross_entropy,
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

    def truth_mask(self, batch_size: int, device: torch.device, batch_idx: int = 0) -> torch.Tensor | None:
        """Scheduled sampling's draw: (B, frames_out) bool, True where that step of that sample reads the
        true frame; None when off (probability 0).

        A pure function of (seed, global step, batch, sample), so a resumed run draws exactly the masks of
        a run never stopped, and no global RNG is touched: a generator seeded from ``seed_everything``'s
        seed (``PL_GLOBAL_SEED``), the global step and the batch index draws the masks of the whole
        global batch, of which rank r of w takes rows r, r + w, .... Exact for a given number of devices,
        which is what resume needs; on another number of devices the masks differ, as the training
        samples themselves do (the generated streams are seeded per rank: dfn.data.common).
        """
        p = self.truth_probability()
        if p <= 0:
            return None
        world, rank = self.trainer.world_size, self.trainer.global_rank
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        key = hashlib.blake2b(f"scheduled_sampling/{seed}/{self.global_step}/{batch_idx}".encode(), digest_size=8)
        generator = torch.Generator(device=device).manual_seed(int.from_bytes(key.digest(), "little") >> 1)
        draws = torch.rand(batch_size * world, self.frames_out, generator=generator, device=device)  # (W*B, frames_out)
        return draws[rank::world] < p  # (B, frames_out)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        inputs, targets = self.split(batch)
        feed_truth = self.truth_mask(len(batch), batch.device, batch_idx)  # (B, frames_out) or None (off)
        if feed_truth is not None:
            predictions = self.predictor(inputs, self.frames_out, truth=targets, feed_truth=feed_truth)
            self.log("train/truth_probability", self.truth_probability())
        else:
            predictions = self(inputs)
        loss = self.loss(predictions, targets)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: torch.Tensor, stage: str) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        """Score one batch; returns the predictions and, for a test batch, each sequence's scores (name ->
        (B,)), which the callbacks get as this step's outputs (`dfn.wandb_extras.SequenceTable`)."""
        inputs, targets = self.split(batch)
        predictions = self(inputs)
        prefix = self._test_prefix if stage == "test" else stage
        self.log(f"{prefix}/loss_mean", self.loss(predictions, targets), sync_dist=True, batch_size=len(batch))
        scores = self.evaluation.update(stage, inputs, targets, predictions)
        return {"predictions": predictions, "scores": scores}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> dict:
        return self._evaluate(batch, "val")

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> dict:
        return self._evaluate(batch, "test")

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        inputs = batch[:, : self.frames_in]
        return {"inputs": inputs, "targets": batch[:, self.frames_in :], "predictions": self(inputs)}

    def on_validation_epoch_end(self) -> None:
        self.val_result = self.evaluation.result("val", "val", monitored_metric(self.loss_name),
                                                 complete=not self.trainer.sanity_checking)
        self.log_dict(self.val_result.logged(), sync_dist=False)  # already reduced over ranks by torchmetrics

    def on_test_epoch_end(self) -> None:
        self.test_result = self.evaluation.result("test", self._test_prefix, monitored_metric(self.loss_name))
        self.log_dict(self.test_result.logged(), sync_dist=False)

    def run_test(self, trainer: L.Trainer, *, datamodule: L.LightningDataModule | None = None,
                 dataloaders: torch.utils.data.DataLoader | None = None, prefix: str = "test",
                 ckpt_path: str | None = None) -> EvalResult:
        """Test these weights (or, with `ckpt_path`, that checkpoint's, loaded into this model) on the data
        module's test set (or `dataloaders`), logged under `prefix`; returns the pass's result."""
        self._test_prefix = prefix
        try:
            trainer.test(self, dataloaders=dataloaders, datamodule=datamodule, ckpt_path=ckpt_path)
        finally:
            self._test_prefix = "test"
        return self.test_result

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        if self.hparams.lr_schedule == "onecycle":
            # Ours (short CPU budgets): warm up to lr, then cosine-anneal towards zero over the
            # whole run, per step; `lr` is the peak. The run's length is known from max_steps/max_epochs.
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=self.hparams.lr, total_steps=int(self.trainer.estimated_stepping_batches),
                pct_start=self.hparams.warmup_fraction, cycle_momentum=False)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, self.hparams.lr_decay_every, self.hparams.lr_decay)
        # StepLR counts its own .step() calls; Lightning calls it once per epoch or once per optimiser step.
        interval = self.hparams.get("lr_decay_unit", "epoch")  # checkpoints from before the option: epochs
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def on_fit_start(self) -> None:
        """``init_from`` (fine-tuning): a new run starts from those weights, with a fresh optimiser and
        schedule (``global_step`` 0). Loaded here, once, and not in ``__init__``: loading a fine-tuned
        model's own checkpoint then never needs the file it started from, and a resumed fit (its
        checkpoint is restored before this hook) keeps its own weights (`on_load_checkpoint`)."""
        if self.init_pending:
            self.init_pending = False
            self.load_weights_from(self.hparams.init_from)

    def load_weights_from(self, source: str) -> None:
        """Copy the weights of `source` (a checkpoint file, a run directory or ``pretrained:<name>``) into
        this model, strictly: a ValueError names the first tensor that differs and the hyperparameters
        behind it."""
        path = resolve_checkpoint(source, argument="model.init_from")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        problem = self.weights_problem(checkpoint, strict=True)
        if problem:
            raise CheckpointError(f"model.init_from {source}: {problem}")
        self.load_state_dict(checkpoint["state_dict"], strict=True)
        print(f"dfn: model weights from {source} ({path}, trained {checkpoint.get('global_step', '?')} "
              f"iterations); optimiser and learning-rate schedule start fresh")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Before Lightning copies a checkpoint's weights in (resume, test, predict, load_from_checkpoint):
        a clear error on a shape mismatch, and ``init_from`` is not applied over them."""
        self.init_pending = False
        problem = self.weights_problem(checkpoint, strict=False)  # missing/extra tensors: Lightning's strict load
        if problem:
            raise CheckpointError(f"the checkpoint does not fit this model: {problem}")

    def weights_problem(self, checkpoint: dict, strict: bool) -> str | None:
        """Why `checkpoint`'s state dict does not fit this model (the first differing tensor and the
        hyperparameters that differ), or None."""
        if "state_dict" not in checkpoint:
            return "it holds no state_dict (a Lightning checkpoint or a shipped model is needed)"
        problem = shape_mismatch(self.state_dict(), checkpoint["state_dict"], strict)
        differ = differing_hyperparameters(checkpoint.get("hyper_parameters") or {}, self.hparams) if problem else []
        return problem and problem + (f"; hyperparameters that differ: {'; '.join(differ)}" if differ else "")

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
