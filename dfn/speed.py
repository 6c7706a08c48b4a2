"""Switches for a faster training step, as Lightning callbacks configured in YAML (docs/gpu.md).

All are off unless a config (or the command line) adds them, e.g.::

    trainer:
      precision: bf16-mixed          # Lightning's autocast; checked against float32 in tests/test_bench_train.py
      callbacks:
        - class_path: dfn.speed.CompileStep
          init_args: {mode: reduce-overhead}

* `CompileStep` wraps the per-step pieces of the rollout (`VideoPredictor.encode` and `.recur`, `.decode`,
  the generator's `forward`) with ``torch.compile``. The rollout is a Python loop of 19 steps with weights
  shared over time, so one step is the natural unit: it is compiled once and replayed 19 times.
  Bound methods are replaced by instance attributes, never the modules themselves, so the state dict,
  checkpoints and ``load_from_checkpoint`` are unchanged (tests/test_bench_train.py checks it).
* `ChannelsLast` converts the weights to ``torch.channels_last``; convolutions then run NHWC. (On CPU the
  predictor keeps its activations NHWC anyway: `dfn.predictor.activation_format`.)
* `PrecisionAdvice` warns when a run asks for bfloat16 on a CPU that has no bfloat16 instructions
  (`native_bf16`), where it is emulated and slower than float32 (docs/speed.md).

``python -m dfn.bench train`` measures both (``--compile``, ``--channels-last``) with the same functions.
"""

from __future__ import annotations

import warnings
from typing import Literal

import lightning as L
import torch
from torch import nn

from dfn.predictor import VideoPredictor

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
CompileTarget = Literal["step", "decode", "generator", "rollout"]
COMPILE_MODES: tuple[str, ...] = CompileMode.__args__
COMPILE_TARGETS: tuple[str, ...] = CompileTarget.__args__
DEFAULT_TARGETS: tuple[str, ...] = ("step", "decode", "generator")


def _method_owners(predictor: VideoPredictor) -> dict[str, list[tuple[nn.Module, str]]]:
    """Where each compile target lives: (module, method name) pairs. ``step`` is the encoder + mid layer
    (``encode``: one batched call over the ground-truth steps, then one per later step) and the
    recurrence (``recur``); ``rollout`` is the whole 19-step forward (one big graph, the loop unrolled);
    the others are the per-step pieces it calls."""
    return {"step": [(predictor, "encode"), (predictor, "recur")], "decode": [(predictor, "decode")],
            "generator": [(predictor.generator, "forward")], "rollout": [(predictor, "forward")]}


def compile_predictor(predictor: VideoPredictor, targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS,
                      mode: str = "default", dynamic: bool = False, fullgraph: bool = False,
                      backend: str = "inductor") -> list[str]:
    """Compile the named methods of `predictor` in place; returns the targets compiled (already compiled
    ones are skipped, so calling twice is harmless).

    Each method is replaced by an instance attribute holding ``torch.compile(bound_method)``: the
    parameters, buffers and module tree (hence ``state_dict`` keys) stay exactly as they were.
    `uncompile_predictor` removes the attributes again.
    """
    check_compile_args(targets, mode, backend)
    owners = _method_owners(predictor)
    done = []
    options = {} if backend != "inductor" else {"mode": mode}
    for target in targets:
        methods = [(module, name) for module, name in owners[target] if name not in vars(module)]
        for module, name in methods:  # an instance attribute shadows the class method: compiled already
            setattr(module, name, torch.compile(getattr(module, name), dynamic=dynamic, fullgraph=fullgraph,
                                                backend=backend, **options))
        if methods:
            done.append(target)
    return done


def uncompile_predictor(predictor: VideoPredictor) -> None:
    """Undo `compile_predictor`: the class methods are used again."""
    for methods in _method_owners(predictor).values():
        for module, name in methods:
            vars(module).pop(name, None)


def check_compile_args(targets, mode: str, backend) -> None:
    """ValueError naming the bad value and the allowed ones."""
    bad = [t for t in targets if t not in COMPILE_TARGETS]
    if bad or not targets:
        raise ValueError(f"compile targets must be a non-empty subset of {COMPILE_TARGETS}; got {list(targets)}")
    if "rollout" in targets and len(targets) > 1:
        raise ValueError("compile target 'rollout' already contains step, decode and generator; use it alone")
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}; got {mode!r}")
    if not (callable(backend) or isinstance(backend, str) and backend):
        raise ValueError(f"compile backend must be a torch.compile backend (a name or a callable); got {backend!r}")


