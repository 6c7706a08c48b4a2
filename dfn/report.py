"""The local report: one self-contained HTML page per run, or several runs side by side.

``python -m dfn.report RUN_DIR [RUN_DIR ...] --out page.html`` (``fit`` and ``test`` also write
``<run dir>/report.html``). The page shows the test metrics against copy-last-frame, the training and
validation curves (from ``metrics.csv``, see `dfn.history`), every metric per prediction horizon (from
``horizon_test.csv``), the prediction, flow and filter images, the worst test sequences (from
``sequences_test.csv``) and the resolved config. Charts are
inline SVG and images are referenced by relative path (``--embed``: as data URIs, one file), so nothing
is fetched and the folder can be copied anywhere.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import math
import os
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import imageio.v3 as iio
import yaml

from dfn.charts import PALETTE, Series, line_chart
from dfn.history import read_metrics
from dfn.metrics import better, monitored_metric

# Test metrics in the table (the conventions of dfn.metrics, docs/metrics.md); which way is better: dfn.metrics.
METRICS = ("bce_per_frame", "bce_per_pixel", "mse_per_frame", "mse_per_pixel", "mae_per_frame", "ssim", "psnr")
HORIZON_CHARTS = ("bce_per_frame", "mse_per_frame", "ssim", "psnr")
FACTS = ("generator", "mode", "kernel_size", "parameters", "flops_per_step", "seconds_per_iteration", "global_step")
MIME = {".gif": "image/gif", ".png": "image/png"}


@dataclass
class Run:
    """What a run directory holds, read once (missing files give empty fields)."""

    directory: Path
    summary: dict = field(default_factory=dict)
    config: str = ""
    curves: dict = field(default_factory=dict)  # metric -> (steps, values)
    horizon: dict = field(default_factory=dict)  # column -> values, "horizon" included
    images: list = field(default_factory=list)  # (caption, path)
    sequences: list = field(default_factory=list)  # rows of sequences_test.csv
    loss: str = "bce"  # the training loss (model.init_args.loss), which ranks the worst sequences

    @property
    def name(self) -> str:
        return self.directory.name


def latest(directory: Path, pattern: str) -> Path | None:
    found = sorted(directory.glob(pattern))
    return found[-1] if found else None


def load_run(directory: Path) -> Run:
    """Read a run directory written by ``train.py`` (``runs/dfn/<id>``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"run directory not found: {directory}")
    if not any((directory / f).exists() for f in ("summary.json", "metrics.csv", "config.yaml")):
        raise ValueError(f"{directory} is not a dfn run directory (no summary.json, metrics.csv or config.yaml)")
    run = Run(directory)
    if (directory / "summary.json").is_file():
        run.summary = json.loads((directory / "summary.json").read_text())
    if (directory / "config.yaml").is_file():
        run.config = (directory / "config.yaml").read_text()
        model = (yaml.safe_load(run.config) or {}).get("model") or {}
        run.loss = (model.get("init_args") or model).get("loss", "bce")  # subclass mode: under init_args
    run.curves = read_metrics(directory / "metrics.csv")
    if (directory / "sequences_test.csv").is_file():
        with open(directory / "sequences_test.csv", newline="") as f:
            run.sequences = list(csv.DictReader(f))
    if (directory / "horizon_test.csv").is_file():
        with open(directory / "horizon_test.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        run.horizon = {key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {})}
    gifs = directory / "gifs"
    for caption, pattern in (("test: inputs, then ground truth | prediction | error", "test.gif"),
                             ("validation (last epoch): ground truth | prediction | error", "val_epoch*.gif"),
                             ("filters as flow (last epoch): prediction | direction = hue, length = brightness",
                              "flow_epoch*.gif"),
                             ("generated K×K filters at fixed pixels (last epoch)", "filters_epoch*.png")):
        path = latest(gifs, pattern)
        if path is not None:
            run.images.append((caption, path))
    return run


def image_source(path: Path, page: Path, embed: bool) -> str:
    """A relative path from the page's folder, or a data URI with `embed`."""
    if embed:
        return f"data:{MIME.get(path.suffix, 'application/octet-stream')};base64," + base64.b64encode(path.read_bytes()).decode()
    return Path(os.path.relpath(path.resolve(), page.resolve().parent)).as_posix()


def shown_width(path: Path, target: int = 300) -> int:
    """Display width in pixels: small frames (Moving MNIST is 64 px) enlarged a whole number of times,
    so that the larger side is at most about `target` pixels."""
    shape = iio.improps(path).shape  # GIF (T, H, W, 3); PNG (H, W) or (H, W, C)
    height, width = (shape[-3], shape[-2]) if len(shape) >= 3 and shape[-1] in (3, 4) else shape[-2:]
    return width * max(1, min(6, target // max(height, width, 1)))


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


def metrics_table(runs: list[Run]) -> str:
    """Rows: each run, then copy-last-frame (one row per distinct test set); columns: test metrics."""
    names = [m for m in METRICS if any(f"test/{m}" in r.summary for r in runs)]
    if not names:
        return "<p>No test metrics (summary.json has none).</p>"
    rows = [(r.name, "model", [r.summary.get(f"test/{m}") for m in names]) for r in runs]
    references: list[tuple[list[str], list]] = []  # runs on the same test set share one copy-last row
    for r in runs:
        reference = [r.summary.get(f"test/copy_last/{m}") for m in names]
        same = next((names_ for names_, values in references if values == reference), None)
        if same is not None:
            same.append(r.name)
        elif any(v is not None for v in reference):
            references.append(([r.name], reference))
    for run_names, reference in references:
        label = "copy last frame" + (f" ({', '.join(run_names)})" if len(references) > 1 else "")
        rows.append((label, "reference", reference))
    best = {}
    for j, m in enumerate(names):
        values = [row[2][j] for row in rows if row[2][j] is not None]
        best[j] = (min if better(m) == "min" else max)(values) if values else None
    head = "".join(f"<th>{m} ({'↓' if better(m) == 'min' else '↑'})</th>" for m in names)
    body = []
    for label, kind, values in rows:
        cells = "".join(f"<td{' class=best' if v is not None and v == best[j] else ''}>{fmt(v)}</td>"
                        for j, v in enumerate(values))
        body.append(f'<tr class="{kind}"><th>{escape(label)}</th>{cells}</tr>')
    sequences = {fmt(r.summary.get("test/sequences")) for r in runs}
    return (f"<table><tr><th>test ({'/'.join(sorted(sequences))} sequences)</th>{head}</tr>{''.join(body)}</table>"
            f"<p class=note>Best value per column in bold; the copy-last-frame rows repeat the last input frame.</p>")


def facts_table(runs: list[Run]) -> str:
    head = "".join(f"<th>{f.replace('_', ' ')}</th>" for f in FACTS)
    body = "".join(f"<tr><th>{escape(r.name)}</th>" + "".join(f"<td>{fmt(r.summary.get(f))}</td>" for f in FACTS)
                   + f"<td>{escape(r.summary.get('checkpoint') or '—')}</td></tr>" for r in runs)
    return f"<table><tr><th>run</th>{head}<th>checkpoint</th></tr>{body}</table>"


def curve_charts(runs: list[Run]) -> list[str]:
    """Training loss, validation loss (and copy-last-frame on the monitored metric), learning rate."""
    def series(metric: str, label: str, dashed: bool = False) -> list[Series]:
        out = []
        for i, r in enumerate(runs):
            if metric in r.curves:
                steps, values = r.curves[metric]
                name = label if len(runs) == 1 else f"{r.name} {label}"
                out.append(Series(name, steps, values, PALETTE[i % len(PALETTE)], dashed))
        return out

    val_reference = []
    for i, r in enumerate(runs):
        monitored = monitored_metric(r.loss)  # what val/loss is
        if f"val/copy_last/{monitored}" in r.curves:
            steps, values = r.curves[f"val/copy_last/{monitored}"]
            val_reference.append((r.name, Series("copy last frame", steps, values, PALETTE[i % len(PALETTE)], dashed=True)))
    val_reference = distinct_references(val_reference)
    lr_key = next((k for r in runs for k in r.curves if k.startswith("lr-")), "lr")
    return [line_chart("training loss", series("train/loss", "train/loss"), "step", "loss (per pixel)", integer_x=True),
            line_chart("validation loss", series("val/loss", "val/loss") + val_reference, "step", "loss (per frame)", integer_x=True),
            line_chart("learning rate", series(lr_key, lr_key), "step", "learning rate", integer_x=True)]


def distinct_references(references: list[tuple[str, Series]]) -> list[Series]:
    """Copy-last-frame curves (run name, curve), each drawn once: runs on the same data share one, in grey."""
    kept: list[tuple[list[str], Series]] = []
    for name, series in references:
        same = next((k for k in kept if k[1].xs == series.xs and k[1].ys == series.ys), None)
        if same is not None:
            same[0].append(name)
            same[1].colour = "#777777"
        else:
            kept.append(([name], series))
    if len(kept) > 1:  # different data: say whose copy-last each is
        for names, series in kept:
            series.label = f"{series.label} ({', '.join(names)})"
    return [series for _, series in kept]


def horizon_charts(runs: list[Run]) -> list[str]:
    charts = []
    for metric in HORIZON_CHARTS:
        lines, references = [], []
        for i, r in enumerate(runs):
            colour = PALETTE[i % len(PALETTE)]
            if f"test/{metric}" in r.horizon:
                label = "model" if len(runs) == 1 else r.name
                lines.append(Series(label, r.horizon["horizon"], r.horizon[f"test/{metric}"], colour))
            if f"test/copy_last/{metric}" in r.horizon:
                references.append((r.name, Series("copy last frame", r.horizon["horizon"],
                                                  r.horizon[f"test/copy_last/{metric}"], colour, dashed=True)))
        lines += distinct_references(references)
        charts.append(line_chart(f"test {metric} per horizon", lines, "predicted frame (horizon)", metric, integer_x=True))
    return [c for c in charts if c]


def worst_sequences(run: Run, page: Path, embed: bool, count: int = 5) -> str:
    """The `count` test sequences with the highest training-loss metric, with their GIFs where written."""
    metric = monitored_metric(run.loss)
    if not run.sequences or metric not in run.sequences[0]:
        return ""
    worst = sorted(run.sequences, key=lambda row: float(row[metric]), reverse=True)[:count]
    columns = [c for c in worst[0] if c not in ("sequence", "gif")]
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in worst:
        gif = run.directory / row["gif"] if row.get("gif") else None
        image = (f'<img src="{image_source(gif, page, embed)}" alt="sequence {row["sequence"]}" width="{shown_width(gif, 240)}">'
                 if gif is not None and gif.is_file() else "—")
        cells = "".join(f"<td>{fmt(float(row[c]))}</td>" for c in columns)
        body.append(f"<tr><th>{escape(row['sequence'])}</th>{cells}<td>{image}</td></tr>")
    return (f"<h3>{escape(run.name)}: worst test sequences by {escape(metric)} (of {len(run.sequences)})</h3>"
            f"<table><tr><th>sequence</th>{head}<th>ground truth | prediction | error</th></tr>{''.join(body)}</table>")


STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; } th { background: #f4f4f4; }
tr.reference td, tr.reference th { color: #666; font-style: italic; } td.best { font-weight: bold; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; } .chart { background: #fff; }
.chart text { font-size: 11px; fill: #333; } .chart .title { font-size: 13px; font-weight: bold; }
.chart .frame { fill: none; stroke: #999; } .chart .grid { stroke: #eee; }
.images { display: flex; flex-wrap: wrap; gap: 16px; } figure { margin: 0; }
figure img { image-rendering: pixelated; border: 1px solid #ccc; max-width: 640px; min-width: 96px; }
figcaption { font-size: 0.8em; color: #555; max-width: 420px; } .note { font-size: 0.8em; color: #666; }
pre { font-size: 0.75em; background: #f8f8f8; padding: 8px; max-height: 480px; overflow: auto; }
"""


def render(runs: list[Run], page: Path, embed: bool = False) -> str:
    """The HTML page for `runs`, with image paths relative to `page` (or embedded)."""
    title = "dfn report: " + ", ".join(r.name for r in runs)
    images = []
    for r in runs:
        figures = "".join(f'<figure><img src="{image_source(p, page, embed)}" alt="{escape(c)}" width="{shown_width(p)}">'
                          f"<figcaption>{escape(c)}</figcaption></figure>" for c, p in r.images)
        images.append(f"<h3>{escape(r.name)}</h3><div class=images>{figures or '<p>No images.</p>'}</div>")
    configs = "".join(f"<details><summary>{escape(r.name)}: config.yaml</summary><pre>{escape(r.config)}</pre></details>"
                      for r in runs)
    curves = "".join(curve_charts(runs)) or "<p>No metrics.csv (runs from before it was written).</p>"
    horizons = "".join(horizon_charts(runs)) or "<p>No horizon_test.csv.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><style>{STYLE}</style></head>
<body><h1>{escape(title)}</h1>
<p class=note>Run directories: {escape(", ".join(str(r.directory) for r in runs))}</p>
<h2>Runs</h2>{facts_table(runs)}
<h2>Test metrics against copy-last-frame</h2>{metrics_table(runs)}
<h2>Training and validation</h2><div class=charts>{curves}</div>
<h2>Per prediction horizon (test; dashed: copy last frame)</h2><div class=charts>{horizons}</div>
<h2>Predictions and filters</h2>{''.join(images)}
<h2>Worst test sequences</h2>{''.join(worst_sequences(r, page, embed) for r in runs) or "<p>No sequences_test.csv.</p>"}
<h2>Resolved config</h2>{configs}
</body></html>
"""


def write_report(directories: list[Path] | Path, out: Path | None = None, embed: bool = False) -> Path:
    """Write the report of one run (default ``<run dir>/report.html``) or several (`out` required)."""
    directories = [Path(directories)] if isinstance(directories, (str, Path)) else [Path(d) for d in directories]
    if not directories:
        raise ValueError("write_report: give at least one run directory")
    if out is None:
        if len(directories) > 1:
            raise ValueError("write_report: several runs need an output path (--out page.html)")
        out = directories[0] / "report.html"
    runs = [load_run(d) for d in directories]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(runs, out, embed), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m dfn.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (runs/dfn/<id>)")
    parser.add_argument("--out", type=Path, help="the page to write (default: <run dir>/report.html for one run)")
    parser.add_argument("--embed", action="store_true", help="embed the images as data URIs: one portable file")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.runs, args.out, args.embed)
    except ValueError as error:
        parser.error(str(error))
    print(f"dfn.report: wrote {path}")
    return path


if __name__ == "__main__":
    main()
