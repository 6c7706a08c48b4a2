"""The fast-training switches (dfn.speed) and ``python -m dfn.bench train``, on CPU."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.precision import Precision

from conftest import ROOT, TINY
from dfn.bench.regions import FORWARD_PARTS, REGIONS, RegionTimer
from dfn.bench.train import add_arguments, count_flops, format_text, run
from dfn.generators import DFN
from dfn.module import VideoPrediction
from dfn.speed import CompileStep, compile_predictor, uncompile_predictor

QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")


def bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def conv(b: int, cin: int, cout: int, k: int, h: int, w: int) -> int:
    """FLOPs of a k x k convolution producing (b, cout, h, w): one multiply-add per weight and output pixel."""
    return 2 * b * cin * cout * k * k * h * w


def test_flop_count_matches_a_hand_count_of_a_tiny_predictor():
    """B=2, 8x8 frames, 2 -> 2 frames: 3 recurrent steps (t=0 warm-up, t=1 reads frame 1, t=2 reads its
    own prediction), 2 decodes, 2 local filterings with 3x3 filters. Backward of a conv costs its forward
    once for the weight gradient and once more when its input needs a gradient."""
    B, S, e, hid, d, f, K = 2, 8, 2, 4, 3, 5, 3
    model = VideoPrediction(DFN(kernel_size=K), frames_in=2, frames_out=2, encoder_width=e, hidden=hid,
                            decoder_width=d, features=f, image_size=S)
    h = S // 2
    encoder_rest = conv(B, e, e, 3, h, h) + conv(B, e, 2 * e, 3, h, h) + conv(B, 2 * e, 2 * e, 3, h, h) \
        + conv(B, 2 * e, hid, 3, h, h)  # stride-2 conv, two more encoder convs, mid layer (inputs need grad)
    first, recurrence = conv(B, 1, e, 3, S, S), conv(B, hid, hid, 3, h, h)
    step_fwd = first + encoder_rest + 2 * recurrence
    # On h_0 = 0 (t = 0) the first recurrence conv is not run: its output is its bias (VideoPredictor.recur).
    # Backward: weight grads everywhere; input grads except the first conv on ground-truth frames
    # (t = 0, 1) and the skipped conv.
    step_bwd = 3 * (2 * encoder_rest + 2 * recurrence + first + recurrence) + first + 2 * recurrence - recurrence
    decode = conv(B, hid, d, 3, h, h) + conv(B, d, d, 3, h, h) + 2 * conv(B, d, d, 3, S, S) \
        + conv(B, d, f, 1, S, S) + conv(B, f, K * K, 1, S, S)  # low, high, 1x1 features, DFN head
    filtering = 2 * K * K * B * S * S  # one channel
    expected_counted = 3 * step_fwd - recurrence + step_bwd + 2 * 3 * decode
    # First filtering reads a ground-truth frame (filters need grad only), the second its prediction.
    expected_by_hand = filtering * 2 + filtering * 3
    batch = torch.rand(B, 4, 1, S, S)
    flops = count_flops(model, Precision(), batch)
    assert flops["counted"] == expected_counted
    assert flops["local_filter"] == expected_by_hand
    assert flops["total"] == expected_counted + expected_by_hand
    assert all(p.grad is None for p in model.parameters())  # counting leaves no gradients behind


def test_bench_train_cli_prints_positive_figures(tmp_path):
    """The command a user types, on the quickstart config (batch 2 to stay quick)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "dfn.bench", "train", "--config", QUICKSTART, "--steps", "2",
                           "--warmup", "1", "--matmul-size", "512", "--override=--data.init_args.batch_size=2",
                           "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["device"] == "cpu" and r["batch_size"] == 2 and r["steps"] == 2 and len(r["losses"]) == 3
    assert r["seconds_per_iteration"] > 0 and r["flops_per_second"] > 0 and r["matmul_flops_per_second"] > 0
    assert r["flops_per_iteration"] == r["flops_counted"] + r["flops_local_filter"]
    assert r["flops_local_filter"] > 0  # the fast local filter is invisible to FlopCounterMode
    assert r["flops_per_second"] == pytest.approx(r["flops_per_iteration"] / r["seconds_per_iteration"])
    assert r["fraction_of_matmul_peak"] == pytest.approx(r["flops_per_second"] / r["matmul_flops_per_second"])
    assert r["weights_finite"]
    # Where an iteration goes (three more iterations with region timers), wall and CPU time.
    for what in ("wall", "cpu"):
        assert list(r["breakdown"][what]) == list(REGIONS)
        assert all(seconds >= 0 for seconds in r["breakdown"][what].values())
        assert r["breakdown"][what]["backward"] > 0 and r["breakdown"][what]["generator + filtering"] > 0
    assert 0 < r["cpu_seconds_per_iteration"]
    assert "where an iteration goes" in format_text(r)


