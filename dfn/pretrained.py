"""Trained models shipped inside the repository: loaded by name, checked against their cards, never downloaded.

A shipped model is three files in ``pretrained/`` (or the folder ``$DFN_PRETRAINED`` names):

- ``<name>.pt``: the weights as a Lightning checkpoint holding the model only (``state_dict``,
  ``hyper_parameters``, ``pytorch-lightning_version``, ``epoch``, ``global_step``; no optimiser), so
  ``trainer.test(ckpt_path=...)`` and ``load_from_checkpoint`` read it as they read any checkpoint;
- ``<name>.json``: its card: the config, the exact command, commit, data, iterations, wall time and
  machine, test metrics, and the SHA-256 of ``<name>.pt``, which is checked before every use;
- ``<name>.md``: the same card for reading, written from the JSON.

Use: ``dfn.pretrained.load(name)`` in Python; ``--ckpt_path pretrained:<name>`` for ``test`` and
``predict``; ``fit --model.init_from pretrained:<name>`` to fine-tune. Add one:
``python -m dfn.pretrained export <run dir or .ckpt> --name <name> --command "..." --data "..." ...``
(docs/pretrained.md).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import io
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from dfn.checkpoint_files import CheckpointError, resolve_checkpoint, run_of_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FOLDER_VARIABLE = "DFN_PRETRAINED"  # another folder of shipped models (the tests export into a temporary one)
MAX_BYTES = 5_000_000  # a shipped model stays small enough to live in git: 5 MB (bf16 halves fp32)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def folder(directory: str | Path | None = None) -> Path:
    """The folder of shipped models: `directory`, else ``$DFN_PRETRAINED``, else ``<repository>/pretrained``."""
    return Path(directory or os.environ.get(FOLDER_VARIABLE) or ROOT / "pretrained").expanduser()


def names(directory: str | Path | None = None) -> list[str]:
    """The shipped models' names (one card ``<name>.json`` each), sorted."""
    return sorted(p.stem for p in folder(directory).glob("*.json"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card(name: str, directory: str | Path | None = None) -> dict:
    """The card of shipped model `name` (see the module docstring); CheckpointError listing the shipped
    names when there is none."""
    where = folder(directory)
    shipped = names(where)
    if name not in shipped:
        raise CheckpointError(f"pretrained:{name}: no shipped model of that name in {where}; shipped: "
                              f"{', '.join(shipped) or 'none'}")
    path = where / f"{name}.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"pretrained:{name}: its card {path} is unreadable ({type(err).__name__}: {err})") from err
    weights = info.get("weights") if isinstance(info, dict) else None
    if not isinstance(weights, str) or Path(weights).name != weights or not isinstance(info.get("sha256"), str):
        raise CheckpointError(f"pretrained:{name}: its card {path} lacks 'weights' (a file name beside it) or "
                              f"'sha256'; export the model again (python -m dfn.pretrained export)")
    return info


def weights_path(name: str, directory: str | Path | None = None) -> Path:
    """The weights file of shipped model `name`, after checking its SHA-256 against the card.

    Raises CheckpointError (a ValueError) when the name is not shipped (listing those that are), the
    file is missing, or its SHA-256 differs from the card's (a damaged or replaced file, or a Git LFS
    pointer instead of the file).
    """
    where = folder(directory)
    info = card(name, where)
    path = where / info["weights"]
    if not path.is_file():
        raise CheckpointError(f"pretrained:{name}: {path} (named by its card {where / name}.json) is missing")
    found = sha256(path)
    if found != info["sha256"]:
        raise CheckpointError(f"pretrained:{name}: refusing {path}: its SHA-256 is {found} but its card "
                              f"{where / name}.json says {info['sha256']}; the file was changed or damaged (or is "
                              f"a Git LFS pointer): restore it from the repository, or export it again")
    return path


def load(name: str, directory: str | Path | None = None, map_location: str | torch.device = "cpu") -> L.LightningModule:
    """Shipped model `name` in eval mode (a `dfn.module.VideoPrediction` for the video models).

    ``model(inputs)``: inputs (B, frames_in, C, H, W) in [0, 1] -> predictions (B, frames_out, C, H, W).
    The class is the one the card names (the checkpoint's ``_class_path``).
    """
    path = weights_path(name, directory)
    module_name, _, class_name = card(name, directory)["model"]["class_path"].rpartition(".")
    model_class = getattr(importlib.import_module(module_name), class_name)
    model = model_class.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    return model.eval()


def working_tree_commit() -> str:
    """``git rev-parse HEAD`` of this repository, noting uncommitted changes to tracked files."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30,
                                  check=True).stdout.strip()
        head, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{head} + uncommitted changes" if dirty else head


def flat_numbers(values: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) JSON object as ``{"a/b": value}``; lists and strings are left out."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flat_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def export(checkpoint: str | Path, name: str, command: str, data: str, machine: str, wall_time: str,
           config: str | None = None, metrics: str | Path | None = None, commit: str | None = None,
           notes: str = "", dtype: Literal["fp32", "bf16"] = "fp32", directory: str | Path | None = None,
           max_bytes: int = MAX_BYTES) -> Path:
    """Write ``<name>.pt`` (model hyperparameters and weights, no optimiser), ``<name>.json`` and
    ``<name>.md`` into the shipped-models folder from a Lightning checkpoint (a file or a run directory:
    its latest complete checkpoint). Returns the weights' path.

    The resolved config (``<run>/config.yaml``) and the test metrics (``<run>/summary.json``) are read
    from the checkpoint's run directory unless `config` (the YAML the command used) and `metrics` (a
    JSON file) are given; `commit` defaults to this checkout's HEAD. `dtype` ``bf16`` halves the file.
    """
    if not NAME.fullmatch(name):
        raise ValueError(f"--name {name!r}: use letters, digits, '_', '.' and '-' (it becomes <name>.pt)")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    for argument, value in (("command", command), ("data", data), ("machine", machine), ("wall_time", wall_time)):
        if not value.strip():
            raise ValueError(f"--{argument} must say what the card needs (it is empty)")
    source = resolve_checkpoint(str(checkpoint), argument="export")
    full = torch.load(source, map_location="cpu", weights_only=True)
    hyper_parameters = dict(full.get("hyper_parameters") or {})
    if "_class_path" not in hyper_parameters or "state_dict" not in full:
        raise ValueError(f"export {checkpoint}: {source} holds no state_dict or no LightningCLI hyper_parameters "
                         f"(_class_path); export a checkpoint written by `python train.py fit`")
    started_from = hyper_parameters.get("init_from")
    if "init_from" in hyper_parameters:
        hyper_parameters["init_from"] = None  # the weights are complete: loading them needs nothing else
    state = {key: value.to(DTYPES[dtype]) if value.is_floating_point() else value
             for key, value in full["state_dict"].items()}
    shipped = {"state_dict": state, "hyper_parameters": hyper_parameters,
               "hparams_name": full.get("hparams_name", "kwargs"),
               "pytorch-lightning_version": full.get("pytorch-lightning_version") or L.__version__,
               "epoch": full.get("epoch", 0), "global_step": full.get("global_step", 0)}
    buffer = io.BytesIO()
    torch.save(shipped, buffer)
    blob = buffer.getvalue()
    if len(blob) > max_bytes:
        raise ValueError(f"export {checkpoint}: the weights take {len(blob):,} bytes, over the {max_bytes:,} a shipped "
                         f"model may take" + (" (try --dtype bf16)" if dtype == "fp32" else ""))

    run = run_of_checkpoint(source)
    resolved = (run / "config.yaml").read_text() if run else None
    if config is None and resolved is None:
        raise ValueError(f"export {checkpoint}: no <run>/config.yaml beside the checkpoint; pass --config with the "
                         f"YAML the command used")
    metrics_source = str(metrics) if metrics else None
    if metrics is None and run is not None and (run / "summary.json").is_file():
        metrics, metrics_source = run / "summary.json", f"{run.name}/summary.json"
    scores = json.loads(Path(metrics).read_text()) if metrics else {}
    if not isinstance(scores, dict):
        raise ValueError(f"--metrics {metrics}: expected a JSON object of metric names and numbers")
    scores = flat_numbers(scores)
    where = folder(directory)
    where.mkdir(parents=True, exist_ok=True)
    weights = where / f"{name}.pt"
    info = {
        "name": name, "notes": notes, "weights": weights.name, "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob), "dtype": dtype, "parameters": sum(v.numel() for v in state.values()),
        "model": {"class_path": hyper_parameters["_class_path"],
                  "hyper_parameters": {k: v for k, v in hyper_parameters.items() if not k.startswith("_")}},
        "config": config, "resolved_config": resolved, "command": command,
        "commit": commit or working_tree_commit(),
        "commit_source": "given" if commit else "this checkout's HEAD when exported",
        "data": data, "iterations": int(shipped["global_step"]), "epoch": int(shipped["epoch"]),
        "wall_time": wall_time, "machine": machine, "metrics": scores,
        "metrics_source": metrics_source, "started_from": started_from,
        "source_checkpoint": f"{run.name}/checkpoints/{source.name}" if run else source.name,
        "exported": datetime.date.today().isoformat(), "lightning": L.__version__, "torch": torch.__version__,
    }
    for path, content in ((weights, blob), (where / f"{name}.json", (json.dumps(info, indent=2) + "\n").encode()),
                          (where / f"{name}.md", render_card(info).encode())):
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_bytes(content)
        os.replace(temporary, path)  # a reader never sees half a file
    return weights


def render_card(info: dict) -> str:
    """The card as Markdown (``<name>.md``)."""
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    name, hyper = info["name"], info["model"]["hyper_parameters"]
    generator = hyper.get("generator", {})
    generator = generator.get("class_path", "") if isinstance(generator, dict) else ""
    config = info["config"] or "<the config>"
    rows = [
        ("Weights", f"`{info['weights']}`: {info['bytes']:,} bytes, {info['dtype']}, {info['parameters']:,} numbers"),
        ("SHA-256", f"`{info['sha256']}`"),
        ("Model", f"`{info['model']['class_path']}`" + (f", generator `{generator}`" if generator else "")),
        ("Command", f"`{info['command']}`"),
        ("Config", f"`{info['config']}`" if info["config"] else "the resolved config below"),
        ("Commit", f"{info['commit']} ({info['commit_source']})"),
        ("Data", info["data"]), ("Iterations", f"{info['iterations']:,}"),
        ("Wall time", info["wall_time"]), ("Machine", info["machine"]),
        ("Started from", info["started_from"] or "random initialisation"),
        ("Exported", f"{info['exported']} from `{info['source_checkpoint']}` (Lightning {info['lightning']}, "
                     f"torch {info['torch']})"),
    ]
    lines = [f"# {name}", ""] + ([info["notes"], ""] if info["notes"] else [])
    lines += ["| | |", "|---|---|", *(f"| {key} | {cell(value)} |" for key, value in rows), "", "## Test metrics", ""]
    if info["metrics"]:
        lines += [f"From `{info['metrics_source']}`.", "", "| metric | value |", "|---|---|",
                  *(f"| {cell(k)} | {v:.6g} |" for k, v in sorted(info["metrics"].items())), ""]
    else:
        lines += ["None recorded.", ""]
    lines += ["## Use", "", "```bash", f"python train.py test --config {config} --ckpt_path pretrained:{name}",
              f"python train.py predict --config {config} --ckpt_path pretrained:{name}",
              f"python train.py fit --config {config} --model.init_from pretrained:{name}   # fine-tune", "```", "",
              "```python", "import dfn.pretrained", "", f'model = dfn.pretrained.load("{name}")  # eval mode, CPU',
              "```", ""]
    if info["resolved_config"]:
        lines += ["## Resolved config", "", "```yaml", info["resolved_config"].rstrip(), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dfn.pretrained", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command_name", required=True)
    listing = commands.add_parser("list", help="the shipped models, each checked against its card")
    listing.add_argument("--dir", default=None, help=f"folder of shipped models (default ${FOLDER_VARIABLE} or pretrained/)")
    out = commands.add_parser("export", help="ship a trained checkpoint: <name>.pt, <name>.json, <name>.md")
    out.add_argument("checkpoint", help="a .ckpt file or a run directory (its latest complete checkpoint)")
    out.add_argument("--name", required=True, help="the model's name: pretrained:<name>")
    out.add_argument("--command", required=True, help="the exact command that trained it")
    out.add_argument("--data", required=True, help="what it was trained on (data module, digits, clips)")
    out.add_argument("--machine", required=True, help='e.g. "2-core AMD EPYC, no GPU"')
    out.add_argument("--wall_time", required=True, help='training wall time, e.g. "2 h 41 min"')
    out.add_argument("--config", default=None, help="the YAML the command used (the run's config.yaml is embedded too)")
    out.add_argument("--metrics", default=None, help="JSON of test metrics (default: the run's summary.json)")
    out.add_argument("--commit", default=None, help="the commit it trained at (default: this checkout's HEAD)")
    out.add_argument("--notes", default="", help="a sentence for the card: what it is, comparability")
    out.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="bf16 halves the file")
    out.add_argument("--dir", default=None, help=f"folder of shipped models (default ${FOLDER_VARIABLE} or pretrained/)")
    args = parser.parse_args(argv)
    try:
        if args.command_name == "export":
            path = export(args.checkpoint, args.name, args.command, args.data, args.machine, args.wall_time,
                          args.config, args.metrics, args.commit, args.notes, args.dtype, args.dir)
            print(f"dfn: wrote {path} ({path.stat().st_size:,} bytes), {path.with_suffix('.json')} and "
                  f"{path.with_suffix('.md')}")
            return
        if not names(args.dir):
            print(f"dfn: no shipped models in {folder(args.dir)}")
        for name in names(args.dir):
            try:
                info, _ = card(name, args.dir), weights_path(name, args.dir)
                print(f"{name}: {info['iterations']:,} iterations on {info['data']} (SHA-256 ok)")
            except CheckpointError as err:
                print(f"{name}: {err}")
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"dfn: {err}") from None


if __name__ == "__main__":
    main()
