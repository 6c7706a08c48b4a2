"""Synthetic motion over natural images (ours): clips rendered on the fly for learning motion extrapolation.

Not from the DFN paper. Every clip is a stack of layers cut from natural photographs -- a background
filling the frame and 0-3 foreground patches with soft masks -- each moving with its own constant
velocity: a sub-pixel translation of 0 to ``max_speed`` px per frame (default 4, half of a 9x9 filter),
a small zoom and a small rotation -- or, for 30 % of the layers, no motion at all (much of real footage
is still, and a predictor must learn to leave it alone). Layers occlude each other in order (background
first). On top: camera shake (the same jitter for every layer), a brightness drift, and Gaussian sensor
noise. The point: a DFN trained on these learns to extrapolate the motion of real textures, so it
transfers to real footage it never saw (docs/natural_video.md).

Textures (:mod:`dfn.data.textures`): the natural photographs inside the scikit-image wheel, optionally
scikit-learn's two sample photos, or a folder of your own images (``images``). Validation and test
textures are held out from training (a fixed split; see :data:`dfn.data.textures.BUILTIN_SPLIT`).

Rendering: one bilinear ``grid_sample`` per chunk of clips over all layers and frames, from an atlas
holding every texture of the split (each shrunk once to a short side of ``texture_size``, whatever the
frame size, so that the content's detail per pixel is the same at every frame size). Source
coordinates are mirrored at a texture's edges and never read a neighbour in the atlas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.data import DataLoader

from ..checks import check_choice, check_int, check_number, fail
from .common import TAG_TEST, TAG_VAL, ClipArray, ClipDataModule, fixed_sequences, to_float_clips
from .textures import BUILTIN_SPLIT, builtin_image_files, split_image_files, texture_atlas  # noqa: F401

SCALE_RANGE = (0.7, 1.4)  # texture pixels per frame pixel: the apparent size of the content
def _reflect(x: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Coordinates reflected into [0.5, size - 0.5] (continuous pixels; mirror at the texture's edges)."""
    period = 2 * size
    x = x - period * torch.floor(x / period)  # [0, 2 size) (torch.remainder is several times slower on CPU)
    x = size - (x - size).abs()  # [0, size]
    return x.clamp(torch.full_like(size, 0.5), size - 0.5)


@dataclass(frozen=True)
class MotionRanges:
    """The distribution of one clip's motion (see :func:`draw_motion`); all per frame, in frame pixels."""

    max_layers: int = 3  # foreground patches: 0..max_layers, uniform
    max_speed: float = 4.0  # px/frame: about half of a 9x9 filter (it reaches +-4 px)
    max_zoom: float = 0.02  # log-zoom per frame: +-2 %
    max_rotation: float = 1.0  # degrees per frame
    still_fraction: float = 0.3  # chance that a layer does not move at all (much of real footage is still)
    shake: float = 0.3  # camera shake: N(0, s^2) px per frame and axis, s ~ U(0, shake) per clip, all layers alike
    brightness_drift: float = 0.01  # gain 1 + d t, d ~ U(-drift, drift)
    noise: float = 0.01  # sensor noise sigma ~ U(0, noise), in [0, 1] units