def test_region_timer_times_the_parts_and_leaves_the_model_as_it_was():
    """A forward with region timers: each part's method was timed; afterwards the class methods are back."""
    predictor = VideoPrediction(DFN(kernel_size=3), frames_in=2, frames_out=2, encoder_width=2, hidden=4,
                                decoder_width=4, features=4, image_size=8).predictor
    frames = torch.rand(2, 2, 1, 8, 8)
    expected = predictor(frames, 2)
    with RegionTimer(predictor, torch.device("cpu")) as timer:
        with timer.region("forward"):
            torch.testing.assert_close(predictor(frames, 2), expected)
    seconds = timer.per_iteration(1)
    assert all(seconds[name] > 0 for name in FORWARD_PARTS)
    assert seconds["loss"] == seconds["backward"] == 0
    assert sum(seconds[name] for name in (*FORWARD_PARTS, "rest of forward")) == pytest.approx(timer.seconds["forward"])
    for owner, name in ((predictor, "encode"), (predictor, "recur"), (predictor.generator, "forward"),
                        (predictor.generator.filtering, "forward")):
        assert name not in vars(owner)


def test_precision_advice_only_for_emulated_bf16(monkeypatch):
    import dfn.speed as speed

    monkeypatch.setattr(speed, "native_bf16", lambda: None)
    assert "--trainer.precision=32-true" in speed.precision_advice("bf16-mixed", "cpu")
    assert speed.precision_advice("32-true", "cpu") is None
    assert speed.precision_advice("bf16-mixed", "cuda") is None
    monkeypatch.setattr(speed, "native_bf16", lambda: "AVX512-BF16")
    assert speed.precision_advice("bf16-mixed", "cpu") is None


def test_bench_train_rejects_a_missing_config(tmp_path):
    with pytest.raises(ValueError, match="config file not found"):
        run(bench_args("--config", str(tmp_path / "nope.yaml"), "--device", "cpu"))


# Relative, per step. Measured: at most 5.3e-4 (the loss averages many bfloat16 roundings of ~0.4% each).
BF16_TOLERANCE = 0.005


def test_bf16_mixed_tracks_float32_on_the_quickstart_model():
    """Five Adam steps of the quickstart model (batch 4): bf16-mixed losses within 0.5% of 32-true's, step by
    step, and every weight finite. The same seed gives both runs the same weights and batches. At the paper's
    lr 1e-3: the trajectories drift apart with the step size (at the quickstart's 2e-3, 1.7% by step 5)."""
    common = ["--config", QUICKSTART, "--device", "cpu", "--steps", "3", "--warmup", "2", "--batches", "2",
              "--matmul-size", "256", "--override=--data.init_args.batch_size=4", "--override=--model.lr=1e-3",
              "--breakdown-steps", "0"]
    fp32 = run(bench_args(*common, "--precision", "32-true"))
    bf16 = run(bench_args(*common, "--precision", "bf16-mixed"))
    assert bf16["precision"] == "bf16-mixed" and bf16["matmul_dtype"] == "bfloat16"
    assert fp32["weights_finite"] and bf16["weights_finite"]
    assert len(fp32["losses"]) == len(bf16["losses"]) == 5
    for a, b in zip(fp32["losses"], bf16["losses"]):
        assert b == pytest.approx(a, rel=BF16_TOLERANCE)
    assert fp32["losses"] != bf16["losses"]  # bf16 really was used: not bit-identical


