"""Scene-cut detection (dfn.data.shots) on synthetic gray frames: hard cuts found, fast motion not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfn.data.shots import CUT_RATIO, CUT_THRESHOLD, describe_cuts, detect_cuts, frame_differences, spans_cut


def smooth_texture(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w) float in [0, 1]: heavily blurred noise, so a 1-pixel shift changes it only a little."""
    x = torch.from_numpy(np.random.default_rng(seed).random((1, 1, h, w))).float()
    for _ in range(4):
        x = torch.nn.functional.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False)
    x = (x - x.min()) / (x.max() - x.min())
    return x[0, 0].numpy()


def pan(texture: np.ndarray, frames: int, speed: int, h: int = 32, w: int = 40) -> np.ndarray:
    """(frames, h, w): a window sliding right over ``texture`` by ``speed`` pixels per frame."""
    return np.stack([texture[:h, speed * t:speed * t + w] for t in range(frames)])


def test_two_hard_cuts_found_exactly():
    # three shots, each a slow pan over its own texture at its own brightness (as real shots differ)
    dark, bright, mid = (lo + span * smooth_texture(32, 120, seed)
                         for seed, (lo, span) in enumerate([(0.1, 0.35), (0.55, 0.35), (0.3, 0.4)]))
    frames = np.concatenate([pan(dark, 15, 1), pan(bright, 12, 1), pan(mid, 13, 1)]).astype(np.float32)
    assert detect_cuts(frames) == [15, 27]
    assert detect_cuts(torch.from_numpy(frames)) == [15, 27]  # tensors too
    d = frame_differences(frames)
    assert d.shape == (39,) and d[14] > 0.12 and d[26] > 0.12 and np.delete(d, [14, 26]).max() < 0.02


def test_fast_continuous_motion_is_not_a_cut():
    # a full-contrast texture panning 8 px per frame: every frame changes a lot, some by more than the
    # absolute threshold alone allows -- the ratio to the median keeps them from counting as cuts
    frames = pan(smooth_texture(32, 400, 5), 40, 8)
    d = frame_differences(frames)
    assert d.max() > CUT_THRESHOLD and detect_cuts(frames, CUT_THRESHOLD, ratio=0) != []
    assert detect_cuts(frames) == []
    assert detect_cuts(frames, CUT_THRESHOLD, CUT_RATIO) == []


def test_edge_cases_and_bad_arguments():
    assert detect_cuts(np.zeros((1, 4, 4))) == [] and detect_cuts(np.zeros((0, 4, 4))) == []
    assert detect_cuts(np.zeros((5, 4, 4))) == []  # static: median 0, nothing above the floor
    jump = np.concatenate([np.zeros((3, 4, 4)), np.ones((3, 4, 4))])
    assert detect_cuts(jump) == [3]
    with pytest.raises(ValueError, match=r"frame_differences: frames must be gray frames \(N, H, W\), "
                                         r"got shape \(3, 1, 4, 4\)$"):
        detect_cuts(np.zeros((3, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"detect_cuts: threshold must be a number in \[0, 1\] "
                                         r"\(mean absolute difference\), got 1\.5$"):
        detect_cuts(jump, threshold=1.5)
    with pytest.raises(ValueError, match="detect_cuts: ratio must be a number >= 0, got -1$"):
        detect_cuts(jump, ratio=-1)


def test_spans_cut_and_describe():
    cuts = [10, 20]
    assert not spans_cut(4, 6, cuts)   # frames 4..9: all before the cut at 10
    assert spans_cut(5, 6, cuts)       # frames 5..10: 9 and 10 are in two shots
    assert not spans_cut(10, 6, cuts)  # frames 10..15: the clip starts the shot
    assert spans_cut(19, 2, cuts) and not spans_cut(20, 100, cuts) and not spans_cut(0, 5, [])
    assert describe_cuts([]) == "no scene cuts"
    assert describe_cuts([30]) == "1 scene cut (at frames 30)"
    assert describe_cuts(list(range(1, 11)), shown=3) == "10 scene cuts (at frames 1, 2, 3, ...)"


def test_decoding_helpers_have_a_module_of_their_own():
    """The arrows run one way: video -> shots -> decoding, and decoding imports neither."""
    import ast
    from pathlib import Path

    import dfn.data

    def imported(module: str) -> set[str]:
        tree = ast.parse((Path(dfn.data.__file__).parent / f"{module}.py").read_text())
        return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}

    assert "video" not in imported("shots") and "decoding" in imported("shots")
    assert not {"video", "shots"} & imported("decoding")
    assert {"decoding", "shots"} <= imported("video")
