"""Moving MNIST: generator physics against Srivastava's rules, seeding, canonical files, the DataModule."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dfn.data import MovingMNIST, bounce_trajectories, load_moving_mnist_file, moving_mnist
from dfn.data.common import EpochStream, InfiniteBatches
from dfn.data.digits import load_embedded_digits


@pytest.fixture(scope="module")
def digits():
    return load_embedded_digits()


def dot_digits() -> np.ndarray:
    """One 'digit' whose only lit pixel is its top-left corner: rendering reveals the corner position."""
    d = np.zeros((1, 28, 28), np.uint8)
    d[0, 0, 0] = 255
    return d


def test_trajectory_physics():
    ys, xs = bounce_trajectories(np.random.default_rng(1), 500, 60)  # (T, N)
    assert ys.min() >= 0 and ys.max() <= 1 and xs.min() >= 0 and xs.max() <= 1
    dy, dx = np.diff(ys, axis=0), np.diff(xs, axis=0)
    step = np.hypot(dy, dx)
    # Away from the walls every move is exactly 0.1 unit (velocity 0.1 (cos, sin)).
    inside = (ys[:-1] > 0.1) & (ys[:-1] < 0.9) & (xs[:-1] > 0.1) & (xs[:-1] < 0.9) & \
             (ys[1:] > 0) & (ys[1:] < 1) & (xs[1:] > 0) & (xs[1:] < 1)
    assert inside.sum() > 1000
    np.testing.assert_allclose(step[inside], 0.1, atol=1e-9)
    # Reflection: after touching a wall the next move along that axis has the opposite sign.
    flips = 0
    for pos, d in ((xs, dx), (ys, dy)):
        at_wall = (pos[1:-1] == 0) | (pos[1:-1] == 1)  # position after move t, before move t+1
        before, after = d[:-1][at_wall], d[1:][at_wall]
        moving = np.abs(before) > 1e-12
        assert np.all(np.sign(before[moving]) == -np.sign(after[moving]))
        assert np.all(pos[1:-1][at_wall & (pos[1:-1] == 0)] == 0)  # clamped exactly to the wall
        flips += at_wall.sum()
    assert flips > 100


def test_rendered_positions_follow_trajectories():
    T, B = 20, 64
    ys, xs = bounce_trajectories(np.random.default_rng(7), B, T)
    video = moving_mnist(dot_digits(), B, T, num_digits=1, image_size=64, rng=np.random.default_rng(7))
    assert video.shape == (B, T, 64, 64) and video.dtype == np.uint8
    lit = video.reshape(B, T, -1).argmax(-1)  # flat position of the one lit pixel
    rows, cols = lit // 64, lit % 64
    np.testing.assert_array_equal(rows, (36 * ys).astype(int).T)  # y -> row, corner = int(36 * pos)
    np.testing.assert_array_equal(cols, (36 * xs).astype(int).T)  # x -> column
    # Per-frame displacement is ~3.6 px away from the walls.
    disp = np.hypot(np.diff(rows, axis=1), np.diff(cols, axis=1))
    free = (rows[:, :-1] > 4) & (rows[:, :-1] < 31) & (cols[:, :-1] > 4) & (cols[:, :-1] < 31) & \
           (rows[:, 1:] > 0) & (rows[:, 1:] < 36) & (cols[:, 1:] > 0) & (cols[:, 1:] < 36)
    assert abs(disp[free].mean() - 3.6) < 0.25 and disp[free].max() < 3.6 + 1.5


def test_generator_range_and_max_composite(digits):
    train, _ = digits
    v = moving_mnist(train, 32, 20, 2, 64, np.random.default_rng(0))
    assert v.shape == (32, 20, 64, 64) and v.dtype == np.uint8 and v.max() == 255 and v.min() == 0
    # max-compositing, against a plain per-frame loop with the same random draws: every frame is the
    # pixel-wise max of its digits pasted at int(36 * position) (a sum or an overwrite would differ where
    # the digits overlap, which happens in these 32 sequences)
    rng = np.random.default_rng(0)
    ys, xs = bounce_trajectories(rng, 32 * 2, 20)  # (T, B*D), the generator's first draw
    images = train[rng.integers(0, len(train), size=(32, 2))]  # its second draw
    expected = np.zeros_like(v)
    overlaps = 0
    for b in range(32):
        for t in range(20):
            layers = np.zeros((2, 64, 64), np.uint8)
            for d in range(2):
                top, left = int(36 * ys[t, 2 * b + d]), int(36 * xs[t, 2 * b + d])
                layers[d, top:top + 28, left:left + 28] = images[b, d]
            expected[b, t] = layers.max(0)
            overlaps += int(((layers[0] > 0) & (layers[1] > 0)).any())
    assert overlaps > 0  # the case that tells max from sum/overwrite occurs
    np.testing.assert_array_equal(v, expected)
    assert v.max() <= images.max()  # no pixel exceeds the brightest digit pixel


def test_seed_reproducibility_and_difference(digits):
    train, _ = digits
    a = moving_mnist(train, 4, rng=np.random.default_rng(3))
    b = moving_mnist(train, 4, rng=np.random.default_rng(3))
    c = moving_mnist(train, 4, rng=np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_embedded_digits_disjoint_and_balanced(digits):
    train, test = digits
    assert train.shape == (4000, 28, 28) and test.shape == (1000, 28, 28)
    h = lambda arr: {hashlib.sha1(x.tobytes()).hexdigest() for x in arr}  # noqa: E731
    assert not h(train) & h(test)
    dm = MovingMNIST()
    pools = dm.digit_sets()
    assert not h(pools["train"]) & h(pools["val"]) and not h(pools["val"]) & h(pools["test"])
    with np.load(__import__("dfn.data.digits", fromlist=["x"]).EMBEDDED_PATH) as z:
        assert np.bincount(z["train_labels"]).tolist() == [400] * 10
        assert np.bincount(z["test_labels"]).tolist() == [100] * 10


def small(**kw) -> MovingMNIST:
    args = dict(frames_in=3, frames_out=2, image_size=32, batch_size=4, train_batches_per_epoch=3,
                val_size=6, test_size=10, predict_size=4)
    args.update(kw)
    return MovingMNIST(**args)


def test_datamodule_batches():
    dm = small()
    assert (dm.frames_in, dm.frames_out, dm.channels, dm.image_size) == (3, 2, 1, 32)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    for b in batches + list(dm.val_dataloader()):
        assert b.dtype == torch.float32 and b.shape[1:] == (5, 1, 32, 32) and 0 <= b.min() and b.max() <= 1
    dm.setup("test")
    dm.setup("predict")
    test = torch.cat(list(dm.test_dataloader()))
    pred = torch.cat(list(dm.predict_dataloader()))
    assert test.shape == (10, 5, 1, 32, 32) and torch.equal(pred, test[:4])
    val = torch.cat(list(dm.val_dataloader()))
    assert not any(torch.equal(v, t) for v in val for t in test)  # validation is not the test set


def test_fixed_sets_do_not_change_between_instances():
    a, b = small(), small()
    a.setup("test")
    b.setup("test")
    assert np.array_equal(a.test_set.clips, b.test_set.clips)
    c = small(seed=1)
    c.setup("test")
    assert not np.array_equal(a.test_set.clips, c.test_set.clips)


def test_train_stream_differs_across_epochs_ranks_workers():
    dm = small()
    loader = dm.train_dataloader()
    e0, e1 = next(iter(loader)), next(iter(loader))  # without a trainer: each pass is a new epoch
    assert not torch.equal(e0, e1)
    again = next(iter(small().train_dataloader()))
    assert torch.equal(e0, again)  # reproducible from the seed
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1, current_epoch=0)
    r1 = next(iter(dm.train_dataloader()))
    assert not torch.equal(e0, r1)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1, current_epoch=5)
    assert not torch.equal(r1, next(iter(dm.train_dataloader())))
    # workers: two worker processes produce different batches
    make = lambda rng, n: torch.from_numpy(rng.random((n, 3)))  # noqa: E731
    stream = EpochStream(InfiniteBatches(make, 2, seed=0), batches_per_epoch=2, num_workers=2)
    w0, w1 = list(stream)
    assert not torch.equal(w0, w1)


def test_canonical_file_layouts(tmp_path):
    rng = np.random.default_rng(0)
    seqs = rng.integers(0, 256, (7, 20, 64, 64), dtype=np.uint8)  # (N, T, H, W)
    np.save(tmp_path / "mnist_test_seq.npy", seqs.transpose(1, 0, 2, 3))  # canonical time-major
    np.save(tmp_path / "bouncing_mnist_test.npy", seqs)  # DFN authors' sample-major
    np.save(tmp_path / "float.npy", seqs.astype(np.float32) / 255)
    np.save(tmp_path / "chan.npy", seqs[:, :, None])
    for name in ("mnist_test_seq.npy", "bouncing_mnist_test.npy", "float.npy", "chan.npy"):
        assert np.array_equal(load_moving_mnist_file(tmp_path / name), seqs), name
    dm = MovingMNIST(test_file=str(tmp_path / "mnist_test_seq.npy"), batch_size=3)
    dm.setup("test")
    got = torch.cat(list(dm.test_dataloader()))
    assert got.shape == (7, 20, 1, 64, 64)
    assert torch.allclose(got[:, :, 0], torch.from_numpy(seqs).float() / 255)


@pytest.mark.parametrize("shape,words", [((20, 20, 64, 64), "ambiguous"), ((5, 7, 64, 64), "fits neither"),
                                         ((20, 7, 64), "fits neither"), ((20, 7, 64, 32), "fits neither")])
def test_canonical_file_refusals(tmp_path, shape, words):
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match=words) as info:
        load_moving_mnist_file(path)
    assert str(path) in str(info.value) and str(shape) in str(info.value)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="MovingMNIST: frames_in must be an integer >= 1, got 0$"):
        MovingMNIST(frames_in=0)
    with pytest.raises(ValueError, match="MovingMNIST: digits must be one of 'embedded', 'mnist', got 'fashion'$"):
        MovingMNIST(digits="fashion")
    with pytest.raises(ValueError, match=r"MovingMNIST: image_size must be an integer >= 28 \(the digit size\), got 20$"):
        MovingMNIST(image_size=20)
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        MovingMNIST(test_file=str(tmp_path / "nope.npy"))
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match="junk.npy"):
        load_moving_mnist_file(junk)
