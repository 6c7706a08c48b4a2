"""Stop a run before a non-finite training step is applied, at the cost of one host synchronisation per step.

Diverging weights give NaN/inf predictions before they give a NaN loss, a NaN loss gives NaN gradients,
and one optimiser step with them ruins the weights. `NonFiniteGuard` checks all three on the device and
reads them once, right before the optimiser step:

- predictions: a forward hook on the network that makes the training predictions (``pl_module.predictor``
  for `dfn.module.VideoPrediction`, else the module itself) records whether their sum is finite, and
  hands the loss a NaN-free copy (`nan_to_num`, the identity on finite values, forward and backward,
  bit for bit): the BCE loss refuses NaN inputs with an exception on CPU and a device-side assert on
  CUDA, which would kill the run before the guard can stop it with its message;
- loss: ``on_before_backward`` records whether the loss is finite;
- gradients: ``on_before_optimizer_step`` records whether the sum of every gradient is finite, joins the
  three flags into one (3,) tensor and reads it with one ``tolist()``: the step's only device -> host
  synchronisation (under DDP after one all-reduce, so that every rank stops together).

A sum is finite exactly when every element is, except when finite elements add up beyond the float range
(about 3e38: predictions or gradients of 1e32 and more), which is counted as non-finite too; such a run
has diverged anyway. One reduction costs a small fraction of ``isfinite(x).all()``, which writes a mask.

Then the run stops with `NonFiniteLoss` naming the step, what was not finite, and the last good
checkpoint (`dfn.checkpointing.RunGuard` writes no checkpoint after it).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from dfn.callbacks import last_checkpoint_path

CHECKED = ("predictions", "loss", "gradients")  # the order in which a failure is named


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf prediction, loss or gradient; the message names the step and the last checkpoint."""


def finite(tensor: torch.Tensor) -> torch.Tensor:
    """() bool on the tensor's device: whether the sum of its elements is finite, i.e. whether every one is
    (see the module docstring for the overflow case). No host synchronisation."""
    return torch.isfinite(tensor.detach().sum())


class _NanToNum(torch.autograd.Function):
    """``torch.nan_to_num`` whose backward passes the gradient through unchanged: on finite values it is
    the identity both ways, and the gradient of a NaN is never applied (the guard stops that step).
    ``torch.nan_to_num``'s own backward recomputes an ``isfinite`` mask, which costs more than the check."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def nan_to_num(x: torch.Tensor) -> torch.Tensor:
    """x with NaN -> 0 and +-inf -> the dtype's extremes; the identity (value and gradient) on finite x."""
    return _NanToNum.apply(x)


class NonFiniteGuard(L.Callback):
    """Refuses non-finite training predictions, losses and gradients, before the optimiser applies them.

    Args:
        enabled: off with ``--nonfinite.enabled false`` (then a NaN trains on silently).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._flags: dict[str, torch.Tensor] = {}  # name -> () bool on the device, since the last optimiser step
        self._loss: torch.Tensor | None = None
        self._last_saved_step: int | None = None
        self._hook = None

    @staticmethod
    def network(pl_module: L.LightningModule) -> nn.Module:
        """The module whose output is the training prediction: ``predictor`` (VideoPrediction calls it
        directly under scheduled sampling), else the LightningModule itself."""
        predictor = getattr(pl_module, "predictor", None)
        return predictor if isinstance(predictor, nn.Module) else pl_module

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            self._hook = self.network(pl_module).register_forward_hook(self._check_predictions)

    def _check_predictions(self, module: nn.Module, args: Any, output: Any) -> Any:
        predictions = output[0] if isinstance(output, tuple) else output  # (predictions, filters) with keep_filters
        if not module.training or not isinstance(predictions, torch.Tensor) or not predictions.is_floating_point():
            return None
        self._record("predictions", finite(predictions))
        cleaned = nan_to_num(predictions)  # finite values unchanged; see the module docstring
        return (cleaned, *output[1:]) if isinstance(output, tuple) else cleaned

    def _record(self, name: str, flag: torch.Tensor) -> None:
        self._flags[name] = flag if name not in self._flags else self._flags[name] & flag  # accumulated batches

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self.enabled:
            self._record("loss", finite(loss))
            self._loss = loss.detach()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        """Read every flag of this step at once (gradients are not clipped yet); stop if one is False."""
        if not self.enabled:
            return
        sums = [p.grad.detach().sum() for p in pl_module.parameters() if p.grad is not None]
        if sums:
            self._record("gradients", finite(torch.stack(sums)))
        device = trainer.strategy.root_device
        flags = torch.stack([self._flags.get(name, torch.ones((), dtype=torch.bool, device=device)).to(device)
                             for name in CHECKED]).float()  # (3,): 1 = finite
        self._flags = {}
        if trainer.world_size > 1:  # every rank stops together: one all-reduce of the three flags
            flags = trainer.strategy.reduce(flags, reduce_op="min")
        ok = flags.tolist()  # the step's one device -> host synchronisation
        if all(ok):
            return
        what = next(name for name, good in zip(CHECKED, ok) if not good)
        raise NonFiniteLoss(self.message(trainer, what))

    def message(self, trainer: L.Trainer, what: str) -> str:
        path = last_checkpoint_path(trainer)
        kept = (f"the last good checkpoint is {path} (step {self._last_saved_step})" if self._last_saved_step is not None
                else f"the last good checkpoint is {path}" if path.is_file() else "no checkpoint was written yet")
        loss = self._loss
        value = f" (loss {float(loss):g})" if what == "loss" and loss is not None and loss.numel() == 1 else ""
        return (f"dfn: non-finite training {what}{value} at step {trainer.global_step + 1} (epoch "
                f"{trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_progress.current.ready}); "
                f"training stopped without applying it; {kept}. Try a lower --model.lr.")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._last_saved_step = int(checkpoint["global_step"])  # any checkpoint: RunGuard's or ModelCheckpoint's

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_hook()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._remove_hook()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._flags, self._loss = {}, None
