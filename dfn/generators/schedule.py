"""Temperature annealing for softmax-attention generators (DynamicConv, Chen et al., CVPR 2020).

DynamicConv divides its attention logits by a temperature τ that decreases linearly from 30 to 1 over
the first 10 (of 100) training epochs: a large τ keeps the attention near uniform early on, so every
kernel is optimised instead of a few winning at random; the paper reports a clear accuracy drop without
it (Chen et al., CVPR 2020).

`TemperatureAnnealing` is a Lightning callback: before every training batch it computes τ for the
current optimizer step and writes it into every submodule of the LightningModule that has a
``temperature`` attribute (a tensor buffer is filled in place so it stays in the checkpoint), and logs
it as ``generator/temperature``. It keys on ``trainer.global_step``, so a resumed run continues the
schedule where it stopped.

The annealing length is either ``anneal_fraction`` of the run's optimizer steps
(``trainer.estimated_stepping_batches``, which honours ``max_steps`` and ``max_epochs``; default 0.1 =
the paper's 10 of 100 epochs, so a short ``--trainer.max_steps 1000`` run also finishes the schedule) or a
fixed ``anneal_steps``. Both are functions of the configured run length, not of how far it got, so a
resumed run sees the same schedule.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from dfn.checks import check_int, check_number, check_positive, fail


def annealed_temperature(step: int, start: float, end: float, anneal_steps: int) -> float:
    """τ at optimizer step ``step``: linear from ``start`` (step 0) to ``end`` (step ``anneal_steps``), then flat."""
    if anneal_steps <= 0:
        return end
    progress = min(max(step, 0) / anneal_steps, 1.0)
    return start + (end - start) * progress


def modules_with_temperature(module: nn.Module) -> list[nn.Module]:
    """Every submodule of ``module`` (itself included) that exposes a ``temperature`` attribute."""
    return [m for m in module.modules() if hasattr(m, "temperature")]


def set_temperature(module: nn.Module, value: float) -> int:
    """Set ``temperature`` on every submodule that has one; returns how many were set.

    Marks each as scheduled (``temperature_scheduled = True``), which silences DynamicConv's warning about
    training at a fixed τ.
    """
    targets = modules_with_temperature(module)
    for m in targets:
        if hasattr(m, "temperature_scheduled"):
            m.temperature_scheduled = True
        current = getattr(m, "temperature")
        if isinstance(current, torch.Tensor):
            current.fill_(value)  # a buffer: keep it a tensor (and in the state dict)
        else:
            setattr(m, "temperature", float(value))
    return len(targets)


class TemperatureAnnealing(L.Callback):
    """Anneal every ``temperature`` in the model linearly from ``start`` to ``end``.

    Over ``anneal_fraction`` of the run's optimizer steps (default 0.1, the paper's), or, if given instead,
    a fixed ``anneal_steps``. Give one of the two, not both.
    """

    def __init__(
        self,
        start: float = 30.0,  # DynamicConv paper: τ starts at 30
        end: float = 1.0,  # DynamicConv paper: τ ends at 1
        anneal_fraction: float | None = 0.1,  # DynamicConv paper: the first 10 of 100 epochs
        anneal_steps: int | None = None,  # a fixed length instead (then set anneal_fraction: null)
    ) -> None:
        owner = "TemperatureAnnealing"
        check_positive(owner, "start", start)
        check_positive(owner, "end", end)
        if (anneal_fraction is None) == (anneal_steps is None):
            raise fail(owner, "anneal_steps", "null when anneal_fraction is set, and set when it is null",
                       anneal_steps, meaning=f"give exactly one of the two; anneal_fraction is {anneal_fraction}")
        check_number(owner, "anneal_fraction", anneal_fraction, low=0, high=1, optional=True)
        check_int(owner, "anneal_steps", anneal_steps, minimum=0, optional=True)
        self.start, self.end = start, end
        self.anneal_fraction, self.anneal_steps = anneal_fraction, anneal_steps

    def resolve(self, total_steps: float) -> int:
        """Fix ``anneal_steps`` from the run's total optimizer steps (with ``anneal_fraction``); returns it."""
        if self.anneal_fraction is not None:
            if not math.isfinite(total_steps) or total_steps < 1:
                raise fail("TemperatureAnnealing", "the run length", "finite with anneal_fraction", total_steps,
                           meaning=f"anneal_fraction={self.anneal_fraction} of trainer.max_steps or max_epochs; "
                                   "set anneal_steps instead", shown=f"{total_steps} steps")
            self.anneal_steps = round(self.anneal_fraction * total_steps)
        return self.anneal_steps

    def temperature(self, step: int) -> float:
        """τ at optimizer step ``step`` (with ``anneal_fraction``: after `resolve`, i.e. once fit started)."""
        if self.anneal_steps is None:
            raise RuntimeError("TemperatureAnnealing: anneal_steps is not known before fit starts "
                               "(call resolve(total_steps) first)")
        return annealed_temperature(step, self.start, self.end, self.anneal_steps)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.anneal_fraction is not None:
            self.resolve(trainer.estimated_stepping_batches)
        if not modules_with_temperature(pl_module):
            rank_zero_warn("TemperatureAnnealing: no module of the model has a `temperature` attribute; "
                           "the callback does nothing (is the generator DynamicConv?)")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        tau = self.temperature(trainer.global_step)
        if set_temperature(pl_module, tau):
            pl_module.log("generator/temperature", tau, on_step=True, on_epoch=False)


__all__ = ["TemperatureAnnealing", "annealed_temperature", "set_temperature", "modules_with_temperature"]
