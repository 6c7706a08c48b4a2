"""Checkpoint files: atomic writes, and finding the checkpoint to resume from (issue 10).

``--ckpt_path`` takes a checkpoint file or a run directory; a directory means its latest complete
checkpoint (``last.ckpt``, else the newest readable ``*.ckpt``). A damaged file is named together with
the complete alternatives beside it.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class CheckpointError(ValueError):
    """``--ckpt_path`` names no usable checkpoint; the message says why and lists the alternatives."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file next to the target, fsync, then ``os.replace`` (atomic on POSIX).

    Lightning's own writer goes through an fsspec transaction whose temporary file lives in the system
    temp dir; when that is another filesystem the final move is a copy, and a kill during it leaves a
    truncated checkpoint. Remote paths (``scheme://``) keep Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")  # not *.ckpt: never mistaken for a checkpoint
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


# ---- finding and checking checkpoints (the CLI's --ckpt_path) -------------------------------------------
def checkpoint_problem(path: Path) -> str | None:
    """Why `path` is not a complete checkpoint file, or None when it is.

    torch.save writes a zip archive; checking every member's CRC catches truncated and corrupted files
    without unpickling anything.
    """
    if not path.is_file():
        return "no such file"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"unreadable or corrupt ({type(err).__name__}: {err})"
    return f"corrupt (member {bad} fails its CRC check)" if bad else None


def run_checkpoints(directory: Path) -> list[Path]:
    """A run's checkpoints, the one to resume from first: last.ckpt, then the others newest first."""
    files = sorted(directory.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    return sorted(files, key=lambda p: p.name != "last.ckpt")  # stable: last.ckpt first, then by time


def resolve_checkpoint(value: str) -> Path:
    """``--ckpt_path``: a checkpoint file, or a run directory (or its ``checkpoints/``), whose latest
    complete checkpoint is used. Raises ValueError naming the problem and the alternatives."""
    path = Path(value).expanduser()
    if path.is_dir():
        directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        candidates = run_checkpoints(directory)
        if not candidates:
            raise CheckpointError(f"--ckpt_path {value}: no *.ckpt files in {directory}")
        problems = []
        for candidate in candidates:
            problem = checkpoint_problem(candidate)
            if problem is None:
                if problems:
                    print(f"dfn: skipped {'; '.join(problems)}; resuming from {candidate}")
                return candidate
            problems.append(f"{candidate.name}: {problem}")
        raise CheckpointError(f"--ckpt_path {value}: no readable checkpoint in {directory} ({'; '.join(problems)})")
    problem = checkpoint_problem(path)
    if problem is None:
        return path
    if not path.exists():
        raise CheckpointError(f"--ckpt_path {value}: no such file or directory")
    others = [p for p in run_checkpoints(path.parent) if p != path and checkpoint_problem(p) is None]
    hint = (f"the other complete checkpoints in {path.parent} are: {', '.join(p.name for p in others)}"
            if others else f"there is no other complete checkpoint in {path.parent}")
    raise CheckpointError(f"checkpoint {path} is {problem}; {hint}")


def run_of_checkpoint(path: Path) -> Path | None:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.ckpt`` with ``<run>/config.yaml``)."""
    run = path.resolve().parent.parent
    return run if path.resolve().parent.name == "checkpoints" and (run / "config.yaml").is_file() else None
