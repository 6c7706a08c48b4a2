"""``python -m dfn.bench anchors``: classical predictors scored on a config's test clips (docs/real_video.md).

What a learned model must beat on real footage, measured on exactly the clips ``train.py test`` scores
(the data module is built from the config's ``data`` section by the same jsonargparse machinery):

- ``copy_last``: every future frame is the last input frame.
- ``farneback``: classical optical-flow extrapolation. OpenCV's Farneback dense flow (Farneback 2003)
  from the last input frame back to the one before gives, per pixel p of the last frame, where its
  content was one frame earlier (p + v(p)); assuming constant velocity, future frame k is the last frame
  sampled at p + k v(p) (``cv2.remap``, bilinear, border replicate): one interpolation per frame, no
  blur accumulated over k. Colour frames: flow on their luma, every channel warped.

Scores: :func:`dfn.metrics.frame_scores` (MSE per frame, SSIM, PSNR), averaged over clips and horizons.
Needs OpenCV: ``pip install 'dfn[anchors]'`` (opencv-python-headless).

``--ckpt`` (a checkpoint, a run directory or ``pretrained:<name>``) adds a trained model to the table,
scored on the same clips (e.g. a model trained on other data, zero-shot; docs/natural_video.md). Several
``--path`` values score each video's test clips, then all of them pooled (every clip counts once, so
``mse_per_frame`` pooled is the mean over all their test frames).

    python -m dfn.bench anchors --config experiments/real_video/dfn.yaml \
        --path data/samples/carphone_pristine.mp4 --path data/samples/bikes.mp4 --ckpt pretrained:natural_video
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from einops import repeat

from dfn.metrics import frame_scores

# OpenCV tutorial settings for Farneback (pyramid 0.5 x 3 levels, 15 px window, 3 iterations, 5 px
# polynomial neighbourhood with sigma 1.2): a common, untuned choice.
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
METRICS = ("mse_per_frame", "mse_per_pixel", "ssim", "psnr")


def _cv2():
    try:
        import cv2
    except ImportError as err:
        raise ImportError("the Farneback anchor needs OpenCV: pip install 'dfn[anchors]' "
                          "(or opencv-python-headless)") from err
    return cv2


def copy_last(inputs: torch.Tensor, frames_out: int) -> torch.Tensor:
    """inputs (B, T_in, C, H, W) -> (B, frames_out, C, H, W): the last input frame repeated."""
    return repeat(inputs[:, -1], "b c h w -> b t c h w", t=frames_out)


def _gray_uint8(frame: np.ndarray) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W) uint8 luma (BT.601 for colour, as dfn.data.video)."""
    g = frame[0] if frame.shape[0] == 1 else np.tensordot(np.array([0.299, 0.587, 0.114]), frame[:3], axes=1)
    return np.clip(np.round(g * 255), 0, 255).astype(np.uint8)


