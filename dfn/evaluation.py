"""Validation and testing of a video predictor: what they score, and the result they return.

`Evaluation` scores the model's predictions and the copy-last-frame predictor (the last input frame
repeated) with `dfn.metrics.FrameMetrics`, per batch; at the end of a pass it returns an `EvalResult`:
the prefix the pass is logged under (``val``, ``test`` or ``test_final``), every metric of the model and
of copy-last-frame, their per-horizon curves, and for a test pass every sequence's own scores. The CLI,
the callbacks, the wandb extras and the report read that result, nothing else.

Copy-last-frame does not depend on the model: on a fixed evaluation set (every dfn data module builds
its validation and test sets once, seeded) its scores are computed on the first complete pass and
reused afterwards. A fingerprint of the set (the sums of its targets and last input frames, and its
size) is checked at every later pass, so a data module whose set changes gets an error, never stale
reference scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import repeat
from torch import nn

from dfn.metrics import NAMES, FrameMetrics

STAGES = ("val", "test")


@dataclass(frozen=True)
class EvalResult:
    """One evaluation pass, by metric name (`dfn.metrics.NAMES`). Values are Python floats.

    ``metrics`` / ``copy_last``: mean over sequences and prediction horizons (all ranks);
    ``horizon`` / ``copy_last_horizon``: the (frames_out,) curve of each; ``loss_metric``: the metric that
    ``<prefix>/loss`` repeats (`dfn.metrics.monitored_metric`); ``per_sequence``: test passes only, each
    sequence this rank scored (rank r of w holds sequences r, r + w, ...), mean over its predicted frames.
    """

    prefix: str
    loss_metric: str
    sequences: int
    metrics: dict[str, float]
    copy_last: dict[str, float]
    horizon: dict[str, list[float]]
    copy_last_horizon: dict[str, list[float]]
    per_sequence: dict[str, list[float]] = field(default_factory=dict)

    def logged(self) -> dict[str, float]:
        """The scalars as logged: ``<prefix>/<name>``, ``<prefix>/copy_last/<name>``, ``<prefix>/loss``,
        ``<prefix>/sequences``."""
        values = {f"{self.prefix}/{name}": value for name, value in self.metrics.items()}
        values.update({f"{self.prefix}/copy_last/{name}": value for name, value in self.copy_last.items()})
        values[f"{self.prefix}/loss"] = self.metrics[self.loss_metric]
        values[f"{self.prefix}/sequences"] = float(self.sequences)
        return values

    def curves(self) -> dict[str, list[float]]:
        """Per-horizon curves by logged name without the prefix: ``<name>`` and ``copy_last/<name>``."""
        return {**self.horizon, **{f"copy_last/{name}": curve for name, curve in self.copy_last_horizon.items()}}

    def summary(self) -> dict[str, float | list[float]]:
        """`logged` plus the curves as ``<prefix>/<name>/horizon``: what ``summary.json`` holds."""
        return {**self.logged(), **{f"{self.prefix}/{name}/horizon": curve for name, curve in self.curves().items()}}


class Evaluation(nn.Module):
    """The metric accumulators of validation and testing, and the copy-last-frame scores of each fixed set."""

    def __init__(self, frames_out: int, eps: float) -> None:
        super().__init__()
        self.frames_out = frames_out
        self.model = nn.ModuleDict({stage: FrameMetrics(frames_out, eps, keep_sequences=stage == "test")
                                    for stage in STAGES})
        self.copy_last = nn.ModuleDict({stage: FrameMetrics(frames_out, eps) for stage in STAGES})
        # stage -> (sums of the targets and of the last input frames (2,) on the device, sequences) of this pass
        self.fingerprint: dict[str, tuple[torch.Tensor, int]] = {}
        self.reference: dict[str, tuple[tuple[torch.Tensor, int], dict[str, torch.Tensor]]] = {}  # (fingerprint, scores)

    def update(self, stage: str, inputs: torch.Tensor, targets: torch.Tensor,
               predictions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Score one batch. inputs (B, frames_in, C, H, W), targets and predictions (B, frames_out, C, H, W).

        Returns the model's per-sequence scores of this batch for a test pass (name -> (B,) on the
        device, mean over predicted frames; no host synchronisation), {} for validation.
        """
        self.model[stage].update(predictions, targets)
        last = inputs[:, -1]  # (B, C, H, W)
        sums = torch.stack([targets.detach().double().sum(), last.detach().double().sum()])  # (2,), on the device
        before, count = self.fingerprint.get(stage, (0.0, 0))
        self.fingerprint[stage] = (sums + before, count + len(targets))
        if stage not in self.reference:
            copy_last = repeat(last, "b c h w -> b t c h w", t=self.frames_out)
            self.copy_last[stage].update(copy_last, targets)
        return self.model[stage].batch_scores

    def result(self, stage: str, prefix: str, loss_metric: str, complete: bool = True) -> EvalResult:
        """Compute (synchronised over ranks), reset, and return the pass's `EvalResult` under `prefix`.

        `complete`: the pass saw the whole set (not Lightning's sanity check), so its copy-last-frame
        scores may be kept for the next passes.
        """
        model = numbers(self.model[stage].compute())
        per_sequence = self.model[stage].sequence_scores()
        fingerprint = self.fingerprint.pop(stage, None)
        fingerprint = None if fingerprint is None else (fingerprint[0].cpu(), fingerprint[1])
        if stage in self.reference:
            kept, reference = self.reference[stage]
            if fingerprint is None or fingerprint[1] != kept[1] or not torch.equal(fingerprint[0], kept[0]):
                raise RuntimeError(f"Evaluation: the {stage} set changed between passes (its targets or inputs differ "
                                   f"from the first pass), so the copy-last-frame scores kept from that pass do not "
                                   f"apply; dfn data modules build their evaluation sets once")
        else:
            reference = numbers(self.copy_last[stage].compute())
            if complete and fingerprint is not None:
                self.reference[stage] = (fingerprint, reference)
        for metric in (self.model[stage], self.copy_last[stage]):
            metric.reset()
        rows = torch.stack([per_sequence[name] for name in NAMES]).tolist() if per_sequence else []  # (names, N)
        return EvalResult(prefix=prefix, loss_metric=loss_metric, sequences=model["sequences"],
                          metrics=model["metrics"], copy_last=reference["metrics"], horizon=model["horizon"],
                          copy_last_horizon=reference["horizon"], per_sequence=dict(zip(NAMES, rows)))


def numbers(computed: dict[str, torch.Tensor]) -> dict:
    """`FrameMetrics.compute()`'s tensors as Python numbers, in one device -> host copy:
    ``{"metrics": {name: float}, "horizon": {name: [float] * frames_out}, "sequences": int}``."""
    values = torch.stack([computed[name].double() for name in NAMES])  # (names,)
    curves = torch.stack([computed[f"{name}/horizon"].double() for name in NAMES])  # (names, frames_out)
    table = torch.cat([values[:, None], curves, computed["sequences"].double().expand(len(NAMES))[:, None]], 1).tolist()
    return {"metrics": {name: row[0] for name, row in zip(NAMES, table)},
            "horizon": {name: row[1:-1] for name, row in zip(NAMES, table)}, "sequences": int(table[0][-1])}
