"""wandb dashboards: metric definitions, horizon curves, a per-sequence test table, model artifacts.

- `WandbMetrics`: ``define_metric`` so the run summary keeps the best value (min for losses and errors,
  max for SSIM and PSNR) instead of the last, and the per-horizon test curves get their own x-axis
  ``horizon`` (``test_horizon/<metric>`` and ``test_horizon/copy_last/<metric>``), plus one line plot
  per metric with the model and copy-last-frame in the same panel (``test_horizon_plot/<metric>``).
- `SequenceTable`: one row per test sequence (index, BCE, MSE, SSIM, PSNR; the first and the worst rows with
  their ground truth | prediction | error GIF), wandb table ``test/per_sequence``: sort it to find the worst
  cases. Also ``<run dir>/sequences_test.csv``. Under DDP it holds rank zero's shard (indices 0, w, 2w, ...).
- `ModelArtifacts`: the best and the last checkpoint as versions of the model artifact
  ``model-<run id>`` with aliases ``best`` and ``latest``; `load_model` loads one back.

Every callback does nothing without a WandbLogger (except the local CSV) and runs on rank zero only.
"""

from __future__ import annotations

import argparse
import csv
import heapq
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import wandb
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from dfn.callbacks import comparison_frames, run_dir, write_gif
from dfn.metrics import NAMES, frame_scores
from dfn.module import VideoPrediction

HIGHER_IS_BETTER = ("ssim", "psnr")
SEQUENCE_COLUMNS = ("bce_per_frame", "mse_per_frame", "ssim", "psnr")