def farneback_extrapolate(inputs: torch.Tensor, frames_out: int) -> torch.Tensor:
    """Constant-velocity flow extrapolation of the last two input frames.

    inputs (B, T_in >= 2, C, H, W) in [0, 1] -> predictions (B, frames_out, C, H, W) in [0, 1]:
    prediction k (1-based) = last frame sampled at p + k * v(p), v = Farneback flow last -> previous.
    """
    if inputs.dim() != 5 or inputs.shape[1] < 2:
        raise ValueError(f"farneback_extrapolate: inputs must be (B, T_in >= 2, C, H, W); got {tuple(inputs.shape)}")
    cv2 = _cv2()
    frames = inputs.detach().float().cpu().numpy()  # (B, T_in, C, H, W)
    b, _, c, h, w = frames.shape
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out = np.empty((b, frames_out, c, h, w), np.float32)
    for i in range(b):
        previous, last = _gray_uint8(frames[i, -2]), _gray_uint8(frames[i, -1])
        # flow[y, x] = (dx, dy): last(y, x) ~ previous(y + dy, x + dx), i.e. where p's content was before
        flow = cv2.calcOpticalFlowFarneback(last, previous, None, **FARNEBACK)  # (H, W, 2)
        source = np.ascontiguousarray(frames[i, -1].transpose(1, 2, 0))  # (H, W, C) float32
        for k in range(1, frames_out + 1):
            map_x, map_y = grid_x + k * flow[..., 0], grid_y + k * flow[..., 1]
            warped = cv2.remap(source, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            out[i, k - 1] = warped.reshape(h, w, c).transpose(2, 0, 1)  # (C, H, W); remap drops a C=1 axis
    return torch.from_numpy(out).clamp_(0, 1)


PREDICTORS = {"copy_last": copy_last, "farneback": farneback_extrapolate}


Predictor = Callable[[torch.Tensor, int], torch.Tensor]  # (inputs (B, T_in, C, H, W), frames_out) -> predictions


def load_model(reference: str):
    """A trained video-prediction model (eval mode, CPU) from a checkpoint file, run directory or
    ``pretrained:<name>``; its class is the one its hyperparameters name (``dfn.module.VideoPrediction``)."""
    import importlib

    from dfn.checkpoint_files import resolve_checkpoint

    path = resolve_checkpoint(reference, argument="--ckpt")
    hparams = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters") or {}
    module_name, _, class_name = str(hparams.get("_class_path", "dfn.module.VideoPrediction")).rpartition(".")
    model = getattr(importlib.import_module(module_name), class_name).load_from_checkpoint(
        path, map_location="cpu", weights_only=True)
    if not hasattr(model, "predictor") or not hasattr(model, "frames_in"):
        raise ValueError(f"--ckpt {reference}: {class_name} is not a video-prediction model (no predictor/frames_in)")
    return model.eval()


def model_predictor(model) -> Predictor:
    """A trained model as a predictor: it reads the last ``model.frames_in`` input frames (its warm-up
    length) and rolls out any number of frames; predictions are scored raw, as ``train.py test`` does."""
    def predict(inputs: torch.Tensor, frames_out: int) -> torch.Tensor:
        if inputs.shape[1] < model.frames_in or inputs.shape[2] != model.channels:
            raise ValueError(f"--ckpt: the model reads {model.frames_in} frames of {model.channels} channels; the "
                             f"clips give {inputs.shape[1]} frames of {inputs.shape[2]} (set frames_in / color)")
        with torch.no_grad():
            return model.predictor(inputs[:, -model.frames_in:].float(), frames_out)
    return predict


def score_anchors(loader, frames_in: int, frames_out: int, limit: int | None = None,
                  predictors: dict[str, Predictor] | None = None) -> dict[str, dict[str, float]]:
    """Mean scores of every predictor (default: the anchors) over the clips of `loader` (batches
    (B, T, C, H, W) in [0, 1]).

    Returns {predictor: {metric: mean over clips and horizons, "clips": n}}.
    """
    predictors = PREDICTORS if predictors is None else predictors
    sums = {name: {m: 0.0 for m in METRICS} for name in predictors}
    clips = 0
    for batch in loader:
        if limit is not None:
            batch = batch[: max(0, limit - clips)]
        if len(batch) == 0:
            break
        inputs, targets = batch[:, :frames_in], batch[:, frames_in:frames_in + frames_out]
        for name, predict in predictors.items():
            scores = frame_scores(predict(inputs, frames_out), targets)  # name -> (B, T)
            for m in METRICS:
                sums[name][m] += float(scores[m].mean(1).sum())
        clips += len(batch)
    if clips == 0:
        raise ValueError("score_anchors: the loader gave no clips")
    return {name: {**{m: v / clips for m, v in s.items()}, "clips": clips} for name, s in sums.items()}


def build_data(config: str | None, overrides: dict[str, object]):
    """The data module of a training config (its ``data`` section), with ``init_args`` overridden."""
    import yaml
    from jsonargparse import ArgumentParser
    import lightning as L

    if config is not None:
        section = (yaml.safe_load(Path(config).read_text()) or {}).get("data")
        if not section:
            raise ValueError(f"{config}: has no `data` section")
    else:
        section = {"class_path": "dfn.data.VideoFolder", "init_args": {}}
    section = {"class_path": section["class_path"], "init_args": {**section.get("init_args", {}),
                                                                    **{k: v for k, v in overrides.items() if v is not None}}}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    cfg = parser.parse_object({"data": section})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    return instantiate(cfg).data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="training YAML whose `data` section defines the clips")
    parser.add_argument("--path", action="append", default=None,
                        help="override data.init_args.path (a video file or folder); repeat to score several, "
                             "then pooled")
    parser.add_argument("--frames-in", type=int, default=None)
    parser.add_argument("--frames-out", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--keep-aspect", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--limit", type=int, default=None, help="score at most this many clips")
    parser.add_argument("--ckpt", default=None,
                        help="also score a trained model: a checkpoint, run directory or pretrained:<name>")


