"""Benchmark of one training iteration of a config: ``python -m dfn.bench train --config X [...]``.

The model and data are built exactly as ``train.py fit --config X`` builds them (the same LightningCLI,
``dfn.cli.main(run=False)``), with ``--trainer.accelerator``/``--trainer.precision`` set from the flags
and the logger off. Then, after warm-up (which includes any compilation), N iterations are timed —
forward under Lightning's precision context, loss (in float32, outside autocast), backward, Adam step —
synchronised on CUDA. The loss is the module's own (``loss(forward(inputs), targets)``, i.e.
``training_step`` without logging);
a few training batches are drawn once and cycled, so the data pipeline is not timed (``dfn.bench data``
measures it).

Printed: seconds per iteration (and on CPU the process's CPU time per iteration, the steadier figure
on a shared machine), FLOPs per iteration and the FLOP rate achieved, against the FLOP rate of a large
matrix product measured in the same run (and, on known GPUs, their nominal peak), and where an
iteration goes (``dfn.bench.regions``: encoder / recurrence / decoder / generator + filtering / rest
of the forward / loss / backward / optimizer, from ``--breakdown-steps`` more iterations with timers).
FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward (convolutions and
matrix products) plus the dynamic local filtering, which the counter does not see (its fast paths are
elementwise multiply-adds): 2·K²·C·H·W per sample and call forward, the same again backward for each
of the frame and the filters that needs a gradient. Softmax, activations and the optimizer are not
counted (negligible next to the convolutions).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dfn.bench.peaks import matmul_flops_per_second, nominal_peak
from dfn.bench.regions import RegionTimer, format_regions
from dfn.layers import DynamicLocalFiltering
from dfn.speed import (COMPILE_MODES, COMPILE_TARGETS, DEFAULT_TARGETS, compile_predictor, native_bf16,
                       precision_advice, to_channels_last)

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-true", "64-true")  # no GradScaler needed

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="a train.py config, e.g. experiments/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=20, help="timed iterations (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first (compilation happens here)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="Lightning precision (default: the config's, else 32-true)")
    parser.add_argument("--compile", choices=("none", *COMPILE_MODES), default="none", help="torch.compile mode")
    parser.add_argument("--compile-targets", default=",".join(DEFAULT_TARGETS),
                        help=f"comma-separated subset of {','.join(COMPILE_TARGETS)} (rollout: alone)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: no compiler)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last weights (dfn.speed.ChannelsLast)")
    parser.add_argument("--batches", type=int, default=2, help="distinct training batches drawn and cycled")
    parser.add_argument("--matmul-size", type=int, default=None, help="n of the n×n peak matmul (default 8192 "
                                                                      "on CUDA, 2048 on CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    parser.add_argument("--override", action="append", default=[], metavar="ARG",
                        help="extra train.py argument, e.g. --override=--data.init_args.batch_size=32 (repeatable)")
    parser.add_argument("--breakdown-steps", type=int, default=3,
                        help="iterations timed per region after the timed ones (0: no breakdown)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def build(config: Path, device: str, precision: str | None, overrides: list[str]):
    """The LightningCLI for `config` (instantiated, not run): ``cli.model``, ``cli.datamodule``, ``cli.trainer``."""
    import sys

    from dfn.cli import main as cli_main  # imports wandb and lightning: only when needed

    if not Path(config).is_file():
        raise ValueError(f"dfn.bench train: config file not found: {config}")
    args = ["--config", str(config), "--trainer.accelerator", device, "--trainer.devices", "1",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    if precision:
        args += ["--trainer.precision", precision]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when given args while sys.argv has some
    try:
        return cli_main(args=[*args, *overrides], run=False)
    finally:
        sys.argv = argv


def _optimizer(configured) -> torch.optim.Optimizer:
    """The optimizer out of whatever ``configure_optimizers`` returned (an optimizer, dict or sequence)."""
    if isinstance(configured, torch.optim.Optimizer):
        return configured
    if isinstance(configured, dict):
        return configured["optimizer"]
    if isinstance(configured, (list, tuple)) and configured:
        return _optimizer(configured[0][0] if isinstance(configured[0], (list, tuple)) else configured[0])
    raise ValueError(f"dfn.bench train: cannot find the optimizer in {type(configured).__name__}")


def model_loss(model, precision_plugin, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The module's loss on its predictions: forward under the precision's autocast, the loss outside it in
    float32 (CUDA autocast refuses ``F.binary_cross_entropy``, and bfloat16 rounds 1 - 1e-7 to 1)."""
    with precision_plugin.forward_context():
        predictions = model(inputs)
    return model.loss(predictions.float(), targets.float())


