"""Where a training iteration goes: wall time per part of the model, for ``python -m dfn.bench train``.

`RegionTimer` wraps the `VideoPredictor` methods the rollout calls — ``encode`` (encoder and mid layer),
``recur`` (the recurrence), ``decode``, the generator's ``forward`` and its filtering layer's (and
``refine``, counted with them) — by instance attributes that time each call, and removes them on exit;
the benchmark times the forward as a whole, the loss, the backward and the optimizer step around them.
What the forward spends outside the wrapped methods (stacking windows, feeding predictions back) is
``rest of forward``. The backward is one figure: autograd runs the parts' backward interleaved.

On CUDA every region synchronises before and after, so the breakdown's iterations are slower than the
timed ones (which never synchronise inside an iteration): read its shares, not its sum. On CPU the
process's CPU time per region is kept too: on a shared machine wall time also counts the time spent
waiting for a core, CPU time does not.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from torch import nn

FORWARD_PARTS = ("encoder", "recurrence", "decoder", "generator + filtering")
REGIONS = (*FORWARD_PARTS, "rest of forward", "loss", "backward", "optimizer")


class RegionTimer:
    """Accumulates wall seconds per region; a context manager that installs the method timers.

    ``region(name)`` times a block; inside the ``forward`` region the predictor's methods are timed
    under their own names (`FORWARD_PARTS`).
    """

    def __init__(self, predictor: nn.Module, device: torch.device) -> None:
        self.device = device
        self.seconds = dict.fromkeys((*REGIONS, "forward"), 0.0)
        self.cpu_seconds = dict.fromkeys((*REGIONS, "forward"), 0.0)
        generator = predictor.generator
        self._methods = [(predictor, "encode", "encoder"), (predictor, "recur", "recurrence"),
                         (predictor, "decode", "decoder"), (generator, "forward", "generator + filtering"),
                         (generator.filtering, "forward", "generator + filtering"),
                         (predictor, "refine", "generator + filtering")]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def region(self, name: str):
        self._sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start
            self.cpu_seconds[name] += time.process_time() - cpu_start

    def _timed(self, method, name: str):
        def timed(*args, **kwargs):
            with self.region(name):
                return method(*args, **kwargs)
        return timed

    def __enter__(self) -> RegionTimer:
        for owner, attribute, name in self._methods:
            setattr(owner, attribute, self._timed(getattr(owner, attribute), name))
        return self

    def __exit__(self, *exc) -> None:
        for owner, attribute, _ in self._methods:
            vars(owner).pop(attribute, None)  # the class's method again

    def per_iteration(self, iterations: int, cpu: bool = False) -> dict[str, float]:
        """Seconds per iteration by region (`REGIONS`), wall or (``cpu``) CPU time; ``rest of forward``
        = forward − its parts."""
        source = self.cpu_seconds if cpu else self.seconds
        seconds = {name: source[name] / iterations for name in REGIONS if name != "rest of forward"}
        parts = sum(seconds[name] for name in FORWARD_PARTS)
        seconds["rest of forward"] = max(0.0, source["forward"] / iterations - parts)
        return {name: seconds[name] for name in REGIONS}


def format_regions(seconds: dict[str, float], what: str = "wall") -> str:
    """One line: each region's seconds per iteration and its share of their sum."""
    total = sum(seconds.values())
    parts = " | ".join(f"{name} {value:.3f} s {100 * value / total:.0f}%" for name, value in seconds.items())
    return f"  where an iteration goes ({what}, {total:.3f} s/iter with region timers): {parts}"