def print_table(results: dict[str, dict[str, float]]) -> None:
    base = results["copy_last"]["mse_per_frame"]
    print(f"{'predictor':<11} {'mse/frame':>10} {'vs copy':>8} {'mse/pixel':>10} {'ssim':>7} {'psnr':>7}")
    for name, r in results.items():
        print(f"{name:<11} {r['mse_per_frame']:>10.3f} {r['mse_per_frame'] / base:>8.3f} "
              f"{r['mse_per_pixel']:>10.5f} {r['ssim']:>7.4f} {r['psnr']:>7.2f}")


def pooled(tables: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Clip-weighted means of several tables: every clip of every video counts once."""
    total = sum(t["copy_last"]["clips"] for t in tables)
    return {name: {**{m: sum(t[name][m] * t[name]["clips"] for t in tables) / total for m in METRICS},
                   "clips": total} for name in tables[0]}


def main(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Score and print; returns the table of the one video, or with several ``--path`` the pooled one
    (each video's own under ``"per_path"``, keyed by its path)."""
    if args.config is None and args.path is None:
        raise SystemExit("dfn.bench anchors: give --config (a training YAML) and/or --path (a video)")
    predictors = dict(PREDICTORS)
    if getattr(args, "ckpt", None) is not None:
        predictors["model"] = model_predictor(load_model(args.ckpt))
    paths = [args.path] if isinstance(args.path, str) else (args.path or [None])  # one path from Python callers
    tables = []
    for path in paths:
        data = build_data(args.config, {"path": path, "frames_in": args.frames_in,
                                        "frames_out": args.frames_out, "image_size": args.image_size,
                                        "keep_aspect": args.keep_aspect})
        stage = {"test": "test", "val": "validate"}[args.split]
        data.setup(stage)
        loader = data.test_dataloader() if args.split == "test" else data.val_dataloader()
        start = time.perf_counter()
        results = score_anchors(loader, data.frames_in, data.frames_out, args.limit, predictors)
        seconds = time.perf_counter() - start
        clips = results["copy_last"]["clips"]
        shape = getattr(data.test_set if args.split == "test" else data.val_set, "__getitem__")(0).shape
        where = f" of {path}" if path is not None else ""
        print(f"anchors on {args.split} split{where}: {clips} clips of {data.frames_in} -> {data.frames_out} frames, "
              f"frames {tuple(shape[1:])} (C, H, W); {seconds:.1f} s")
        print_table(results)
        tables.append(results)
    if len(tables) == 1:
        return tables[0]
    together = pooled(tables)
    print(f"pooled over the {len(tables)} videos' {together['copy_last']['clips']} {args.split} clips "
          f"(mse/frame: mean over all their predicted frames):")
    print_table(together)
    return {**together, "per_path": dict(zip(paths, tables))}
