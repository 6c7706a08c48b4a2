"""Benchmark of the dynamic filtering operators: fast path vs reference, time and peak memory.

    python -m dfn.bench ops [--json] [--repeats N] [--quick] [--device cpu|cuda]

For each case: median forward and forward+backward times of the fast path and of its baseline
(unfold reference for local filtering, per-sample loop for dynamic convolution), measured in the
same process after warm-up; peak extra memory during forward+backward (bytes allocated beyond the
inputs — CPU: replayed from the profiler's allocation events, CUDA: max_memory_allocated); and a
memory-traffic bound — bytes the op must read and write at least, divided by the bandwidth of a
plain elementwise add measured in the same run — with how far the fast path is from it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from dfn.ops import dynamic_conv, dynamic_conv_loop, local_filter, local_filter_reference

MiB = 2**20


@dataclass(frozen=True)
class Case:
    name: str
    operator: str  # "local_filter" | "dynamic_conv"
    shape: tuple[int, int, int, int]  # x: (B, C, H, W)
    K: int
    dilation: int = 1
    per_channel: bool = False  # local_filter: (B, C, K*K, H, W) filters
    out_channels: int = 0  # dynamic_conv: O


CASES = [
    Case("moving-mnist", "local_filter", (16, 1, 64, 64), 9),
    Case("highway", "local_filter", (16, 1, 64, 64), 11),
    Case("colour-video", "local_filter", (16, 3, 128, 128), 9),
    Case("hdfnet-d1", "local_filter", (16, 32, 64, 64), 3, 1, per_channel=True),
    Case("hdfnet-d3", "local_filter", (16, 32, 64, 64), 3, 3, per_channel=True),
    Case("hdfnet-d5", "local_filter", (16, 32, 64, 64), 3, 5, per_channel=True),
    Case("dynamic-conv", "dynamic_conv", (16, 32, 64, 64), 3, out_channels=32),
]

QUICK_CASES = [
    Case("quick-shared", "local_filter", (2, 1, 16, 16), 5),
    Case("quick-per-channel", "local_filter", (2, 4, 16, 16), 3, 2, per_channel=True),
    Case("quick-dynamic-conv", "dynamic_conv", (2, 4, 16, 16), 3, out_channels=4),
]


def make_inputs(case: Case, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """Leaf tensors requiring grad: [x, filters] or [x, weight, bias]."""
    B, C, H, W = case.shape
    x = torch.rand(case.shape, device=device, dtype=dtype)
    if case.operator == "local_filter":
        fshape = (B, C, case.K**2, H, W) if case.per_channel else (B, case.K**2, H, W)
        f = torch.softmax(torch.randn(fshape, device=device, dtype=dtype), dim=-3)
        return [x.requires_grad_(), f.requires_grad_()]
    w = torch.randn(B, case.out_channels, C, case.K, case.K, device=device, dtype=dtype) * 0.1
    b = torch.randn(B, case.out_channels, device=device, dtype=dtype)
    return [x.requires_grad_(), w.requires_grad_(), b.requires_grad_()]


def implementations(case: Case) -> dict[str, Callable[..., torch.Tensor]]:
    """{"baseline": ..., "fast": ...} for the case, each f(*inputs) -> output."""
    if case.operator == "local_filter":
        return {"reference": lambda x, f: local_filter_reference(x, f, case.dilation),
                "fast": lambda x, f: local_filter(x, f, case.dilation)}
    return {"per-sample-loop": lambda x, w, b: dynamic_conv_loop(x, w, b),
            "fast": lambda x, w, b: dynamic_conv(x, w, b)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
              warmup: int = 2) -> dict[str, float]:
    """Median wall time in milliseconds of each ``fn()``, after ``warmup`` untimed calls.

    The functions are run interleaved (a, b, c, a, b, c, ...) so that load from other processes on
    a shared machine hits all of them alike and their ratios stay meaningful.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_extra_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak bytes allocated while ``fn`` runs, beyond what was allocated before it, in MiB.

    CPU has no allocator counter, so we record every allocation and free with the profiler and
    replay them in time order, tracking the running maximum.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / MiB
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak / MiB


