"""This code against another checkout, measured alternately in one run: ``python -m dfn.bench ab``.

    python -m dfn.bench ab --baseline /tmp/dfn_old --config experiments/quickstart.yaml \\
        [--precision bf16-mixed] [--threads 1] [--repeats 5] [--steps 4] [--fit N] [--override ARG ...]

Each repeat runs both codes, one after the other, each in a fresh process (the order swaps every repeat, so
a drift in the machine's load hits both alike); ``--baseline`` is a directory holding another version of
this repository, e.g. ``mkdir /tmp/dfn_old && git archive <commit> | tar -x -C /tmp/dfn_old``.

* Default: one training iteration, timed by the same loop for both codes (built as ``train.py fit`` builds
  it, with `dfn.bench.train.build`, which old versions have too): forward under the precision's autocast,
  loss, backward, Adam step, on a few cycled batches; ``--steps`` timed iterations per process after one
  untimed. Wall and CPU seconds per iteration.
* ``--fit N``: a whole ``train.py fit`` of N iterations (``--trainer.max_steps``), validation and test
  included; its ``summary.json`` ``seconds_per_iteration`` (the fit's own timer, median over the run)
  and the process's wall time.

Printed: each code's medians over all repeats, and baseline / this as the speed-up. On a machine shared with
other work, the CPU time (which does not count waiting for a core) is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The timing loop, run by `python -c` inside each checkout (so with that checkout's dfn).
WORKER = r"""
import json, os, sys, time, torch
from pathlib import Path
config, precision, threads, steps, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
if threads:
    torch.set_num_threads(threads)
from dfn.bench.train import _optimizer, build
cli = build(Path(config), "cpu", precision or None, overrides)
plugin = cli.trainer.precision_plugin
model = plugin.convert_module(cli.model).train()
optimizer = _optimizer(model.configure_optimizers())
cli.datamodule.setup("fit")
loader = iter(cli.datamodule.train_dataloader())
batches = [next(loader) for _ in range(2)]
def iteration(i):
    inputs, targets = model.split(batches[i % 2])
    with plugin.forward_context():
        predictions = model(inputs)
    loss = model.loss(predictions.float(), targets.float())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)
iteration(0)
wall, cpu, losses = [], [], []
for i in range(1, steps + 1):
    w, c = time.perf_counter(), time.process_time()
    losses.append(iteration(i))
    wall.append(time.perf_counter() - w)
    cpu.append(time.process_time() - c)
