"""Textures for synthetic video: natural photographs from installed wheels or a folder, split and packed.

The built-in photographs are files of the scikit-image wheel (``skimage/data/``), read from the
installed package without importing it and without any download; scikit-learn's two sample photos can
be added. A folder of your own images is split by a fixed seeded permutation. Every split's textures
are shrunk once and packed side by side into one atlas image, so that one ``grid_sample`` can read
any of them (:mod:`dfn.data.synthetic_motion`).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R BT.601, as dfn.data.video

# The photographs of skimage/data/ (files of the wheel; the synthetic, binary and tiny ones are left out).
# A fixed split, so that every run validates and tests on the same unseen photographs. The stereo pair's
# two views are near-duplicates: both train.
BUILTIN_SPLIT: dict[str, tuple[str, ...]] = {
    "train": ("astronaut.png", "brick.png", "camera.png", "cell.png", "clock_motion.png", "grass.png",
              "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
              "motorcycle_right.png", "page.png", "retina.jpg", "text.png"),
    "val": ("coffee.png", "coins.png"),
    "test": ("chelsea.png", "rocket.jpg"),
}
SKLEARN_IMAGES = ("china.jpg", "flower.jpg")  # scikit-learn's sample photos: training textures when enabled


def package_data_dir(package: str, sub: str) -> Path:
    """The data folder ``sub`` inside an installed package (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        hint = {"skimage": "scikit-image", "sklearn": "scikit-learn"}.get(package, package)
        raise ImportError(f"SyntheticMotion: the built-in textures need {hint} installed (pip install {hint}), "
                          f"or give `images: <folder of your images>`")
    return Path(spec.origin).parent / sub


def split_image_files(folder: str | Path, val_fraction: float, test_fraction: float) -> dict[str, list[Path]]:
    """A folder's images (sorted, non-recursive) split into {'train', 'val', 'test'} by a fixed seeded
    permutation (seed 7, independent of the run's seed): at least one image in each split."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"SyntheticMotion: images {folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if len(files) < 3:
        raise ValueError(f"SyntheticMotion: images {folder} holds {len(files)} images ({', '.join(IMAGE_EXTENSIONS)}); "
                         f"need >= 3 (train, validation and test textures are disjoint)")
    order = np.random.default_rng(7).permutation(len(files))
    n_test = max(1, round(test_fraction * len(files)))
    n_val = max(1, round(val_fraction * len(files)))
    if len(files) - n_test - n_val < 1:
        raise ValueError(f"SyntheticMotion: {len(files)} images cannot be split with val_fraction={val_fraction}, "
                         f"test_fraction={test_fraction}; lower them or add images")
    pick = lambda idx: [files[i] for i in sorted(idx.tolist())]  # noqa: E731
    return {"test": pick(order[:n_test]), "val": pick(order[n_test:n_test + n_val]), "train": pick(order[n_test + n_val:])}


def builtin_image_files(sklearn_images: bool) -> dict[str, list[Path]]:
    """The built-in split as file paths inside the installed wheels."""
    root = package_data_dir("skimage", "data")
    files = {split: [root / name for name in names] for split, names in BUILTIN_SPLIT.items()}
    if sklearn_images:
        files["train"] += [package_data_dir("sklearn", "datasets/images") / name for name in SKLEARN_IMAGES]
    return files


def load_texture(path: Path, color: Literal["gray", "rgb"], short_side: int) -> torch.Tensor:
    """An image file -> float32 (C, h, w) in [0, 1], C = 1 or 3, shrunk (antialiased) so that its short
    side is at most ``short_side`` (never enlarged)."""
    import imageio.v3 as iio

    try:
        x = np.asarray(iio.imread(path))
    except Exception as err:
        raise ValueError(f"SyntheticMotion: {path}: cannot read as an image ({type(err).__name__}: {err})") from err
    x = torch.from_numpy(x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else max(1.0, float(x.max()))))
    x = x.unsqueeze(-1) if x.ndim == 2 else x[..., :3]  # (h, w) -> (h, w, 1); drop alpha
    x = x.permute(2, 0, 1)  # (h, w, C) -> (C, h, w)
    if color == "gray" and x.shape[0] == 3:
        x = torch.einsum("chw,c->hw", x, LUMA).unsqueeze(0)  # (3, h, w) -> (1, h, w)
    elif color == "rgb" and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    scale = short_side / min(x.shape[-2:])
    if scale < 1:
        size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
        x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return x.clamp(0, 1).contiguous()


@lru_cache(maxsize=16)
def texture_atlas(files: tuple[Path, ...], color: str, short_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every texture of a split side by side in one image, 2 px apart (cached per process).

    Returns atlas (C, Ha, Wa) and rects (K, 4) float32 [x0, y0, w, h] in atlas pixels.
    """
    textures = [load_texture(p, color, short_side) for p in files]
    height = max(t.shape[1] for t in textures)
    width = sum(t.shape[2] + 2 for t in textures)
    atlas = torch.zeros(textures[0].shape[0], height, width)
    rects, x0 = [], 0
    for t in textures:
        atlas[:, : t.shape[1], x0:x0 + t.shape[2]] = t
        rects.append([x0, 0, t.shape[2], t.shape[1]])
        x0 += t.shape[2] + 2
    return atlas, torch.tensor(rects, dtype=torch.float32)
