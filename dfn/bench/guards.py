"""What the run guards cost per training step: ``python -m dfn.bench guards``.

    python -m dfn.bench guards --config experiments/quickstart.yaml [--steps 50] [--warmup 5] [--threads 1]

Builds the config's fit as ``train.py fit`` builds it (`dfn.bench.train.build`: same model, data, precision
and callbacks; no logger, no validation, no checkpoint files) and trains ``--steps`` optimiser steps twice,
each time in a fresh build: without `dfn.checkpointing.RunGuard` and `dfn.nonfinite.NonFiniteGuard`, then
with them. Printed for each: the median CPU and wall seconds per step (the first ``--warmup`` steps not
timed) and, with the guards, the CPU time spent inside their per-step hooks, each call timed
(NonFiniteGuard's prediction hook, loss and gradient checks; RunGuard's batch start and end). How many
values those hooks read from the device per step is counted by
``tests/test_resume.py::test_the_guards_read_one_value_per_step``.

On a machine shared with other work the whole-step times of two runs differ by more than the guards cost;
the hooks' own time is the figure that isolates them. Results: docs/runs.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import lightning as L
import torch

# The guards' per-step hooks (what runs at every training step; the checkpoint writes are not per step).
HOOKS = ("_check_predictions", "on_before_backward", "on_before_optimizer_step", "on_train_batch_start",
         "on_train_batch_end")


class StepClock(L.Callback):
    """CPU and wall seconds of every training step, batch start to batch end."""

    def __init__(self) -> None:
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self._start = (0.0, 0.0)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._start = (time.process_time(), time.perf_counter())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self.cpu.append(time.process_time() - self._start[0])
        self.wall.append(time.perf_counter() - self._start[1])


def timed(owner: object, name: str, spent: list[float]) -> None:
    """Replace ``owner.name`` by a wrapper that adds the CPU seconds of every call to ``spent[0]``."""
    hook: Callable = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.process_time()
        try:
            return hook(*args, **kwargs)
        finally:
            spent[0] += time.process_time() - start

    setattr(owner, name, wrapper)


def measure(config: Path, steps: int, warmup: int, guards: bool, precision: str | None) -> dict[str, float]:
    """One fit of `steps` steps of `config`, with or without the guards: per-step medians and hook time."""
    from dfn.bench.train import build
    from dfn.checkpointing import RunGuard
    from dfn.nonfinite import NonFiniteGuard

    with tempfile.TemporaryDirectory(prefix="dfn-bench-guards-") as root:
        overrides = ["--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
                     "--trainer.num_sanity_val_steps", "0", "--trainer.enable_model_summary", "false",
                     "--trainer.default_root_dir", root, "--guard.every_n_seconds", "null"]
        cli = build(config, "cpu", precision, overrides)
        clock, spent = StepClock(), [0.0]
        kept = []
        for callback in cli.trainer.callbacks:
            if isinstance(callback, L.pytorch.callbacks.ModelCheckpoint):
                continue  # checkpoint files: not a per-step cost, and nothing to monitor without validation
            if isinstance(callback, (RunGuard, NonFiniteGuard)):
                if not guards:
                    continue
                for name in HOOKS:
                    if name in type(callback).__dict__:
                        timed(callback, name, spent)
            kept.append(callback)
        cli.trainer.callbacks = [clock, *kept]
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cpu, wall = clock.cpu[warmup:], clock.wall[warmup:]
    return {"steps": len(clock.cpu), "timed": len(cpu), "cpu_s": statistics.median(cpu),
            "wall_s": statistics.median(wall), "hooks_cpu_ms": 1000 * spent[0] / max(1, len(clock.cpu))}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="a train.py config, e.g. experiments/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=50, help="training steps per fit (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps not timed (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--precision", default=None, help="Lightning precision (default: the config's)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def main(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    if args.steps <= args.warmup:
        raise SystemExit(f"dfn.bench guards: --steps must be > --warmup ({args.warmup}), got {args.steps}")
    torch.set_num_threads(args.threads)
    results = {mode: measure(args.config, args.steps, args.warmup, mode == "with guards", args.precision)
               for mode in ("without guards", "with guards")}
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for mode, r in results.items():
            hooks = f", guard hooks {r['hooks_cpu_ms']:.2f} ms CPU per step" if mode == "with guards" else ""
            print(f"{mode}: {r['cpu_s']:.3f} s CPU, {r['wall_s']:.3f} s wall per step (median of {r['timed']} "
                  f"steps){hooks}")
    return results