print("AB-RESULT " + json.dumps({"wall": wall, "cpu": cpu, "losses": losses, "precision": cli.trainer.precision,
                                 "threads": torch.get_num_threads(), "load": os.getloadavg()[0]}))
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of this repository")
    parser.add_argument("--config", type=Path, required=True, help="a train.py config (relative: in both checkouts)")
    parser.add_argument("--precision", default="", help="Lightning precision (default: the config's)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3, help="processes per code (default 3)")
    parser.add_argument("--steps", type=int, default=4, help="timed iterations per process (default 4)")
    parser.add_argument("--fit", type=int, default=0, metavar="N",
                        help="time a whole `train.py fit` of N iterations instead of the bare iteration")
    parser.add_argument("--override", action="append", default=[], metavar="ARG",
                        help="extra train.py argument for both codes (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _environment(checkout: Path, threads: int) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def measure_iteration(checkout: Path, args: argparse.Namespace) -> dict:
    """One process in `checkout`: wall and CPU seconds of ``--steps`` iterations."""
    command = [sys.executable, "-c", WORKER, str(args.config), args.precision, str(args.threads), str(args.steps),
               *args.override]
    proc = subprocess.run(command, cwd=checkout, env=_environment(checkout, args.threads), capture_output=True,
                          text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("AB-RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"dfn.bench ab: the iteration in {checkout} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("AB-RESULT "):])


def measure_fit(checkout: Path, args: argparse.Namespace) -> dict:
    """One ``train.py fit`` of ``--fit`` iterations in `checkout`: the fit's median seconds per iteration
    (``summary.json``) and the process's wall seconds."""
    with tempfile.TemporaryDirectory(prefix="dfn-ab-") as run:
        command = [sys.executable, "train.py", "fit", "--config", str(args.config), "--trainer.max_steps", str(args.fit),
                   "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                   "--trainer.default_root_dir", run, *args.override]
        if args.precision:
            command += ["--trainer.precision", args.precision]
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=checkout, env=_environment(checkout, args.threads), capture_output=True,
                              text=True)
        seconds = time.perf_counter() - start
        summary = Path(run) / "summary.json"
        if proc.returncode or not summary.is_file():
            raise RuntimeError(f"dfn.bench ab: the fit in {checkout} failed:\n{proc.stderr[-3000:]}")
        facts = json.loads(summary.read_text())
    return {"wall": [facts["seconds_per_iteration"]], "process_seconds": seconds, "load": os.getloadavg()[0]}


def run(args: argparse.Namespace) -> dict:
    baseline = args.baseline.resolve()
    if not (baseline / "dfn" / "bench" / "train.py").is_file():
        raise ValueError(f"dfn.bench ab: --baseline {args.baseline} is not a checkout of this repository "
                         f"(no dfn/bench/train.py); make one with `git archive <commit> | tar -x -C DIR`")
    for checkout in (ROOT, baseline):
        if not (checkout / args.config).is_file():
            raise ValueError(f"dfn.bench ab: config {args.config} not found in {checkout}")
    if args.repeats < 1 or args.steps < 1 or args.fit < 0:
        raise ValueError(f"dfn.bench ab: need --repeats >= 1, --steps >= 1, --fit >= 0; got {args.repeats}, "
                         f"{args.steps}, {args.fit}")
    measure = measure_fit if args.fit else measure_iteration
    runs: dict[str, list[dict]] = {"this": [], "baseline": []}
    for repeat in range(args.repeats):
        order = [("this", ROOT), ("baseline", baseline)]
        for name, checkout in order if repeat % 2 == 0 else order[::-1]:
            runs[name].append(measure(checkout, args))
    result = {"what": f"fit of {args.fit} iterations" if args.fit else "training iteration",
              "config": str(args.config), "precision": args.precision or "the config's", "threads": args.threads,
              "repeats": args.repeats, "baseline": str(baseline), "runs": runs}
    for name, measured in runs.items():
        for key in ("wall", "cpu"):
            values = [v for r in measured for v in r.get(key, [])]
            if values:
                result[f"{name}_{key}_median"] = statistics.median(values)
        if args.fit:
            result[f"{name}_process_seconds_median"] = statistics.median(r["process_seconds"] for r in measured)
        result[f"{name}_load_median"] = statistics.median(r["load"] for r in measured)
    for key in ("wall", "cpu", "process_seconds"):
        suffix = f"{key}_median"
        if f"this_{suffix}" in result:
            result[f"speedup_{key}"] = result[f"baseline_{suffix}"] / result[f"this_{suffix}"]
    return result


def format_text(r: dict) -> str:
    lines = [f"dfn.bench ab: {r['what']} of {r['config']} | precision {r['precision']} | threads "
             f"{r['threads'] or 'default'} | {r['repeats']} alternating repeats | baseline {r['baseline']}"]
    labels = {"wall": "wall s/iter", "cpu": "CPU s/iter", "process_seconds": "fit process s"}
    for key, label in labels.items():
        if f"speedup_{key}" in r:
            lines.append(f"  {label:14s} this {r[f'this_{key}_median']:.4f} | baseline {r[f'baseline_{key}_median']:.4f}"
                         f" | speed-up {r[f'speedup_{key}']:.2f}x (medians)")
    lines.append(f"  1-min load (median over runs): this {r['this_load_median']:.1f}, baseline "
                 f"{r['baseline_load_median']:.1f} ({os.cpu_count()} CPUs)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    try:
        result = run(args)
    except (ValueError, RuntimeError) as e:
        raise SystemExit(str(e)) from None
    print(json.dumps(result) if args.json else format_text(result), flush=True)
    return result
