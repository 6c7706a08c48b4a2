"""Callbacks: prediction GIFs, prediction files, the iteration timer, and where a run keeps its outputs.

Everything here runs on rank zero only and under ``torch.no_grad``, outside the training step.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import imageio.v3 as iio
import lightning as L
import numpy as np
import torch
from einops import rearrange, repeat
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only


def run_dir(trainer: L.Trainer) -> Path:
    """The run's output directory: ``<save_dir>/<name>/<version>``, the parent of Lightning's checkpoints.

    Without a logger, or under ``fast_dev_run`` (which turns loggers off), it is ``trainer.default_root_dir``:
    the CLI points that at a fresh run directory (a temporary one for ``fast_dev_run``), never at the
    current directory (`dfn.cli.DFNCLI.before_instantiate_classes`).
    """
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "dirpath", None):
        return Path(callback.dirpath).parent.resolve()
    logger = trainer.logger
    if logger is not None and logger.save_dir is not None:
        return (Path(logger.save_dir) / str(logger.name) / str(logger.version)).resolve()
    return Path(trainer.default_root_dir).resolve()


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """``<run dir>/checkpoints/last.ckpt``: the file ModelCheckpoint(save_last=True) also refreshes."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        return Path(callback.dirpath) / (callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
    return run_dir(trainer) / "checkpoints" / "last.ckpt"


def comparison_frames(inputs: torch.Tensor, targets: torch.Tensor, predictions: torch.Tensor) -> np.ndarray:
    """GIF frames for a few sequences: the inputs, then ground truth | prediction | |error| side by side.

    inputs (N, T_in, C, H, W), targets and predictions (N, T_out, C, H, W), all in [0, 1].
    Returns uint8 frames (T_in + T_out, N*H, 3*W, 3): sequences stacked vertically, RGB.
    """
    inputs, targets, predictions = (x.detach().float().cpu().clamp(0, 1) for x in (inputs, targets, predictions))
    shown_inputs = torch.cat([inputs, inputs, torch.zeros_like(inputs)], dim=-1)  # input frames in both panels
    error = (predictions - targets).abs()
    shown_outputs = torch.cat([targets, predictions, error], dim=-1)  # (N, T_out, C, H, 3W)
    video = torch.cat([shown_inputs, shown_outputs], dim=1)  # (N, T, C, H, 3W)
    if video.shape[2] == 1:
        video = repeat(video, "n t 1 h w -> n t c h w", c=3)
    video = rearrange(video[:, :, :3], "n t c h w -> t (n h) w c")  # (T, N*H, 3W, 3)
    return (video.numpy() * 255).round().astype(np.uint8)


def write_gif(path: Path, frames: np.ndarray, fps: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, extension=".gif", duration=1000 / fps, loop=0)
    return path


