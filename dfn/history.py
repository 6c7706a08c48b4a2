"""A run's metric history on disk: ``<run dir>/metrics.csv``, next to the checkpoints and GIFs.

wandb keeps the curves online (or in its offline transaction log); the local report (`dfn.report`) needs
them as plain numbers. `MetricsCSV` adds a `CSVMetricsLogger` as a *second* logger when a run starts, so
the wandb logger stays first and keeps deciding the run directory (Lightning puts checkpoints under the
first logger's ``save_dir/name/version``), and every ``self.log`` value lands in both.

The file is long-format, ``step,metric,value`` (one row per logged value), so it can be appended to
when a run is resumed into the same directory and new metric names never force a rewrite. A resumed run
first drops the rows logged after its checkpoint (a SIGKILL leaves some), so the file holds every step
once, as a run never stopped writes it.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from dfn.callbacks import run_dir

COLUMNS = ("step", "metric", "value")


class CSVMetricsLogger(Logger):
    """Appends every logged scalar to `path` as ``step,metric,value`` rows (rank zero only).

    ``save_dir`` is None and ``name``/``version`` are empty so that, should it ever be the only logger,
    Lightning's checkpoint directory is the same as with no logger at all.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._rows: list[tuple[int, str, float]] = []

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> None:
        return None

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """Nothing: the resolved config is already ``<run dir>/config.yaml``."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float | torch.Tensor], step: int | None = None) -> None:
        for key, value in metrics.items():
            value = value.item() if isinstance(value, torch.Tensor) else value
            if isinstance(value, (int, float)):
                self._rows.append((-1 if step is None else int(step), key, float(value)))
        self.save()

    @rank_zero_only
    def save(self) -> None:
        if not self._rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.is_file()
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if fresh:
                writer.writerow(COLUMNS)
            writer.writerows(self._rows)
        self._rows = []


class MetricsCSV(L.Callback):
    """Keeps every logged metric in ``<run dir>/metrics.csv`` (see the module docstring); off with
    ``--metrics_csv.enabled false``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.enabled or any(isinstance(lg, CSVMetricsLogger) for lg in trainer.loggers):
            return  # `fit` then `test` on one trainer: set up once
        # Lightning has created the first logger's experiment (the wandb run id) before callbacks' setup,
        # so the run directory is known here.
        trainer.loggers = [*trainer.loggers, CSVMetricsLogger(run_dir(trainer) / "metrics.csv")]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed run: drop the rows logged after its checkpoint, which it logs again.

        Lightning logs the values of optimiser step k (and the validation after it) at logger step k - 1,
        and a run resumed at ``global_step`` g logs from logger step g on, wherever in the epoch its
        checkpoint was written; so the rows to drop are those with step >= g.
        """
        logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVMetricsLogger)), None)
        if not self.enabled or logger is None or not trainer.ckpt_path or not trainer.is_global_zero:
            return
        drop_after(logger.path, trainer.global_step)


def drop_after(path: Path, step: int) -> int:
    """Rewrite ``metrics.csv`` at `path` without the rows whose step is >= `step` (atomically: temporary
    file + ``os.replace``); returns how many were dropped (0 when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [row for row in rows[1:] if int(row[0]) < step]
    if len(kept) == len(rows) - 1:
        return 0
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as f:
        csv.writer(f).writerows([rows[0], *kept])
    os.replace(partial, path)
    return len(rows) - 1 - len(kept)


def read_metrics(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``metrics.csv`` -> {metric: (steps, values)} in logged order; {} when the file does not exist."""
    curves: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != COLUMNS:
            raise ValueError(f"{path}: not a dfn metrics file (expected the header {','.join(COLUMNS)}, got {header})")
        for step, metric, value in reader:
            steps, values = curves[metric]
            steps.append(int(step))
            values.append(float(value))
    return dict(curves)
