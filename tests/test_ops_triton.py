"""dfn.ops Triton backend against the einops reference: values and both gradients.

On CPU the kernels run under Triton's interpreter. Triton decides interpreted vs compiled when a
kernel is decorated, and ``local_filter_triton`` decorates its kernels on first use once per
TRITON_INTERPRET value, so setting the variable per test (monkeypatch) is enough whatever other
test modules imported before -- except that once torch.compile has run in a process, Triton's
interpreter fails there ("Cannot call @triton.jit'd outside of the scope of a kernel", seen in the full
suite after tests/test_bench_train.py). So the interpreter tests always run in a fresh pytest process
(`test_interpreter_tests_in_a_fresh_process` runs this file again with DFN_TRITON_INTERPRETER_CHILD=1).
The interpreter is slow: shapes are tiny. The CUDA tests (compiled kernels, larger shapes, bf16/fp16)
run only where a GPU is present.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dfn.ops import local_filter, local_filter_reference

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (Linux-only dev dependency)")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


CHILD = "DFN_TRITON_INTERPRETER_CHILD"


IN_CHILD = os.environ.get(CHILD) == "1"


@pytest.fixture
def interpret(monkeypatch):
    if not IN_CHILD:
        pytest.skip("interpreter tests run in a fresh process (test_interpreter_tests_in_a_fresh_process)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.skipif(IN_CHILD, reason="this is the fresh process")
def test_interpreter_tests_in_a_fresh_process():
    """Runs this file again in a new process, where its interpreter tests run (see the module docstring)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(Path(__file__))],
                          env={**os.environ, CHILD: "1"}, cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    # Every interpreter test must have run there: a child that skipped them all would also exit 0. The
    # only skips allowed in the child are the CUDA tests and this test itself (-rs lists each reason).
    skips = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    unexpected = [line for line in skips if "needs CUDA" not in line and "this is the fresh process" not in line]
    assert not unexpected, "interpreter tests skipped in the fresh process:\n" + "\n".join(unexpected)
    assert " passed" in done.stdout and " failed" not in done.stdout


def _compare(B, C, H, W, K, dilation, per_channel, mode, device="cpu", dtype=torch.float32,
             tol=None, seed=0):
    """Triton forward, grad x and grad filters against the float32 reference."""
    torch.manual_seed(seed)
    x = torch.rand(B, C, H, W, device=device)
    shape = (B, C, K * K, H, W) if per_channel else (B, K * K, H, W)
    f = torch.softmax(2 * torch.randn(shape, device=device), dim=-3)
    g = torch.randn(B, C, H, W, device=device)
    xt, ft = x.to(dtype).requires_grad_(), f.to(dtype).requires_grad_()
    out = local_filter(xt, ft, dilation, padding_mode=mode, backend="triton")
    assert out.shape == x.shape and out.dtype == dtype
    gx, gf = torch.autograd.grad(out, (xt, ft), g.to(dtype))
    assert gx.dtype == dtype and gf.dtype == dtype and gf.shape == f.shape
    xr, fr = x.clone().requires_grad_(), f.clone().requires_grad_()
    ref = local_filter_reference(xr, fr, dilation, padding_mode=mode)
    rx, rf = torch.autograd.grad(ref, (xr, fr), g)
    kw = {} if tol is None else dict(atol=tol, rtol=tol)
    torch.testing.assert_close(out.float(), ref, **kw)
    torch.testing.assert_close(gx.float(), rx, **kw)
    torch.testing.assert_close(gf.float(), rf, **kw)


