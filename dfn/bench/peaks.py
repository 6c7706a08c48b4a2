"""Peak FLOP rates the training benchmark compares against: a large matrix product measured in the same
process, and the nominal dense peaks of known GPUs (from NVIDIA's datasheets; the measured matmul is the
figure to trust, these are for context)."""

from __future__ import annotations

import statistics
import time

import torch

# Nominal dense peaks (FLOP/s) by device name. H200 has the H100 SXM's compute.
NOMINAL_PEAKS = {
    "H100 PCIe": {"bfloat16": 756e12, "float32": 51e12, "tf32": 378e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12, "tf32": 494e12},
    "H200": {"bfloat16": 989e12, "float32": 67e12, "tf32": 494e12},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of an n×n @ n×n product (2n³ FLOPs), median of `repeats` after one warm-up."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def nominal_peak(device: torch.device, dtype: torch.dtype) -> tuple[str, float] | None:
    """(what, FLOP/s) from NOMINAL_PEAKS for this GPU, or None. float32 on tensor cores (TF32, which
    cuDNN convolutions use by default) is reported as 'tf32'."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in NOMINAL_PEAKS.items():  # "H100 PCIe" before "H100"
        if key in name:
            kind = "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else str(dtype).split(".")[1]
            return (f"{key} {kind}", peaks[kind]) if kind in peaks else None
    return None