def elementwise_pass(device: torch.device, dtype: torch.dtype, numel: int
                     ) -> tuple[Callable[[], object], int]:
    """``torch.add(a, b, out=c)`` and the bytes it moves (2 reads + 1 write per element): the
    bandwidth of a plain elementwise pass, a practical roofline for these memory-bound ops."""
    a, b, c = (torch.rand(numel, device=device, dtype=dtype) for _ in range(3))
    return (lambda: torch.add(a, b, out=c)), 3 * numel * a.element_size()


def traffic_bytes(case: Case, inputs: list[torch.Tensor], out: torch.Tensor) -> tuple[int, int]:
    """Minimum bytes moved: forward reads the inputs and writes the output; backward additionally
    reads grad_out and the inputs and writes one gradient per input."""
    inp = sum(t.numel() * t.element_size() for t in inputs)
    o = out.numel() * out.element_size()
    return inp + o, (inp + o) + (o + inp + inp)


def run_case(case: Case, device: torch.device, dtype: torch.dtype, repeats: int,
             add_numel: int) -> dict:
    """Time (interleaved medians) and memory of baseline and fast path for one case; one flat dict
    of figures and ratios (the JSON line). ``add_numel``: size of the bandwidth probe."""
    inputs = make_inputs(case, device, dtype)
    impls = implementations(case)
    with torch.no_grad():
        out = impls["fast"](*inputs)
    grad_out = torch.rand_like(out)
    result: dict = {"operator": case.operator, "case": case.name, "shape": list(case.shape),
                    "K": case.K, "dilation": case.dilation, "per_channel": case.per_channel,
                    "out_channels": case.out_channels or None, "dtype": str(dtype).split(".")[-1],
                    "device": device.type, "threads": torch.get_num_threads(),
                    "implementation": "fast", "baseline": next(k for k in impls if k != "fast")}
    runners = {}
    for label, fn in impls.items():
        def forward(fn=fn) -> None:
            with torch.no_grad():
                fn(*inputs)

        def forward_backward(fn=fn) -> None:
            for t in inputs:
                t.grad = None
            fn(*inputs).backward(grad_out)

        runners["fast" if label == "fast" else "baseline"] = (forward, forward_backward)
    # All timings first, memory afterwards: a profiler session leaves the process slower for a
    # while, which would otherwise bias whichever implementation is timed after it.
    add, add_bytes = elementwise_pass(device, dtype, add_numel)
    timed = {"add": add}
    for key, (forward, forward_backward) in runners.items():
        timed[f"{key}_fwd_ms"], timed[f"{key}_fwdbwd_ms"] = forward, forward_backward
    medians = median_ms(timed, repeats, device)
    bandwidth = add_bytes / (medians.pop("add") / 1e3)  # bytes/s
    result.update(medians)
    result["bandwidth_gbs"] = bandwidth / 1e9
    # Workspace = peak minus what any implementation must hold at the end of backward: the output
    # and one gradient per input. For shared single-channel filters the filter gradient alone is as
    # large as the unfolded input, so the total peak cannot fall below ~1/4 of the reference's.
    required = (out.numel() * out.element_size()
                + sum(t.numel() * t.element_size() for t in inputs)) / MiB
    for key, (_, forward_backward) in runners.items():
        for t in inputs:
            t.grad = None
        result[f"{key}_peak_mib"] = peak_extra_mib(forward_backward, device)
        result[f"{key}_workspace_mib"] = max(result[f"{key}_peak_mib"] - required, 0.0)
        for t in inputs:
            t.grad = None
    result["speedup_fwd"] = result["baseline_fwd_ms"] / result["fast_fwd_ms"]
    result["speedup_fwdbwd"] = result["baseline_fwdbwd_ms"] / result["fast_fwdbwd_ms"]
    result["memory_ratio"] = result["baseline_peak_mib"] / max(result["fast_peak_mib"], 1e-9)
    # Floor the denominator at 0.1 MiB so a zero-workspace fast path gives a finite ratio.
    result["workspace_ratio"] = (result["baseline_workspace_mib"]
                                 / max(result["fast_workspace_mib"], 0.1))
    fwd_bytes, fwdbwd_bytes = traffic_bytes(case, inputs, out)
    result["bound_fwd_ms"] = fwd_bytes / bandwidth * 1e3
    result["bound_fwdbwd_ms"] = fwdbwd_bytes / bandwidth * 1e3
    result["fast_vs_bound_fwd"] = result["fast_fwd_ms"] / result["bound_fwd_ms"]
    result["fast_vs_bound_fwdbwd"] = result["fast_fwdbwd_ms"] / result["bound_fwdbwd_ms"]
    return result


