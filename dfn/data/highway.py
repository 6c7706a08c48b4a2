"""Synthetic highway driving video: a procedural stand-in for the DFN authors' highway data set.

The camera sits in a car on a three-lane road and looks toward the vanishing point. Every pixel below
the horizon is mapped back onto the road plane (inverse perspective: depth z = f h / (row - horizon)),
so dashed lane markings, asphalt and verge texture stream outward and speed up as they approach;
roadside posts and other cars (each at its own speed, in its own lane) are drawn as depth-tested
boxes. Per sequence: speed, lane offset, gentle curvature, traffic, lighting; per frame: camera shake.
The point of the data: the motion differs from position to position, which is exactly what dynamic
*local* filters are for.

Everything is vectorised over the batch (numpy float32); a Python loop runs over frames and objects.
`render_highway` renders the same scene from cameras beside the car's and the depth of every pixel
(the stereo pairs of `dfn.data.stereo`).
"""

from __future__ import annotations

import itertools
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..checks import check_int
from .common import (TAG_TEST, TAG_VAL, ClipArray, ClipDataModule, fixed_sequences,
                     to_float_clips)

LANE = 3.6              # lane width, metres
ROAD_HALF = 1.5 * LANE  # three lanes
CAM_HEIGHT = 2.4        # metres above the road (a high seat: more road, verges and posts in view)
DASH_PERIOD, DASH_LEN = 12.0, 4.0
POST_PERIOD, POST_X, POST_H, POST_W, NUM_POSTS = 20.0, ROAD_HALF + 1.5, 1.0, 0.25, 4
CAR_W, CAR_H = 1.8, 1.4
NEAR, FAR = 1.0, 120.0
FOCAL = 0.55            # focal length, in image widths
GRAIN_WAVES, GRAIN_AMPLITUDE, GRAIN_FADE = 4, 0.025, 15.0  # render_highway(grain=True): ground texture


def synthetic_highway(num_sequences: int, num_frames: int = 6, image_size: int = 64,
                      rng: np.random.Generator | None = None, curves: bool = True, shake: bool = True,
                      num_cars: int = 3) -> np.ndarray:
    """Generate grayscale driving sequences -> (num_sequences, num_frames, image_size, image_size) uint8."""
    images, _ = render_highway(num_sequences, num_frames, image_size, rng, curves, shake, num_cars)
    return images[0]


