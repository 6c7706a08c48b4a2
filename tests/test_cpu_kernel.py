"""The C++ CPU kernel of softmax_local_filter (dfn/ops/softmax_local_filter_cpu.cpp) against the float64
truth (torch.softmax, then local_filter_reference), the torch code it replaces, and its build and fallback."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

import dfn.ops.softmax_local_filter as module
from dfn.ops import _cpu_kernels, local_filter_reference
from dfn.ops.softmax_local_filter import softmax_local_filter


@pytest.fixture
def kernel(monkeypatch):
    """The kernel built and enabled (skips, naming why, where it cannot be built); counts its calls."""
    monkeypatch.delenv(_cpu_kernels.DISABLE_ENV, raising=False)
    reason = _cpu_kernels.unavailable_reason()
    if reason is not None:
        pytest.skip(f"the C++ kernel cannot run here: {reason}")
    calls = {"forward": 0, "backward": 0}
    for name in calls:
        original = getattr(_cpu_kernels, name)

        def counted(*args, _original=original, _name=name):
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(_cpu_kernels, name, counted)
    return calls


def _operands(B, C, K, H, W, per_channel, dtype, scale=3.0, shift=0.0, seed=0):
    """x (B, C, H, W) float32 in [0, 1]; logits in `dtype` with the K*K axis fastest in memory (an NHWC
    conv's output), (B, C, K*K, H, W) or (B, K*K, H, W)."""
    torch.manual_seed(seed)
    x = torch.rand(B, C, H, W)
    shape = (B, C, H, W, K * K) if per_channel else (B, H, W, K * K)
    logits = (scale * torch.randn(shape) + shift).to(dtype).movedim(-1, -3)
    return x.requires_grad_(), logits.requires_grad_()


def _truth(x, logits, dilation, mode, g):
    """Output and gradients of torch.softmax + local_filter_reference, in float64 from the same values."""
    x64 = x.detach().double().requires_grad_()
    l64 = logits.detach().double().requires_grad_()
    out = local_filter_reference(x64, torch.softmax(l64, dim=l64.dim() - 3), dilation, padding_mode=mode)
    return (out, *torch.autograd.grad(out, (x64, l64), g.double()))


def _close_to_truth(out, gx, gl, truth, logits_dtype):
    out64, gx64, gl64 = truth
    torch.testing.assert_close(out, out64.float())  # float32 tolerances
    torch.testing.assert_close(gx, gx64.float())
    if logits_dtype == torch.bfloat16:  # the gradient is rounded to bfloat16 once: within one bfloat16 step
        torch.testing.assert_close(gl.float(), gl64.float(), rtol=2 ** -8, atol=1e-6)
    else:
        torch.testing.assert_close(gl, gl64.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("K", [3, 5, 9])
@pytest.mark.parametrize("C,per_channel", [(1, False), (3, False), (1, True), (3, True)])
@pytest.mark.parametrize("B,H,W", [(1, 7, 11), (5, 9, 6)])
def test_kernel_matches_softmax_then_reference(kernel, B, H, W, C, per_channel, K, dilation, dtype):
    x, logits = _operands(B, C, K, H, W, per_channel, dtype, seed=K + 10 * dilation + C)
    out = softmax_local_filter(x, logits, dilation)
    g = torch.randn(out.shape)
    gx, gl = torch.autograd.grad(out, (x, logits), g)
    assert kernel == {"forward": 1, "backward": 1}  # the kernel computed it, not the torch code
    assert out.dtype == gx.dtype == torch.float32 and gl.dtype == dtype and gl.stride() == logits.stride()
    _close_to_truth(out, gx, gl, _truth(x, logits, dilation, "zeros", g), dtype)


@pytest.mark.parametrize("mode", ["replicate", "reflect"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_kernel_padding_modes(kernel, mode, per_channel):
    """Replicate/reflect: the kernel gets the padded frame and returns its gradient, which pad_frame's
    backward folds onto the border."""
    x, logits = _operands(2, 2, 5, 8, 7, per_channel, torch.float32, seed=3)
    out = softmax_local_filter(x, logits, 1, padding_mode=mode)
    g = torch.randn(out.shape)
    gx, gl = torch.autograd.grad(out, (x, logits), g)
    assert kernel["backward"] == 1
    _close_to_truth(out, gx, gl, _truth(x, logits, 1, mode, g), torch.float32)


@pytest.mark.parametrize("K,dilation", [(17, 1), (17, 2), (1, 1)])
def test_kernel_windows_wider_than_a_vector_and_k1(kernel, K, dilation):
    """K = 17: a window row takes two 16-lane vectors (the general path); K = 1: one tap per pixel."""
    x, logits = _operands(2, 2, K, 9, 20, True, torch.float32, seed=K)
    out = softmax_local_filter(x, logits, dilation)
    g = torch.randn(out.shape)
    gx, gl = torch.autograd.grad(out, (x, logits), g)
    _close_to_truth(out, gx, gl, _truth(x, logits, dilation, "zeros", g), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_large_logits(kernel, dtype):
    """Logits of hundreds: exp without subtracting each pixel's maximum would overflow (inf / inf)."""
    x, logits = _operands(2, 1, 9, 6, 9, False, dtype, scale=60.0, shift=400.0, seed=1)
    out = softmax_local_filter(x, logits)
    g = torch.randn(out.shape)
    gx, gl = torch.autograd.grad(out, (x, logits), g)
    _close_to_truth(out, gx, gl, _truth(x, logits, 1, "zeros", g), dtype)


def test_kernel_result_does_not_depend_on_the_thread_count(kernel):
    x, logits = _operands(3, 3, 5, 17, 13, False, torch.bfloat16, seed=4)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out = softmax_local_filter(x, logits)
            results.append((out, *torch.autograd.grad(out.square().sum(), (x, logits))))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)  # bitwise: the same sums in the same order


def _both_ways(monkeypatch, disable: bool, x, logits, dilation, mode):
    if disable:
        monkeypatch.setenv(_cpu_kernels.DISABLE_ENV, "1")
    else:
        monkeypatch.delenv(_cpu_kernels.DISABLE_ENV, raising=False)
    out = softmax_local_filter(x, logits, dilation, padding_mode=mode)
    return (out, *torch.autograd.grad(out.sin().sum(), (x, logits)))


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fallback_equals_kernel_and_the_env_var_forces_it(kernel, monkeypatch, dtype, mode):
    x, logits = _operands(4, 3, 9, 12, 10, False, dtype, seed=5)
    module._warn_no_kernel.cache_clear()
    fast = _both_ways(monkeypatch, False, x, logits, 1, mode)
    assert kernel == {"forward": 1, "backward": 1}
    with pytest.warns(RuntimeWarning, match=rf"not using the C\+\+ CPU kernel: {_cpu_kernels.DISABLE_ENV}=1 is set"):
        slow = _both_ways(monkeypatch, True, x, logits, 1, mode)
    assert kernel == {"forward": 1, "backward": 1}  # the env var kept it out
    for a, b in zip(fast, slow):
        assert a.dtype == b.dtype and a.stride() == b.stride()
        if a.dtype == torch.bfloat16:  # two float32 computations rounded to bfloat16: one step apart at most
            torch.testing.assert_close(a.float(), b.float(), rtol=2 ** -7, atol=1e-6)
        else:
            torch.testing.assert_close(a, b)


def test_one_warning_when_the_kernel_cannot_be_built(monkeypatch):
    """A build failure: the torch code runs (right values), and says so once, with the reason."""
    monkeypatch.delenv(_cpu_kernels.DISABLE_ENV, raising=False)
    monkeypatch.setattr(_cpu_kernels, "_library", lambda: "there is no C++ compiler ('c++' not found)")
    module._warn_no_kernel.cache_clear()
    x, logits = _operands(2, 1, 3, 5, 6, False, torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            out = softmax_local_filter(x, logits)
            out.sum().backward()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "no C++ compiler" in messages[0] and "torch code" in messages[0]
    torch.testing.assert_close(out, _truth(x, logits, 1, "zeros", torch.ones(out.shape))[0].float())


def test_float64_takes_the_torch_code_without_a_warning(kernel):
    x, logits = _operands(2, 1, 3, 5, 6, False, torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        softmax_local_filter(x.double(), logits).sum().backward()
    assert kernel == {"forward": 0, "backward": 0}


def test_first_use_compiles_once_then_loads_from_the_cache(kernel, tmp_path):
    """In a fresh extension cache the first process prints one line that it compiles; the next loads."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    script = ("import torch; from dfn.ops import _cpu_kernels as k; print(k.unavailable_reason()); "
              "x = torch.rand(1, 1, 4, 5); l = torch.randn(1, 1, 4, 5, 9); "
              "print(float(k.forward(torch.nn.functional.pad(x, (1, 1, 1, 1)), l, 3, 1).sum()))")
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines()[0] == "None"
    assert runs[0].stderr.count("compiling the C++ CPU kernel") == 1
    assert "compiling" not in runs[1].stderr
    assert len(list(tmp_path.glob("dfn_cpu_kernels_*/*.so"))) == 1