@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize("mode", ["zeros", "replicate", "reflect"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("K,dilation,C,H,W", [(3, 1, 3, 5, 7), (5, 1, 1, 6, 5), (3, 2, 2, 7, 6)])
def test_triton_interpreted_matches_reference(K, dilation, C, H, W, per_channel, mode):
    _compare(2, C, H, W, K, dilation, per_channel, mode)


@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize("per_channel", [False, True])
def test_triton_interpreted_k1_and_many_channels(per_channel):
    # K=1 (pure per-pixel scaling); C=10 > 8 splits shared filters' channels over two tiles.
    _compare(1, 2, 4, 5, 1, 1, per_channel, "zeros")
    _compare(1, 10, 4, 6, 3, 1, per_channel, "replicate")


@pytest.mark.usefixtures("interpret")
def test_triton_interpreted_bfloat16():
    _compare(2, 3, 6, 7, 3, 1, False, "reflect", dtype=torch.bfloat16, tol=3e-2)


@pytest.mark.usefixtures("interpret")
def test_triton_interpreted_large_dilation_taps_outside():
    _compare(1, 1, 4, 6, 3, 5, True, "zeros")  # dilation 5 > H: most taps miss the frame


def test_triton_backend_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, f = torch.rand(1, 1, 4, 4), torch.rand(1, 9, 4, 4)
    with pytest.raises(ValueError, match="backend='triton' cannot run here.*TRITON_INTERPRET=1"):
        local_filter(x, f, backend="triton")
    # auto on CPU is the torch path, which needs no Triton
    torch.testing.assert_close(local_filter(x, f), local_filter_reference(x, f))


@pytest.mark.usefixtures("interpret")
def test_triton_backend_rejects_float64():
    x, f = torch.rand(1, 1, 4, 4, dtype=torch.float64), torch.rand(1, 9, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64.*backend='torch'"):
        local_filter(x, f, backend="triton")


@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize("entry", ["local_filter", "local_filter_triton"])
def test_triton_path_checks_its_inputs_once(monkeypatch, entry):
    """local_filter(backend="triton") hands its checked arguments to the kernels' wrapper, which does
    not check them again (tests/test_ops.py counts the torch paths the same way)."""
    import importlib

    from dfn.ops import _checks

    # by import_module: `dfn.ops.local_filter` as an attribute is the function, not its module
    torch_module = importlib.import_module("dfn.ops.local_filter")
    triton_module = importlib.import_module("dfn.ops.local_filter_triton")

    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return _checks.check_local_filter(*args, **kwargs)

    for module in (torch_module, triton_module):
        monkeypatch.setattr(module, "check_local_filter", counting)
    x, f = torch.rand(1, 2, 4, 5, requires_grad=True), torch.rand(1, 9, 4, 5, requires_grad=True)
    if entry == "local_filter":
        out = local_filter(x, f, padding_mode="replicate", backend="triton")
    else:
        out = triton_module.local_filter_triton(x, f, padding_mode="replicate")
    out.sum().backward()
    assert len(calls) == 1
    torch.testing.assert_close(out, local_filter_reference(x, f, padding_mode="replicate"))


# ---------------------------------------------------------------- CUDA (compiled kernels)

@CUDA
@pytest.mark.parametrize("mode", ["zeros", "replicate", "reflect"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("K,dilation,C,H,W", [(9, 1, 1, 37, 45), (3, 3, 32, 20, 17),
                                               (11, 1, 3, 64, 64), (5, 2, 10, 33, 31)])
def test_triton_cuda_matches_reference(K, dilation, C, H, W, per_channel, mode):
    _compare(2, C, H, W, K, dilation, per_channel, mode, device="cuda", tol=1e-4)


@CUDA
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_triton_cuda_half(dtype, tol, per_channel):
    _compare(2, 3, 40, 48, 9, 1, per_channel, "replicate", device="cuda", dtype=dtype, tol=tol)


@CUDA
def test_auto_backend_on_cuda_matches_torch_backend():
    torch.manual_seed(1)
    x = torch.rand(4, 3, 64, 64, device="cuda")
    f = torch.softmax(torch.randn(4, 81, 64, 64, device="cuda"), dim=1)
    torch.testing.assert_close(local_filter(x, f), local_filter(x, f, backend="torch"))
    # float64 is not a Triton dtype here: auto falls back to the torch path instead of failing.
    xd, fd = x.double(), f.double()
    torch.testing.assert_close(local_filter(xd, fd), local_filter_reference(xd, fd))
