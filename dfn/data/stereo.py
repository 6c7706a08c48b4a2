"""Stereo pairs with ground-truth disparity, for the DFN paper's stereo prediction (Section 4).

A sample is a rectified gray pair and the disparity of every pixel of the *right* view:

    right(y, x) ≈ left(y, x + d(y, x))        (equivalently left(y, x) ≈ right(y, x − d) at the left pixel)

so d ≥ 0 for a right camera, and a 1×13 filter with taps at column offsets −6..+6 applied to the left
view reaches it while |d| ≤ 6 (``REACH``). Two sources:

* :class:`SyntheticStereo` — the scene of ``dfn.data.highway`` (the authors' stereo highway recordings
  are not public) rendered by a second camera ``baseline`` metres to the right, exact disparity
  f·baseline / depth from the renderer's depth of each right-view pixel (0 for sky and hills). With
  ``grain`` (ours, default) the ground carries a texture anchored on the road plane, as real asphalt
  does: the scene's own ground texture varies with depth only, which hides a sideways shift.
* :class:`MiddleburyStereo` — the Middlebury 2014 Motorcycle pair (Scharstein et al., GCPR 2014) that
  ships in scikit-image's wheel, views block-averaged ``downscale`` times, disparity block medians
  divided by it (its 7.2–59.9 px become 1.5–12.0 px at 5), and mirrored: the mirror image of a
  rectified pair is a rectified pair whose left view is the mirrored right one, so Middlebury's
  left-view ground truth, mirrored, is exactly the right-view disparity above. Crops of the left view
  start ``offset`` columns further right than those of the right view, which subtracts ``offset``
  from every disparity (centring 1.5–12.0 on the filter's −6..+6). Pixels without ground truth (+inf
  in the data) are NaN.

Batches: float32 (B, 4, S, S), channels ``LEFT``, ``RIGHT`` (in [0, 1]), ``DISPARITY`` (px, NaN =
unknown) and ``SGBM``: OpenCV's semi-global matcher (Hirschmüller 2008, ``cv2.StereoSGBM_create``) on
the same pair at the same scale, holes filled from the row's background as in the KITTI devkit, the
classical reference the filters' disparity is scored beside (test set only; NaN elsewhere).
Training is an endless stream, a batch a pure function of (seed, epoch, batch index)
(``dfn.data.common.InfiniteBatches``); validation and test are fixed seeded sets.
"""

from __future__ import annotations

import warnings
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..checks import check_int, check_number, fail
from .common import TAG_TEST, TAG_VAL, SeededDataModule, fixed_sequences
from .highway import CAM_HEIGHT, FOCAL, render_highway

LEFT, RIGHT, DISPARITY, SGBM = 0, 1, 2, 3  # the channels of a batch
REACH = 6  # paper: 13 taps, column offsets -6..+6


