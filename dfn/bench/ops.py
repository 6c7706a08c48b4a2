"""Benchmark of the dynamic filtering operators against what peers use, time and peak memory.

    python -m dfn.bench ops [--json] [--repeats N] [--quick] [--device auto|cpu|cuda] [--threads T]

Local filtering is compared with the two straightforward implementations peers use (docs/paper.md:
the DFN authors' im2col, HDFNet's unfold), measured in the same run:

* ``unfold`` (HDFNet style, the baseline): ``(F.unfold(x, K, d, p).view(B, C, K*K, H, W) ·
  filters).sum(2)`` — materialises K*K copies of x;
* ``im2col`` (the DFN authors'): a conv2d with a fixed one-hot (K*K, 1, K, K) kernel extracts the
  patches, then multiply and sum;

against ``fast`` (``local_filter(backend="torch")``) and, on CUDA with triton installed,
``triton`` (``backend="triton"``). Dynamic convolution: the per-sample loop vs the grouped conv.
(The einops ``*_reference`` functions define the semantics for the tests; they are no baseline.)

Per case and implementation: median forward and forward+backward times after warm-up, run
interleaved (CPU: wall clock; CUDA: CUDA events); peak memory allocated beyond the inputs during
forward+backward (CPU: replayed from the profiler's allocation events, CUDA: max_memory_allocated);
and a memory-traffic bound — bytes the op must read and write at least, divided by a bandwidth
measured in the same run (CUDA: device-to-device copy; CPU: an elementwise add).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from dfn.ops import dynamic_conv, dynamic_conv_loop, local_filter

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
    cuda_only: bool = False  # too large for a CPU run (the unfold baseline needs ~16 GB)
    repeats: int = 0  # timed runs for this case (0: the run's default)


CASES = [
    Case("moving-mnist", "local_filter", (16, 1, 64, 64), 9),
    Case("highway", "local_filter", (16, 1, 64, 64), 11),
    Case("colour-video", "local_filter", (16, 3, 128, 128), 9),
    Case("large", "local_filter", (64, 3, 256, 256), 9, cuda_only=True, repeats=5),
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


def unfold_local_filter(x: torch.Tensor, filters: torch.Tensor, dilation: int) -> torch.Tensor:
    """The HDFNet-style baseline: unfold all K*K windows, multiply, sum over the window."""
    B, C, H, W = x.shape
    kk = filters.shape[-3]
    K = int(round(kk**0.5))
    cols = F.unfold(x, K, dilation=dilation, padding=dilation * (K // 2))  # (B, C*K*K, H*W)
    f = filters if filters.dim() == 5 else filters.unsqueeze(1)  # (B, 1 or C, K*K, H, W)
    return (cols.view(B, C, kk, H, W) * f).sum(2)  # (B, C, H, W)


def im2col_local_filter(x: torch.Tensor, filters: torch.Tensor, dilation: int) -> torch.Tensor:
    """The DFN authors' way: a conv with a fixed one-hot (K*K, 1, K, K) kernel gathers each
    pixel's window into K*K channels, then multiply by the filters and sum over the window."""
    B, C, H, W = x.shape
    kk = filters.shape[-3]
    K = int(round(kk**0.5))
    eye = torch.eye(kk, dtype=x.dtype, device=x.device).view(kk, 1, K, K)  # (K*K, 1, K, K)
    cols = F.conv2d(x.reshape(B * C, 1, H, W), eye, padding=dilation * (K // 2),
                    dilation=dilation)  # (B*C, K*K, H, W)
    f = filters if filters.dim() == 5 else filters.unsqueeze(1)  # (B, 1 or C, K*K, H, W)
    return (cols.view(B, C, kk, H, W) * f).sum(2)  # (B, C, H, W)


def triton_available(device: torch.device) -> bool:
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


def implementations(case: Case, device: torch.device) -> dict[str, Callable[..., torch.Tensor]]:
    """Ordered {label: f(*inputs) -> output}; the first label is the baseline of the ratios."""
    d = case.dilation
    if case.operator == "local_filter":
        impls = {"unfold": lambda x, f: unfold_local_filter(x, f, d),
                 "im2col": lambda x, f: im2col_local_filter(x, f, d),
                 "fast": lambda x, f: local_filter(x, f, d, backend="torch")}
        if triton_available(device):
            impls["triton"] = lambda x, f: local_filter(x, f, d, backend="triton")
        return impls
    return {"loop": lambda x, w, b: dynamic_conv_loop(x, w, b),
            "fast": lambda x, w, b: dynamic_conv(x, w, b)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
              warmup: int = 2) -> dict[str, float]:
    """Median time in milliseconds of each ``fn()``, after ``warmup`` untimed calls.

    The functions are run interleaved (a, b, c, a, b, c, ...) so that load from other processes on
    a shared machine hits all of them alike and their ratios stay meaningful. CUDA: CUDA events
    around each call; CPU: wall clock.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
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


def bandwidth_probe(device: torch.device, dtype: torch.dtype, numel: int
                    ) -> tuple[Callable[[], object], int]:
    """A pass that only moves memory, and the bytes it moves: the practical roofline for these
    memory-bound ops. CUDA: a device-to-device copy (1 read + 1 write per element); CPU: an
    elementwise add (2 reads + 1 write), which multi-threads like the operators do."""
    if device.type == "cuda":
        a, c = (torch.rand(numel, device=device, dtype=dtype) for _ in range(2))
        return (lambda: c.copy_(a)), 2 * numel * a.element_size()
    a, b, c = (torch.rand(numel, device=device, dtype=dtype) for _ in range(3))
    return (lambda: torch.add(a, b, out=c)), 3 * numel * a.element_size()


def traffic_bytes(inputs: list[torch.Tensor], out: torch.Tensor) -> tuple[int, int]:
    """Minimum bytes moved: forward reads the inputs and writes the output; backward additionally
    reads grad_out and the inputs and writes one gradient per input."""
    inp = sum(t.numel() * t.element_size() for t in inputs)
    o = out.numel() * out.element_size()
    return inp + o, (inp + o) + (o + inp + inp)


def run_case(case: Case, device: torch.device, dtype: torch.dtype, repeats: int,
             probe_numel: int) -> dict:
    """Time (interleaved medians) and memory of every implementation for one case; one flat dict
    of figures and ratios (the JSON line). ``probe_numel``: size of the bandwidth probe."""
    inputs = make_inputs(case, device, dtype)
    impls = implementations(case, device)
    labels = list(impls)
    base = labels[0]
    with torch.no_grad():
        out = impls["fast"](*inputs)
    grad_out = torch.rand_like(out)
    result: dict = {"operator": case.operator, "case": case.name, "shape": list(case.shape),
                    "K": case.K, "dilation": case.dilation, "per_channel": case.per_channel,
                    "out_channels": case.out_channels or None, "dtype": str(dtype).split(".")[-1],
                    "device": device.type, "threads": torch.get_num_threads(),
                    "implementation": "fast", "baseline": base, "implementations": labels,
                    "repeats": repeats}
    runners = {}
    for label, fn in impls.items():
        def forward(fn=fn) -> None:
            with torch.no_grad():
                fn(*inputs)

        def forward_backward(fn=fn) -> None:
            for t in inputs:
                t.grad = None
            fn(*inputs).backward(grad_out)

        runners[label] = (forward, forward_backward)
    # All timings first, memory afterwards: a profiler run leaves the process slower for a
    # while, which would otherwise bias whichever implementation is timed after it.
    probe, probe_bytes = bandwidth_probe(device, dtype, probe_numel)
    timed = {"probe": probe}
    for label, (forward, forward_backward) in runners.items():
        timed[f"{label}_fwd_ms"], timed[f"{label}_fwdbwd_ms"] = forward, forward_backward
    medians = median_ms(timed, repeats, device)
    bandwidth = probe_bytes / (medians.pop("probe") / 1e3)  # bytes/s
    result.update(medians)
    result["bandwidth_gbs"] = bandwidth / 1e9
    # Workspace = peak minus what any implementation must hold at the end of backward: the output
    # and one gradient per input. For shared single-channel filters the filter gradient alone is as
    # large as the unfolded input, so the total peak cannot fall below ~1/4 of the unfold one's.
    required = (out.numel() * out.element_size()
                + sum(t.numel() * t.element_size() for t in inputs)) / MiB
    for label, (_, forward_backward) in runners.items():
        for t in inputs:
            t.grad = None
        result[f"{label}_peak_mib"] = peak_extra_mib(forward_backward, device)
        result[f"{label}_workspace_mib"] = max(result[f"{label}_peak_mib"] - required, 0.0)
        for t in inputs:
            t.grad = None
    fwd_bytes, fwdbwd_bytes = traffic_bytes(inputs, out)
    result["bound_fwd_ms"] = fwd_bytes / bandwidth * 1e3
    result["bound_fwdbwd_ms"] = fwdbwd_bytes / bandwidth * 1e3
    for label in labels:
        for phase in ("fwd", "fwdbwd"):
            t = result[f"{label}_{phase}_ms"]
            result[f"{label}_vs_bound_{phase}"] = t / result[f"bound_{phase}_ms"]
            for ref in labels[:2] if case.operator == "local_filter" else labels[:1]:
                # ``unfold/fast`` > 1: fast is that many times quicker than the peer's unfold.
                result[f"{ref}/{label}_{phase}"] = result[f"{ref}_{phase}_ms"] / t
    # The fixed names of the fast path against the baseline (kept for scripts and the smoke test).
    for phase in ("fwd", "fwdbwd"):
        result[f"baseline_{phase}_ms"] = result[f"{base}_{phase}_ms"]
        result[f"speedup_{phase}"] = result[f"{base}/fast_{phase}"]
    result["baseline_peak_mib"] = result[f"{base}_peak_mib"]
    result["memory_ratio"] = result[f"{base}_peak_mib"] / max(result["fast_peak_mib"], 1e-9)
    return result


def format_case(r: dict) -> list[str]:
    """A heading line for the case and one row per implementation."""
    shape = "x".join(map(str, r["shape"])) + (f"->{r['out_channels']}" if r["out_channels"] else "")
    filters = "per-channel" if r["per_channel"] else ("shared" if r["operator"] == "local_filter"
                                                       else "per-sample")
    refs = r["implementations"][:2] if r["operator"] == "local_filter" else r["implementations"][:1]
    lines = [f"## {r['case']}: {r['operator']} x {shape}, K={r['K']}, d={r['dilation']}, {filters} "
             f"filters; traffic bound fwd {r['bound_fwd_ms']:.3f} ms, f+b {r['bound_fwdbwd_ms']:.3f}"
             f" ms at {r['bandwidth_gbs']:.1f} GB/s"]
    for label in r["implementations"]:
        ratios = " ".join(f"{r[f'{ref}/{label}_fwd']:>7.2f}x {r[f'{ref}/{label}_fwdbwd']:>7.2f}x"
                          for ref in refs)
        lines.append(f"   {label:<7} {r[f'{label}_fwd_ms']:>9.3f} {r[f'{label}_fwdbwd_ms']:>9.3f} "
                     f"{r[f'{label}_peak_mib']:>9.1f} {r[f'{label}_workspace_mib']:>9.1f} "
                     f"{r[f'{label}_vs_bound_fwd']:>7.1f}x {r[f'{label}_vs_bound_fwdbwd']:>7.1f}x "
                     f"{ratios}")
    return lines


HEADER = (f"   {'impl':<7} {'fwd ms':>9} {'f+b ms':>9} {'peak MiB':>9} {'ws MiB':>9} "
          f"{'fwd/bnd':>8} {'f+b/bnd':>8} {'b1/x fwd':>8} {'f+b':>8} {'b2/x fwd':>8} {'f+b':>8}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per case per line")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (smoke test)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: cuda when available")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the run (default: torch's default, all "
                             "cores); 1 gives steadier ratios on a machine shared with other jobs")
    parser.add_argument("--case", action="append", default=None, help="run only these case names")


def main(args: argparse.Namespace) -> list[dict]:
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("dfn.bench ops: --device cuda but torch.cuda.is_available() is False")
    device, dtype = torch.device(name), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = QUICK_CASES if args.quick else CASES
    cases = [c for c in cases if device.type == "cuda" or not c.cuda_only]
    if args.case:
        cases = [c for c in cases if c.name in args.case]
    default_repeats = 2 if args.quick else 15
    probe_numel = 2**18 if args.quick else (2**26 if device.type == "cuda" else 2**24)
    if not args.json:
        gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
        print(f"# device={device.type}{gpu} dtype={args.dtype} threads={torch.get_num_threads()}; "
              f"medians of interleaved runs (ms); peak MiB = allocated beyond the inputs during "
              f"fwd+bwd, ws = that minus output and gradients; x/bnd = time / memory-traffic "
              f"bound; bN/x = baseline N's time / x's time (local_filter: b1 = unfold, "
              f"b2 = im2col; dynamic_conv: b1 = per-sample loop)")
        print(HEADER)
    results = []
    for case in cases:
        r = run_case(case, device, dtype, args.repeats or case.repeats or default_repeats,
                     probe_numel)
        # Other processes on a shared machine distort timings (many small ops suffer most when a
        # worker thread is descheduled); record the load so figures can be judged.
        r["loadavg_1min"] = os.getloadavg()[0]
        results.append(r)
        print(json.dumps(r) if args.json else "\n".join(format_case(r)), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not args.json:
        load = ", ".join(f"{r['loadavg_1min']:.1f}" for r in results)
        print(f"# 1-min load average after each case ({os.cpu_count()} CPUs): {load}")
    return results
