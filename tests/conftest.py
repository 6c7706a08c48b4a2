"""Shared test helpers: a tiny but complete configuration of the real CLI, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The paper's task shrunk to seconds on a CPU: 32x32 canvas, 3 -> 2 frames, a narrow network.
TINY = [
    "--config", str(ROOT / "experiments" / "moving_mnist" / "dfn.yaml"),
    "--trainer.max_epochs", "2",
    "--trainer.accelerator", "cpu",
    "--trainer.devices", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.log_every_n_steps", "1",
    "--model.encoder_width", "4",
    "--model.hidden", "8",
    "--model.decoder_width", "8",
    "--model.features", "8",
    "--model.generator.init_args.kernel_size", "5",
    "--data.init_args.image_size", "32",
    "--data.init_args.frames_in", "3",
    "--data.init_args.frames_out", "2",
    "--data.init_args.batch_size", "4",
    "--data.init_args.train_batches_per_epoch", "3",
    "--data.init_args.val_size", "8",
    "--data.init_args.test_size", "10",
    "--data.init_args.predict_size", "4",
]


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch):
    """No account, no network: every run must go offline by itself, without prompting."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setenv("WANDB_SILENT", "true")


def run_train(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python train.py <args>`` in `cwd` exactly as a user would; fail with its output if it fails."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_SILENT="true", NETRC="/nonexistent", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise AssertionError(f"train.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def read_summary(cwd: Path) -> dict:
    return json.loads(only(sorted(cwd.glob("runs/dfn/*/summary.json"))).read_text())
