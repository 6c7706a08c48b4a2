"""Progress on long waits: silent when stderr is not a terminal (tests, CI, logs), shown on one or with
``DFN_PROGRESS=1``, on rank zero only; the items themselves never change."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest

from lightning_utilities.core.rank_zero import rank_zero_only

from conftest import ROOT
from dfn.data import VideoFolder
from dfn.data.common import TAG_TEST, fixed_sequences
from dfn.progress import progress
from test_data_video import write_shots_mp4


def make(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 256, (count, 2, 4, 4), dtype=np.uint8)


def long_waits(tmp_path) -> np.ndarray:
    """Test-set generation, video probing, scene-cut detection and decoding, as the data modules run them."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    video = write_shots_mp4(tmp_path / "clip.mp4", [20], frames=40)
    data = VideoFolder(str(video), frames_in=2, frames_out=1, image_size=16, batch_size=2)
    data.setup("fit")
    _ = data.train_set[0]  # decodes (and caches) the whole file
    return fixed_sequences(make, 1200, seed=0, tag=TAG_TEST)  # 3 chunks of 500


@pytest.fixture(autouse=True)
def no_forced_progress(monkeypatch):
    for name in ("DFN_PROGRESS", "RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)


def test_silent_when_stderr_is_not_a_terminal(tmp_path, capsys):
    assert not sys.stderr.isatty()  # pytest's capture: what CI and redirected logs see
    sequences = long_waits(tmp_path)
    assert "dfn: " not in capsys.readouterr().err
    assert sequences.shape == (1200, 2, 4, 4)


def test_shown_with_DFN_PROGRESS_and_the_items_unchanged(tmp_path, capsys, monkeypatch):
    quiet = long_waits(tmp_path / "quiet")
    capsys.readouterr()
    monkeypatch.setenv("DFN_PROGRESS", "1")
    shown = long_waits(tmp_path / "shown")
    err = capsys.readouterr().err
    for bar in ("dfn: probing 1 training/validation/test video files", "dfn: clip.mp4: scene cuts",
                "dfn: decoding clip.mp4", "dfn: generating the test set (1200 sequences)"):
        assert bar in err, (bar, err[-2000:])
    assert "0/3 [" in err  # the test set's bar counts its three chunks
    assert np.array_equal(quiet, shown)
    # another rank of a multi-device run (Lightning's strategy sets the rank so): silent even when forced
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert list(progress(range(4), "rank one", total=4)) == [0, 1, 2, 3]
    assert "rank one" not in capsys.readouterr().err


def run_child(stderr_to_terminal: bool, setting: str | None = None, rank: str | None = None) -> str:
    """A child process showing a progress bar, its stderr a pseudo-terminal or a pipe; what it wrote."""
    code = "from dfn.progress import progress\nassert list(progress(range(3), 'child bar', total=3)) == [0, 1, 2]\n"
    environment = {k: v for k, v in os.environ.items() if k not in ("DFN_PROGRESS", "RANK", "LOCAL_RANK")}
    environment.update(PYTHONPATH=str(ROOT), **({"DFN_PROGRESS": setting} if setting is not None else {}),
                       **({"RANK": rank} if rank is not None else {}))
    if not stderr_to_terminal:
        done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stderr
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 x 24, as a terminal window
    child = subprocess.Popen([sys.executable, "-c", code], env=environment, stderr=terminal, stdout=subprocess.DEVNULL)
    os.close(terminal)
    written = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        written += chunk
    os.close(controller)
    assert child.wait(timeout=60) == 0, written
    return written.decode(errors="replace")


def test_a_real_terminal_shows_it_a_pipe_does_not():
    assert "dfn: child bar" in run_child(stderr_to_terminal=True)
    assert "child bar" not in run_child(stderr_to_terminal=False)
    assert "child bar" not in run_child(stderr_to_terminal=True, setting="0")  # switched off
    assert "child bar" not in run_child(stderr_to_terminal=True, rank="1")  # a launcher's rank 1, no Lightning
