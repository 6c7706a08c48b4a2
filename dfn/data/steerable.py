"""Learning steerable filters (De Brabandere et al. 2016, Section 4.1): images, angles and their targets.

A sample is a 64×64 gray image I, an angle θ ~ U[0, 2π) and the target I ⋆ G_θ: the 'same', zero-padded
cross-correlation of I with the first-order Gaussian-derivative steerable filter (Freeman & Adelson 1991),
σ = 1, 9×9, without a normalising constant:

    G_θ[r, c] = −(c·cos θ + r·sin θ)·exp(−(r² + c²) / 2),   r (row), c (column) offsets in −4..4,

so I ⋆ G_θ = cos θ·(I ⋆ G_0) + sin θ·(I ⋆ G_π/2), the image's derivative along the direction θ.

Images (``source``): crops of natural photographs that ship inside scikit-image's wheel (the authors
used natural images; theirs are not named), or U[0, 1) noise (the authors' 'random' mode). The photos
are split by image, so validation and test crops come from photos training never sees:

* training: ``TRAIN_IMAGES``; validation: ``VAL_IMAGES``; test: ``TEST_IMAGES`` (see the constants).
* 'random': every split is fresh noise from its own seeded stream.

Splits: training is an endless stream (a batch is a pure function of (seed, epoch, batch index), see
``dfn.data.common.InfiniteBatches``); validation is ``val_size`` fixed crops at fixed random angles;
the test set is ``test_size`` fixed crops at ``test_size`` evenly spaced angles 2π·i / test_size
(360: every whole degree), so the filter scores cover the circle uniformly, 0 = 2π included.

Batches: float32 (B, 3, H, W): channel ``IMAGE`` the image in [0, 1], ``ANGLE`` the constant angle map
(θ in radians, the paper's conditioning input), ``TARGET`` the filtered image (about ±1.5).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from ..checks import check_choice, check_int
from .common import TAG_TEST, TAG_VAL, EpochStream, InfiniteBatches, SeededDataModule, fixed_sequences

KERNEL_SIZE = 9  # paper: 9×9 steerable filter, σ = 1
SIGMA = 1.0
IMAGE, ANGLE, TARGET = 0, 1, 2  # the channels of a batch

# Photographs in scikit-image's wheel (``skimage.data``, no download), split by image. Natural scenes,
# textures and microscopy; the synthetic and binary ones (checkerboards, text, the horse) are left out.
TRAIN_IMAGES = ("astronaut", "brick", "camera", "coffee", "grass", "gravel", "hubble_deep_field",
                "immunohistochemistry", "moon", "retina")
VAL_IMAGES = ("coins",)
TEST_IMAGES = ("chelsea", "rocket")


def steerable_filter(theta: Tensor, kernel_size: int = KERNEL_SIZE, sigma: float = SIGMA) -> Tensor:
    """The steerable Gaussian-derivative filters G_θ (module docstring), unnormalised.

    theta: (B,) angles in radians, any float dtype. Returns (B, kernel_size, kernel_size) in theta's
    dtype, rows r and columns c centred on the middle tap; max |G| = exp(−1/2) ≈ 0.607 for σ = 1, ΣG = 0.
    """
    offsets = torch.arange(kernel_size, dtype=theta.dtype, device=theta.device) - kernel_size // 2
    r, c = offsets[:, None], offsets[None, :]  # (K, 1) row offsets, (1, K) column offsets
    envelope = torch.exp(-(r**2 + c**2) / (2 * sigma**2))  # (K, K)
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]  # (B, 1, 1)
    return -(c * cos + r * sin) * envelope  # (B, K, K)


def steer(images: Tensor, theta: Tensor) -> Tensor:
    """The targets: each image cross-correlated ('same', zero padding) with its own G_θ.

    images: (B, H, W) float; theta: (B,) radians. Returns (B, H, W) in images' dtype.
    """
    filters = steerable_filter(theta.to(images.dtype))  # (B, K, K)
    # One group per image: (1, B, H, W) ⋆ (B, 1, K, K) -> (1, B, H, W). F.conv2d is a cross-correlation.
    out = F.conv2d(images[None], filters[:, None], padding=KERNEL_SIZE // 2, groups=len(images))
    return out[0]


def with_targets(draws: Tensor) -> Tensor:
    """draws (B, 2, H, W): images in [0, 1] and their constant angle maps -> float32 (B, 3, H, W), the
    targets appended as channel TARGET (all B images filtered in one grouped convolution)."""
    targets = steer(draws[:, IMAGE], draws[:, ANGLE, 0, 0])  # (B, H, W)
    return torch.cat([draws, targets[:, None]], dim=1)  # (B, 3, H, W), order IMAGE, ANGLE, TARGET


def samples(images: np.ndarray, theta: np.ndarray) -> Tensor:
    """images (B, H, W) float in [0, 1], theta (B,) radians -> float32 (B, 3, H, W): image, constant angle
    map, target (channels IMAGE, ANGLE, TARGET)."""
    x = torch.as_tensor(images, dtype=torch.float32)  # (B, H, W)
    angle_map = torch.as_tensor(theta, dtype=torch.float32)[:, None, None].expand_as(x)  # (B, H, W)
    return with_targets(torch.stack([x, angle_map], dim=1))  # (B, 2, H, W) -> (B, 3, H, W)


def load_photos(names: tuple[str, ...]) -> list[np.ndarray]:
    """The named ``skimage.data`` photographs as gray float32 (H, W) in [0, 1] (RGB ones through
    scikit-image's rgb2gray, ITU-R 709 luma)."""
    try:
        import skimage.data
        from skimage.color import rgb2gray
    except ImportError as err:
        raise ImportError("SteerableFilters: source='natural' crops the photographs inside scikit-image's "
                          "wheel; install it (pip install scikit-image) or use source='random'") from err
    photos = []
    for name in names:
        image = getattr(skimage.data, name)()
        gray = rgb2gray(image) if image.ndim == 3 else image / 255.0  # (H, W) in [0, 1]
        photos.append(np.asarray(gray, dtype=np.float32))
    return photos


def crops(rng: np.random.Generator, count: int, size: int, photos: list[np.ndarray] | None) -> np.ndarray:
    """``count`` gray images (count, size, size) float32 in [0, 1]: random crops of random photos (each
    photo equally likely, every position equally likely), or U[0, 1) noise when ``photos`` is None."""
    if photos is None:
        return rng.random((count, size, size), dtype=np.float32)
    out = np.empty((count, size, size), dtype=np.float32)
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        top, left = rng.integers(photo.shape[0] - size + 1), rng.integers(photo.shape[1] - size + 1)
        out[i] = photo[top:top + size, left:left + size]
    return out


def random_draws(photos: list[np.ndarray] | None, size: int, rng: np.random.Generator, count: int) -> Tensor:
    """``count`` images at angles θ ~ U[0, 2π) (θ drawn first, then the images): float32 (count, 2, size,
    size), channels IMAGE and ANGLE; ``with_targets`` adds the targets."""
    theta = torch.as_tensor(rng.random(count) * 2 * math.pi, dtype=torch.float32)  # (count,)
    images = torch.as_tensor(crops(rng, count, size, photos))  # (count, size, size)
    return torch.stack([images, theta[:, None, None].expand_as(images)], dim=1)  # (count, 2, size, size)


class SteeredBatches(InfiniteBatches):
    """The training stream: :class:`InfiniteBatches` of ``random_draws``, a batch's targets computed for
    the whole batch at once (one grouped convolution rather than one per image: the same values)."""

    def batch(self, epoch: int, index: int) -> Tensor:
        """This rank's batch ``index`` of ``epoch``: (B, 3, H, W)."""
        return with_targets(super().batch(epoch, index))


class SteerableFilters(SeededDataModule):
    """Images, angles and steered targets for the steerable-filter experiment (module docstring).

    Defaults are the paper's: 64×64 images, batch 64, 100 iterations an epoch (50 epochs = 5,000
    iterations). Batches: float32 (B, 3, image_size, image_size), channels IMAGE, ANGLE, TARGET.
    """

    def __init__(
        self,
        source: Literal["natural", "random"] = "natural",  # paper: natural images, or U[0, 1) noise
        image_size: int = 64,  # paper: 64×64
        batch_size: int = 64,  # paper: 64
        train_batches_per_epoch: int = 100,  # paper: 50 epochs × 100 iterations
        val_size: int = 256,
        test_size: int = 360,  # test angles, evenly spaced over [0, 2π): one per degree
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        name = type(self).__name__
        check_choice(name, "source", source, ("natural", "random"),
                     meaning="'natural': photo crops; 'random': U[0, 1) noise")
        for key, value in (("image_size", image_size), ("train_batches_per_epoch", train_batches_per_epoch),
                           ("val_size", val_size), ("test_size", test_size)):
            check_int(name, key, value)
        self.source, self.image_size, self.channels = source, image_size, 1
        self.train_batches_per_epoch, self.val_size, self.test_size = train_batches_per_epoch, val_size, test_size
        self._photos: dict[str, list[np.ndarray] | None] | None = None
        if source == "natural":
            smallest = min(min(p.shape) for split in self.photos().values() for p in split)
            check_int(name, "image_size", image_size, maximum=smallest,
                      meaning="the smallest photograph's side; or source='random'")

    def photos(self) -> dict[str, list[np.ndarray] | None]:
        """{'train', 'val', 'test'}: each split's photographs (None for 'random'), loaded once."""
        if self._photos is None:
            splits = {"train": TRAIN_IMAGES, "val": VAL_IMAGES, "test": TEST_IMAGES}
            self._photos = {k: load_photos(v) if self.source == "natural" else None for k, v in splits.items()}
        return self._photos

    def setup(self, stage: str | None = None) -> None:
        photos, size = self.photos(), self.image_size
        if stage in (None, "fit", "validate") and self.val_set is None:
            draws = fixed_sequences(lambda rng, n: random_draws(photos["val"], size, rng, n).numpy(),
                                    self.val_size, self.seed, TAG_VAL)  # (N, 2, H, W)
            self.val_set = with_targets(torch.as_tensor(draws))  # (N, 3, H, W)
        if stage in (None, "test") and self.test_set is None:
            images = fixed_sequences(lambda rng, n: crops(rng, n, size, photos["test"]),
                                     self.test_size, self.seed, TAG_TEST)  # (N, H, W)
            theta = 2 * math.pi * np.arange(self.test_size) / self.test_size  # evenly spaced, 0 included
            self.test_set = samples(images, theta)  # (N, 3, H, W)

    def train_dataloader(self) -> DataLoader:
        # functools.partial of a module-level function: picklable for 'spawn' worker processes too
        make = partial(random_draws, self.photos()["train"], self.image_size)
        stream = SteeredBatches(make, self.batch_size, self.seed, self.rank_info()[1])
        return EpochStream(stream, self.train_batches_per_epoch, self.num_workers, self.current_epoch,
                           self.train_progress)
