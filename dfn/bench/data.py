"""Benchmark of the data pipeline: sequences per second of each generator and loader, one process.

    python -m dfn.bench data [--seconds S] [--json]

Rows: the raw Moving MNIST generator (20 frames, 64x64, uint8) at two batch sizes, the MovingMNIST
training loader (float tensors, as the model sees them), the same for the synthetic highway
(6 frames), and the VideoFolder loader on a small mp4 written to a temporary folder (decoding with
ffmpeg, gray, resized to 64x64): first epoch (decodes the file into the cache), cached epochs, and
the seeking path used for files larger than ``cache_mb``.
Targets: Moving MNIST >= 2,000 seq/s, synthetic highway >= 500 seq/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

TARGETS = {"moving_mnist": 2000.0, "synthetic_highway": 500.0}


def rate(step: Callable[[], int], seconds: float) -> float:
    """Sequences per second of ``step`` (returns how many sequences it made), after one warm-up call."""
    step()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        n += step()
    return n / elapsed


def loader_step(loader) -> Callable[[], int]:
    it = iter(loader)

    def step() -> int:
        nonlocal it
        try:
            batch = next(it)
        except StopIteration:  # epoch ended: start the next one
            it = iter(loader)
            batch = next(it)
        return len(batch)
    return step


def write_test_video(folder: Path, frames: int = 240, height: int = 128, width: int = 160) -> Path:
    """An mp4 of a bright square drifting over a gradient, for the loader benchmark."""
    import imageio.v3 as iio

    y, x = np.mgrid[0:height, 0:width]
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        img = ((x + 2 * t) % width * 255 // width).astype(np.uint8)
        img[40:70, (3 * t) % (width - 30):(3 * t) % (width - 30) + 30] = 255
        video[t] = img[..., None]
    path = folder / "bench.mp4"
    iio.imwrite(path, video, fps=25)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per row")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def main(args: argparse.Namespace) -> None:
    import torch

    from dfn.data import MovingMNIST, SyntheticHighway, VideoFolder, moving_mnist, synthetic_highway
    from dfn.data.digits import load_embedded_digits

    torch.set_num_threads(1)  # a data-loader worker is one process; measure what one core does
    rows: list[dict] = []

    def add(name: str, kind: str, frames: int, batch: int, seq_per_s: float) -> None:
        target = TARGETS.get(kind)
        rows.append({"name": name, "frames": frames, "batch": batch, "seq_per_s": round(seq_per_s, 1),
                     "target": target, "ok": None if target is None else seq_per_s >= target})

    train_digits, _ = load_embedded_digits()
    rng = np.random.default_rng(0)
    for b in (16, 256):
        add("moving_mnist() generator, uint8", "moving_mnist", 20, b,
            rate(lambda: len(moving_mnist(train_digits, b, 20, 2, 64, rng)), args.seconds))
    dm = MovingMNIST(batch_size=16)
    add("MovingMNIST train loader, float", "moving_mnist", 20, 16, rate(loader_step(dm.train_dataloader()), args.seconds))

    for b in (16, 256):
        add("synthetic_highway() generator, uint8", "synthetic_highway", 6, b,
            rate(lambda: len(synthetic_highway(b, 6, 64, rng)), args.seconds))
    hw = SyntheticHighway(batch_size=16)
    add("SyntheticHighway train loader, float", "synthetic_highway", 6, 16,
        rate(loader_step(hw.train_dataloader()), args.seconds))

    with tempfile.TemporaryDirectory() as tmp:
        path = write_test_video(Path(tmp))
        vf = VideoFolder(str(path), frames_in=3, frames_out=3, image_size=64, batch_size=16)
        vf.setup("fit")
        loader = vf.train_dataloader()
        start = time.perf_counter()
        n = sum(len(b) for b in loader)  # first epoch: includes decoding the file into the cache
        add("VideoFolder train, 1st epoch (decode 240 frames + cache)", "video", 6, 16, n / (time.perf_counter() - start))
        add("VideoFolder train, cached (mp4 160x128 -> 64, shuffled)", "video", 6, 16,
            rate(loader_step(loader), args.seconds))
        seek = VideoFolder(str(path), frames_in=3, frames_out=3, image_size=64, batch_size=16, cache_mb=0)
        seek.setup("fit")
        add("VideoFolder train, cache_mb=0 (seek per clip)", "video", 6, 16,
            rate(loader_step(seek.train_dataloader()), args.seconds))

    if args.json:
        print(json.dumps({"torch_threads": 1, "rows": rows}, indent=2))
        return
    print(f"{'source':58s} {'T':>3s} {'B':>4s} {'seq/s':>9s}  target")
    for r in rows:
        target = "" if r["target"] is None else f">= {r['target']:.0f} {'ok' if r['ok'] else 'MISSED'}"
        print(f"{r['name']:58s} {r['frames']:3d} {r['batch']:4d} {r['seq_per_s']:9.1f}  {target}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m dfn.bench.data", description=__doc__)
    add_arguments(parser)
    main(parser.parse_args())
