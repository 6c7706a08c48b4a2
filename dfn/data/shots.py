"""Scene cuts: where a video jumps to a new shot, so that clips can be kept inside one shot.

A clip that spans a hard cut asks the model to predict an unrelated picture from the frames before it:
unpredictable noise for training, and it dominates test error (on ``data/samples/bikes.mp4``, the 5 of
20 test clips across its last cut carry ~90% of copy-last's error).

Detection is the classic frame-difference test, on small gray frames: with
``d_i = mean |frame_i - frame_{i-1}|`` (values in [0, 1]), frame ``i`` starts a new shot when
``d_i > max(threshold, ratio * median(d))``. The absolute floor keeps a near-static video (tiny median)
from calling every small movement a cut; the ratio keeps footage with fast motion throughout (large
median) from calling its ordinary frames cuts.

Defaults, measured at short side 32 (:data:`DETECT_SHORT_SIDE`) on the two sample clips:

* ``bikes.mp4`` (250 frames): median d 0.0130; its five hard cuts at frames 30, 76, 137, 187, 242 have
  d = 0.323, 0.199, 0.182, 0.218, 0.217 (14-25x the median); the fastest ordinary motion (a pan,
  frames 97-103) peaks at d = 0.079 (6.0x the median). Nothing lies between 0.079 and 0.182.
* ``carphone_pristine.mp4`` (120 frames, no cut): median 0.0080, max 0.020.

:data:`CUT_THRESHOLD` = 0.12 and :data:`CUT_RATIO` = 9 sit near the geometric middle of those gaps
(sqrt(0.079 * 0.182) = 0.120, sqrt(6.0 * 14) = 9.2): they find exactly the five bikes cuts and none in
carphone. Gradual transitions (fades, dissolves) spread their change over many frames and are not found.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checks import check_number, fail
from .decoding import aspect_size, decode_chunks, first_line, frames_to_tensor

CUT_THRESHOLD = 0.12  # d_i floor for a cut (mean absolute difference, [0, 1] units); see module docstring
CUT_RATIO = 9.0       # ... and d_i must also exceed this many times the file's median d
DETECT_SHORT_SIDE = 32  # detection resolution: small frames average out noise and make decoding cheap


def frame_differences(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, H, W) gray frames in [0, 1] -> (N - 1,) float64: ``d[i - 1] = mean |frame_i - frame_{i-1}|``."""
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim != 3:
        raise fail("frame_differences", "frames", "gray frames (N, H, W)", frames, shown=f"shape {tuple(x.shape)}")
    return np.abs(np.diff(x, axis=0)).mean(axis=(1, 2))


def detect_cuts(frames: torch.Tensor | np.ndarray, threshold: float = CUT_THRESHOLD,
                ratio: float = CUT_RATIO) -> list[int]:
    """Sorted indices ``i`` (1 <= i < N) of the frames that start a new shot.

    ``frames``: (N, H, W) gray, float in [0, 1], already downscaled (short side ~32; see
    :data:`DETECT_SHORT_SIDE` -- the defaults were measured there). A cut is where
    ``d_i = mean |frame_i - frame_{i-1}| > max(threshold, ratio * median(d))``.
    ``threshold`` in [0, 1], ``ratio`` >= 0. Fewer than 2 frames: no cuts.
    """
    check_number("detect_cuts", "threshold", threshold, low=0, high=1, meaning="mean absolute difference")
    check_number("detect_cuts", "ratio", ratio, low=0)
    d = frame_differences(frames)
    if d.size == 0:
        return []
    limit = max(threshold, ratio * float(np.median(d)))
    return [int(i) + 1 for i in np.flatnonzero(d > limit)]  # d[i - 1] compares frame i with frame i - 1


def small_gray_frames(path: str | Path, short_side: int = DETECT_SHORT_SIDE, frames: int | None = None
                      ) -> torch.Tensor:
    """Decode a whole video file once into float32 (N, h, w) gray frames in [0, 1], short side
    ``short_side`` at the video's own aspect (area-averaged: no aliasing, less noise). ``frames``: the
    file's frame count if known (only the progress bar uses it)."""
    path = Path(path)
    chunks, size = [], None
    try:
        for chunk in decode_chunks(path, f"{path.name}: scene cuts", frames):
            if size is None:
                size = aspect_size(chunk.shape[1], chunk.shape[2], short_side, multiple=1)
            chunks.append(frames_to_tensor(chunk, "gray", size)[:, 0])  # (n, 1, h, w) -> (n, h, w)
    except Exception as err:
        raise ValueError(f"{path}: cannot decode for scene-cut detection ({first_line(err)})") from err
    if not chunks:
        raise ValueError(f"{path}: video has no frames")
    return torch.cat(chunks)


def detect_file_cuts(path: str | Path, threshold: float = CUT_THRESHOLD, ratio: float = CUT_RATIO,
                     frames: int | None = None) -> list[int]:
    """Scene cuts of one video file: sorted frame indices that start a new shot (see :func:`detect_cuts`).
    Decodes the file once, at short side :data:`DETECT_SHORT_SIDE`; ``frames`` as in
    :func:`small_gray_frames`."""
    return detect_cuts(small_gray_frames(path, frames=frames), threshold, ratio)


def spans_cut(start: int, frames: int, cuts: list[int]) -> bool:
    """Whether the clip of frames ``start .. start + frames - 1`` holds frames of two shots, i.e. some cut
    ``c`` (the first frame of a shot) has ``start < c < start + frames``. ``cuts`` sorted."""
    i = int(np.searchsorted(cuts, start, side="right"))  # first cut after `start`
    return i < len(cuts) and cuts[i] < start + frames


def describe_cuts(cuts: list[int], shown: int = 8) -> str:
    """'5 scene cuts (at frames 30, 76, 137, 187, 242)'; long lists are shortened."""
    if not cuts:
        return "no scene cuts"
    listed = ", ".join(map(str, cuts[:shown])) + (", ..." if len(cuts) > shown else "")
    return f"{len(cuts)} scene cut{'s' if len(cuts) != 1 else ''} (at frames {listed})"
