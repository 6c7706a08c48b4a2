"""Classical anchors (`python -m dfn.bench anchors`): copy-last and Farneback flow extrapolation."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch

pytest.importorskip("cv2", reason="the Farneback anchor needs opencv-python-headless (pip install 'dfn[anchors]')")

from dfn.bench import anchors  # noqa: E402
from dfn.metrics import frame_scores  # noqa: E402

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture in [0.1, 0.9]: blurred noise, so optical flow has something to track."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.random((1, 1, h, w))).float()
    x = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    x = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    x = (x - x.min()) / (x.max() - x.min())
    return (0.1 + 0.8 * x[0, 0]).numpy()


def translating_clips(dx: int, dy: int, frames: int = 6, size: int = 48, clips: int = 3) -> torch.Tensor:
    """(B, T, 1, S, S): windows of a big texture, moving by (dx, dy) pixels per frame (content moves +dx)."""
    out = []
    for b in range(clips):
        big = texture(size + 40, size + 40, seed=b)
        out.append(np.stack([big[20 - t * dy:20 - t * dy + size, 20 - t * dx:20 - t * dx + size]
                             for t in range(frames)]))
    return torch.from_numpy(np.stack(out)).float()[:, :, None]


def mse(pred: torch.Tensor, target: torch.Tensor, margin: int = 8) -> float:
    """Per-pixel MSE away from the borders (where content enters the frame, no predictor can know it)."""
    h, w = pred.shape[-2:]
    return float(((pred - target)[..., margin:h - margin, margin:w - margin] ** 2).mean())


@pytest.mark.parametrize("dx, dy", [(2, 1), (-1, 2)])
def test_farneback_extrapolates_a_translation(dx, dy):
    clips = translating_clips(dx, dy)
    inputs, targets = clips[:, :3], clips[:, 3:]
    flow, copy = anchors.farneback_extrapolate(inputs, 3), anchors.copy_last(inputs, 3)
    assert flow.shape == copy.shape == targets.shape
    # the truth: the last frame shifted by k*(dx, dy); copy-last is off by k pixels, flow nearly exact
    shifted = torch.stack([torch.roll(inputs[:, -1], (k * dy, k * dx), dims=(-2, -1)) for k in (1, 2, 3)], 1)
    assert mse(shifted, targets) < 1e-10
    assert mse(flow, targets) < 0.1 * mse(copy, targets)
    assert frame_scores(flow, targets)["ssim"].mean() > frame_scores(copy, targets)["ssim"].mean() + 0.05


def test_static_clip_both_exact():
    clips = translating_clips(0, 0)
    inputs, targets = clips[:, :3], clips[:, 3:]
    for name, predict in anchors.PREDICTORS.items():
        assert mse(predict(inputs, 3), targets, margin=0) < 1e-6, name


def test_rgb_frames_warped_per_channel():
    gray = translating_clips(2, 0)
    clips = torch.cat([gray, 1 - gray, gray * 0.5], dim=2)  # (B, T, 3, S, S), every channel moving alike
    pred = anchors.farneback_extrapolate(clips[:, :3], 2)
    assert pred.shape == (3, 2, 3, 48, 48)
    assert mse(pred, clips[:, 3:5]) < 0.1 * mse(anchors.copy_last(clips[:, :3], 2), clips[:, 3:5])


def test_bad_input_named():
    with pytest.raises(ValueError, match="T_in >= 2"):
        anchors.farneback_extrapolate(torch.rand(1, 1, 1, 8, 8), 2)


def test_cli_scores_the_configs_test_clips(tmp_path, capsys):
    from dfn.data import VideoFolder
    # A user's clip: a texture panning right 2 px per frame, 80 frames of 48x64.
    big = (texture(48, 240) * 255).astype(np.uint8)
    frames = np.stack([np.repeat(big[:, 160 - 2 * t:224 - 2 * t, None], 3, -1) for t in range(80)])
    video = tmp_path / "pan.mp4"
    iio.imwrite(video, frames, fps=10, macro_block_size=1)
    config = ROOT / "experiments" / "real_video" / "dfn.yaml"
    results = anchors.main(anchors.argparse.Namespace(config=str(config), path=str(video), frames_in=None,
                                                      frames_out=None, image_size=32, keep_aspect=None,
                                                      split="test", limit=None))
    out = capsys.readouterr().out
    # the config's data section was used: RGB, kept aspect (48x64 -> 32x40), its time split (last 10%
    # of 80 frames = 8 frames: 3 clips of 3 + 3), the same clips VideoFolder gives `train.py test`
    assert "3 clips of 3 -> 3 frames, frames (3, 32, 40)" in out
    same = VideoFolder(str(video), image_size=32, keep_aspect=True, color="rgb")
    same.setup("test")
    assert results["copy_last"]["clips"] == len(same.test_set) == 3
    assert results["farneback"]["mse_per_frame"] < 0.5 * results["copy_last"]["mse_per_frame"]
