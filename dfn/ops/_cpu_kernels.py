"""The C++ CPU kernel of the fused softmax + dynamic local filtering (``softmax_local_filter_cpu.cpp``).

Built on first use with ``torch.utils.cpp_extension.load`` (flags ``-O3 -march=native -fopenmp``) into
torch's extension cache (``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``), under a name
that hashes the source, the flags, the torch version and this CPU's instruction set, so a changed source or
another machine sharing the cache builds its own copy and a cached one is reused. The build prints one line
(a few seconds: the source includes no torch headers); later processes load the cached library.

The kernel's entry points are C functions on raw pointers, called through ``ctypes``; :func:`forward` and
:func:`backward` check the tensors they hand over. :func:`unavailable_reason` says why the kernel cannot
be used (``DFN_NO_CPU_KERNEL=1`` set, no compiler, a failed build); ``dfn.ops.softmax_local_filter`` then
runs its torch code and warns once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import sys
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("softmax_local_filter_cpu.cpp")
FLAGS = ("-O3", "-march=native", "-fopenmp")
DISABLE_ENV = "DFN_NO_CPU_KERNEL"  # set to 1: never build or use the kernel
LOGITS_DTYPES = (torch.float32, torch.bfloat16)

_POINTER, _INT, _INT64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_SIZES = [_INT64] * 7 + [_INT]  # B, C, G, H, W, K, dilation, threads


def _cpu_flags() -> str:
    """The instruction-set flags of this CPU (``-march=native`` compiles for them)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build_name() -> str:
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), torch.__version__.encode(), platform.machine().encode(),
                 _cpu_flags().encode()):
        digest.update(part)
    return f"dfn_cpu_kernels_{digest.hexdigest()[:16]}"


def _short(error: BaseException) -> str:
    """One line of a build error: the compiler's first ``error`` line when there is one."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first_error = next((line for line in lines if "error" in line.lower() and line != lines[0]), None)
    return f"{type(error).__name__}: {first_error or (lines[0] if lines else '')}"[:300].rstrip(".")


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | str:
    """The loaded kernel, built first when not cached, or why there is none (one line). Once per process."""
    from torch.utils import cpp_extension

    name = _build_name()
    build_dir = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()) / name
    library = build_dir / f"{name}.so"
    try:
        if library.exists() and not (build_dir / "lock").exists():  # built before, no build running now
            lib = ctypes.CDLL(str(library))
        else:
            compiler = os.environ.get("CXX", "c++")
            if shutil.which(compiler) is None:
                return f"there is no C++ compiler ({compiler!r} not found; install g++ or set CXX)"
            if not cpp_extension.is_ninja_available():
                return "ninja, which torch.utils.cpp_extension builds with, is not installed (pip install ninja)"
            build_dir.mkdir(parents=True, exist_ok=True)
            print(f"dfn: compiling the C++ CPU kernel of softmax_local_filter (first use; cached in {build_dir})",
                  file=sys.stderr, flush=True)
            path = cpp_extension.load(name, [str(SOURCE)], extra_cflags=list(FLAGS), extra_ldflags=["-fopenmp"],
                                      build_directory=str(build_dir), is_python_module=False, verbose=False)
            lib = ctypes.CDLL(str(path or library))
    except Exception as error:  # a compiler or linker failure, a read-only cache, no OpenMP
        return f"building or loading it failed ({_short(error)}; a C++ compiler with OpenMP is needed)"
    lib.dfn_softmax_local_filter_forward.argtypes = [_POINTER, _POINTER, _INT, _POINTER] + _SIZES
    lib.dfn_softmax_local_filter_backward.argtypes = [_POINTER, _POINTER, _POINTER, _INT, _POINTER, _POINTER] + _SIZES
    lib.dfn_softmax_local_filter_forward.restype = lib.dfn_softmax_local_filter_backward.restype = None
    return lib


def unavailable_reason() -> str | None:
    """None when the kernel can run here (building it on the first call), else why not, in one line."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return f"{DISABLE_ENV}={os.environ[DISABLE_ENV]} is set"
    lib = _library()
    return lib if isinstance(lib, str) else None


def serves(x: Tensor, logits: Tensor) -> bool:
    """Whether the kernel computes for these operands: CPU, a frame computed in float32, float32 or
    bfloat16 logits (others take the torch code, by design rather than by failure)."""
    return (x.device.type == "cpu" and logits.device.type == "cpu" and logits.dtype in LOGITS_DTYPES
            and x.dtype in (torch.float32, torch.bfloat16, torch.float16))


def _check(xp: Tensor, logits: Tensor, K: int, dilation: int) -> tuple[int, ...]:
    """Shapes for the C call; raises on what would make it read or write out of bounds."""
    B, C, Hp, Wp = xp.shape
    G, H, W = logits.shape[1:4]
    p = dilation * (K // 2)
    ok = (xp.dtype == torch.float32 and xp.is_contiguous() and logits.dtype in LOGITS_DTYPES
          and logits.is_contiguous() and logits.dim() == 5 and logits.shape[0] == B and G in (1, C)
          and logits.shape[4] == K * K and K % 2 == 1 and dilation >= 1 and Hp == H + 2 * p and Wp == W + 2 * p)
    if not ok:
        raise ValueError(f"softmax_local_filter_cpu: xp must be contiguous float32 (B, C, H + 2p, W + 2p) and logits "
                         f"contiguous float32/bfloat16 (B, 1 or C, H, W, K*K), got xp {xp.dtype} {tuple(xp.shape)}, "
                         f"logits {logits.dtype} {tuple(logits.shape)}, K={K}, dilation={dilation}")
    return B, C, G, H, W, K, dilation, torch.get_num_threads()


def forward(xp: Tensor, logits: Tensor, K: int, dilation: int) -> Tensor:
    """xp (B, C, H + 2p, W + 2p) float32 the padded frame, logits (B, 1 or C, H, W, K*K) float32 or
    bfloat16 -> (B, C, H, W) float32: ``Σ_k softmax(logits)_k · window_k(xp)``."""
    sizes = _check(xp, logits, K, dilation)
    out = torch.empty(xp.shape[0], xp.shape[1], *logits.shape[2:4], dtype=torch.float32)
    _library().dfn_softmax_local_filter_forward(xp.data_ptr(), logits.data_ptr(), logits.dtype == torch.bfloat16,
                                                out.data_ptr(), *sizes)
    return out


def backward(grad_out: Tensor, xp: Tensor, logits: Tensor, K: int, dilation: int, need_x: bool,
             need_logits: bool) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of :func:`forward` from grad_out (B, C, H, W): of the padded frame (B, C, H + 2p, W + 2p)
    float32 and of the logits (their shape, dtype and layout); None where not asked for."""
    sizes = _check(xp, logits, K, dilation)
    grad_out = grad_out.to(torch.float32).contiguous()
    if grad_out.shape != (xp.shape[0], xp.shape[1], *logits.shape[2:4]):
        raise ValueError(f"softmax_local_filter_cpu: grad_out must be {(xp.shape[0], xp.shape[1], *logits.shape[2:4])}, "
                         f"got {tuple(grad_out.shape)}")
    gx = torch.empty(xp.shape, dtype=torch.float32) if need_x else None
    gl = torch.empty(logits.shape, dtype=logits.dtype) if need_logits else None
    _library().dfn_softmax_local_filter_backward(grad_out.data_ptr(), xp.data_ptr(), logits.data_ptr(),
                                                 logits.dtype == torch.bfloat16, None if gx is None else gx.data_ptr(),
                                                 None if gl is None else gl.data_ptr(), *sizes)
    return gx, gl
