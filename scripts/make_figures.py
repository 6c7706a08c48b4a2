"""Regenerate the PNG figures under docs/figures/ (matplotlib: ``pip install -e '.[dev]'``).

    python scripts/make_figures.py tables                      # charts of the tables in docs/data/*.csv
    python scripts/make_figures.py curve RUN_DIR               # learning curve from RUN_DIR/metrics.csv
    python scripts/make_figures.py predictions CKPT [--test-size 256]
        # a Moving MNIST checkpoint: an image strip of test predictions, and test BCE per horizon vs copy-last

The tables' numbers are the measurements of the docs pages that show them (docs/data/ holds them as CSV,
one file per table); nothing here trains or measures anything. Each figure's caption on its docs page
names the protocol, the machine and the command that made the numbers.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA, FIGURES = ROOT / "docs" / "data", ROOT / "docs" / "figures"
BLUE, ORANGE, GREY = "#0072B2", "#D55E00", "#777777"


def read_csv(name: str) -> list[dict[str, str]]:
    with open(DATA / name, newline="") as f:
        return list(csv.DictReader(f))


def save(fig: plt.Figure, name: str) -> None:
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(FIGURES / name, dpi=110)
    plt.close(fig)
    print(f"wrote {(FIGURES / name).relative_to(ROOT)}")


def generator_chart(table: str, metric: str, label: str, title: str, out: str) -> None:
    """Horizontal bars, one per config, per-pixel ('local') generators blue, per-sample ('conv') orange,
    copy-last as a dashed line."""
    rows = read_csv(table)
    models = [r for r in rows if r["config"] != "copy last frame"]
    copy_last = next(float(r[metric]) for r in rows if r["config"] == "copy last frame")
    models.sort(key=lambda r: float(r[metric]))
    names = [f"{r['generator']} ({r['mode']})" for r in models]
    values = [float(r[metric]) for r in models]
    fig, ax = plt.subplots(figsize=(8.5, 0.32 * len(models) + 1.2))
    ax.barh(names, values, color=[BLUE if r["mode"] == "local" else ORANGE for r in models])
    ax.axvline(copy_last, color=GREY, linestyle="--", label=f"copy last frame ({copy_last:g})")
    ax.invert_yaxis()  # best on top
    ax.set_xlabel(label)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="blue: per pixel\norange: per sample",
              title_fontsize=8)
    save(fig, out)


def tables() -> None:
    generator_chart("generators_highway.csv", "mse_per_frame", "test MSE per frame (lower is better)",
                    "Synthetic highway 32x32, 1,000 iterations, quickstart widths (2-core CPU)",
                    "generators_highway.png")
    generator_chart("generators_moving_mnist.csv", "bce_per_frame", "test BCE per frame (lower is better)",
                    "Moving MNIST (embedded digits), 100 iterations, quickstart widths (2-core CPU)",
                    "generators_moving_mnist.png")

    rows = read_csv("real_video.csv")  # ratio to copy-last per clip
    fig, axes = plt.subplots(1, 2, figsize=(9, 2.6), sharex=True)
    for ax, clip in zip(axes, ("carphone", "bikes")):
        sel = [r for r in rows if r["clip"] == clip and r["predictor"] != "copy-last-frame"]
        ax.barh([r["predictor"] for r in sel], [float(r["ratio_to_copy_last"]) for r in sel],
                color=[GREY if "Farneback" in r["predictor"] else BLUE for r in sel])
        ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.axvline(0.85, color=ORANGE, linewidth=0.8, linestyle=":")
        ax.invert_yaxis()
        ax.set_title(f"{clip}: test MSE / copy-last's", fontsize=10)
    for ax in axes:
        ax.set_xlabel("dashed: copy-last (1.0), dotted: 0.85")
    save(fig, "real_video.png")

    rows = read_csv("gpu_train.csv")
    fig, ax = plt.subplots(figsize=(6, 2.2))
    ax.barh([r["variant"] for r in rows], [float(r["ms_per_iter"]) for r in rows], color=BLUE)
    ax.invert_yaxis()
    ax.set_xlabel("ms per training iteration (paper Moving MNIST model, batch 16)")
    ax.set_title("One NVIDIA H200, python -m dfn.bench train", fontsize=10)
    save(fig, "gpu_train.png")

    rows = read_csv("ops_gpu.csv")
    fig, ax = plt.subplots(figsize=(7, 2.8))
    x = np.arange(len(rows))
    for i, (key, name, colour) in enumerate((("unfold_fb_ms", "unfold", GREY), ("im2col_fb_ms", "im2col", "#999999"),
                                             ("torch_fb_ms", "torch path", ORANGE), ("triton_fb_ms", "triton", BLUE))):
        ax.bar(x + (i - 1.5) * 0.2, [float(r[key]) for r in rows], 0.2, label=name, color=colour)
    ax.set_xticks(x, [f"{r['case']}\n{r['shape']}" for r in rows], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("forward + backward, ms")
    ax.set_title("Dynamic local filtering on one NVIDIA H200 (float32)", fontsize=10)
    ax.legend(fontsize=8)
    save(fig, "ops_gpu.png")

    rows = read_csv("quickstart_tried.csv")
    fig, ax = plt.subplots(figsize=(7, 3.4))
    labels = [f"{r['change']}, {r['iterations']} it" for r in rows]
    values = [float(r["test_bce_per_frame"]) for r in rows]
    ax.barh(labels, values, color=[BLUE if "config now" in r["change"] else GREY for r in rows])
    ax.set_xlim(500, max(values) + 20)
    ax.invert_yaxis()
    ax.set_xlabel("test BCE per frame, 512 sequences (lower is better)")
    ax.set_title("Quickstart variants, seed 0 (2-core CPU)", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    save(fig, "quickstart_tried.png")


def curve(run_dir: Path, title: str | None = None, out: str = "learning_curve.png") -> None:
    """Training BCE (per pixel x pixels = per frame) and validation BCE per frame against copy-last."""
    values: dict[str, list[tuple[int, float]]] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            values.setdefault(row["metric"], []).append((int(row["step"]), float(row["value"])))
    if "train/loss" not in values:
        raise ValueError(f"curve: {run_dir}/metrics.csv has no train/loss rows; give a run directory of train.py fit")
    pixels = 64 * 64  # Moving MNIST frames: the training loss is the per-pixel mean
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    steps, train = zip(*values["train/loss"])
    ax.plot(steps, np.array(train) * pixels, color=BLUE, alpha=0.5, label="train BCE (one batch, x 4096)")
    for key, name, colour, style in (("val/bce_per_frame", "validation", BLUE, "-"),
                                     ("val/copy_last/bce_per_frame", "validation, copy last frame", GREY, "--")):
        if key in values:
            s, v = zip(*values[key])
            ax.plot(s, v, style, color=colour, marker="o", label=name)
    # For scale: the authors' training curve (their TensorFlow notebook of the paper's full-width network,
    # lr 1e-4, batch 16; per-pixel training BCE of single batches read off it, x 4096; docs/paper.md) and the
    # paper's final test figure. Not the same network, learning rate or data as a run here.
    authors = [(0, 770), (2000, 450), (4000, 410), (6000, 373), (10000, 344), (14000, 324), (18000, 315), (20000, 315)]
    last = max(steps)
    shown = [(s_, v_) for s_, v_ in authors if s_ <= 1.05 * last] or authors[:2]
    ax.plot(*zip(*shown), ":", color=GREY, marker="s", markersize=3,
            label="authors' training curve (full width, lr 1e-4)")
    if last >= 15000:
        ax.axhline(285.2, color=GREY, lw=0.8, label="paper, test 285.2 (20,000 it.)")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("BCE per frame")
    ax.set_title(f"Learning curve: {title or run_dir.name}", fontsize=10)
    ax.legend(fontsize=8)
    save(fig, out)


def predictions(ckpt: str, test_size: int, digits: str) -> None:
    """Strip of two test sequences (inputs | truth | prediction) and test BCE per horizon vs copy-last,
    on ``test_size`` Moving MNIST test sequences generated from the embedded test digits (the data module's
    own test set, seed 0) from `digits` ("embedded" or "mnist": the MNIST test digits). `ckpt` is a .ckpt
    file or ``pretrained:<name>``."""
    import torch

    if not ckpt.startswith("pretrained:") and not Path(ckpt).is_file():
        raise FileNotFoundError(f"predictions: checkpoint {ckpt} not found; give a .ckpt of a Moving MNIST run "
                                "or pretrained:<name>")
    from dfn import pretrained
    from dfn.data import MovingMNIST
    from dfn.metrics import frame_scores
    from dfn.module import VideoPrediction

    if ckpt.startswith("pretrained:"):
        model = pretrained.load(ckpt.removeprefix("pretrained:")).eval()
    else:
        model = VideoPrediction.load_from_checkpoint(ckpt, map_location="cpu").eval()
    data = MovingMNIST(frames_in=model.frames_in, frames_out=model.frames_out, test_size=test_size, digits=digits)
    data.setup("test")
    batch = torch.as_tensor(np.stack([data.test_set[i] for i in range(test_size)]))  # (N, T, 1, 64, 64)
    inputs, targets = model.split(batch)
    with torch.no_grad():
        predicted = torch.cat([model(chunk) for chunk in inputs.split(32)])  # (N, frames_out, 1, 64, 64)
    model_bce = frame_scores(predicted, targets)["bce_per_frame"].mean(0)  # (frames_out,)
    copy_last = inputs[:, -1:].expand_as(targets)
    copy_bce = frame_scores(copy_last, targets)["bce_per_frame"].mean(0)

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    horizon = np.arange(1, len(model_bce) + 1)
    ax.plot(horizon, model_bce.numpy(), "o-", color=BLUE, label=f"model (mean {model_bce.mean():.1f})")
    ax.plot(horizon, copy_bce.numpy(), "o--", color=GREY, label=f"copy last frame (mean {copy_bce.mean():.1f})")
    ax.set_xlabel("predicted frame (horizon)")
    ax.set_ylabel("test BCE per frame")
    source = "MNIST test digits" if digits == "mnist" else "embedded digits"
    ax.set_title(f"{test_size} Moving MNIST test sequences ({source})", fontsize=10)
    ax.legend(fontsize=8)
    save(fig, "horizon.png")

    rows = []  # two sequences, each: the inputs, then the truth, then the prediction, one row each
    for i in range(2):
        rows += [inputs[i, :, 0], targets[i, :, 0], predicted[i, :, 0].clamp(0, 1)]  # each (T, 64, 64)
    names = ["input", "truth", "prediction"] * 2
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.05 * len(rows)))
    for ax, frames, name in zip(axes, rows, names):
        ax.imshow(torch.cat(list(frames), dim=1).numpy(), cmap="gray", vmin=0, vmax=1)  # (64, T*64)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, fontsize=8)
    save(fig, "predictions.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tables", help="charts of docs/data/*.csv").set_defaults(run=lambda a: tables())
    p = sub.add_parser("curve", help="learning curve of a run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--title", help="the figure's title (default: the run directory's name)")
    p.add_argument("--out", default="learning_curve.png", help="file name under docs/figures/")
    p.set_defaults(run=lambda a: curve(a.run_dir, a.title, a.out))
    p = sub.add_parser("predictions", help="prediction strip and per-horizon curve of a Moving MNIST checkpoint")
    p.add_argument("ckpt", help="a .ckpt file or pretrained:<name>")
    p.add_argument("--test-size", type=int, default=256)
    p.add_argument("--digits", choices=["embedded", "mnist"], default="embedded",
                   help="the test sequences' digits: the embedded ones or the MNIST test digits")
    p.set_defaults(run=lambda a: predictions(a.ckpt, a.test_size, a.digits))
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