def count_flops(model, precision_plugin, batch: torch.Tensor) -> dict[str, int]:
    """FLOPs of one forward + backward of `model` on `batch` (gradients are zeroed afterwards).

    Returns ``counted`` (FlopCounterMode), ``local_filter`` (counted by hand for the DynamicLocalFiltering
    calls in whose forward the counter saw no FLOPs: forward, plus backward for each input needing a
    gradient) and ``total``.
    """
    layers = [m for m in model.modules() if isinstance(m, DynamicLocalFiltering)]
    by_hand, before = [0], [0]

    def pre_hook(module, args):
        before[0] = counter.get_total_flops()

    def hook(module, args, output):
        if counter.get_total_flops() > before[0]:
            return  # the counter saw this call (e.g. the unfold + einsum reference is a matrix product)
        frame, filters = args
        forward = 2 * module.kernel_size**2 * frame.numel()  # one multiply-add per tap and output element
        need_x = frame.requires_grad or (module.dynamic_bias and filters.requires_grad)
        by_hand[0] += forward * (1 + int(need_x) + int(filters.requires_grad))

    counter = FlopCounterMode(display=False)
    handles = [h for m in layers for h in (m.register_forward_pre_hook(pre_hook), m.register_forward_hook(hook))]
    try:
        with counter:
            inputs, targets = model.split(batch)
            model_loss(model, precision_plugin, inputs, targets).backward()
    finally:
        for h in handles:
            h.remove()
    model.zero_grad(set_to_none=True)
    counted, added = int(counter.get_total_flops()), int(by_hand[0])
    return {"counted": counted, "local_filter": added, "total": counted + added}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> dict:
    """Build, warm up, time; returns the result dict (also what ``--json`` prints)."""
    if args.steps < 1 or args.warmup < 0 or args.batches < 1 or args.breakdown_steps < 0:
        raise ValueError(f"dfn.bench train: need --steps >= 1, --warmup >= 0, --batches >= 1, --breakdown-steps "
                         f">= 0; got {args.steps}, {args.warmup}, {args.batches}, {args.breakdown_steps}")
    targets = [t.strip() for t in args.compile_targets.split(",") if t.strip()]
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError("dfn.bench train: --device cuda but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    cli = build(args.config, device_type, args.precision, args.override)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    precision = trainer.precision
    if precision not in PRECISIONS:
        raise ValueError(f"dfn.bench train: precision {precision!r} is not supported here; use one of {PRECISIONS}")
    device = trainer.strategy.root_device
    plugin = trainer.precision_plugin
    model = plugin.convert_module(model).to(device).train()
    if args.channels_last:
        to_channels_last(model)
    optimizer = _optimizer(model.configure_optimizers())

    data.setup("fit")
    loader = iter(data.train_dataloader())
    batches = [plugin.convert_input(next(loader).to(device)) for _ in range(args.batches)]
    flops = count_flops(model, plugin, batches[0])
    compiled = []
    if args.compile != "none":  # after counting: FlopCounterMode needs the eager ops
        compiled = compile_predictor(model.predictor, targets, args.compile, backend=args.compile_backend)
    cudagraphs = args.compile in ("reduce-overhead", "max-autotune") and args.compile_backend == "inductor"

    losses, times, cpu_times = [], [], []

    def iteration(i: int, timer: RegionTimer | None = None) -> None:
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        region = timer.region if timer else lambda name: nullcontext()
        batch = batches[i % len(batches)]
        inputs, targets_ = model.split(batch)
        with region("forward"), plugin.forward_context():
            predictions = model(inputs)
        with region("loss"):  # float32, outside autocast (model_loss)
            loss = model.loss(predictions.float(), targets_.float())
        with region("backward"):
            loss.backward()
        with region("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if timer is None:  # the breakdown's iterations are not part of the reported losses
            losses.append(loss.detach().float().clone())  # clone: a CUDA graph output is overwritten next replay

    _sync(device)
    start = time.perf_counter()
    for i in range(args.warmup):
        iteration(i)
    _sync(device)
    warmup_seconds = time.perf_counter() - start
    for i in range(args.warmup, args.warmup + args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        iteration(i)
        _sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    breakdown = None
    if args.breakdown_steps and not compiled:  # timers in compiled methods would break their graphs
        with RegionTimer(model.predictor, device) as timer:
            for i in range(args.warmup + args.steps, args.warmup + args.steps + args.breakdown_steps):
                iteration(i, timer)
        breakdown = {"wall": timer.per_iteration(args.breakdown_steps)}
        if device.type == "cpu":
            breakdown["cpu"] = timer.per_iteration(args.breakdown_steps, cpu=True)

    seconds = statistics.median(times)
    compute_dtype = torch.bfloat16 if precision.startswith("bf16") else (
        torch.float16 if precision.startswith("16") else torch.float64 if precision.startswith("64") else torch.float32)
    n = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    peak = matmul_flops_per_second(device, compute_dtype, n)
    nominal = nominal_peak(device, compute_dtype)
    achieved = flops["total"] / seconds
    batch_size = batches[0].shape[0]
    return {
        "config": str(args.config), "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "precision": precision, "compile": args.compile, "compile_targets": compiled,
        "channels_last": args.channels_last, "batch_size": batch_size, "parameters": model.parameter_count(),
        "steps": args.steps, "warmup": args.warmup, "warmup_seconds": warmup_seconds,
        "seconds_per_iteration": seconds, "seconds_per_iteration_mean": statistics.fmean(times),
        # CPU: seconds of CPU time (all threads) per iteration; it does not count time spent waiting for a core
        "cpu_seconds_per_iteration": statistics.median(cpu_times) if device.type == "cpu" else None,
        "breakdown": breakdown,
        "samples_per_second": batch_size / seconds,
        "flops_per_iteration": flops["total"], "flops_counted": flops["counted"],
        "flops_local_filter": flops["local_filter"], "flops_per_second": achieved,
        "matmul_size": n, "matmul_dtype": str(compute_dtype).split(".")[1], "matmul_flops_per_second": peak,
        "fraction_of_matmul_peak": achieved / peak,
        "nominal_peak": nominal[0] if nominal else None,
        "nominal_peak_flops_per_second": nominal[1] if nominal else None,
        "fraction_of_nominal_peak": achieved / nominal[1] if nominal else None,
        "losses": [float(x) for x in losses],
        "weights_finite": all(bool(torch.isfinite(p).all()) for p in model.parameters()),
        "cpu_bf16_instructions": native_bf16() if device.type == "cpu" else None,
        "precision_advice": precision_advice(precision, device.type),
        "loadavg_1min": os.getloadavg()[0],
    }


def format_text(r: dict) -> str:
    def si(x: float) -> str:
        for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
            if x >= scale:
                return f"{x / scale:.3g} {unit}"
        return f"{x:.3g} "

    lines = [
        f"dfn.bench train: {r['config']} | {r['device_name']} | precision {r['precision']} | compile "
        f"{r['compile']}{' ' + ','.join(r['compile_targets']) if r['compile_targets'] else ''} | "
        f"channels_last {'on' if r['channels_last'] else 'off'}",
        f"  parameters {r['parameters']:,} | batch {r['batch_size']} | FLOPs/iteration "
        f"{si(r['flops_per_iteration']).strip()} (FlopCounterMode {si(r['flops_counted']).strip()} + local "
        f"filtering {si(r['flops_local_filter']).strip()} counted by hand: FlopCounterMode does not see it)",
        f"  warm-up {r['warmup']} iterations: {r['warmup_seconds']:.2f} s (includes compilation)",
        f"  s/iter {r['seconds_per_iteration']:.4f} (median of {r['steps']}; mean "
        f"{r['seconds_per_iteration_mean']:.4f}) | {r['samples_per_second']:.1f} samples/s"
        + (f" | CPU time {r['cpu_seconds_per_iteration']:.4f} s/iter" if r.get("cpu_seconds_per_iteration") else ""),
        f"  achieved {si(r['flops_per_second'])}FLOP/s | {r['matmul_size']}² {r['matmul_dtype']} matmul "
        f"{si(r['matmul_flops_per_second'])}FLOP/s | {100 * r['fraction_of_matmul_peak']:.2f}% of it",
    ]
    if r["nominal_peak"]:
        lines.append(f"  nominal peak ({r['nominal_peak']}) {si(r['nominal_peak_flops_per_second'])}FLOP/s | "
                     f"{100 * r['fraction_of_nominal_peak']:.2f}% of it")
    if r.get("device") == "cpu":
        lines.append(f"  CPU bfloat16 instructions: {r.get('cpu_bf16_instructions') or 'none (bfloat16 is emulated)'}")
    if r.get("precision_advice"):
        lines.append(f"  note: {r['precision_advice']}")
    for what, seconds in (r.get("breakdown") or {}).items():
        lines.append(format_regions(seconds, what))
    lines.append(f"  loss first/last {r['losses'][0]:.4f} / {r['losses'][-1]:.4f} | weights "
                 f"{'finite' if r['weights_finite'] else 'NOT FINITE'} | 1-min load "
                 f"{r['loadavg_1min']:.1f} ({os.cpu_count()} CPUs)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    try:
        result = run(args)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    print(json.dumps(result) if args.json else format_text(result), flush=True)
    return result