def log_gif(trainer: L.Trainer, key: str, path: Path) -> None:
    """Log a GIF written on disk to wandb as a video (no-op without a WandbLogger)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_video(key, [str(path)], step=trainer.global_step, format=["gif"])


class PredictionGIFs(L.Callback):
    """Writes ground truth | prediction | error GIFs for a few fixed validation sequences at every
    validation, and for the first test sequences at the end; saved under ``<run dir>/gifs`` and logged
    to wandb as videos."""

    def __init__(self, num_sequences: int = 4, fps: float = 4.0) -> None:
        self.num_sequences, self.fps = num_sequences, fps
        self.batches: dict[str, torch.Tensor] = {}
        self.written: list[Path] = []

    def _keep(self, stage: str, batch: torch.Tensor) -> None:
        """Keep the first `num_sequences` sequences seen in `stage`: the same ones every epoch."""
        kept = self.batches.get(stage)
        if kept is None or len(kept) < self.num_sequences:
            rows = batch[: self.num_sequences].detach().cpu()
            self.batches[stage] = rows if kept is None else torch.cat([kept, rows])[: self.num_sequences]

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._keep("val", batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._keep("test", batch)

    @rank_zero_only
    def _write(self, trainer: L.Trainer, pl_module, stage: str, name: str) -> None:
        batch = self.batches.get(stage)
        if batch is None or trainer.sanity_checking:
            return
        with torch.no_grad():
            batch = batch.to(pl_module.device)
            inputs, targets = pl_module.split(batch)
            predictions = pl_module(inputs)
        path = write_gif(run_dir(trainer) / "gifs" / name, comparison_frames(inputs, targets, predictions), self.fps)
        self.written.append(path)
        log_gif(trainer, f"{stage}/predictions", path)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._write(trainer, pl_module, "val", f"val_epoch{trainer.current_epoch:03d}.gif")

    def on_test_epoch_end(self, trainer, pl_module):
        self._write(trainer, pl_module, "test", "test.gif")
        self.batches.pop("test", None)


def filter_flow(filters: torch.Tensor, kernel_size: int, dilation: int = 1, softmax: bool = True) -> torch.Tensor:
    """The displacement a local filter predicts (paper, Sec. 4: filters read as a flow field).

    filters: (B, K*K[+1], H, W) raw local filters (an extra dynamic-bias channel is ignored).
    Returns (B, 2, H, W): the (dy, dx) in pixels by which content moves, i.e. minus the filter's centre of
    mass relative to the window centre (a filter that reads from the left moves content to the right).
    """
    k = kernel_size
    weights = filters[:, : k * k]  # (B, K*K, H, W)
    weights = weights.softmax(1) if softmax else weights / weights.sum(1, keepdim=True).clamp(min=1e-8)
    offsets = (torch.arange(k, device=filters.device, dtype=weights.dtype) - k // 2) * dilation
    dy = repeat(offsets, "i -> (i j)", j=k)  # row offset of window channel i*K + j
    dx = repeat(offsets, "j -> (i j)", i=k)
    flow = torch.stack([(weights * dy[:, None, None]).sum(1), (weights * dx[:, None, None]).sum(1)], dim=1)
    return -flow  # (B, 2, H, W)


def flow_colours(flow: torch.Tensor, max_displacement: float) -> torch.Tensor:
    """(N, 2, H, W) displacements -> (N, 3, H, W) RGB in [0, 1]: hue = direction, brightness = length."""
    angle = torch.atan2(flow[:, 0], flow[:, 1])  # (N, H, W) in [-pi, pi]
    value = (flow.norm(dim=1) / max_displacement).clamp(0, 1)
    hue = (angle / (2 * torch.pi)) % 1.0
    # HSV -> RGB with saturation 1: each channel is a clipped triangle wave of the hue.
    shifts = torch.tensor([0.0, 2 / 3, 1 / 3], device=flow.device)[None, :, None, None]
    rgb = (((hue[:, None] + shifts) % 1.0 * 6 - 3).abs() - 1).clamp(0, 1)
    return rgb * value[:, None]


def filter_grid(weights: torch.Tensor, kernel_size: int, grid: int = 3) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Images of the K x K filters at `grid` x `grid` fixed pixels (at 1/4, 1/2, 3/4 of the height and width).

    weights: (K*K, H, W) one filter per pixel. Returns a uint8 grey image (grid*(s*K+2), grid*(s*K+2)),
    each filter scaled by its own maximum (white = largest weight) and enlarged s times, and the pixels.
    """
    k = kernel_size
    height, width = weights.shape[-2:]
    pixels = [(height * (i + 1) // (grid + 1), width * (j + 1) // (grid + 1)) for i in range(grid) for j in range(grid)]
    scale = max(1, 48 // k)
    cell = scale * k + 2  # a 1-pixel border around each filter
    image = np.full((grid * cell, grid * cell), 64, dtype=np.uint8)
    for n, (y, x) in enumerate(pixels):
        f = rearrange(weights[:, y, x].detach().float().cpu(), "(i j) -> i j", i=k)  # (K, K)
        f = (f / f.abs().max().clamp(min=1e-12)).clamp(0, 1)
        tile = (f.repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy() * 255).round().astype(np.uint8)
        row, col = divmod(n, grid)
        image[row * cell + 1 : row * cell + 1 + scale * k, col * cell + 1 : col * cell + 1 + scale * k] = tile
    return image, pixels


class FilterFlowGIFs(L.Callback):
    """At every validation: a GIF of the flow field that the local filters encode, for the fixed
    validation sequences of `PredictionGIFs` (prediction | flow colour-wheel image per predicted frame);
    ``<run dir>/gifs/flow_epochNNN.gif``, logged to wandb; and an image of the generated K x K filters at
    fixed pixels (`filter_grid`), ``<run dir>/gifs/filters_epochNNN.png``, logged as ``val/filters``. Only for generators whose filters are one
    (B, K*K[+1], H, W) tensor (DFN-like local filters); skipped with one message otherwise."""

    def __init__(self, fps: float = 4.0) -> None:
        self.fps, self.skipped = fps, False

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module):
        gifs = next((c for c in trainer.callbacks if isinstance(c, PredictionGIFs)), None)
        batch = gifs.batches.get("val") if gifs else None
        layer = pl_module.generator.filtering
        if batch is None or trainer.sanity_checking or self.skipped:
            return
        with torch.no_grad():
            inputs, _ = pl_module.split(batch.to(pl_module.device))
            predictions, filters = pl_module.predictor(inputs, pl_module.frames_out, keep_filters=True)
        if not (isinstance(filters[0], torch.Tensor) and filters[0].dim() == 4 and hasattr(layer, "kernel_size")):
            self.skipped = True
            print(f"dfn: FilterFlowGIFs: {type(pl_module.generator).__name__} does not make one local filter "
                  "per pixel; no flow maps")
            return
        k, dilation = layer.kernel_size, layer.dilation
        flows = torch.stack([filter_flow(f, k, dilation, layer.softmax) for f in filters], dim=1)  # (N, T, 2, H, W)
        colours = flow_colours(rearrange(flows, "n t d h w -> (n t) d h w"), max_displacement=dilation * (k // 2))
        colours = rearrange(colours, "(n t) c h w -> n t c h w", n=len(flows))
        shown = repeat(predictions[:, :, :1].clamp(0, 1), "n t 1 h w -> n t c h w", c=3)
        video = rearrange(torch.cat([shown, colours], dim=-1), "n t c h w -> t (n h) w c")  # (T, N*H, 2W, 3)
        frames = (video.cpu().numpy() * 255).round().astype(np.uint8)
        path = write_gif(run_dir(trainer) / "gifs" / f"flow_epoch{trainer.current_epoch:03d}.gif", frames, self.fps)
        log_gif(trainer, "val/filter_flow", path)
        weights = filters[0][:1, : k * k]  # (1, K*K, H, W): first sequence, first predicted frame
        weights = weights.softmax(1) if layer.softmax else weights
        image, pixels = filter_grid(weights[0], k)
        path = run_dir(trainer) / "gifs" / f"filters_epoch{trainer.current_epoch:03d}.png"
        iio.imwrite(path, image)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/filters", [str(path)], step=trainer.global_step,
                                 caption=[f"{k}x{k} filters at (y, x) = {', '.join(map(str, pixels))}, first predicted frame"])


class PredictionFiles(BasePredictionWriter):
    """``predict``: writes, per batch, the predicted frames as ``.npy`` (B, T_out, C, H, W) float32 in
    [0, 1], and a GIF of inputs then ground truth | prediction | error, under ``<output_dir>``
    (default ``<run dir>/predictions``)."""

    def __init__(self, output_dir: str | None = None, fps: float = 4.0) -> None:
        super().__init__(write_interval="batch")
        self.output_dir, self.fps = output_dir, fps
        self.written: list[Path] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        out = Path(self.output_dir) if self.output_dir else run_dir(trainer) / "predictions"
        stem = f"batch{batch_idx:04d}_rank{trainer.global_rank}"
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / f"{stem}.npy", prediction["predictions"].float().cpu().numpy())
        targets = prediction["targets"]
        if targets.shape[1] < prediction["predictions"].shape[1]:  # the user's clip may have no future frames
            targets = torch.zeros_like(prediction["predictions"])
        frames = comparison_frames(prediction["inputs"], targets, prediction["predictions"])
        self.written.append(write_gif(out / f"{stem}.gif", frames, self.fps))


class HorizonTables(L.Callback):
    """After testing: every metric per prediction horizon (frame 1..N), model and copy-last-frame, as
    ``<run dir>/horizon_test.csv`` and as a wandb table ``test/horizon`` (plot it as lines in the UI);
    after a fit the final weights' test writes ``horizon_test_final.csv`` / ``test_final/horizon``."""

    @rank_zero_only
    def on_test_end(self, trainer, pl_module):
        result = pl_module.test_result  # dfn.evaluation.EvalResult of this pass
        prefix, curves = result.prefix, result.curves()  # prefix: test | test_final (dfn.cli after_fit)
        columns = ["horizon", *(f"{prefix}/{name}" for name in curves)]
        rows = [[t + 1, *(curve[t] for curve in curves.values())] for t in range(len(next(iter(curves.values()))))]
        path = run_dir(trainer) / f"horizon_{prefix}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(",".join(str(v) for v in row) for row in [columns, *rows]) + "\n")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(f"{prefix}/horizon", columns=columns, data=rows)


class IterationTimer(L.Callback):
    """Seconds per training iteration (median over the run), for the summary and the comparison table.

    CPU: the wall clock around each step. CUDA: kernels run after the host queued them, so each step is
    timed by two CUDA events recorded into the stream (the GPU's own clock, no synchronisation per step);
    finished events are read as training goes, and `seconds_per_iteration` synchronises once for the rest.
    """

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._pending: collections.deque = collections.deque()  # (start, end) CUDA events not read yet
        self._start: float | torch.cuda.Event = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if isinstance(self._start, torch.cuda.Event):
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((self._start, end))
            self._read(wait=False)
        else:
            self.durations.append(time.perf_counter() - self._start)

    def _read(self, wait: bool) -> None:
        if wait and self._pending:
            torch.cuda.synchronize()  # explicit: every recorded event has been reached
        while self._pending and self._pending[0][1].query():  # query() does not block
            start, end = self._pending.popleft()
            self.durations.append(start.elapsed_time(end) / 1000)  # milliseconds -> seconds

    def seconds_per_iteration(self) -> float | None:
        self._read(wait=True)
        return float(torch.tensor(self.durations).median()) if self.durations else None


def write_json(path: Path, values: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in values.items()}
    path.write_text(json.dumps(plain, indent=2))
    return path