def format_row(r: dict) -> str:
    shape = "x".join(map(str, r["shape"])) + (f"->{r['out_channels']}" if r["out_channels"] else "")
    return (f"{r['case']:<18} {shape:<16} {r['K']:>2} {r['dilation']:>2} "
            f"{r['baseline_fwd_ms']:>8.2f} {r['fast_fwd_ms']:>7.2f} {r['speedup_fwd']:>6.1f}x "
            f"{r['baseline_fwdbwd_ms']:>8.2f} {r['fast_fwdbwd_ms']:>7.2f} {r['speedup_fwdbwd']:>6.1f}x "
            f"{r['baseline_peak_mib']:>8.1f} {r['fast_peak_mib']:>7.1f} {r['memory_ratio']:>6.1f}x "
            f"{r['baseline_workspace_mib']:>7.1f} {r['fast_workspace_mib']:>6.1f} "
            f"{r['workspace_ratio']:>6.0f}x "
            f"{r['bound_fwd_ms']:>6.2f} {r['fast_vs_bound_fwd']:>5.1f}x "
            f"{r['bound_fwdbwd_ms']:>6.2f} {r['fast_vs_bound_fwdbwd']:>5.1f}x")


HEADER = (f"{'case':<18} {'shape':<16} {'K':>2} {'d':>2} "
          f"{'base fwd':>8} {'fast':>7} {'ratio':>7} "
          f"{'base f+b':>8} {'fast':>7} {'ratio':>7} "
          f"{'base MiB':>8} {'fast':>7} {'ratio':>7} "
          f"{'base ws':>7} {'fast':>6} {'ratio':>7} "
          f"{'bnd fwd':>6} {'fast/':>6} {'bnd f+b':>6} {'fast/':>6}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per case per line")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the run (default: torch's default, all "
                             "cores); 1 gives steadier ratios on a machine shared with other jobs")
    parser.add_argument("--case", action="append", default=None, help="run only these case names")


def main(args: argparse.Namespace) -> list[dict]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = QUICK_CASES if args.quick else CASES
    if args.case:
        cases = [c for c in cases if c.name in args.case]
    repeats = args.repeats or (2 if args.quick else 15)
    add_numel = 2**18 if args.quick else 2**24
    if not args.json:
        print(f"# device={device.type} dtype={args.dtype} threads={torch.get_num_threads()}; "
              f"medians of {repeats} interleaved runs, ms; ratio = baseline/fast; MiB = peak "
              f"allocated beyond the inputs during fwd+bwd, ws = that minus output and gradients; "
              f"bnd = memory-traffic bound (ms), fast/ = fast time / bound")
        print(HEADER)
    results = []
    for case in cases:
        r = run_case(case, device, dtype, repeats, add_numel)
        # Other processes on a shared machine distort timings (many small ops suffer most when a
        # worker thread is descheduled); record the load so figures can be judged.
        r["loadavg_1min"] = os.getloadavg()[0]
        results.append(r)
        print(json.dumps(r) if args.json else format_row(r), flush=True)
    if not args.json:
        bw = ", ".join(f"{r['bandwidth_gbs']:.1f}" for r in results)
        load = ", ".join(f"{r['loadavg_1min']:.1f}" for r in results)
        print(f"# elementwise-add bandwidth per case (GB/s): {bw}")
        print(f"# 1-min load average after each case ({os.cpu_count()} CPUs): {load}")
    return results
