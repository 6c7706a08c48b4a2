"""The preview command writes a GIF of training clips; training streams pickle for 'spawn' workers."""

from __future__ import annotations

import pickle

import imageio.v3 as iio

from dfn.data import MovingMNIST, SyntheticHighway
from dfn.data.preview import main


def test_preview_gif(tmp_path, capsys):
    out = tmp_path / "p.gif"
    main(["--data", "dfn.data.MovingMNIST", "--init", "frames_in=2", "--init", "frames_out=3",
          "--init", "image_size=32", "--clips", "3", "--scale", "1", "--out", str(out)])
    gif = iio.imread(out)
    assert gif.shape[0] == 5 and gif.shape[1] == 32 and gif.shape[2] == 3 * (32 + 2)
    assert "3 train clips" in capsys.readouterr().out


def test_train_streams_pickle():
    for dm in (MovingMNIST(image_size=32), SyntheticHighway(image_size=32)):
        stream = pickle.loads(pickle.dumps(dm.train_dataloader().dataset))
        assert next(iter(stream)).shape[2:] == (1, 32, 32)