@dataclass
class Motion:
    """The motion of N clips with L = 1 + max_layers layers (layer 0 the background) over T frames.

    Per layer (N, L[, 2]): ``texture`` index, ``scale`` (texture px per frame px), ``velocity`` (x, y)
    frame px per frame, ``zoom`` (log, per frame), ``spin`` (radians per frame), ``start`` (layer centre
    at t = 0, frame px from the frame centre), ``source`` (texture point shown there, px inside the
    texture), ``radii``/``power``/``edge`` (superellipse mask, px), ``active`` (bool). Per clip:
    ``jitter`` (N, T, 2) px, ``drift`` (N,) gain per frame, ``sigma`` (N,), ``white`` (N, T, C, H, W).
    """

    texture: torch.Tensor
    scale: torch.Tensor
    velocity: torch.Tensor
    zoom: torch.Tensor
    spin: torch.Tensor
    start: torch.Tensor
    source: torch.Tensor
    radii: torch.Tensor
    power: torch.Tensor
    edge: torch.Tensor
    active: torch.Tensor
    jitter: torch.Tensor
    drift: torch.Tensor
    sigma: torch.Tensor
    white: torch.Tensor

    @staticmethod
    def cat(motions: list["Motion"]) -> "Motion":
        return Motion(**{f.name: torch.cat([getattr(m, f.name) for m in motions]) for f in fields(Motion)})

    def part(self, lo: int, hi: int) -> "Motion":
        """Clips lo..hi-1."""
        return Motion(**{f.name: getattr(self, f.name)[lo:hi] for f in fields(Motion)})

    def layers(self, count: int) -> "Motion":
        """The bottom ``count`` layers (per-clip fields unchanged)."""
        per_clip = ("jitter", "drift", "sigma", "white")
        return Motion(**{f.name: getattr(self, f.name) if f.name in per_clip else getattr(self, f.name)[:, :count]
                         for f in fields(Motion)})