def wandb_run(trainer: L.Trainer):
    """The wandb run of the trainer's first WandbLogger, or None (no logger, or wandb disabled)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            return None if getattr(run, "disabled", False) else run  # WANDB_MODE=disabled: a no-op run
    return None


def summary_kind(name: str) -> str:
    return "max" if name.rsplit("/", 1)[-1] in HIGHER_IS_BETTER else "min"


class WandbMetrics(L.Callback):
    """Metric definitions (best-value summaries, the ``horizon`` x-axis) and the horizon curves."""

    @rank_zero_only
    def setup(self, trainer: L.Trainer, pl_module: VideoPrediction, stage: str) -> None:
        run = wandb_run(trainer)
        if run is None:
            return
        run.define_metric("trainer/global_step")
        run.define_metric("horizon")
        for who in ("", "copy_last/"):
            for name in NAMES:
                for split in ("val", "test", "test_final"):  # explicit names beat WandbLogger's "*" glob
                    run.define_metric(f"{split}/{who}{name}", step_metric="trainer/global_step",
                                      summary=summary_kind(name))
                for prefix in ("test", "test_final"):  # best checkpoint, final weights (dfn.cli after_fit)
                    run.define_metric(f"{prefix}_horizon/{who}{name}", step_metric="horizon", summary="none")
        for split in ("val", "test"):
            run.define_metric(f"{split}/loss", step_metric="trainer/global_step", summary="min")

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: VideoPrediction) -> None:
        run = wandb_run(trainer)
        results = getattr(pl_module, "last_test_results", {})
        prefix = getattr(pl_module, "test_prefix", "test")  # test | test_final (dfn.cli after_fit)
        curves = {k.removesuffix("/horizon").removeprefix(f"{prefix}/"): v.tolist()
                  for k, v in results.items() if k.endswith("/horizon")}
        if run is None or not curves:
            return
        horizons = list(range(1, len(next(iter(curves.values()))) + 1))
        for t, horizon in enumerate(horizons):
            run.log({"horizon": horizon, **{f"{prefix}_horizon/{name}": curve[t] for name, curve in curves.items()}})
        for name in NAMES:
            if name in curves and f"copy_last/{name}" in curves:
                plot = wandb.plot.line_series(xs=horizons, ys=[curves[name], curves[f"copy_last/{name}"]],
                                              keys=["model", "copy last frame"], title=f"{prefix} {name} per horizon",
                                              xname="horizon")
                run.log({f"{prefix}_horizon_plot/{name}": plot})


class SequenceTable(L.Callback):
    """Per-sequence test scores as a wandb table and ``<run dir>/sequences_test.csv`` (see module doc).

    GIFs (ground truth | prediction | error) for the first `videos` sequences and for the `videos` worst
    ones by the training loss's metric, under ``<run dir>/gifs/test_sequences/``. The predictions are the
    test step's own (a forward hook records them), so nothing is run twice; scoring each sequence again
    costs about a fifth more test time on the quickstart network (``--sequence_table.enabled false``).
    """

    def __init__(self, enabled: bool = True, videos: int = 8, fps: float = 4.0) -> None:
        if videos < 0:
            raise ValueError(f"SequenceTable: videos must be >= 0, got {videos}")
        self.enabled, self.videos, self.fps = enabled, videos, fps
        self.rows: list[list] = []
        self.worst: list[tuple[float, int, np.ndarray]] = []  # min-heap of (score, row, GIF frames)
        self._last_output: torch.Tensor | None = None
        self._hook = None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: VideoPrediction) -> None:
        self.rows, self.worst = [], []
        if self.enabled:
            self._hook = pl_module.register_forward_hook(self._record)

    def _record(self, module, args, output) -> None:
        self._last_output = output

    def _gif(self, trainer: L.Trainer, index: int, frames: np.ndarray) -> Path:
        return write_gif(run_dir(trainer) / "gifs" / "test_sequences" / f"sequence_{index:05d}.gif", frames, self.fps)

    @rank_zero_only
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not self.enabled:
            return
        inputs, targets = pl_module.split(batch)
        predictions = self._last_output
        if predictions is None or predictions.shape != targets.shape:  # the step did not call forward
            with torch.no_grad():
                predictions = pl_module(inputs)
        scores = frame_scores(predictions, targets)  # name -> (B, T)
        ranked_by = "bce_per_frame" if pl_module.loss_name == "bce" else "mse_per_frame"
        for i in range(len(batch)):
            row = len(self.rows)
            index = trainer.global_rank + row * trainer.world_size  # StridedShard order
            frames = comparison_frames(inputs[i : i + 1], targets[i : i + 1], predictions[i : i + 1])
            gif = self._gif(trainer, index, frames) if row < self.videos else None
            self.rows.append([index, *(float(scores[n][i].mean()) for n in SEQUENCE_COLUMNS), gif])
            score = float(scores[ranked_by][i].mean())
            if self.videos and (len(self.worst) < self.videos or score > self.worst[0][0]):
                entry = (score, row, frames)
                heapq.heappush(self.worst, entry) if len(self.worst) < self.videos else heapq.heapreplace(self.worst, entry)
        self._last_output = None

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: VideoPrediction) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: VideoPrediction) -> None:
        if not self.rows:
            return
        for _, row, frames in self.worst:
            if self.rows[row][-1] is None:
                self.rows[row][-1] = self._gif(trainer, self.rows[row][0], frames)
        self.worst = []
        path = run_dir(trainer) / "sequences_test.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sequence", *SEQUENCE_COLUMNS, "gif"])
            writer.writerows([*row[:-1], row[-1].relative_to(path.parent).as_posix() if row[-1] else ""]
                             for row in self.rows)
        run = wandb_run(trainer)
        if run is not None:
            table = wandb.Table(columns=["sequence", *SEQUENCE_COLUMNS, "ground truth | prediction | error"])
            for *values, gif in self.rows:
                table.add_data(*values, wandb.Video(str(gif), fps=int(self.fps), format="gif") if gif else None)
            run.log({"test/per_sequence": table})


class ModelArtifacts(L.Callback):
    """At the end of ``fit``: the best and the last checkpoint as wandb model artifact versions
    (aliases ``best`` and ``latest``). ``log_model``: ``online`` (default; offline runs keep their
    checkpoints on disk only), ``always`` (offline too: uploaded by ``wandb sync``) or ``never``."""

    def __init__(self, log_model: Literal["online", "always", "never"] = "online") -> None:
        if log_model not in ("online", "always", "never"):
            raise ValueError(f"ModelArtifacts: log_model must be 'online', 'always' or 'never', got {log_model!r}")
        self.log_model = log_model
        self.logged: list[tuple[str, list[str]]] = []

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: VideoPrediction) -> None:
        run, checkpoint = wandb_run(trainer), trainer.checkpoint_callback
        if run is None or checkpoint is None or self.log_model == "never" or (self.log_model == "online" and run.offline):
            return
        best, last = getattr(checkpoint, "best_model_path", ""), getattr(checkpoint, "last_model_path", "")
        score = getattr(checkpoint, "best_model_score", None)
        for path, aliases in ((best, ["best"]), (last, ["latest"])):
            if not path or not Path(path).is_file():
                continue
            artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata={
                "checkpoint": str(Path(path).resolve()), "global_step": trainer.global_step,
                "monitor": getattr(checkpoint, "monitor", None),
                "best_score": float(score) if score is not None else None})
            artifact.add_file(str(path), name="model.ckpt")
            run.log_artifact(artifact, aliases=aliases)
            self.logged.append((str(path), aliases))


def checkpoint_in(path: Path) -> Path:
    """A checkpoint file, or the one checkpoint in an (artifact) folder (``model.ckpt`` preferred)."""
    if path.is_file():
        return path
    found = sorted(path.glob("*.ckpt"))
    if (path / "model.ckpt").is_file():
        return path / "model.ckpt"
    if len(found) != 1:
        raise ValueError(f"{path}: expected one .ckpt file in the artifact folder, found {[p.name for p in found]}")
    return found[0]


def download(reference: str) -> Path:
    """A local checkpoint for `reference`: a path (file, or a downloaded artifact folder) is used as is;
    otherwise a wandb artifact ``[entity/project/]model-<run id>:<alias or version>`` is downloaded
    (needs the wandb server)."""
    path = Path(reference)
    if path.exists():
        return checkpoint_in(path)
    if ":" not in reference:
        raise ValueError(f"{reference!r} is neither an existing path nor a wandb artifact reference "
                         "like 'entity/dfn/model-<run id>:best'")
    artifact = wandb.Api().artifact(reference, type="model")
    return checkpoint_in(Path(artifact.download()))


def load_model(reference: str, map_location: str | torch.device = "cpu") -> VideoPrediction:
    """A trained model from a checkpoint path, an artifact folder or a wandb artifact reference."""
    return VideoPrediction.load_from_checkpoint(download(reference), map_location=map_location)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m dfn.wandb_extras",
                                     description="Print the local checkpoint path of a wandb model artifact "
                                                 "(downloading it), for train.py's --ckpt_path.")
    parser.add_argument("reference", help="e.g. my-team/dfn/model-1a2b3c4d:best, or a local path")
    path = download(parser.parse_args(argv).reference)
    print(path)
    return path


if __name__ == "__main__":
    main()