def uses_cudagraphs(mode: str, backend: str = "inductor") -> bool:
    """Whether torch.compile records CUDA graphs for this mode (then each iteration must be marked)."""
    return backend == "inductor" and mode in ("reduce-overhead", "max-autotune")


class CompileStep(L.Callback):
    """``torch.compile`` the recurrent step of the model being trained (see the module docstring).

    Args:
        targets: which methods to compile: ``step`` (``encode``: encoder + mid layer, and ``recur``: the
            recurrence), ``decode``, ``generator``
            (the filter generator's forward; the filtering op itself is not compiled), or ``rollout``
            alone (the whole unrolled forward, filtering included).
        mode: torch.compile's mode. ``reduce-overhead`` adds CUDA graphs (CUDA only; they pay when the
            kernels are small, i.e. launch-bound, as the recurrent step at batch 16 is).
        dynamic: False compiles one graph per input shape (training has one; eval shapes add a few).
        fullgraph: error out on graph breaks instead of falling back to eager for that part.
        backend: torch.compile's backend; ``eager``/``aot_eager`` check the plumbing without a compiler.
    """

    def __init__(self, targets: list[CompileTarget] = list(DEFAULT_TARGETS),  # noqa: B006 (jsonargparse default)
                 mode: CompileMode = "default", dynamic: bool = False, fullgraph: bool = False,
                 backend: str = "inductor") -> None:
        check_compile_args(targets, mode, backend)
        self.targets, self.mode, self.dynamic = list(targets), mode, dynamic
        self.fullgraph, self.backend = fullgraph, backend
        self.compiled: list[str] = []

    def _compile(self, pl_module: L.LightningModule) -> None:
        predictor = getattr(pl_module, "predictor", None)
        if not isinstance(predictor, VideoPredictor):
            raise ValueError(f"CompileStep: the LightningModule must have a VideoPredictor `.predictor`; "
                             f"got {type(predictor).__name__}")
        self.compiled += compile_predictor(predictor, self.targets, self.mode, self.dynamic, self.fullgraph,
                                           self.backend)

    # Not in `setup`: the CLI counts FLOPs there (FlopCounterMode), and with torch 2.13 a compiled function
    # whose first call runs under a dispatch mode is skipped by dynamo for good, i.e. silently eager.
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._compile(pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._compile(pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._compile(pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._compile(pl_module)

    def _mark_step(self) -> None:
        if uses_cudagraphs(self.mode, self.backend):
            # CUDA graph trees: a new iteration may overwrite the previous one's graph outputs.
            torch.compiler.cudagraph_mark_step_begin()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._mark_step()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._mark_step()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._mark_step()

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._mark_step()


def to_channels_last(module: nn.Module) -> nn.Module:
    """4-D weights to ``torch.channels_last`` in place. A conv whose weight is channels_last runs NHWC
    and returns NHWC, so the activations follow without converting the inputs."""
    return module.to(memory_format=torch.channels_last)


class ChannelsLast(L.Callback):
    """Train with channels_last (NHWC) weights and activations. Measure before use:
    ``python -m dfn.bench train --config X --channels-last`` (NOTES_gpu.md has the figures)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        to_channels_last(pl_module)


def native_bf16() -> str | None:
    """The CPU's bfloat16 instructions PyTorch can use ("AMX" or "AVX512-BF16"), or None: without them
    bfloat16 arithmetic is emulated and slower than float32 (docs/speed.md)."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return None


def precision_advice(precision: str, device_type: str) -> str | None:
    """A one-line warning for bfloat16 on a CPU without bfloat16 instructions, else None."""
    if device_type != "cpu" or not str(precision).startswith("bf16") or native_bf16() is not None:
        return None
    return (f"precision {precision} on a CPU without bfloat16 instructions (no AVX512-BF16 or AMX): bfloat16 is "
            f"emulated here and slower than float32; add --trainer.precision=32-true (docs/speed.md)")


class PrecisionAdvice(L.Callback):
    """Warn at the start of a run whose bfloat16 precision this CPU would emulate (`precision_advice`).

    The quickstart asks for ``bf16-mixed`` because on the CPUs it was measured on (AVX512-BF16) an
    iteration is faster in it; the precision stays what the config or command line says."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        advice = precision_advice(trainer.precision, trainer.strategy.root_device.type)
        if advice and trainer.is_global_zero:
            warnings.warn(advice, stacklevel=1)
