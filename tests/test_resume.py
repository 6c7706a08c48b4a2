"""Runs that survive: resume is the same run, bit for bit (curves in metrics.csv included); checkpoints
when they matter (on signals, every few steps or seconds, after a crash); non-finite steps stop the run
before they are applied, at one host read per step; corrupt checkpoints are named. Through the real CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, TINY

HERE = Path(__file__).resolve().parent


class SignalAtStep(L.Callback):
    """Test-only: the process sends itself `signal` (`times` times) at the end of training step `step`, or
    with ``after_logging`` at the start of the next step (once step `step`'s values are logged)."""

    def __init__(self, step: int, signal: str = "SIGTERM", times: int = 1, after_logging: bool = False) -> None:
        self.step, self.signal, self.times, self.after_logging = step, signal, times, after_logging

    def send(self, trainer) -> None:
        if trainer.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), getattr(signal, self.signal))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.after_logging:
            self.send(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.after_logging:
            self.send(trainer)


class SlowSteps(L.Callback):
    """Test-only: every training step takes at least `seconds` longer."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        time.sleep(self.seconds)


class RaiseAtStep(L.Callback):
    """Test-only: a crash (an exception) after training step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"test crash at step {self.step}")


def killer(step: int, sig: str, times: int = 1, after_logging: bool = False) -> list[str]:
    return ["--trainer.callbacks+", json.dumps({"class_path": "test_resume.SignalAtStep", "init_args": {
        "step": step, "signal": sig, "times": times, "after_logging": after_logging}})]


# 2 epochs x 5 steps; last.ckpt every 2 steps; one thread (bit-for-bit on CPU needs the same threads).
# Scheduled sampling over half the run: its masks are random draws, which a resumed run must repeat.
ARGS = [*TINY, "--data.init_args.train_batches_per_epoch", "5", "--data.init_args.val_size", "8",
        "--data.init_args.test_size", "8", "--guard.every_n_train_steps", "2", "--guard.every_n_seconds", "null",
        "--model.scheduled_sampling", "0.5"]


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