def draw_motion(rng: np.random.Generator, rects: torch.Tensor, frames: int, size: tuple[int, int], channels: int,
                ranges: MotionRanges) -> Motion:
    """One clip's motion (N = 1), drawn from ``ranges``; rects (K, 4) of the split's textures.

    Velocity: uniform magnitude in [0, max_speed], uniform direction; zoom exp(U(-max_zoom, max_zoom)),
    rotation U(-max_rotation, max_rotation) degrees per frame; each layer still (all three 0) with
    probability ``still_fraction``. Scale U(SCALE_RANGE); foreground centres uniform over the frame,
    half-axes 10-45 % of its short side, superellipse power 2-6, 1-2 px soft edge. Shake: per clip a
    sigma ~ U(0, shake), then N(0, sigma^2) px per frame and axis.
    """
    h, w = size
    layers = 1 + ranges.max_layers

    def u(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.from_numpy(rng.uniform(low, high, size=(1, *shape)).astype(np.float32))

    texture = torch.from_numpy(rng.integers(0, len(rects), size=(1, layers)))
    rect = rects[texture]  # (1, L, 4) [x0, y0, w, h]
    moving = torch.from_numpy(rng.random((1, layers)) >= ranges.still_fraction).float()  # (1, L): 0 = still
    speed, heading = u(0, ranges.max_speed, layers) * moving, u(0, 2 * math.pi, layers)
    start = torch.stack([u(-0.5, 0.5, layers) * w, u(-0.5, 0.5, layers) * h], -1)  # (1, L, 2)
    start[:, 0] = 0  # the background is centred
    return Motion(
        texture=texture,
        scale=u(*SCALE_RANGE, layers),
        velocity=torch.stack([speed * heading.cos(), speed * heading.sin()], -1),
        zoom=u(-ranges.max_zoom, ranges.max_zoom, layers) * moving,
        spin=u(-ranges.max_rotation, ranges.max_rotation, layers) * (math.pi / 180) * moving,
        start=start,
        source=rect[..., 2:] * torch.stack([u(0.3, 0.7, layers), u(0.3, 0.7, layers)], -1),  # away from edges
        radii=torch.stack([u(0.1, 0.45, layers), u(0.1, 0.45, layers)], -1) * min(h, w),
        power=u(2.0, 6.0, layers),
        edge=u(1.0, 2.0, layers),
        active=torch.from_numpy(np.arange(layers)[None] <= rng.integers(0, ranges.max_layers + 1)),
        jitter=torch.from_numpy(rng.normal(0.0, 1.0, size=(1, frames, 2)).astype(np.float32)) * u(0, ranges.shake),
        drift=u(-ranges.brightness_drift, ranges.brightness_drift),
        sigma=u(0, ranges.noise),
        white=torch.from_numpy(rng.standard_normal(size=(1, frames, channels, h, w)).astype(np.float32)),
    )


def render(atlas: torch.Tensor, rects: torch.Tensor, motion: Motion, size: tuple[int, int]) -> torch.Tensor:
    """Draw the clips of ``motion`` -> float32 (N, T, C, H, W) in [0, 1].

    atlas (C, Ha, Wa) in [0, 1] and rects (K, 4) from :func:`texture_atlas`. Frame pixel p of layer l at
    time t shows the texture at ``source + scale * R(-spin t) (p - start - velocity t - jitter_t) / zoom^t``:
    content moves by ``velocity`` px per frame. Layers are composited in order with their soft masks
    (the background is opaque), then gain ``1 + drift t`` and noise ``sigma * white``.
    """
    h, w = size
    used = 1 + int(motion.active[:, 1:].sum(1).max()) if motion.active.shape[1] > 1 else 1
    motion = motion.layers(used)  # inactive top layers are invisible: skip them
    n, layers = motion.texture.shape
    t = motion.jitter.shape[1]
    rect = rects[motion.texture]  # (N, L, 4)
    per = lambda x: x.view(n, layers, 1, 1, 1, -1)  # noqa: E731  (N, L[, 2]) -> (N, L, 1, 1, 1, 1|2)
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5 - h / 2, torch.arange(w) + 0.5 - w / 2, indexing="ij")
    pixel = torch.stack([xs, ys], -1).view(1, 1, 1, h, w, 2)  # frame pixel centres from the frame centre
    time = torch.arange(t, dtype=torch.float32).view(1, 1, t, 1, 1, 1)
    # Layer coordinates of every frame pixel: undo translation (and shake), rotation and zoom.
    rel = pixel - per(motion.start) - per(motion.velocity) * time - motion.jitter.view(n, 1, t, 1, 1, 2)
    angle = -per(motion.spin)[..., 0] * time[..., 0]  # (N, L, T, 1, 1)
    cos, sin = angle.cos(), angle.sin()
    local = torch.stack([cos * rel[..., 0] - sin * rel[..., 1], sin * rel[..., 0] + cos * rel[..., 1]], -1)
    local = local * torch.exp(-per(motion.zoom) * time)  # (N, L, T, H, W, 2)
    # Texture coordinates, reflected inside the texture's own rectangle, then atlas coordinates in [-1, 1].
    inside = _reflect(per(motion.source) + per(motion.scale) * local, per(rect[..., 2:]))
    atlas_xy = inside + per(rect[..., :2])
    norm = atlas_xy * (2 / torch.tensor([atlas.shape[2], atlas.shape[1]], dtype=torch.float32)) - 1
    grid = rearrange(norm, "n l t h w k -> 1 (n l t h) w k")
    colour = F.grid_sample(atlas[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    colour = rearrange(colour, "1 c (n l t h) w -> n l t c h w", n=n, l=layers, t=t)
    video = colour[:, 0]  # the background, opaque: (N, T, C, H, W)
    if layers > 1:
        # Soft superellipse masks in layer coordinates: they move, turn and zoom with their texture.
        fg = slice(1, None)
        logr = (local[:, fg].abs() / per(motion.radii)[:, fg]).clamp_min(1e-6).log()  # (N, L-1, T, H, W, 2)
        power = per(motion.power)[:, fg, ..., 0]
        outline = ((power * logr[..., 0]).exp() + (power * logr[..., 1]).exp()) ** (1 / power)  # 1 on the outline
        alpha = torch.sigmoid((1 - outline) * per(motion.radii)[:, fg].amin(-1) / per(motion.edge)[:, fg, ..., 0])
        alpha = alpha * per(motion.active.float())[:, fg, ..., 0]  # (N, L-1, T, H, W)
        for layer in range(1, layers):  # occlusion in layer order
            a = alpha[:, layer - 1].unsqueeze(2)  # (N, T, 1, H, W)
            video = a * colour[:, layer] + (1 - a) * video
    gain = 1 + motion.drift.view(n, 1, 1, 1, 1) * torch.arange(t, dtype=torch.float32).view(1, t, 1, 1, 1)
    return (video * gain + motion.sigma.view(n, 1, 1, 1, 1) * motion.white).clamp(0, 1)


def synthetic_motion(files: tuple[Path, ...], count: int, frames: int, size: tuple[int, int],
                     color: Literal["gray", "rgb"], rng: np.random.Generator, ranges: MotionRanges = MotionRanges(),
                     texture_size: int = 256, chunk: int = 32) -> np.ndarray:
    """``count`` clips over the textures of ``files`` -> uint8 (count, frames, C, H, W).

    Clip i's motion is drawn after clip i-1's from ``rng``, so the first k clips do not depend on
    ``count``; rendering goes ``chunk`` clips at a time (bounded memory).
    """
    atlas, rects = texture_atlas(tuple(files), color, texture_size)
    motion = Motion.cat([draw_motion(rng, rects, frames, size, atlas.shape[0], ranges) for _ in range(max(count, 1))])
    if count == 0:
        return np.zeros((0, frames, atlas.shape[0], *size), np.uint8)
    parts = [render(atlas, rects, motion.part(lo, lo + chunk), size) for lo in range(0, count, chunk)]
    return torch.cat(parts).mul(255).round().to(torch.uint8).numpy()  # quantised like real footage


def _float_batch(files: tuple[Path, ...], frames: int, size: tuple[int, int], color: Literal["gray", "rgb"],
                 ranges: MotionRanges, texture_size: int, rng: np.random.Generator, count: int) -> torch.Tensor:
    """One training sample (or batch): float32 (count, T, C, H, W) in [0, 1]."""
    return to_float_clips(synthetic_motion(files, count, frames, size, color, rng, ranges, texture_size))


class SyntheticMotion(ClipDataModule):
    """Synthetic motion over natural images (ours): layered photographs moving at constant velocity.

    See the module docstring and :func:`render`. ``images``: a folder of your own images (split into
    train/val/test textures by :func:`split_image_files` with ``val_fraction``/``test_fraction``); None:
    the photographs of the scikit-image wheel (:data:`BUILTIN_SPLIT`; ``sklearn_images`` adds
    scikit-learn's two to the training textures). ``image_size``: S (S x S frames) or (H, W).
    ``texture_size``: the short side every texture is shrunk to once (px; never enlarged); a frame pixel
    shows 0.7-1.4 texture pixels (:data:`SCALE_RANGE`) whatever the frame size, so frames of different
    sizes are crops of the same imagery, as crops of one video are.

    Training: an infinite stream, ``train_batches_per_epoch`` batches per epoch, a pure function of
    (seed, epoch, batch index). Validation and test: fixed seeded sets of ``val_size`` / ``test_size``
    clips from the held-out validation / test textures; predict: the first ``predict_size`` test clips.
    Batches: float32 (B, frames_in + frames_out, C, H, W) in [0, 1], C = 1 (gray) or 3 (rgb).
    """

    def __init__(
        self,
        images: str | None = None,
        frames_in: int = 3,
        frames_out: int = 3,
        image_size: int | tuple[int, int] = 64,
        color: Literal["gray", "rgb"] = "rgb",
        max_layers: int = 3,
        max_speed: float = 4.0,
        max_zoom: float = 0.02,
        max_rotation: float = 1.0,
        still_fraction: float = 0.3,
        shake: float = 0.3,
        brightness_drift: float = 0.01,
        noise: float = 0.01,
        texture_size: int = 256,
        sklearn_images: bool = False,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        batch_size: int = 16,
        train_batches_per_epoch: int = 200,
        val_size: int = 256,
        test_size: int = 256,
        predict_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        name = "SyntheticMotion"
        check_choice(name, "color", color, ("gray", "rgb"))
        sides = tuple(image_size) if isinstance(image_size, (list, tuple)) else (image_size, image_size)
        if len(sides) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 8 for s in sides):
            raise fail(name, "image_size", "an integer >= 8 or [height, width] of such", image_size)
        super().__init__(frames_in, frames_out, 1 if color == "gray" else 3, min(sides), batch_size, num_workers, seed)
        for key, value in (("texture_size", texture_size), ("train_batches_per_epoch", train_batches_per_epoch), ("val_size", val_size),
                           ("test_size", test_size), ("predict_size", predict_size)):
            check_int(name, key, value)
        check_int(name, "max_layers", max_layers, minimum=0, maximum=8, meaning="foreground patches")
        for key, value, high in (("max_speed", max_speed, 0.5 * min(sides)), ("max_zoom", max_zoom, 0.2),
                                 ("max_rotation", max_rotation, 30.0), ("still_fraction", still_fraction, 1.0),
                                 ("shake", shake, 5.0),
                                 ("brightness_drift", brightness_drift, 0.2), ("noise", noise, 0.5)):
            check_number(name, key, value, low=0, high=high)
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            check_number(name, key, value, low=0, high=1, low_open=True, high_open=True)
        if val_fraction + test_fraction >= 1:
            raise fail(name, "val_fraction + test_fraction", "< 1", val_fraction + test_fraction,
                       meaning="the rest of the images are the training textures")
        self.images, self.color, self.sklearn_images, self.texture_size = images, color, sklearn_images, texture_size
        self.frame_hw: tuple[int, int] = sides
        self.ranges = MotionRanges(max_layers, float(max_speed), float(max_zoom), float(max_rotation),
                                   float(still_fraction), float(shake), float(brightness_drift), float(noise))
        # Fail early on a wrong folder or a missing package: the split is fixed now.
        self.files = (split_image_files(images, val_fraction, test_fraction) if images is not None
                      else builtin_image_files(sklearn_images))
        for split, paths in self.files.items():
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{name}: {split} textures missing: {', '.join(missing)}")
        self.train_batches_per_epoch = train_batches_per_epoch
        self.val_size, self.test_size, self.predict_size = val_size, test_size, predict_size

    def frame_size(self, predicting: bool = False) -> tuple[int, int]:
        """(H, W) of the frames served."""
        return self.frame_hw

    def _make(self, split: str):
        return partial(_make_uint8, tuple(self.files[split]), self.frames, self.frame_hw, self.color, self.ranges,
                       self.texture_size)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = ClipArray(fixed_sequences(self._make("val"), self.val_size, self.seed, TAG_VAL))
        if stage in (None, "test") and self.test_set is None:
            self.test_set = ClipArray(fixed_sequences(self._make("test"), self.test_size, self.seed, TAG_TEST))
        if stage in (None, "predict") and self.predict_set is None:
            # Clip i does not depend on how many are drawn: this is exactly the test set's prefix.
            clips = (self.test_set.clips[: self.predict_size] if self.test_set is not None else
                     fixed_sequences(self._make("test"), min(self.predict_size, self.test_size), self.seed, TAG_TEST))
            self.predict_set = ClipArray(np.ascontiguousarray(clips))

    def train_dataloader(self) -> DataLoader:
        # functools.partial of a module-level function: picklable for 'spawn' worker processes too
        make_batch = partial(_float_batch, tuple(self.files["train"]), self.frames, self.frame_hw, self.color,
                             self.ranges, self.texture_size)
        return self._stream(make_batch, self.train_batches_per_epoch)


def _make_uint8(files: tuple[Path, ...], frames: int, size: tuple[int, int], color: Literal["gray", "rgb"],
                ranges: MotionRanges, texture_size: int, rng: np.random.Generator, count: int) -> np.ndarray:
    """Evaluation clips: uint8 (count, T, C, H, W)."""
    return synthetic_motion(files, count, frames, size, color, rng, ranges, texture_size)
