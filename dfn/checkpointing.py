"""Runs that survive: periodic and on-signal checkpoints, atomic writes and RNG state.

:class:`RunGuard` refreshes ``<run dir>/checkpoints/last.ckpt`` every ``every_n_train_steps`` steps or
``every_n_seconds`` seconds, on SIGTERM/SIGINT (then stops and names the resume command), and when
training dies of an exception -- but never after a non-finite step (`dfn.nonfinite.NonFiniteGuard` stops
those before the optimiser applies them, so the last checkpoint keeps the last good weights). All
checkpoint writes of the run go through :class:`dfn.checkpoint_files.AtomicCheckpointIO` (temporary file
+ ``os.replace``), so a SIGKILL at any moment leaves either the previous or the new complete file.

A signal is acted on at a consistent point: the checkpoint is written at the end of the current step
(after an epoch's last step: once that epoch's validation is done), and the run stops only when every
callback and logger has seen that step, at the start of the next batch or epoch or at the end of
training, so ``metrics.csv`` keeps the step's row. On a single device the guard reads nothing from the
accelerator; under DDP its decisions cost one all-reduce per step.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dfn.callbacks import last_checkpoint_path
from dfn.checkpoint_files import AtomicCheckpointIO
from dfn.checks import check_int, check_positive
from dfn.nonfinite import NonFiniteLoss

__all__ = ["NonFiniteLoss", "RunGuard", "RunInterrupted", "last_checkpoint_path", "resume_command", "rng_states",
           "set_rng_states"]


class RunInterrupted(Exception):
    """SIGTERM/SIGINT: a checkpoint was written and training stopped; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def rng_states() -> dict[str, Any]:
    """Every global RNG a training step may draw from: Python, numpy, torch CPU and CUDA.

    Only tensors, ints, floats, strings and tuples: Lightning loads checkpoints with ``weights_only=True``.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def resume_command(trainer: L.Trainer) -> str:
    """The exact command that continues this run."""
    run = last_checkpoint_path(trainer).parent.parent
    return f"python train.py fit --config {run / 'config.yaml'} --ckpt_path {run}"


class RunGuard(L.Callback):
    """Keeps a fresh ``last.ckpt``, and checkpoints and stops on SIGTERM/SIGINT (a second one stops at once).

    Pair it with ``ModelCheckpoint(save_last=True, enable_version_counter=False)`` (the CLI's default), so
    that both write the same ``last.ckpt`` instead of ``last-v1.ckpt`` beside it.

    Args:
        every_n_train_steps: refresh ``last.ckpt`` after every this many optimiser steps (None: off).
        every_n_seconds: ... or when this many seconds passed since the last write (None: off); the
            default, one minute, bounds the work a crash or a SIGKILL can lose.
        save_on_exception: write ``last.ckpt`` when training dies of an exception (not a non-finite step).
    """

    def __init__(self, every_n_train_steps: int | None = None, every_n_seconds: float | None = 60.0,
                 save_on_exception: bool = True) -> None:
        check_int("RunGuard", "every_n_train_steps", every_n_train_steps, optional=True)
        check_positive("RunGuard", "every_n_seconds", every_n_seconds, optional=True)
        self.every_n_train_steps, self.every_n_seconds = every_n_train_steps, every_n_seconds
        self.save_on_exception = save_on_exception
        self._signal: int | None = None
        self._handlers: dict[int, Any] = {}
        self._rng_after_iterator: dict[str, Any] | None = None
        self._mid_epoch = False  # whether a checkpoint written now resumes inside an epoch
        self._last_write = time.monotonic()
        self._last_saved_step: int | None = None
        self._stop_at_epoch_end = False  # a signal during an epoch's last step: stop after its validation
        self._stop_pending = False  # checkpoint written: stop once every callback has seen the step

    # ---- atomic writes, RNG state, ModelCheckpoint's bookkeeping ------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # leave a user's own plugin alone
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states(), "mid_epoch": self._mid_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the RNGs now, before Lightning builds the resumed run's data iterator (which draws from
        them), as a run never stopped did at an epoch's start; a checkpoint from inside an epoch is
        restored again at ``on_train_start``, after that iterator (the uninterrupted run drew for it
        at the epoch's start, before the checkpoint)."""
        states = state_dict.get("rng")
        if states is not None:
            set_rng_states(states)
            self._rng_after_iterator = states if state_dict.get("mid_epoch", True) else None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._last_saved_step = int(checkpoint["global_step"])  # any checkpoint: ours or ModelCheckpoint's

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Keep the best score and top-k bookkeeping when the same run directory is spelled differently.

        ModelCheckpoint restores them only when its ``dirpath`` string equals the saved one; a run
        resumed from another working directory (or with an absolute ``save_dir``) names the same folder
        differently. This rewrites the paths in the checkpoint's saved state (this hook runs before the
        callbacks' ``load_state_dict``); ModelCheckpoint itself is left alone.
        """
        for callback in trainer.checkpoint_callbacks:
            state = checkpoint.get("callbacks", {}).get(callback.state_key)
            saved, current = (state or {}).get("dirpath"), callback.dirpath
            if not saved or not current or saved == current:
                continue
            if os.path.realpath(saved) != os.path.realpath(current):
                continue  # really another directory: Lightning's own warning applies

            def moved(path: str) -> str:
                return str(Path(current) / Path(path).relative_to(saved)) if path and path.startswith(saved) else path

            state["dirpath"] = current
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state:
                    state[key] = moved(state[key])
            if "best_k_models" in state:
                state["best_k_models"] = {moved(k): v for k, v in state["best_k_models"].items()}

    # ---- signals ------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._rng_after_iterator is not None:
            set_rng_states(self._rng_after_iterator)
            self._rng_after_iterator = None
        self._last_write = time.monotonic()
        self._signal, self._stop_at_epoch_end, self._stop_pending = None, False, False
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._handlers[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: leave signals to the caller
                pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None:  # a second signal: stop at once the usual way
            self._restore_handlers()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self._signal = signum  # acted on after the current training step (a consistent state)

    def _restore_handlers(self) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers = {}

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()

    # ---- every step ---------------------------------------------------------------------------------
    def _decide(self, trainer: L.Trainer) -> tuple[bool, bool]:
        """(stop, save): a signal came; a periodic checkpoint is due. The same on every rank."""
        stop = self._signal is not None
        due = self.every_n_train_steps is not None and trainer.global_step % self.every_n_train_steps == 0
        if self.every_n_seconds is not None and time.monotonic() - self._last_write >= self.every_n_seconds:
            due = True
        if trainer.world_size > 1:  # every rank saves and stops together: one all-reduce for both
            decided = trainer.strategy.reduce(torch.tensor([float(stop), float(due)], device=trainer.strategy.root_device),
                                              reduce_op="max")
            stop, due = (bool(v) for v in decided.tolist())
        return stop, due

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        if self._stop_pending:  # the stopped step is logged by now
            self._stop(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        self._mid_epoch = not last_batch
        stop, due = self._decide(trainer)
        if last_batch:
            # Lightning resumes a checkpoint taken after an epoch's last batch *without* that epoch's
            # validation; wait for it (ModelCheckpoint writes last.ckpt then) and act at the epoch's end.
            self._stop_at_epoch_end = self._stop_at_epoch_end or stop
            return
        if stop or due:
            self._save(trainer)
        self._stop_pending = stop

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stop_pending:
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning 2.6's ModelCheckpoint(save_last=True) rewrites last.ckpt only when it also saves a top-k
        # checkpoint: after an epoch whose validation did not improve, last.ckpt would still hold an older
        # epoch. So at every epoch's end (after its validation) a stale last.ckpt is refreshed.
        self._mid_epoch = False
        if self._last_saved_step != trainer.global_step:  # no checkpoint (so no last.ckpt) at this step
            self._save(trainer)
        if self._stop_at_epoch_end:
            self._stop_at_epoch_end, self._stop_pending = False, True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        if self._stop_pending:  # the signal came during the run's last step: checkpoint written, stop here
            self._stop(trainer)

    def _stop(self, trainer: L.Trainer) -> None:
        self._stop_pending = False
        signum = self._signal or signal.SIGTERM
        raise RunInterrupted(f"dfn: {signal.Signals(signum).name} at step {trainer.global_step}: saved "
                             f"{last_checkpoint_path(trainer)}; resume with: {resume_command(trainer)}", signum)

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(last_checkpoint_path(trainer))
        self._last_write = time.monotonic()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """An exception that kills training still leaves a checkpoint of the last completed step."""
        # Not after a NaN (see NonFiniteGuard), a signal (already saved) or a second Ctrl-C (stop at once).
        self._restore_handlers()
        if isinstance(exception, (NonFiniteLoss, RunInterrupted, KeyboardInterrupt, SystemExit)) \
                or not self.save_on_exception:
            return
        if not trainer.training or trainer.global_step == 0 or trainer.global_step == self._last_saved_step:
            return
        if trainer.world_size > 1:  # a save is collective; the other ranks may be gone or stuck
            return
        try:
            self._save(trainer)
        except Exception as err:  # never mask the original error
            print(f"dfn: could not write a checkpoint after the error ({type(err).__name__}: {err})")