def metrics_rows(run: Path) -> list[list[str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.reader(f))


def outcome(cwd: Path) -> dict:
    """What must not depend on interruptions: step, test metrics, final weights and optimiser state, and
    every logged value (metrics.csv, row for row: training, validation and test curves)."""
    run = run_dir(cwd)
    summary = json.loads((run / "summary.json").read_text())
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return {"global_step": summary["global_step"], "best": Path(summary["checkpoint"]).name,
            "metrics.csv": metrics_rows(run),
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
    rows = result["metrics.csv"][1:]
    assert [int(step) for step, metric, _ in rows if metric == "train/loss"] == list(range(10))  # every step once
    values = [(step, metric) for step, metric, _ in rows if metric != "epoch"]  # Lightning adds "epoch" to each call
    assert len(set(values)) == len(values)  # no value logged twice
    truth = [float(value) for _, metric, value in rows if metric == "train/truth_probability"]
    assert truth == pytest.approx([1 - step / 5 for step in range(5)])  # scheduled sampling was on


def test_stopped_killed_and_resumed_equals_uninterrupted(uninterrupted, tmp_path):
    """Four processes of one run: SIGTERM at step 5 (the last batch of epoch 0: the stop waits for that
    epoch's validation; an epoch-end resume), then SIGTERM at step 7 (epoch 1, batch 2: checkpoint there;
    a mid-epoch resume), each exiting with the resume command; SIGKILL once step 9 is logged leaves the
    periodic checkpoint of step 8 and step 9's rows, which the resumed run logs again; the last process gives
    exactly the uninterrupted run, in one run directory and one wandb run, with the same checkpoint files
    (the best score and top-k list survived), the same validation GIFs and the same metrics.csv, row for
    row, scheduled sampling on throughout."""
    config = None
    for step, resumed_from in ((5, 5), (7, 7)):
        start = ["--config", str(config), "--ckpt_path", str(config.parent)] if config else ARGS
        stopped = train(["fit", *start, *killer(step, "SIGTERM")], tmp_path)
        run = run_dir(tmp_path)
        assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
        # the first process names the run as the user did (save_dir "runs"), the resumed ones absolutely
        where = run if config else Path("runs") / "dfn" / run.name
        command = f"python train.py fit --config {where / 'config.yaml'} --ckpt_path {where}"
        config = run / "config.yaml"
        assert f"SIGTERM at step {step}" in stopped.stderr and command in stopped.stderr, stopped.stderr[-2000:]
        last = run / "checkpoints" / "last.ckpt"
        assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == resumed_from
        # the stopped step's own values were logged before the stop (Lightning logs step k at row k - 1)
        assert [step for step, metric, _ in metrics_rows(run)[1:] if metric == "train/loss"][-1] == str(step - 1)

    killed = train(["fit", "--config", str(config), "--ckpt_path", str(config.parent),
                    *killer(9, "SIGKILL", after_logging=True)], tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "8" in {step for step, metric, _ in metrics_rows(run)[1:] if metric == "train/loss"}  # step 9's row
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


def test_ctrl_c_once_checkpoints_and_exits_130_twice_stops_at_once(tmp_path):
    once = train(["fit", *ARGS, "--trainer.max_epochs", "1", *killer(3, "SIGINT")], tmp_path / "once")
    assert once.returncode == 128 + signal.SIGINT == 130, once.stderr[-3000:]
    assert "SIGINT at step 3" in once.stderr and "resume with: python train.py fit" in once.stderr
    run = run_dir(tmp_path / "once")
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 3

    twice = train(["fit", *ARGS, "--trainer.max_epochs", "1", *killer(3, "SIGINT", times=2)], tmp_path / "twice")
    assert twice.returncode not in (0, 130), twice.stderr[-3000:]  # Lightning's KeyboardInterrupt exit
    assert "SIGINT at step" not in twice.stderr
    run = run_dir(tmp_path / "twice")  # no checkpoint of step 3: the periodic one of step 2 is the last
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2
    assert max(int(step) for step, *_ in metrics_rows(run)[1:]) <= 2  # nothing after the stopped step


def test_last_checkpoint_every_n_seconds(tmp_path):
    """Steps of >= 0.3 s with every_n_seconds 0.2: every step is due, so a SIGKILL at the end of step 4
    (before RunGuard's hook in that step) leaves the timed checkpoint of step 3; without the timer none."""
    slow = ["--trainer.callbacks+", json.dumps({"class_path": "test_resume.SlowSteps", "init_args": {"seconds": 0.3}})]
    timed = train(["fit", *ARGS, "--guard.every_n_train_steps", "null", "--guard.every_n_seconds", "0.2", *slow,
                   *killer(4, "SIGKILL")], tmp_path / "timed")
    assert timed.returncode == -signal.SIGKILL, timed.stderr[-3000:]
    last = run_dir(tmp_path / "timed") / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 3
    untimed = train(["fit", *ARGS, "--guard.every_n_train_steps", "null", "--guard.every_n_seconds", "null",
                     *killer(4, "SIGKILL")], tmp_path / "untimed")
    assert untimed.returncode == -signal.SIGKILL
    assert not (run_dir(tmp_path / "untimed") / "checkpoints" / "last.ckpt").exists()


class Reads(torch.overrides.TorchFunctionMode):
    """Counts the tensor -> Python reads (on CUDA each is a device -> host synchronisation)."""

    READS = {"__bool__", "__float__", "__int__", "__index__", "item", "tolist", "numpy", "cpu"}

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.READS
        return func(*args, **(kwargs or {}))


def test_the_guards_read_one_value_per_step(tmp_path, monkeypatch):
    """A real fit (3 steps) with every per-step hook of RunGuard and NonFiniteGuard run under a counter of
    tensor reads: NonFiniteGuard reads once per optimiser step (one fused flag), RunGuard never."""
    from dfn.checkpointing import RunGuard
    from dfn.cli import main
    from dfn.nonfinite import NonFiniteGuard

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    cli = main([*TINY, "--trainer.max_epochs", "1", "--trainer.logger", "false", "--guard.every_n_seconds", "null"],
               run=False)
    reads = {}

    def counted(guard, name):
        hook = getattr(guard, name)

        def wrapped(*args, **kwargs):
            with Reads() as counter:
                try:
                    return hook(*args, **kwargs)
                finally:
                    reads[type(guard).__name__] = reads.get(type(guard).__name__, 0) + counter.count
        setattr(guard, name, wrapped)

    for guard in cli.trainer.callbacks:
        if isinstance(guard, (RunGuard, NonFiniteGuard)):
            for name in ("on_train_batch_start", "on_train_batch_end", "on_before_backward",
                         "on_before_optimizer_step", "_check_predictions"):
                if name in type(guard).__dict__:
                    counted(guard, name)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 3
    assert reads == {"RunGuard": 0, "NonFiniteGuard": 3}


class Diverging(L.LightningModule):
    """One weight w = 1 whose `what` (predictions, loss or gradients) turns non-finite at the second step."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what, self.w = what, torch.nn.Parameter(torch.ones(()))
        self.predictor = torch.nn.Identity()  # the network NonFiniteGuard hooks

    def training_step(self, batch, batch_idx):
        bad = self.global_step == 1
        predictions = self.predictor(self.w * batch * (float("nan") if bad and self.what == "predictions" else 1))
        loss = F.binary_cross_entropy(predictions.clamp(0.01, 0.99), torch.zeros_like(batch))  # refuses NaN inputs
        if bad and self.what == "loss":
            return loss * float("inf")
        if bad and self.what == "gradients":
            return loss + torch.sqrt((self.w - self.w.detach()) ** 2)  # adds 0, but its gradient is 0 / 0
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("what", ["predictions", "loss", "gradients"])
def test_a_non_finite_step_is_named_and_never_applied(what, tmp_path):
    from dfn.nonfinite import NonFiniteGuard, NonFiniteLoss

    model = Diverging(what)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[NonFiniteGuard()],
                        default_root_dir=tmp_path)
    loader = torch.utils.data.DataLoader(torch.full((8, 2), 0.5), batch_size=4)
    with pytest.raises(NonFiniteLoss, match=f"non-finite training {what}.* at step 2 .*stopped without applying it"):
        trainer.fit(model, loader)
    after_one_step = 1 - 0.1 * float(torch.autograd.functional.jacobian(
        lambda w: F.binary_cross_entropy((w * torch.full((4, 2), 0.5)).clamp(0.01, 0.99), torch.zeros(4, 2)),
        torch.ones(())))
    assert float(model.w) == pytest.approx(after_one_step)  # step 1 applied, step 2 not
