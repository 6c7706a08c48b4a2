"""wandb dashboards: metric definitions, horizon curves, a per-sequence test table, model artifacts.

- `WandbMetrics`: ``define_metric`` so the run summary keeps the best value (min for losses and errors,
  max for SSIM and PSNR) instead of the last, and the per-horizon test curves get their own x-axis
  ``horizon`` (``test_horizon/<metric>`` and ``test_horizon/copy_last/<metric>``), plus one line plot
  per metric with the model and copy-last-frame in the same panel (``test_horizon_plot/<metric>``).
- `SequenceTable`: one row per test sequence (index, BCE, MSE, SSIM, PSNR; the first and the worst rows with
  their ground truth | prediction | error GIF), wandb table ``test/per_sequence``: sort it to find the worst
  cases. Also ``<run dir>/sequences_test.csv``. The scores are the test pass's own (`dfn.evaluation`), so
  nothing is scored twice. Under DDP it holds rank zero's shard (indices 0, w, 2w, ...).
- `ModelArtifacts`: the best and the last checkpoint as versions of the model artifact
  ``model-<run id>`` with aliases ``best`` and ``latest``; `load_model` loads one back.

Every callback does nothing without a WandbLogger (except the local CSV) and runs on rank zero only.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import wandb
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from dfn.callbacks import comparison_frames, last_checkpoint_path, run_dir, write_gif
from dfn.checks import check_choice, check_int
from dfn.metrics import NAMES, better, monitored_metric
from dfn.module import VideoPrediction

SEQUENCE_COLUMNS = ("bce_per_frame", "mse_per_frame", "ssim", "psnr")


def wandb_run(trainer: L.Trainer):
    """The wandb run of the trainer's first WandbLogger, or None (no logger, or wandb disabled)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            return None if getattr(run, "disabled", False) else run  # WANDB_MODE=disabled: a no-op run
    return None


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
                                      summary=better(name))
                for prefix in ("test", "test_final"):  # best checkpoint, final weights (dfn.cli after_fit)
                    run.define_metric(f"{prefix}_horizon/{who}{name}", step_metric="horizon", summary="none")
        for split in ("val", "test", "test_final"):
            run.define_metric(f"{split}/loss", step_metric="trainer/global_step", summary=better("loss"))

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: VideoPrediction) -> None:
        run = wandb_run(trainer)
        result = pl_module.test_result  # dfn.evaluation.EvalResult of this pass
        prefix, curves = result.prefix, result.curves()  # prefix: test | test_final (dfn.cli after_fit)
        if run is None:
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
    ones by the training loss's metric, under ``<run dir>/gifs/test_sequences/``. Scores and predictions
    are the test step's own outputs (``test_step`` returns them): nothing is predicted or scored twice, and
    the first and worst sequences are kept on the device (a top-k per batch, no host synchronisation) until
    the test ends.
    """

    def __init__(self, enabled: bool = True, videos: int = 8, fps: float = 4.0) -> None:
        check_int("SequenceTable", "videos", videos, minimum=0)
        self.enabled, self.videos, self.fps = enabled, videos, fps
        self.seen = 0  # sequences of this rank so far
        self.first: list[tuple[torch.Tensor, ...]] = []  # (rows, inputs, targets, predictions) of the first ones
        self.worst: tuple[torch.Tensor, ...] | None = None  # (scores, rows, inputs, targets, predictions)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: VideoPrediction) -> None:
        self.seen, self.first, self.worst = 0, [], None

    @rank_zero_only
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not self.enabled or not self.videos:
            return
        inputs, targets = pl_module.split(batch)
        predictions = outputs["predictions"].detach()
        rows = torch.arange(self.seen, self.seen + len(batch), device=batch.device)  # (B,) this rank's order
        self.seen += len(batch)
        kept = sum(len(r) for r, *_ in self.first)
        if kept < self.videos:
            n = self.videos - kept
            self.first.append((rows[:n], inputs[:n], targets[:n], predictions[:n]))
        ranked = outputs["scores"][monitored_metric(pl_module.loss_name)]  # (B,): the training loss's metric
        candidates = (ranked, rows, inputs, targets, predictions)
        if self.worst is not None:
            candidates = tuple(torch.cat([a, b]) for a, b in zip(self.worst, candidates))
        top = candidates[0].topk(min(self.videos, len(candidates[0]))).indices  # the worst: highest loss
        self.worst = tuple(c[top] for c in candidates)

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: VideoPrediction) -> None:
        table = pl_module.test_result.per_sequence  # this rank's sequences, in order (dfn.evaluation)
        if not self.enabled or not table:
            return
        gifs: dict[int, Path] = {}
        shown = [*self.first, self.worst[1:]] if self.worst is not None else self.first
        if shown:  # one device -> host copy of the kept sequences
            rows, inputs, targets, predictions = (torch.cat(parts).cpu() for parts in zip(*shown))
            for i, row in enumerate(rows.tolist()):
                if row not in gifs:
                    frames = comparison_frames(inputs[i : i + 1], targets[i : i + 1], predictions[i : i + 1])
                    gifs[row] = self._gif(trainer, trainer.global_rank + row * trainer.world_size, frames)  # StridedShard order
        self.first, self.worst = [], None
        path = run_dir(trainer) / "sequences_test.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [[trainer.global_rank + row * trainer.world_size, *(table[name][row] for name in SEQUENCE_COLUMNS),
                 gifs.get(row)] for row in range(len(table[SEQUENCE_COLUMNS[0]]))]
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sequence", *SEQUENCE_COLUMNS, "gif"])
            writer.writerows([*row[:-1], row[-1].relative_to(path.parent).as_posix() if row[-1] else ""]
                             for row in rows)
        run = wandb_run(trainer)
        if run is not None:
            wandb_table = wandb.Table(columns=["sequence", *SEQUENCE_COLUMNS, "ground truth | prediction | error"])
            for *values, gif in rows:
                wandb_table.add_data(*values, wandb.Video(str(gif), fps=int(self.fps), format="gif") if gif else None)
            run.log({"test/per_sequence": wandb_table})

    def _gif(self, trainer: L.Trainer, index: int, frames: np.ndarray) -> Path:
        return write_gif(run_dir(trainer) / "gifs" / "test_sequences" / f"sequence_{index:05d}.gif", frames, self.fps)


class ModelArtifacts(L.Callback):
    """At the end of ``fit``: the best and the last checkpoint as wandb model artifact versions
    (aliases ``best`` and ``latest``). ``log_model``: ``online`` (default; offline runs keep their
    checkpoints on disk only), ``always`` (offline too: uploaded by ``wandb sync``) or ``never``."""

    def __init__(self, log_model: Literal["online", "always", "never"] = "online") -> None:
        check_choice("ModelArtifacts", "log_model", log_model, ("online", "always", "never"))
        self.log_model = log_model
        self.logged: list[tuple[str, list[str]]] = []

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: VideoPrediction) -> None:
        run, checkpoint = wandb_run(trainer), trainer.checkpoint_callback
        if run is None or checkpoint is None or self.log_model == "never" or (self.log_model == "online" and run.offline):
            return
        # last.ckpt: ModelCheckpoint's, or RunGuard's refresh of it when ModelCheckpoint wrote none
        best = getattr(checkpoint, "best_model_path", "")
        last = getattr(checkpoint, "last_model_path", "") or str(last_checkpoint_path(trainer))
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