def render_highway(num_sequences: int, num_frames: int = 6, image_size: int = 64,
                   rng: np.random.Generator | None = None, curves: bool = True, shake: bool = True,
                   num_cars: int = 3, camera_offsets: tuple[float, ...] = (0.0,), depth: bool = False,
                   grain: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The scene of :func:`synthetic_highway` seen by one camera per entry of ``camera_offsets``.

    ``camera_offsets``: lateral positions (metres, + = right) of cameras beside the car's own, all
    with its orientation and focal length (a rectified rig). The random draws do not depend on them,
    so offset 0 gives :func:`synthetic_highway`'s frames exactly. Returns the frames, uint8
    (V, B, T, S, S) with V = len(camera_offsets), and with ``depth=True`` the depth along the optical
    axis of what each pixel shows, float32 (V, B, T, S, S) in metres (+inf for sky and hills, which
    lie at infinity), else None.

    ``grain``: add a texture anchored on the ground plane (a sum of ``GRAIN_WAVES`` plane waves in road
    coordinates, 0.8–2.4 m long, fading out by ``GRAIN_FADE`` m). The ground's own texture varies
    with depth only, so without grain a sideways shift of the camera is invisible on most of the
    road. Its draws come after all others: the rest of the scene is the same with or without it.
    """
    rng = np.random.default_rng() if rng is None else rng
    B, T, S, V = num_sequences, num_frames, image_size, len(camera_offsets)
    out = np.zeros((V, B, T, S, S), dtype=np.uint8)
    depths = np.full((V, B, T, S, S), np.inf, dtype=np.float32) if depth else None
    if B == 0 or T == 0:
        return out, depths

    def per_seq(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, size=(B, 1, 1)).astype(np.float32)  # (B, 1, 1) broadcasts over pixels

    f = np.float32(FOCAL * S)                          # focal length in pixels
    speed = per_seq(0.8, 2.2)                         # metres per frame
    s0 = per_seq(0.0, 1000.0)                         # distance already travelled
    cam_x = per_seq(-0.8, 0.8)                        # lateral offset inside the middle lane
    curve = per_seq(-0.004, 0.004) if curves else np.zeros((B, 1, 1), np.float32)  # lateral bend = curve * z^2
    horizon0 = per_seq(0.30, 0.38) * S
    sky, asphalt, verge = per_seq(0.75, 0.95), per_seq(0.30, 0.45), per_seq(0.15, 0.30)
    paint = per_seq(0.85, 1.0)
    hills_phase = per_seq(0.0, 2 * np.pi)
    # Traffic: lane index in {-1, 0, 1} (lane centres at -LANE, 0, +LANE), start depth, relative speed.
    car_lane = rng.integers(-1, 2, size=(B, num_cars)).astype(np.float32) * LANE
    car_z0 = rng.uniform(6.0, 70.0, size=(B, num_cars)).astype(np.float32)
    car_rel = rng.uniform(-1.0, 0.6, size=(B, num_cars)).astype(np.float32) * speed[:, 0]  # their speed - ours
    car_shade = rng.uniform(0.05, 0.6, size=(B, num_cars)).astype(np.float32)
    car_on = rng.random((B, num_cars)) < 0.8
    shake_v = rng.normal(0.0, 0.4 if shake else 0.0, size=(B, T)).astype(np.float32)
    shake_u = rng.normal(0.0, 0.3 if shake else 0.0, size=(B, T)).astype(np.float32)
    if grain:  # per sequence and wave: wavenumber (rad/m), direction on the road plane, phase
        waves = 2 * np.pi / rng.uniform(0.8, 2.4, size=(B, GRAIN_WAVES)).astype(np.float32)
        heading = rng.uniform(0.0, np.pi, size=(B, GRAIN_WAVES)).astype(np.float32)
        wave_phase = rng.uniform(0.0, 2 * np.pi, size=(B, GRAIN_WAVES)).astype(np.float32)

    u = (np.arange(S, dtype=np.float32) + 0.5)[None, None, :]  # (1, 1, W) pixel-centre columns
    v = (np.arange(S, dtype=np.float32) + 0.5)[None, :, None]  # (1, H, 1) pixel-centre rows
    cx = np.float32(S / 2)

    for t, (view, offset) in itertools.product(range(T), enumerate(camera_offsets)):
        cam = cam_x + np.float32(offset)                           # (B, 1, 1) this camera's lateral position
        horizon = horizon0 + shake_v[:, t, None, None]            # (B, 1, 1)
        shift = cx + shake_u[:, t, None, None]                     # (B, 1, 1) image column of straight ahead
        s = s0 + speed * t                                         # (B, 1, 1) distance travelled
        below = v - horizon                                        # (B, H, 1) rows under the horizon
        ground = below > 0.5
        z = np.where(ground, f * CAM_HEIGHT / np.maximum(below, 1e-3), FAR).astype(np.float32)  # (B, H, 1) depth
        bend = curve * z * z                                       # (B, H, 1) road centre drifts with depth
        px = z / f                                                 # (B, H, 1) metres covered by one pixel
        X = (u - shift) * px + (cam - bend)                        # (B, H, W) lateral road coordinate, metres
        fade = np.clip(1.0 - z / 60.0, 0.0, 1.0)                   # texture fades out toward the horizon

        # Sky with a band of hills that slides sideways as the road bends.
        hills = horizon - S * (0.04 + 0.03 * np.sin(u / S * 6.0 + hills_phase + 40.0 * curve * s))
        img = np.where(v < hills, sky - 0.15 * (v / S), sky * 0.55)  # (B, H, W)
        # Road surface and verges, textured along depth so they stream toward the camera.
        on_road = np.abs(X) < ROAD_HALF  # (B, H, W)
        ripple = np.sin(2 * np.pi * (z + s) / 2.5) * fade
        surface = np.where(on_road, asphalt + 0.03 * ripple, verge + 0.08 * np.sin(2 * np.pi * (z + s) / 5.0) * fade)
        if grain:
            grain_fade = np.clip(1.0 - z / GRAIN_FADE, 0.0, 1.0)  # (B, H, 1): gone before it would alias
            for w in range(GRAIN_WAVES):
                kx = (waves[:, w] * np.cos(heading[:, w]))[:, None, None]  # (B, 1, 1) across the road
                kz = (waves[:, w] * np.sin(heading[:, w]))[:, None, None]  # (B, 1, 1) along it
                wave = np.sin(kx * X + kz * (z + s) + wave_phase[:, w, None, None])  # (B, H, W)
                surface = surface + GRAIN_AMPLITUDE * grain_fade * wave

        # Painted lines are symmetric about the road centre, so measure distances on |X|: one pass
        # covers both sides. Coverage = fraction of the pixel footprint on the line (anti-aliased).
        absX = np.abs(X)
        inv_px = 1.0 / px  # (B, H, 1)

        def line_cover(center: float, half_width: float) -> np.ndarray:
            d = np.abs(absX - center)
            np.subtract(half_width, d, out=d)
            d *= inv_px
            d += 0.5
            return np.clip(d, 0.0, 1.0, out=d)

        dash_on = (np.mod(z + s, DASH_PERIOD) < DASH_LEN).astype(np.float32)  # (B, H, 1)
        cover = np.maximum(line_cover(ROAD_HALF - 0.2, 0.12), dash_on * line_cover(LANE / 2, 0.1))
        surface = surface + (paint - surface) * cover
        img = np.where(ground, surface, img)
        if depth:  # z broadcast over the columns; sky and hills stay at infinity
            seen_depth = np.where(ground, z, np.float32(np.inf))   # (B, H, W)

        # Boxes, painter's order: posts first, then cars far to near. A post nearer than a car never
        # overlaps it on screen (it stands further out, so it projects further out), so no z-buffer.
        def box_mask(zo: np.ndarray, xo: np.ndarray, width: float, height: float) -> np.ndarray:
            # zo, xo: (B, K) -> (B, K, H, W) bool screen rectangle of a box standing on the road at depth zo
            zo_ = np.maximum(zo, NEAR)[:, :, None, None]                                  # (B, K, 1, 1)
            col = shift[:, None] + f * (xo[:, :, None, None] + curve[:, None] * zo_ * zo_ - cam[:, None]) / zo_
            half = 0.5 * f * width / zo_
            bottom = horizon[:, None] + f * CAM_HEIGHT / zo_
            top = horizon[:, None] + f * (CAM_HEIGHT - height) / zo_
            seen = ((zo > NEAR) & (zo < FAR))[:, :, None, None]
            cols = (np.abs(u[:, None] - col) < half) & seen                              # (B, K, 1, W)
            rows = (v[:, None] < bottom) & (v[:, None] >= top)                           # (B, K, H, 1)
            return cols & rows

        first_post = POST_PERIOD - np.mod(s[:, 0, :], POST_PERIOD)                        # (B, 1) nearest post ahead
        post_z = np.repeat(first_post + np.arange(NUM_POSTS, dtype=np.float32) * POST_PERIOD, 2, axis=1)  # (B, 2P)
        post_x = np.tile(np.array([-POST_X, POST_X], np.float32), (B, NUM_POSTS))           # (B, 2P) both sides
        posts = box_mask(post_z, post_x, POST_W, POST_H)                                  # (B, 2P, H, W)
        img = np.where(posts.any(axis=1), np.float32(0.95), img)
        if depth:  # posts share one shade, so the nearest post at a pixel is the one seen
            post_depth = np.where(posts, post_z[:, :, None, None], np.float32(np.inf)).min(axis=1)
            seen_depth = np.where(posts.any(axis=1), post_depth, seen_depth)
        if num_cars:
            car_z = car_z0 + car_rel * t                                                  # (B, C)
            visible = np.where(car_on, car_z, -1.0)                                       # hidden cars fail `seen`
            order = np.argsort(-car_z, axis=1)                                            # far to near, per sequence
            masks = box_mask(np.take_along_axis(visible, order, 1), np.take_along_axis(car_lane, order, 1), CAR_W, CAR_H)
            shades = np.take_along_axis(car_shade, order, 1)                              # (B, C)
            near_z = np.maximum(np.take_along_axis(car_z, order, 1), NEAR)               # (B, C) as drawn
            for c in range(num_cars):
                img = np.where(masks[:, c], shades[:, c, None, None], img)
                if depth:
                    seen_depth = np.where(masks[:, c], near_z[:, c, None, None], seen_depth)
        out[view, :, t] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if depth:
            depths[view, :, t] = seen_depth
    return out, depths


class SyntheticHighway(ClipDataModule):
    """Procedural highway driving clips (grayscale), the default stand-in for the DFN highway data.

    Training: infinite on-the-fly stream, ``train_batches_per_epoch`` batches per epoch. Validation and
    test: fixed seeded sets (different seeds) of ``val_size`` / ``test_size`` clips, generated once.
    Predict: the first ``predict_size`` test clips. Batches: float32 (B, T, 1, S, S) in [0, 1].
    """

    def __init__(
        self,
        frames_in: int = 3,
        frames_out: int = 3,
        image_size: int = 64,
        curves: bool = True,
        shake: bool = True,
        num_cars: int = 3,
        batch_size: int = 16,
        train_batches_per_epoch: int = 200,
        val_size: int = 500,
        test_size: int = 2000,
        predict_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(frames_in, frames_out, 1, image_size, batch_size, num_workers, seed)
        check_int("SyntheticHighway", "image_size", image_size, minimum=16)
        for key, value, low in (("num_cars", num_cars, 0), ("train_batches_per_epoch", train_batches_per_epoch, 1),
                                ("val_size", val_size, 1), ("test_size", test_size, 1), ("predict_size", predict_size, 1)):
            check_int("SyntheticHighway", key, value, minimum=low)
        self.curves, self.shake, self.num_cars = curves, shake, num_cars
        self.train_batches_per_epoch = train_batches_per_epoch
        self.val_size, self.test_size, self.predict_size = val_size, test_size, predict_size

    def _make(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return synthetic_highway(count, self.frames, self.image_size, rng, self.curves, self.shake, self.num_cars)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = ClipArray(fixed_sequences(self._make, self.val_size, self.seed, TAG_VAL))
        if stage in (None, "test") and self.test_set is None:
            self.test_set = ClipArray(fixed_sequences(self._make, self.test_size, self.seed, TAG_TEST))
        if stage in (None, "predict") and self.predict_set is None:
            clips = (self.test_set.clips[: self.predict_size] if self.test_set is not None else
                     fixed_sequences(self._make, min(self.predict_size, self.test_size), self.seed, TAG_TEST))
            self.predict_set = ClipArray(np.ascontiguousarray(clips))

    def train_dataloader(self) -> DataLoader:
        # functools.partial of a module-level function: picklable for 'spawn' worker processes too
        make_batch = partial(_float_batch, self.frames, self.image_size, self.curves, self.shake, self.num_cars)
        return self._stream(make_batch, self.train_batches_per_epoch)


def _float_batch(frames: int, image_size: int, curves: bool, shake: bool, num_cars: int,
                 rng: np.random.Generator, batch_size: int) -> torch.Tensor:
    """One training batch: float32 (B, T, 1, S, S) in [0, 1]."""
    clips = synthetic_highway(batch_size, frames, image_size, rng, curves, shake, num_cars)  # (B, T, S, S) uint8
    return to_float_clips(clips).unsqueeze(2)  # (B, T, S, S) -> (B, T, 1, S, S)
