"""Runs that survive (issue 10): periodic and on-signal checkpoints, atomic writes, RNG state, and a
stop with a clear message on a non-finite loss.

:class:`RunGuard` refreshes ``<run dir>/checkpoints/last.ckpt`` every ``every_n_train_steps`` steps or
``every_n_seconds`` seconds, on SIGTERM/SIGINT (then stops and names the resume command), and when
training dies of an exception -- but never after a non-finite loss: then it stops before the optimiser
applies the bad step, so the last checkpoint keeps the last good weights. All checkpoint writes of the
run go through :class:`dfn.checkpoint_files.AtomicCheckpointIO` (temporary file + ``os.replace``), so a
SIGKILL at any moment leaves either the previous or the new complete file.
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

from dfn.callbacks import run_dir
from dfn.checkpoint_files import AtomicCheckpointIO


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the message names the step and the last checkpoint."""


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


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """``<run dir>/checkpoints/last.ckpt``: the file ModelCheckpoint(save_last=True) also refreshes."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        return Path(callback.dirpath) / (callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
    return run_dir(trainer) / "checkpoints" / "last.ckpt"


def resume_command(trainer: L.Trainer) -> str:
    """The exact command that continues this run."""
    run = last_checkpoint_path(trainer).parent.parent
    return f"python train.py fit --config {run / 'config.yaml'} --ckpt_path {run}"


class RunGuard(L.Callback):
    """Keeps a fresh ``last.ckpt``, checkpoints and stops on SIGTERM/SIGINT, refuses non-finite losses.

    Args:
        every_n_train_steps: refresh ``last.ckpt`` after every this many optimiser steps (None: off).
        every_n_seconds: ... or when this many seconds passed since the last write (None: off); the
            default, one minute, bounds the work a crash or a SIGKILL can lose.
        save_on_exception: write ``last.ckpt`` when training dies of an exception (not a non-finite loss).
    """

    def __init__(self, every_n_train_steps: int | None = None, every_n_seconds: float | None = 60.0,
                 save_on_exception: bool = True) -> None:
        if every_n_train_steps is not None and (isinstance(every_n_train_steps, bool) or every_n_train_steps < 1):
            raise ValueError(f"RunGuard: every_n_train_steps must be None or an integer >= 1, got {every_n_train_steps!r}")
        if every_n_seconds is not None and not every_n_seconds > 0:
            raise ValueError(f"RunGuard: every_n_seconds must be None or > 0, got {every_n_seconds!r}")
        self.every_n_train_steps, self.every_n_seconds = every_n_train_steps, every_n_seconds
        self.save_on_exception = save_on_exception
        self._signal: int | None = None
        self._handlers: dict[int, Any] = {}
        self._rng_to_load: dict[str, Any] | None = None
        self._last_write = time.monotonic()
        self._last_saved_step: int | None = None
        self._trainer: L.Trainer | None = None
        self._hook = None
        self._stop_at_epoch_end = False

    # ---- atomic writes, RNG state -------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # leave a user's own plugin alone
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._last_saved_step = int(checkpoint["global_step"])  # any checkpoint: ours or ModelCheckpoint's

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_load = state_dict.get("rng")  # applied at on_train_start, right before the next batch

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Keep the best score and top-k bookkeeping when the same run directory is spelled differently.

        ModelCheckpoint restores them only when its ``dirpath`` string equals the saved one; a run
        resumed from another working directory (or with an absolute ``save_dir``) names the same folder
        differently. Runs before the callbacks' ``load_state_dict``.
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
        if self._rng_to_load is not None:
            set_rng_states(self._rng_to_load)
            self._rng_to_load = None
        self._last_write = time.monotonic()
        self._signal = None
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

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()
        self._remove_hook()

    # ---- the checks in every step -------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Diverged weights give NaN predictions before they give a NaN loss, and BCE raises an opaque
        # "all elements of input should be between 0 and 1" on them: check the training forward's output.
        self._hook = pl_module.register_forward_hook(self._check_output)

    def _check_output(self, module: L.LightningModule, args: Any, output: Any) -> None:
        if module.training and isinstance(output, torch.Tensor) and self._trainer is not None:
            self._check(self._trainer, bool(torch.isfinite(output).all()), "predictions", None)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_hook()

    def _remove_hook(self) -> None:
        if getattr(self, "_hook", None) is not None:
            self._hook.remove()
            self._hook = None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        """A NaN/inf gradient (which a NaN/inf loss always gives) stops the run before the update."""
        grads = [torch.isfinite(p.grad).all() for p in pl_module.parameters() if p.grad is not None]
        self._check(trainer, bool(torch.stack(grads).all()) if grads else True, "loss or gradient", None)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._check(trainer, bool(torch.isfinite(loss).all()), "loss", loss)
        stop = self._signal is not None
        if trainer.world_size > 1:  # every rank must take part in the save and stop together
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        due = self.every_n_train_steps is not None and trainer.global_step % self.every_n_train_steps == 0
        if self.every_n_seconds is not None and time.monotonic() - self._last_write >= self.every_n_seconds:
            due = True
        if trainer.world_size > 1:
            due = trainer.strategy.broadcast(due, src=0)  # rank 0's clock decides for all
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # Lightning resumes a checkpoint taken after an epoch's last batch *without* that epoch's
            # validation; wait for it (ModelCheckpoint writes last.ckpt then) and act at the epoch's end.
            self._stop_at_epoch_end = self._stop_at_epoch_end or stop
            return
        if stop or due:
            self._save(trainer)
        if stop:
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning 2.6's ModelCheckpoint(save_last=True) rewrites last.ckpt only when it also saves a top-k
        # checkpoint: after an epoch whose validation did not improve, last.ckpt would still hold an older
        # epoch. So at every epoch's end (after its validation) a stale last.ckpt is refreshed.
        if self._last_saved_step != trainer.global_step:  # no checkpoint (so no last.ckpt) at this step
            self._save(trainer)
        if self._stop_at_epoch_end:
            self._stop(trainer)

    def _stop(self, trainer: L.Trainer) -> None:
        signum = self._signal or signal.SIGTERM
        raise RunInterrupted(f"dfn: {signal.Signals(signum).name} at step {trainer.global_step}: saved "
                             f"{last_checkpoint_path(trainer)}; resume with: {resume_command(trainer)}", signum)

    def _check(self, trainer: L.Trainer, finite: bool, what: str, loss: Any) -> None:
        if trainer.world_size > 1:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        path = last_checkpoint_path(trainer)
        kept = (f"the last good checkpoint is {path} (step {self._last_saved_step})" if self._last_saved_step is not None
                else f"the last good checkpoint is {path}" if path.is_file() else "no checkpoint was written yet")
        value = f" (loss {float(loss):g})" if isinstance(loss, torch.Tensor) and loss.numel() == 1 else ""
        raise NonFiniteLoss(f"dfn: non-finite training {what}{value} at step {trainer.global_step + 1} (epoch "
                            f"{trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_progress.current.ready}); "
                            f"training stopped without applying it; {kept}. Try a lower --model.lr.")

    def _save(self, trainer: L.Trainer) -> None:
        path = last_checkpoint_path(trainer)
        for callback in trainer.checkpoint_callbacks:  # it is their last.ckpt too: no 'last-v1.ckpt' beside it
            if getattr(callback, "save_last", False) and Path(callback.dirpath) == path.parent:
                callback.last_model_path = str(path.parent / (callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION))
        trainer.save_checkpoint(path)
        self._last_write = time.monotonic()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """An exception that kills training still leaves a checkpoint of the last completed step."""
        # Not after a NaN (garbage weights), a signal (already saved) or a second Ctrl-C (stop at once).
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
