"""Look at the data before training: write a GIF of a few clips of any data module.

    python -m dfn.data.preview --data dfn.data.MovingMNIST --out preview.gif --clips 4
    python -m dfn.data.preview --data dfn.data.VideoFolder --init path=my_videos/ --init color=rgb \
        --split test --out clips.gif
    python -m dfn.data.preview --data dfn.data.SyntheticHighway --init frames_out=9 --scale 3
    python -m dfn.data.preview --data dfn.data.SyntheticMotion --init "image_size=[72, 88]" \
        --clips 6 --out docs/figures/synthetic_motion.png

``--init key=value`` sets a constructor argument (values are parsed as YAML: 3, true, [1, 2], 'text').
GIF (any other suffix): clips are laid side by side, one GIF frame per clip frame. PNG: a still sheet,
one row per clip, its frames left to right. Either way, frames after ``frames_in`` (the ones a model
must predict) get a white bar along their top edge.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import numpy as np
import torch


def load_datamodule(class_path: str, init: list[str]):
    """Instantiate ``package.module.Class`` with ``key=value`` arguments (YAML-parsed values)."""
    import yaml

    module_name, _, cls_name = class_path.rpartition(".")
    if not module_name:
        raise SystemExit(f"--data must be a dotted class path like dfn.data.MovingMNIST, got {class_path!r}")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise SystemExit(f"--data {class_path}: cannot import ({err})") from err
    kwargs = {}
    for item in init:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--init expects key=value, got {item!r}")
        kwargs[key.strip()] = yaml.safe_load(value)
    return cls(**kwargs)


def clips_to_frames(batch: torch.Tensor, frames_in: int, scale: int = 2) -> np.ndarray:
    """(N, T, C, H, W) float in [0, 1] -> GIF frames (T, H', N*(W'+2), 3) uint8, side by side."""
    x = (batch.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)  # gray -> RGB so that the marker and separators are uniform
    x = x.transpose(0, 1, 3, 4, 2)  # (N, T, C, H, W) -> (N, T, H, W, C)
    x = x.repeat(scale, axis=2).repeat(scale, axis=3)  # nearest-neighbour upscale
    x[:, frames_in:, :2] = 255  # bar on the frames to be predicted
    n, t, h, w, c = x.shape
    sep = np.full((n, t, h, 2, c), 64, np.uint8)
    x = np.concatenate([x, sep], axis=3)  # (N, T, H, W+2, C)
    return x.transpose(1, 2, 0, 3, 4).reshape(t, h, n * (w + 2), c)  # (T, H, N*(W+2), C)


def clips_to_sheet(batch: torch.Tensor, frames_in: int, scale: int = 2) -> np.ndarray:
    """(N, T, C, H, W) float in [0, 1] -> one PNG image (N*(H'+2), T*(W'+2), 3) uint8: row n holds clip
    n's frames left to right."""
    frames = clips_to_frames(batch, frames_in, scale)  # (T, H', N*(W'+2), 3)
    t, h, width, c = frames.shape
    n = len(batch)
    x = frames.reshape(t, h, n, width // n, c).transpose(2, 0, 1, 3, 4)  # (N, T, H', W'+2, 3)
    x = np.concatenate([x, np.full((n, t, 2, width // n, c), 64, np.uint8)], axis=2)  # row separators
    return x.transpose(0, 2, 1, 3, 4).reshape(n * (h + 2), t * (width // n), c)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dfn.data.preview", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="dfn.data.MovingMNIST", help="data module class path")
    p.add_argument("--init", action="append", default=[], metavar="KEY=VALUE", help="constructor argument (repeatable)")
    p.add_argument("--split", choices=["train", "val", "test", "predict"], default="train")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--scale", type=int, default=2, help="integer upscaling of the frames")
    p.add_argument("--fps", type=float, default=4.0)
    p.add_argument("--out", type=Path, default=Path("preview.gif"), help="a .gif (animated) or .png (still sheet)")
    args = p.parse_args(argv)
    if args.clips < 1 or args.scale < 1:
        raise SystemExit("--clips and --scale must be >= 1")

    import imageio.v3 as iio

    dm = load_datamodule(args.data, args.init)
    stage = {"train": "fit", "val": "validate", "test": "test", "predict": "predict"}[args.split]
    dm.setup(stage)
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader,
              "predict": dm.predict_dataloader}[args.split]()
    got, seen = [], 0
    for batch in loader:
        got.append(batch[: args.clips - seen])
        seen += len(got[-1])
        if seen >= args.clips:
            break
    batch = torch.cat(got)  # (N, T, C, H, W)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix.lower() == ".png":
        iio.imwrite(args.out, clips_to_sheet(batch, dm.frames_in, args.scale))
    else:
        iio.imwrite(args.out, clips_to_frames(batch, dm.frames_in, args.scale), duration=1000 / args.fps, loop=0)
    print(f"wrote {args.out}: {len(batch)} {args.split} clips of {batch.shape[1]} frames "
          f"({dm.frames_in} in, {dm.frames_out} out; {tuple(batch.shape[2:])} per frame)")


if __name__ == "__main__":
    main()
