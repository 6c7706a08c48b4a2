"""Dashboards end to end: one tiny real fit, then its report in a real browser (headless Chromium) and
what it logged to wandb (read back from the offline run's transaction log)."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import dfn.wandb_extras as extras
from conftest import ROOT, TINY, only, run_train
from dfn.history import read_metrics
from dfn.module import VideoPrediction
from wandb_records import artifacts, logged_history, metric_definitions

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; "
                                                             ".ci/run installs it)")
VIDEOS = 3


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("dash")
    proc = run_train(["fit", *TINY, "--model_artifacts.log_model", "always", "--sequence_table.videos", str(VIDEOS)], cwd)
    directory = only(sorted((cwd / "runs" / "dfn").iterdir()))
    wandb_file = only(list((cwd / "runs" / "wandb").glob(f"offline-run-*-{directory.name}/run-*.wandb")))
    return SimpleNamespace(cwd=cwd, proc=proc, dir=directory, wandb=wandb_file,
                           summary=json.loads((directory / "summary.json").read_text()))


def test_fit_writes_the_report_and_the_metrics_beside_the_run(fitted):
    d, summary = fitted.dir, fitted.summary
    assert f"report {d / 'report.html'}" in fitted.proc.stdout.strip().splitlines()[-1]
    # The second logger leaves the layout alone: one run directory, checkpoints inside it, no extra folders.
    assert {p.name for p in (fitted.cwd / "runs").iterdir()} == {"dfn", "wandb"}
    assert not list(fitted.cwd.rglob("version_*")) and not list(fitted.cwd.rglob("lightning_logs"))
    assert summary["checkpoint"].startswith(str(d / "checkpoints" / "best-"))
    curves = read_metrics(d / "metrics.csv")
    assert curves["train/loss"][0] == list(range(summary["global_step"]))  # every step (log_every_n_steps 1)
    assert len(curves["val/loss"][1]) == 2  # one per validation epoch
    assert curves["test/bce_per_frame"][1] == [pytest.approx(summary["test/bce_per_frame"], rel=1e-6)]
    # the checkpoint chosen by val/loss is the one with the smallest val/loss in the file
    state = torch.load(d / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    best_score = next(v["best_model_score"] for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert float(best_score) == pytest.approx(min(curves["val/loss"][1]), rel=1e-6)


PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({src: i.getAttribute("src").slice(0, 60),
                                                  ok: i.complete && i.naturalWidth > 0}));
  const charts = [...document.querySelectorAll("svg.chart")].map(svg => ({
    lines: svg.querySelectorAll("polyline.series").length,
    points: [...svg.querySelectorAll("polyline.series")].every(p => p.points.numberOfItems > 0),
    width: svg.getBoundingClientRect().width}));
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images, charts});
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str, cwd: Path) -> str:
    profile = cwd / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def render(page: Path, tmp_path: Path) -> dict:
    """Load `page` (from its own folder, so relative image paths resolve) and report what the browser drew."""
    probe = page.with_name(f"{page.stem}.probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    try:
        dom = chromium("--dump-dom", probe.as_uri(), cwd=tmp_path)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the page's load event never ran:\n{dom[-1500:]}"
    return json.loads(html.unescape(found.group(1)))


@needs_chromium
def test_the_report_renders_in_a_browser_from_a_copied_folder(fitted, tmp_path):
    copied = shutil.copytree(fitted.dir, tmp_path / "elsewhere" / fitted.dir.name)  # the folder moves
    seen = render(copied / "report.html", tmp_path)
    # test, validation, flow GIFs, the filters image, and the worst sequences that have a GIF
    with open(fitted.dir / "sequences_test.csv", newline="") as f:
        worst = sorted(csv.DictReader(f), key=lambda r: float(r["bce_per_frame"]), reverse=True)[:5]
    assert len(seen["images"]) == 4 + sum(bool(r["gif"]) for r in worst), seen
    assert all(image["ok"] for image in seen["images"]), seen["images"]
    # training loss, validation loss, learning rate, 4 metrics per horizon; each drawn with its lines
    assert len(seen["charts"]) == 7 and all(c["lines"] >= 1 and c["points"] and c["width"] > 100
                                            for c in seen["charts"]), seen["charts"]


@needs_chromium
def test_several_runs_side_by_side_in_a_browser(fitted, tmp_path):
    copy = shutil.copytree(fitted.dir, tmp_path / "copy" / "second")
    page = tmp_path / "pages" / "compare.html"
    subprocess.run([sys.executable, "-m", "dfn.report", str(fitted.dir), str(copy), "--out", str(page)],
                   check=True, cwd=ROOT, capture_output=True)
    seen = render(page, tmp_path)
    single = len(re.findall(r"<img ", (fitted.dir / "report.html").read_text()))
    assert len(seen["images"]) == 2 * single and all(image["ok"] for image in seen["images"]), seen["images"]
    assert len(seen["charts"]) == 7
    assert all(c["lines"] == 2 for c in seen["charts"][:1])  # the training loss of both runs in one chart
    shot = tmp_path / "shot.png"
    chromium("--hide-scrollbars", "--window-size=1200,900", f"--screenshot={shot}", page.as_uri(), cwd=tmp_path)
    assert shot.stat().st_size > 10_000


def test_wandb_metric_definitions_and_horizon_axis(fitted):
    definitions = metric_definitions(fitted.wandb)
    assert definitions["val/loss"]["summary"] == {"min"}
    assert definitions["test/bce_per_frame"]["summary"] == {"min"}
    assert definitions["test/ssim"]["summary"] == definitions["test/psnr"]["summary"] == {"max"}
    assert definitions["test/copy_last/ssim"]["summary"] == {"max"}
    for key in ("test_horizon/bce_per_frame", "test_horizon/copy_last/bce_per_frame"):
        assert definitions[key]["step_metric"] == "horizon"
    for prefix in ("test", "test_final"):  # the best checkpoint's curves and the final weights'
        rows = [row for row in logged_history(fitted.wandb) if f"{prefix}_horizon/bce_per_frame" in row]
        assert [row["horizon"] for row in rows] == [1, 2]
        expected = fitted.summary[f"{prefix}/bce_per_frame/horizon"]
        assert [row[f"{prefix}_horizon/bce_per_frame"] for row in rows] == pytest.approx(expected, rel=1e-9)
    logged = {k: v for row in logged_history(fitted.wandb) for k, v in row.items()}
    assert logged["test_horizon_plot/bce_per_frame_table/_type"] == "table-file"  # model and copy-last, one panel
    assert logged["val/filters/_type"] == "images/separated"


def test_per_sequence_table(fitted):
    with open(fitted.dir / "sequences_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["sequence"]) for r in rows] == list(range(int(fitted.summary["test/sequences"])))
    # per-sequence scores average to the test metric that FrameMetrics accumulated independently
    for name in ("bce_per_frame", "mse_per_frame", "ssim", "psnr"):
        mean = np.mean([float(r[name]) for r in rows])
        assert mean == pytest.approx(fitted.summary[f"test/{name}"], rel=1e-6), name
    # GIFs for the first VIDEOS sequences and for the VIDEOS worst by BCE (the training loss), no others
    worst = sorted(rows, key=lambda r: float(r["bce_per_frame"]), reverse=True)[:VIDEOS]
    expected = {int(r["sequence"]) for r in rows[:VIDEOS] + worst}
    assert {int(r["sequence"]) for r in rows if r["gif"]} == expected
    gifs = [r["gif"] for r in rows if r["gif"]]
    assert all(g == f"gifs/test_sequences/sequence_{int(r['sequence']):05d}.gif" for r in rows if (g := r["gif"]))
    assert all((fitted.dir / g).is_file() for g in gifs)
    assert sorted(p.name for p in (fitted.dir / "gifs" / "test_sequences").iterdir()) == sorted(Path(g).name for g in gifs)
    logged = {k: v for row in logged_history(fitted.wandb) for k, v in row.items()}
    assert logged["test/per_sequence/_type"] == "table-file"
    assert logged["test/per_sequence/nrows"] == len(rows) and logged["test/per_sequence/ncols"] == 6
    table = next(a for a in artifacts(fitted.wandb) if "per_sequence" in a["name"])  # the table and its GIFs
    assert sum(path.endswith(".gif") for path in table["files"]) == len(gifs)


def model_artifacts(fitted) -> dict[str, dict]:
    found = [a for a in artifacts(fitted.wandb) if a["type"] == "model"]
    assert {a["name"] for a in found} == {f"model-{fitted.dir.name}"}
    return {alias: a for a in found for alias in a["aliases"] if alias in ("best", "latest") and
            (alias == "best") == ("best" in a["metadata"]["checkpoint"].rsplit("/", 1)[-1])}


def test_best_and_last_checkpoints_are_model_artifacts(fitted):
    logged = model_artifacts(fitted)
    assert set(logged) == {"best", "latest"}
    best, last = Path(fitted.summary["checkpoint"]), fitted.dir / "checkpoints" / "last.ckpt"
    assert Path(logged["best"]["files"]["model.ckpt"]).read_bytes() == best.read_bytes()
    assert Path(logged["latest"]["files"]["model.ckpt"]).read_bytes() == last.read_bytes()
    assert logged["best"]["metadata"]["monitor"] == "val/loss"


def test_load_model_from_a_local_artifact(fitted, tmp_path):
    """An artifact as `wandb artifact get` leaves it (a folder with model.ckpt) loads, offline."""
    folder = tmp_path / f"model-{fitted.dir.name}-best"
    folder.mkdir()
    shutil.copy(model_artifacts(fitted)["best"]["files"]["model.ckpt"], folder / "model.ckpt")
    model = extras.load_model(str(folder))
    reference = VideoPrediction.load_from_checkpoint(fitted.summary["checkpoint"], map_location="cpu")
    frames = torch.rand(2, 3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(frames), reference.eval()(frames))
    proc = subprocess.run([sys.executable, "-m", "dfn.wandb_extras", str(folder)], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == str(folder / "model.ckpt")


def test_artifact_references_go_through_the_wandb_api(monkeypatch, tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"x")
    asked = []

    class Api:
        def artifact(self, name, type=None):
            asked.append((name, type))
            return SimpleNamespace(download=lambda: str(tmp_path))

    monkeypatch.setattr(extras.wandb, "Api", Api)
    assert extras.download("team/dfn/model-abc:best") == tmp_path / "model.ckpt"
    assert asked == [("team/dfn/model-abc:best", "model")]
    with pytest.raises(ValueError, match="neither an existing path nor a wandb artifact reference"):
        extras.download("no-such-file.ckpt")
    (tmp_path / "two").mkdir()
    for name in ("a.ckpt", "b.ckpt"):
        (tmp_path / "two" / name).write_bytes(b"x")
    with pytest.raises(ValueError, match="expected one .ckpt"):
        extras.download(str(tmp_path / "two"))


@pytest.mark.parametrize("mode, offline, logged", [("online", True, 0), ("online", False, 2), ("always", True, 2),
                                                   ("never", False, 0)])
def test_model_artifacts_mode(monkeypatch, tmp_path, mode, offline, logged):
    best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    best.write_bytes(b"b")
    last.write_bytes(b"l")
    calls = []
    run = SimpleNamespace(id="abc", offline=offline, log_artifact=lambda a, aliases: calls.append((a, aliases)))
    monkeypatch.setattr(extras, "wandb_run", lambda trainer: run)
    trainer = SimpleNamespace(global_step=7, checkpoint_callback=SimpleNamespace(
        best_model_path=str(best), last_model_path=str(last), best_model_score=torch.tensor(1.5), monitor="val/loss"))
    extras.ModelArtifacts(mode).on_fit_end(trainer, None)
    assert len(calls) == logged
    if logged:
        assert [aliases for _, aliases in calls] == [["best"], ["latest"]]
        assert calls[0][0].name == "model-abc" and calls[0][0].metadata["best_score"] == 1.5
    with pytest.raises(ValueError, match="log_model"):
        extras.ModelArtifacts("sometimes")