def counting_backend(graphs: list):
    def backend(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward
    return backend


def test_compiled_methods_leave_the_state_dict_and_outputs_unchanged():
    model = VideoPrediction(DFN(kernel_size=3), frames_in=2, frames_out=2, encoder_width=2, hidden=4,
                            decoder_width=3, features=5, image_size=8)
    keys = list(model.state_dict())
    x = torch.rand(2, 2, 1, 8, 8)
    expected = model(x)
    graphs = []
    torch._dynamo.reset()
    assert compile_predictor(model.predictor, ["step", "decode", "generator"], backend=counting_backend(graphs)) \
        == ["step", "decode", "generator"]
    assert compile_predictor(model.predictor, ["step"]) == []  # already compiled: skipped
    torch.testing.assert_close(model(x), expected)
    assert len(graphs) >= 3  # the compiled callables really ran
    assert list(model.state_dict()) == keys
    uncompile_predictor(model.predictor)
    assert "encode" not in vars(model.predictor) and "recur" not in vars(model.predictor)


def test_compile_step_callback_trains_and_checkpoints_through_the_cli(tmp_path, monkeypatch):
    """`trainer.callbacks: [dfn.speed.CompileStep]` from YAML, a real fit + test: the compiled step ran,
    and last.ckpt loads into a plain (uncompiled) model with the same keys and the trained weights."""
    from dfn.cli import main

    graphs = []
    torch._dynamo.reset()
    torch._dynamo.register_backend(counting_backend(graphs), name="dfn_test_counting")
    extra = tmp_path / "compile.yaml"
    extra.write_text("trainer:\n  callbacks:\n    - class_path: dfn.speed.CompileStep\n      init_args:\n"
                     "        backend: dfn_test_counting\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    tiny = [a for a in TINY]
    tiny[tiny.index("--trainer.max_epochs") + 1] = "1"
    cli = main(args=["fit", *tiny, "--config", str(extra)])
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, CompileStep))
    assert callback.compiled == ["step", "decode", "generator"]
    assert graphs, "the compiled methods never ran"
    best = cli.trainer.checkpoint_callback.best_model_path  # after fit, the CLI tested this checkpoint
    assert best and "encode" in vars(cli.model.predictor) and "recur" in vars(cli.model.predictor)
    loaded = VideoPrediction.load_from_checkpoint(best, map_location="cpu")
    assert "encode" not in vars(loaded.predictor)
    trained = cli.model.state_dict()
    assert list(loaded.state_dict()) == list(trained)
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, trained[name].cpu(), msg=name)


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "fastest"}, "compile mode must be one of"),
    ({"targets": ["encoder"]}, "compile targets must be a non-empty subset"),
    ({"targets": []}, "compile targets must be a non-empty subset"),
    ({"targets": ["rollout", "step"]}, "use it alone"),
])
def test_compile_step_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompileStep(**kwargs)


def test_filtering_layers_accept_autocast_dtypes():
    """Under bf16-mixed the generated filters are bfloat16 and the frames float32: the layers filter in
    float32 and agree with filtering the same (bfloat16-valued) filters given as float32."""
    from dfn.layers import DynamicConvolution, DynamicLocalFiltering

    frame = torch.rand(2, 3, 8, 8)
    local = torch.randn(2, 9 + 1, 8, 8).bfloat16()
    conv = torch.randn(2, 9 + 1).bfloat16()
    # softmax off: with it, the bfloat16 softmax itself rounds differently from a float32 one.
    for layer, filters in ((DynamicLocalFiltering(3, softmax=False, dynamic_bias=True), local),
                           (DynamicConvolution(3, softmax=False, dynamic_bias=True), conv)):
        out = layer(frame, filters)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, layer(frame, filters.float()))
