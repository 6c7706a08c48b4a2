"""Issue 10, runs that survive: resume is the same run, bit for bit; checkpoints when they matter;
non-finite losses stop the run; corrupt checkpoints are named. Through the real CLI."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import ROOT, TINY

HERE = Path(__file__).resolve().parent


class SignalAtStep(L.Callback):
    """Test-only: the process sends itself `signal` at the end of training step `step` (deterministic)."""

    def __init__(self, step: int, signal: str = "SIGTERM") -> None:
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))


class RaiseAtStep(L.Callback):
    """Test-only: a crash (an exception) after training step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"test crash at step {self.step}")


def killer(step: int, sig: str) -> list[str]:
    return ["--trainer.callbacks+", json.dumps({"class_path": "test_resume.SignalAtStep",
                                                "init_args": {"step": step, "signal": sig}})]


# 2 epochs x 5 steps; last.ckpt every 2 steps; one thread (bit-for-bit on CPU needs the same threads).
ARGS = [*TINY, "--data.init_args.train_batches_per_epoch", "5", "--data.init_args.val_size", "8",
        "--data.init_args.test_size", "8", "--guard.every_n_train_steps", "2", "--guard.every_n_seconds", "null"]


def train(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python train.py <args>`` in `cwd`; returns the finished process (any exit status)."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_SILENT="true", NETRC="/nonexistent", PYTHONPATH=f"{ROOT}{os.pathsep}{HERE}",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def run_dir(cwd: Path) -> Path:
    runs = sorted((cwd / "runs" / "dfn").iterdir())
    assert len(runs) == 1, f"expected one run directory, got {runs}"
    return runs[0]


def tensors_equal(a, b, where: str = "") -> None:
    """Nested dicts/lists of tensors and numbers: equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            tensors_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            tensors_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a} != {b}"


def outcome(cwd: Path) -> dict:
    """What must not depend on interruptions: step, test metrics, final weights and optimiser state."""
    run = run_dir(cwd)
    summary = json.loads((run / "summary.json").read_text())
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return {"global_step": summary["global_step"], "best": Path(summary["checkpoint"]).name,
            "files": sorted(p.name for p in (run / "checkpoints").iterdir()),  # top-k bookkeeping kept
            "gifs": sorted(p.name for p in (run / "gifs").iterdir()),  # every validation ran
            "test": {k: v for k, v in summary.items() if k.startswith("test/")},
            "weights": last["state_dict"], "optimizer": last["optimizer_states"], "schedulers": last["lr_schedulers"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("uninterrupted")
    ok(train(["fit", *ARGS], cwd))
    return cwd, outcome(cwd)


def test_uninterrupted_run_is_complete(uninterrupted):
    _, result = uninterrupted
    assert result["global_step"] == 10 and result["test"]["test/bce_per_frame"] > 0


def test_stopped_killed_and_resumed_equals_uninterrupted(uninterrupted, tmp_path):
    """Four sessions of one run: SIGTERM at step 5 (the last batch of epoch 0: the stop waits for that
    epoch's validation), then SIGTERM at step 7 (epoch 1, batch 2: checkpoint there), each exiting with
    the resume command; SIGKILL at step 9 leaves the periodic checkpoint of step 8; the last session
    gives exactly the uninterrupted run, in one run directory and one wandb run, with the same
    checkpoint files (the best score and top-k list survived) and the same validation GIFs."""
    config = None
    for step, resumed_from in ((5, 5), (7, 7)):
        start = ["--config", str(config), "--ckpt_path", str(config.parent)] if config else ARGS
        stopped = train(["fit", *start, *killer(step, "SIGTERM")], tmp_path)
        run = run_dir(tmp_path)
        assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
        # the first session names the run as the user did (save_dir "runs"), the resumed ones absolutely
        where = run if config else Path("runs") / "dfn" / run.name
        command = f"python train.py fit --config {where / 'config.yaml'} --ckpt_path {where}"
        config = run / "config.yaml"
        assert f"SIGTERM at step {step}" in stopped.stderr and command in stopped.stderr, stopped.stderr[-2000:]
        last = run / "checkpoints" / "last.ckpt"
        assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == resumed_from

    killed = train(["fit", "--config", str(config), "--ckpt_path", str(config.parent), *killer(9, "SIGKILL")], tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert f"resuming run {run}" in killed.stdout
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 8  # every 2 steps
    assert not (run / "summary.json").exists()  # it never got to test

    resumed = ok(train(["fit", *ARGS, "--ckpt_path", str(run)], tmp_path))
    assert f"resuming run {run}" in resumed.stdout
    assert run_dir(tmp_path) == run  # the same run directory ...
    wandb_runs = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 4 and all(p.name.endswith(f"-{run.name}") for p in wandb_runs)  # ... and wandb id
    assert all(list(p.glob(f"run-{run.name}.wandb")) for p in wandb_runs)
    tensors_equal(outcome(tmp_path), uninterrupted[1])  # bit for bit: step, test metrics, weights, optimiser


def test_corrupt_checkpoint_is_named(uninterrupted, tmp_path, monkeypatch, capsys):
    from dfn.checkpoint_files import resolve_checkpoint
    from dfn.cli import main

    cwd, _ = uninterrupted
    source = run_dir(cwd) / "checkpoints" / "last.ckpt"
    broken = tmp_path / "checkpoints" / "last.ckpt"
    broken.parent.mkdir()
    broken.write_bytes(source.read_bytes()[: source.stat().st_size // 2])  # a write cut off half way
    (tmp_path / "checkpoints" / "best.ckpt").write_bytes(source.read_bytes())
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:  # the CLI in this process: the error comes before any training
        main(["fit", *ARGS, "--ckpt_path", str(broken)])
    assert stop.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message == (f"dfn: checkpoint {broken} is unreadable or corrupt (BadZipFile: File is not a zip file); "
                       f"the other complete checkpoints in {broken.parent} are: best.ckpt"), message
    # a run directory falls back to the newest complete checkpoint
    assert resolve_checkpoint(str(tmp_path)) == tmp_path / "checkpoints" / "best.ckpt"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    proc = train(["fit", *ARGS, "--trainer.max_epochs", "1", "--model.lr", "1e30",
                  "--guard.every_n_train_steps", "1"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert "non-finite training predictions at step" in message and "last good checkpoint" in message, message
    step = int(message.split("at step ")[1].split()[0])
    last = torch.load(run_dir(tmp_path) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == step - 1  # the step before the bad one
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_a_crash_leaves_a_checkpoint(tmp_path):
    crash = ["--trainer.callbacks+", json.dumps({"class_path": "test_resume.RaiseAtStep", "init_args": {"step": 3}})]
    proc = train(["fit", *ARGS, "--trainer.max_epochs", "1", "--guard.every_n_train_steps", "null", *crash], tmp_path)
    assert proc.returncode == 1 and "test crash at step 3" in proc.stderr, proc.stderr[-3000:]
    last = run_dir(tmp_path) / "checkpoints" / "last.ckpt"  # no periodic or validation save came before
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 3


def test_rng_states_are_saved_and_restored():
    import random

    import numpy as np

    from dfn.checkpointing import RunGuard

    guard = RunGuard()
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    buffer = io.BytesIO()
    torch.save(guard.state_dict(), buffer)  # as in a checkpoint, which Lightning loads with weights_only=True
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    fresh = RunGuard()
    fresh.load_state_dict(state)
    fresh._handlers = {}
    fresh.on_train_start(trainer=None, pl_module=None)  # applied right before the next training batch
    fresh._restore_handlers()
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    """A writer killed before it finishes leaves the previous complete file, never a truncated one."""
    from dfn.checkpoint_files import AtomicCheckpointIO, checkpoint_problem

    io_ = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io_.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)

    def killed(*args):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        io_.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    assert checkpoint_problem(path) is None
    assert torch.load(path, weights_only=True)["step"] == 1
