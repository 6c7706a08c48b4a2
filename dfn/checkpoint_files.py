"""Checkpoint files: atomic writes, and finding the checkpoint to resume from (docs/runs.md, "Resume").

``--ckpt_path`` takes a checkpoint file, a run directory or ``pretrained:<name>``; a directory means its
latest complete checkpoint (``last.ckpt``, else the newest readable ``*.ckpt``), ``pretrained:<name>`` a
model shipped in the repository (`dfn.pretrained`, its SHA-256 checked against its card). A damaged file
is named together with the complete alternatives beside it. ``model.init_from`` (fine-tuning) takes the
same values.
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


PRETRAINED_PREFIX = "pretrained:"  # ``--ckpt_path pretrained:<name>``: a model shipped in the repository


def resolve_checkpoint(value: str, resume: bool = False, argument: str = "--ckpt_path") -> Path:
    """``--ckpt_path``: a checkpoint file, a run directory (or its ``checkpoints/``), whose latest
    complete checkpoint is used, or ``pretrained:<name>``. Raises ValueError naming the problem and the
    alternatives. `resume`: the checkpoint is to continue a fit (a shipped model has no optimiser state);
    `argument`: the option named in messages (``--model.init_from`` for fine-tuning)."""
    if value.startswith(PRETRAINED_PREFIX):
        if resume:
            raise CheckpointError(f"{argument} {value}: a shipped model holds weights only, no optimiser state to "
                                  f"resume; fine-tune it as a new run with --model.init_from {value}")
        from dfn.pretrained import weights_path  # not at the top: dfn.pretrained imports this module

        return weights_path(value.removeprefix(PRETRAINED_PREFIX))
    path = Path(value).expanduser()
    if path.is_dir():
        directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        candidates = run_checkpoints(directory)
        if not candidates:
            raise CheckpointError(f"{argument} {value}: no *.ckpt files in {directory}")
        problems = []
        for candidate in candidates:
            problem = checkpoint_problem(candidate)
            if problem is None:
                if problems:
                    print(f"dfn: skipped {'; '.join(problems)}; {argument} uses {candidate}")
                return candidate
            problems.append(f"{candidate.name}: {problem}")
        raise CheckpointError(f"{argument} {value}: no readable checkpoint in {directory} ({'; '.join(problems)})")
    problem = checkpoint_problem(path)
    if problem is None:
        return path
    if not path.exists():
        raise CheckpointError(f"{argument} {value}: no such file or directory (a checkpoint file, a run directory "
                              f"or pretrained:<name>)")
    others = [p for p in run_checkpoints(path.parent) if p != path and checkpoint_problem(p) is None]
    hint = (f"the other complete checkpoints in {path.parent} are: {', '.join(p.name for p in others)}"
            if others else f"there is no other complete checkpoint in {path.parent}")
    raise CheckpointError(f"checkpoint {path} is {problem}; {hint}")


def shape_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], strict: bool) -> str | None:
    """The first difference between a model's state dict (`expected`) and a checkpoint's (`found`), as
    one phrase, or None. Shapes of the tensors both hold are compared in the model's order; `strict`
    also reports the first tensor only one of them holds."""
    for key, tensor in expected.items():
        if key in found and tuple(found[key].shape) != tuple(tensor.shape):
            return (f"tensor {key} is {tuple(found[key].shape)} in the checkpoint but {tuple(tensor.shape)} "
                    f"in this model")
    if strict:
        missing = [key for key in expected if key not in found]
        if missing:
            return f"tensor {missing[0]} of this model is not in the checkpoint ({len(missing)} missing)"
        unexpected = [key for key in found if key not in expected]
        if unexpected:
            return f"the checkpoint's tensor {unexpected[0]} is not in this model ({len(unexpected)} extra)"
    return None


def differing_hyperparameters(theirs: dict, ours: dict) -> list[str]:
    """``"name <checkpoint's value> there, <model's value> here"`` for every hyperparameter (nested
    ones dotted, e.g. ``generator.init_args.kernel_size``) that both hold with different values."""
    def flat(values: dict, prefix: str = "") -> dict:
        items = {}
        for key, value in values.items():
            if isinstance(value, dict):
                items.update(flat(value, f"{prefix}{key}."))
            elif not isinstance(value, torch.nn.Module) and not str(key).startswith("_"):  # not _instantiator
                items[f"{prefix}{key}"] = value
        return items

    theirs, ours = flat(dict(theirs)), flat(dict(ours))
    return [f"{key} {theirs[key]!r} there, {value!r} here" for key, value in ours.items()
            if key in theirs and theirs[key] != value and key != "init_from"]


def run_of_checkpoint(path: Path) -> Path | None:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.ckpt`` with ``<run>/config.yaml``)."""
    run = path.resolve().parent.parent
    return run if path.resolve().parent.name == "checkpoints" and (run / "config.yaml").is_file() else None