def sgbm_disparity(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """StereoSGBM's right-view disparity (module docstring's convention): uint8 (H, W) views ->
    float32 (H, W) px, NaN where it has none.

    OpenCV matches the pixels of its *first* image, so it gets the mirrored pair (mirrored right view
    first, see :class:`MiddleburyStereo`). Settings: OpenCV's documented defaults and tutorial values
    for gray images (block 5, P1 = 8·5², P2 = 32·5²), 16 disparities (0..15 ≥ the data's); not tuned.
    """
    import cv2

    block = 5
    matcher = cv2.StereoSGBM_create(minDisparity=0, numDisparities=16, blockSize=block, P1=8 * block**2,
                                    P2=32 * block**2, disp12MaxDiff=1, uniquenessRatio=10,
                                    speckleWindowSize=100, speckleRange=2)
    fixed = matcher.compute(np.ascontiguousarray(right[:, ::-1]), np.ascontiguousarray(left[:, ::-1]))
    disparity = fixed.astype(np.float32)[:, ::-1] / 16  # fixed point, 4 fractional bits
    disparity[disparity < 0] = np.nan  # minDisparity - 1: no match
    return np.ascontiguousarray(disparity)


def fill_background(disparity: np.ndarray) -> np.ndarray:
    """Fill each row's NaN runs with the smaller (farther) of the valid values either side, as the
    KITTI devkit's background interpolation; a row without any value stays NaN. (H, W) -> (H, W)."""
    out = disparity.copy()
    for row in out:  # rows are views: filled in place
        valid = np.flatnonzero(np.isfinite(row))
        if len(valid) == 0:
            continue
        holes = np.flatnonzero(~np.isfinite(row))
        after = np.searchsorted(valid, holes)  # (holes,) index into valid of the next valid column
        before = after - 1  # the previous one; -1 or len(valid): none on that side, use the other
        before, after = np.where(before < 0, after, before), np.where(after == len(valid), before, after)
        row[holes] = np.minimum(row[valid[before]], row[valid[after]])
    return out


def pack(left: np.ndarray, right: np.ndarray, disparity: np.ndarray, sgbm: np.ndarray | None = None) -> torch.Tensor:
    """Views uint8 (N, S, S), disparity and SGBM float32 (N, S, S) -> float32 (N, 4, S, S) batch layout."""
    views = torch.as_tensor(np.stack([left, right], 1), dtype=torch.float32) / 255  # (N, 2, S, S)
    sgbm = np.full_like(disparity, np.nan) if sgbm is None else sgbm
    maps = torch.as_tensor(np.stack([disparity, sgbm], 1), dtype=torch.float32)  # (N, 2, S, S)
    return torch.cat([views, maps], 1)  # (N, 4, S, S): LEFT, RIGHT, DISPARITY, SGBM


def with_sgbm(pairs: torch.Tensor) -> torch.Tensor:
    """Fill the SGBM channel of packed pairs (N, 4, S, S) from their own views."""
    views = (pairs[:, :2] * 255).round().to(torch.uint8).numpy()  # (N, 2, S, S)
    sgbm = [fill_background(sgbm_disparity(left, right)) for left, right in views]
    pairs[:, SGBM] = torch.as_tensor(np.stack(sgbm))
    return pairs


def synthetic_pairs(image_size: int, baseline: float, grain: bool, curves: bool, shake: bool, num_cars: int,
                    rng: np.random.Generator, count: int) -> torch.Tensor:
    """``count`` highway scenes seen by two cameras ``baseline`` metres apart: float32 (count, 4, S, S)."""
    views, depth = render_highway(count, 1, image_size, rng, curves, shake, num_cars, camera_offsets=(0.0, baseline),
                                  depth=True, grain=grain)  # (2, count, 1, S, S) each
    disparity = FOCAL * image_size * baseline / depth[1, :, 0]  # (count, S, S) right view; 1/inf = 0: sky
    return pack(views[0, :, 0], views[1, :, 0], disparity)


class SyntheticStereo(SeededDataModule):
    """Stereo pairs of the synthetic highway scene (module docstring); defaults: 64×64 as the authors'
    data, batch 16 and 200 batches an epoch as the authors' training (20,000 iterations = 100 epochs).

    ``baseline``: the right camera's offset in metres. Disparity grows with it and is largest on the
    nearest road, d = baseline·(rows below the horizon)/camera height; 0.3 m keeps it under 5.8 px at
    64×64 (the horizon sits at 30–38 % of the height, the camera 2.4 m up). ``grain`` (ours, on by
    default): texture on the ground plane (``render_highway``); without it the road's texture varies
    with depth only and a sideways shift is invisible on most of the road, so no method can recover
    the disparity there from the views.
    """

    def __init__(self, image_size: int = 64, baseline: float = 0.3, grain: bool = True, curves: bool = True,
                 shake: bool = True, num_cars: int = 3, batch_size: int = 16, train_batches_per_epoch: int = 200,
                 val_size: int = 128, test_size: int = 256, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers, seed)
        name = type(self).__name__
        for key, value, low in (("image_size", image_size, 16), ("num_cars", num_cars, 0),
                                ("train_batches_per_epoch", train_batches_per_epoch, 1), ("val_size", val_size, 1),
                                ("test_size", test_size, 1)):
            check_int(name, key, value, minimum=low)
        # The nearest road row lies at most 70 % of the height (+2 px of camera shake) below the horizon, where
        # the disparity is baseline * (0.70 * image_size + 2) / CAM_HEIGHT: it must stay within the filter's reach.
        widest = REACH * CAM_HEIGHT / (0.70 * image_size + 2)
        check_number(name, "baseline", baseline, low=0, high=widest, low_open=True,
                     meaning=f"metres; keeps the disparity within the filter's ±{REACH} px at image_size {image_size}")
        self.image_size, self.channels = image_size, 1
        self.make = partial(synthetic_pairs, image_size, float(baseline), grain, curves, shake, num_cars)
        self.train_batches_per_epoch, self.val_size, self.test_size = train_batches_per_epoch, val_size, test_size

    def setup(self, stage: str | None = None) -> None:
        def fixed(n: int, tag: int) -> torch.Tensor:
            return torch.as_tensor(fixed_sequences(lambda rng, k: self.make(rng, k).numpy(), n, self.seed, tag))

        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = fixed(self.val_size, TAG_VAL)  # (N, 4, S, S)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self.predict_set = with_sgbm(fixed(self.test_size, TAG_TEST))

    def train_dataloader(self) -> DataLoader:
        return self._stream(self.make, self.train_batches_per_epoch)


def motorcycle(downscale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mirrored Motorcycle pair at 1/downscale: left, right uint8 (H, W) and the right view's
    disparity float32 (H, W) px (NaN unknown). A block's disparity is the median of its known values
    when more than half of its downscale² pixels are known (a median, not a mean: a block across a
    depth edge takes the side that covers most of it), else unknown."""
    import skimage.data
    from skimage.color import rgb2gray

    left, right, disparity = skimage.data.stereo_motorcycle()  # (500, 741, 3) uint8 x2, (500, 741) float32
    H, W = (s // downscale * downscale for s in disparity.shape)

    def blocks(image: np.ndarray) -> np.ndarray:  # (H, W) -> (H/k, W/k) block means
        return image[:H, :W].reshape(H // downscale, downscale, W // downscale, downscale).mean((1, 3))

    gray = [np.round(255 * blocks(rgb2gray(view))).astype(np.uint8) for view in (left, right)]
    known = np.where(np.isfinite(disparity), disparity, np.nan)[:H, :W]  # +inf (unknown) -> NaN
    cells = known.reshape(H // downscale, downscale, W // downscale, downscale).transpose(0, 2, 1, 3)
    cells = cells.reshape(H // downscale, W // downscale, downscale**2)  # (H/k, W/k, k*k) a block's pixels
    enough = np.isfinite(cells).sum(-1) > downscale**2 / 2
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks: unknown, as intended
        small = np.where(enough, np.nanmedian(cells, -1), np.nan) / downscale
    # Mirrored: the new left view is the mirrored right one, the new right view the mirrored left one.
    return gray[1][:, ::-1].copy(), gray[0][:, ::-1].copy(), small[:, ::-1].astype(np.float32).copy()


def motorcycle_crops(pair: tuple[np.ndarray, np.ndarray, np.ndarray], size: int, offset: int,
                     corners: np.ndarray) -> torch.Tensor:
    """Crops at (top, left) ``corners`` (N, 2) of the right view (and ``offset`` further right in the
    left view): float32 (N, 4, size, size), disparity reduced by ``offset``."""
    left, right, disparity = pair
    out = [(left[y:y + size, x + offset:x + offset + size], right[y:y + size, x:x + size],
            disparity[y:y + size, x:x + size] - offset) for y, x in corners]
    return pack(*(np.stack(parts) for parts in zip(*out)))


def random_crops(pair, size: int, offset: int, rng: np.random.Generator, count: int) -> torch.Tensor:
    """``count`` crops at uniformly random positions (see :func:`motorcycle_crops`)."""
    H, W = pair[0].shape
    corners = np.stack([rng.integers(0, H - size + 1, count), rng.integers(0, W - size - offset + 1, count)], 1)
    return motorcycle_crops(pair, size, offset, corners)


class MiddleburyStereo(SeededDataModule):
    """Crops of the Middlebury 2014 Motorcycle pair (module docstring), for stereo matching by view
    synthesis (ours: the authors used their highway recordings). One scene: training, validation and
    test crops all come from it, as a classical matcher runs on the pair it is scored on; the ground
    truth is only ever read by the scores.

    Training and validation: crops at uniformly random positions; test: a fixed grid of crops covering
    the scene (overlaps are scored once per crop, the same pixels for every estimate).
    ``downscale`` 5 and ``offset`` 7 put the scene's disparities in −5.5..5.0 px, inside the filter's
    ±6 (checked here).
    """

    def __init__(self, downscale: int = 5, offset: int = 7, image_size: int = 64, batch_size: int = 16,
                 train_batches_per_epoch: int = 200, val_size: int = 64, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers, seed)
        name = type(self).__name__
        for key, value, low in (("downscale", downscale, 1), ("offset", offset, 0), ("image_size", image_size, 16),
                                ("train_batches_per_epoch", train_batches_per_epoch, 1), ("val_size", val_size, 1)):
            check_int(name, key, value, minimum=low)
        self.pair = motorcycle(downscale)
        H, W = self.pair[0].shape
        check_int(name, "image_size", image_size, minimum=16, maximum=min(H, W - offset),
                  meaning=f"crops of the {H}x{W} scene at downscale {downscale}, shifted by offset {offset} columns")
        low, high = np.nanmin(self.pair[2]) - offset, np.nanmax(self.pair[2]) - offset
        if low < -REACH or high > REACH:
            raise fail(name, "offset", f"one that puts the disparities within the filter's ±{REACH} px", offset,
                       meaning=f"at downscale {downscale} they span {low:.1f}..{high:.1f} px, beyond the filter's "
                               f"±{REACH}: try offset {(low + high) / 2 + offset:.0f}, or a downscale that makes "
                               f"the span <= {2 * REACH} px")
        self.downscale, self.offset, self.image_size, self.channels = downscale, offset, image_size, 1
        self.train_batches_per_epoch, self.val_size = train_batches_per_epoch, val_size

    def test_corners(self) -> np.ndarray:
        """(N, 2) top-left corners (right view) of the test grid: evenly spaced, first and last crop at
        the scene's edges, as few as cover it."""
        H, W = self.pair[0].shape
        S, reach = self.image_size, (H - self.image_size, W - self.image_size - self.offset)
        ys, xs = (np.linspace(0, r, -(-(r + S) // S)).round().astype(int) for r in reach)
        return np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)

    def setup(self, stage: str | None = None) -> None:
        S, offset = self.image_size, self.offset
        if stage in (None, "fit", "validate") and self.val_set is None:
            make = partial(random_crops, self.pair, S, offset)
            self.val_set = torch.as_tensor(fixed_sequences(lambda rng, n: make(rng, n).numpy(), self.val_size,
                                                           self.seed, TAG_VAL))  # (N, 4, S, S)
        if stage in (None, "test", "predict") and self.test_set is None:
            left, right, _ = self.pair
            sgbm = fill_background(sgbm_disparity(left, right))  # the whole scene: the matcher's best case
            crops = motorcycle_crops(self.pair, S, offset, self.test_corners())  # (N, 4, S, S)
            crops[:, SGBM] = torch.stack([torch.as_tensor(sgbm[y:y + S, x:x + S] - offset)
                                          for y, x in self.test_corners()])
            self.test_set = self.predict_set = crops

    def train_dataloader(self) -> DataLoader:
        return self._stream(partial(random_crops, self.pair, self.image_size, self.offset),
                            self.train_batches_per_epoch)
