"""The local report's parts on hand-made run directories: charts, the metrics file, the page."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET

import imageio.v3 as iio
import numpy as np
import pytest

from dfn.charts import Series, line_chart, nice_ticks
from dfn.history import CSVMetricsLogger, read_metrics
from dfn.report import main, write_report


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 6) == [0, 2, 4, 6]
    assert nice_ticks(0.185, 0.205) == pytest.approx([0.185, 0.19, 0.195, 0.2, 0.205])
    assert nice_ticks(1, 2, integer=True) == [1, 2]
    for low, high in ((3.2, 917.0), (-5.0, 0.01), (1e-4, 3e-4)):
        ticks = nice_ticks(low, high)
        steps = np.diff(ticks)
        assert ticks[0] <= low and ticks[-1] >= high and np.allclose(steps, steps[0])
        mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]))
        assert any(np.isclose(mantissa, m) for m in (1, 2, 5)), steps[0]
    with pytest.raises(ValueError, match="finite"):
        nice_ticks(0, float("inf"))


def polylines(svg: str) -> list[list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    return [[tuple(map(float, p.split(","))) for p in line.get("points").split()] for line in lines]


def test_line_chart_maps_data_to_the_plot_frame():
    svg = line_chart("t", [Series("a", [0, 5, 10], [0, 50, 100]), Series("b", [0, 10], [100, 0], dashed=True)],
                     "x", "y", width=400, height=300)
    root = ET.fromstring(svg)
    frame = root.find("{http://www.w3.org/2000/svg}rect")
    left, top = float(frame.get("x")), float(frame.get("y"))
    right, bottom = left + float(frame.get("width")), top + float(frame.get("height"))
    a, b = polylines(svg)
    # Ticks 0..100 and 0..10 span the frame exactly: (0, 0) is the bottom-left corner, (10, 100) top-right.
    assert a[0] == pytest.approx((left, bottom), abs=0.06) and a[-1] == pytest.approx((right, top), abs=0.06)
    assert a[1] == pytest.approx(((left + right) / 2, (top + bottom) / 2), abs=0.06)
    assert b[0] == pytest.approx((left, top), abs=0.06)
    assert "stroke-dasharray" in ET.tostring(root.findall("{http://www.w3.org/2000/svg}polyline")[1]).decode()


def test_line_chart_leaves_out_empty_series_and_rejects_ragged_ones():
    assert line_chart("t", [Series("nan", [1, 2], [float("nan")] * 2)], "x", "y") == ""
    with pytest.raises(ValueError, match="2 x values and 3 y values"):
        line_chart("t", [Series("bad", [1, 2], [1, 2, 3])], "x", "y")


def test_metrics_file_appends_across_loggers(tmp_path):
    """A resumed run gets a new logger on the same file: the history must continue, not restart."""
    path = tmp_path / "metrics.csv"
    first = CSVMetricsLogger(path)
    first.log_metrics({"train/loss": 0.5, "epoch": 0}, step=0)
    first.log_metrics({"train/loss": 0.25}, step=1)
    second = CSVMetricsLogger(path)
    second.log_metrics({"train/loss": 0.125, "val/loss": 3.0}, step=2)
    curves = read_metrics(path)
    assert curves["train/loss"] == ([0, 1, 2], [0.5, 0.25, 0.125])
    assert curves["val/loss"] == ([2], [3.0]) and curves["epoch"] == ([0], [0.0])
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a dfn metrics file"):
        read_metrics(tmp_path / "other.csv")
    assert read_metrics(tmp_path / "missing.csv") == {}


def make_run(directory, scale: float = 1.0, copy_last: float = 200.0, loss: str = "bce"):
    """A run directory as train.py writes it, with hand-picked numbers."""
    directory.mkdir(parents=True)
    summary = {"generator": "DFN", "parameters": 1234, "global_step": 3, "test/sequences": 10.0,
               "test/bce_per_frame": 100.0 * scale, "test/copy_last/bce_per_frame": copy_last,
               "test/ssim": 0.5, "test/copy_last/ssim": 0.8}  # the model wins on BCE, copy-last on SSIM
    (directory / "summary.json").write_text(json.dumps(summary))
    (directory / "config.yaml").write_text(  # as LightningCLI saves it: the model's arguments under init_args
        f"model:\n  class_path: dfn.module.VideoPrediction\n  init_args:\n    lr: 0.001  # <escaped & shown>\n"
        f"    loss: {loss}\n")
    logger = CSVMetricsLogger(directory / "metrics.csv")
    for step, loss in enumerate((0.7, 0.5, 0.4)):
        logger.log_metrics({"train/loss": loss}, step=step)
    logger.log_metrics({"val/loss": 150.0, "val/copy_last/bce_per_frame": 200.0}, step=2)
    (directory / "horizon_test.csv").write_text(
        "horizon,test/bce_per_frame,test/copy_last/bce_per_frame\n1,90,150\n2,110,250\n")
    (directory / "gifs" / "test_sequences").mkdir(parents=True)
    iio.imwrite(directory / "gifs" / "test.gif", np.zeros((2, 8, 24, 3), np.uint8), extension=".gif", duration=250)
    iio.imwrite(directory / "gifs" / "test_sequences" / "sequence_00001.gif", np.zeros((2, 8, 24, 3), np.uint8),
                extension=".gif", duration=250)
    (directory / "sequences_test.csv").write_text(
        "sequence,bce_per_frame,mse_per_frame,ssim,psnr,gif\n0,5,1,0.5,20,\n"
        "1,9,0.5,0.6,21,gifs/test_sequences/sequence_00001.gif\n2,1,2,0.7,22,\n")
    return directory


def test_report_page(tmp_path):
    run = make_run(tmp_path / "runs" / "abc123")
    page = write_report(run)
    assert page == run / "report.html"
    html = page.read_text()
    assert html.count('<svg class="chart"') == 3  # training loss, validation loss, bce per horizon
    cells = re.findall(r"<tr class=\"(model|reference)\"><th>[^<]*</th>(.*?)</tr>", html)
    best = {kind: re.findall(r"<td( class=best)?>", row) for kind, row in cells}
    assert best["model"] == [" class=best", ""] and best["reference"] == ["", " class=best"]  # BCE down, SSIM up
    assert "&lt;escaped &amp; shown&gt;" in html
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert srcs == ["gifs/test.gif", "gifs/test_sequences/sequence_00001.gif"]  # relative: the folder can move
    assert all((page.parent / src).is_file() for src in srcs)
    worst = html[html.index("worst test sequences by bce_per_frame"):]
    assert re.findall(r"<tr><th>(\d+)</th>", worst) == ["1", "0", "2"]  # highest BCE first


def test_several_runs_side_by_side_and_embedded(tmp_path, capsys):
    one, two = make_run(tmp_path / "a" / "run1"), make_run(tmp_path / "b" / "run2", scale=0.5)
    page = main([str(one), str(two), "--out", str(tmp_path / "pages" / "both.html")])
    assert f"wrote {page}" in capsys.readouterr().out
    html = page.read_text()
    assert "run1" in html and "run2" in html
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert [(page.parent / s).resolve() for s in srcs] == [
        one / "gifs" / "test.gif", two / "gifs" / "test.gif",
        one / "gifs" / "test_sequences" / "sequence_00001.gif", two / "gifs" / "test_sequences" / "sequence_00001.gif"]
    # one copy-last row: both runs share the test set (same copy-last numbers)
    assert html.count('<tr class="reference">') == 1
    # a run on another test set gets its own, named, copy-last row
    three = make_run(tmp_path / "c" / "run3", copy_last=300.0)
    other = write_report([one, two, three], tmp_path / "three.html").read_text()
    assert re.findall(r'<tr class="reference"><th>([^<]*)</th>', other) == [
        "copy last frame (run1, run2)", "copy last frame (run3)"]
    embedded = write_report([one, two], tmp_path / "embedded.html", embed=True).read_text()
    uri = re.findall(r'<img src="data:image/gif;base64,([^"]+)"', embedded)[0]
    assert base64.b64decode(uri) == (one / "gifs" / "test.gif").read_bytes()


def test_an_mse_run_ranks_its_worst_sequences_by_mse(tmp_path):
    html = write_report(make_run(tmp_path / "highway", loss="mse")).read_text()
    worst = html[html.index("worst test sequences by mse_per_frame"):]
    assert re.findall(r"<tr><th>(\d+)</th>", worst) == ["2", "0", "1"]


def test_report_errors(tmp_path):
    with pytest.raises(ValueError, match="run directory not found"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a dfn run directory"):
        write_report(tmp_path / "empty")
    one, two = make_run(tmp_path / "r1"), make_run(tmp_path / "r2")
    with pytest.raises(ValueError, match="--out"):
        write_report([one, two])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nope")])
