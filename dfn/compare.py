"""Compare configs under one budget: ``python -m dfn.compare CONFIG... [--max-steps N] [--out results.md] [--jobs N]``.

Each config is trained with ``train.py fit`` (same seed, same step budget, extra overrides applied to
all), tested on its best checkpoint, and logged to wandb in one group. The table (markdown and CSV
beside it) lists generator, mode, parameters, FLOPs per step, seconds per iteration and every test
metric, with copy-last-frame as the reference row. ``--jobs N`` trains N configs at once (separate
processes sharing the machine, e.g. one large GPU that a small model does not fill; each gets
cores/N CPU threads unless OMP_NUM_THREADS is set); the table is the same, in the order given.
Note that s/iter then measures a shared machine: compare it only between runs with the same --jobs.
Each run's output is in ``<out dir>/runs/<folder>/<config>/train.log``; on a terminal a bar per running
config shows the step it reached (from its metrics.csv, every ``log_every_n_steps``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue

from dfn.progress import progress

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("bce_per_frame", "mse_per_frame", "mae_per_frame", "ssim", "ssim_openstl", "psnr")


def shown_path(config: Path) -> str:
    """A config's path as a user in the repository root types it (relative to the root when inside it)."""
    resolved = config.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(config)


def latest_step(save_dir: Path, since: float) -> int:
    """The last step a run under `save_dir` logged to its metrics.csv (files written after `since`), or 0."""
    step = 0
    for path in save_dir.glob("dfn/*/metrics.csv"):
        if path.stat().st_mtime < since:  # an earlier run of the same config
            continue
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 512))
            lines = f.read().decode(errors="replace").splitlines()
        for line in reversed(lines[1:] if len(lines) > 1 else lines):  # the first may be cut in two
            head = line.split(",", 1)[0]
            if head.isdigit():
                step = max(step, int(head) + 1)  # training rows: step s is logged after s + 1 iterations
                break
    return step


def watch_steps(proc: subprocess.Popen, save_dir: Path, since: float, max_steps: int, poll: float = 2.0
                ) -> Iterator[int]:
    """One item per training iteration (up to `max_steps`) the run in `save_dir` reports, while `proc` runs."""
    shown = 0
    while True:
        finished = proc.poll() is not None  # checked before reading: a finished run's last rows count
        step = min(max_steps, latest_step(save_dir, since))
        yield from range(shown, step)
        shown = max(shown, step)
        if finished:
            return
        try:
            proc.wait(timeout=poll)
        except subprocess.TimeoutExpired:
            pass


def run_config(config: Path, out: Path, max_steps: int, seed: int, group: str, overrides: list[str],
               threads: int | None = None, label: str = "", position: int | None = None) -> dict:
    """Train and test one config; returns its summary.json (see dfn.cli.DFNCLI.summarise).
    `threads`: OMP_NUM_THREADS for the run (when the caller has not set it), for parallel jobs. The run's
    output goes to ``<save dir>/train.log``; its progress (`label`, the step reached; `position`: the line
    of its bar) shows on a terminal."""
    save_dir = out / "runs" / config.parent.name / config.stem
    args = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config),
            "--seed_everything", str(seed), "--trainer.max_steps", str(max_steps),
            "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(save_dir),
            "--trainer.logger.init_args.group", group, *overrides]
    started, since = time.perf_counter(), time.time()
    env = dict(os.environ)
    if threads and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(threads)
    save_dir.mkdir(parents=True, exist_ok=True)
    log = save_dir / "train.log"
    with open(log, "w") as output:
        proc = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        steps = watch_steps(proc, save_dir, since, max_steps)
        try:
            for _ in progress(steps, f"{label or shown_path(config)}: training", max_steps, "step", position):
                pass
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C): do not leave the run behind
                proc.terminate()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{config} failed ({proc.returncode}); the end of {log}:\n{log.read_text()[-3000:]}")
    summaries = sorted(save_dir.glob("dfn/*/summary.json"), key=lambda p: p.stat().st_mtime)
    if not summaries:
        raise RuntimeError(f"{config}: no summary.json under {save_dir}")
    summary = json.loads(summaries[-1].read_text())
    summary["config"] = shown_path(config)
    summary["wall_seconds"] = time.perf_counter() - started
    return summary


def table_rows(summaries: list[dict]) -> tuple[list[str], list[list[str]]]:
    columns = ["config", "generator", "mode", "parameters", "MFLOPs/step", "s/iter",
               *(f"test {m}" for m in METRICS)]
    rows = []
    for s in summaries:
        rows.append([s["config"], s.get("generator", "?"), s.get("mode", "?"), f"{s.get('parameters', 0):,}",
                     f"{s.get('flops_per_step', 0) / 1e6:.1f}", f"{s.get('seconds_per_iteration') or 0:.3f}",
                     *(f"{s.get(f'test/{m}', float('nan')):.4g}" for m in METRICS)])
    if summaries:  # copy-last-frame: the same test set, so one row (from the first run) is the reference
        s = summaries[0]
        rows.append(["copy last frame", "—", "—", "0", "0", "—",
                     *(f"{s.get(f'test/copy_last/{m}', float('nan')):.4g}" for m in METRICS)])
    return columns, rows


def write_tables(summaries: list[dict], out_md: Path, header: str) -> None:
    columns, rows = table_rows(summaries)
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(lines) + "\n")
    with open(out_md.with_suffix(".csv"), "w", newline="") as f:
        csv.writer(f).writerows([columns, *rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dfn.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--max-steps", type=int, default=200, help="training iterations per config")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/compare.md"))
    parser.add_argument("--override", action="append", default=[], metavar="ARG",
                        help="extra train.py argument applied to every config, e.g. "
                             "--override=--data.init_args.test_size=512 (repeatable)")
    parser.add_argument("--accelerator", default=None, help="train.py --trainer.accelerator for every config "
                                                            "(cpu, cuda, auto; default: the configs')")
    parser.add_argument("--devices", default=None, help="train.py --trainer.devices for every config")
    parser.add_argument("--jobs", type=int, default=1, help="configs trained at once (default 1)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    for flag, value in (("accelerator", args.accelerator), ("devices", args.devices)):
        if value is not None:
            args.override += [f"--trainer.{flag}={value}"]
    missing = [str(c) for c in args.configs if not c.is_file()]
    if missing:
        parser.error(f"config file(s) not found: {', '.join(missing)}")
    group = f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = args.out.parent.resolve()
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None

    lines: Queue[int] = Queue()  # a free progress-bar line for each job running
    for line in range(args.jobs):
        lines.put(line)

    def one(numbered: tuple[int, Path]) -> dict:
        number, config = numbered
        label = f"[{number}/{len(args.configs)}] {shown_path(config)}"
        print(f"dfn.compare: {label} ({args.max_steps} steps)", flush=True)
        line = lines.get()
        try:
            return run_config(config.resolve(), out_dir, args.max_steps, args.seed, group, args.override, threads,
                              label=label, position=line if args.jobs > 1 else None)
        finally:
            lines.put(line)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # threads only wait on the subprocesses
        # in the order given, whatever order they finish in
        summaries = list(pool.map(one, enumerate(args.configs, start=1)))
    command = " ".join(["python -m dfn.compare", *map(shown_path, args.configs), f"--max-steps {args.max_steps}",
                        f"--seed {args.seed}", *(f"--override={o}" for o in args.override),
                        *([f"--jobs {args.jobs}"] if args.jobs > 1 else [])])
    write_tables(summaries, args.out, f"Budget: {args.max_steps} iterations per config, seed {args.seed}, "
                                      f"wandb group `{group}`. Command: `{command}`")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
