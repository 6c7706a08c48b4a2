"""Summarise a scripts/gpu_check.sh output folder: ``python scripts/gpu_summary.py OUT`` -> OUT/summary.json + text."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load_json(path: Path):
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    for candidate in (text, *reversed(text.splitlines())):  # one JSON document, or JSON on the last line
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


def main(out: Path) -> None:
    stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines() if line.strip()]
    order = [s["stage"] for s in stages]
    files = sorted(out.glob("train_*.json"), key=lambda p: order.index(p.stem) if p.stem in order else len(order))
    train = {p.stem.removeprefix("train_"): load_json(p) for p in files}
    keep = ("device_name", "precision", "compile", "batch_size", "seconds_per_iteration", "warmup_seconds",
            "flops_per_iteration", "flops_per_second", "matmul_dtype", "matmul_flops_per_second",
            "fraction_of_matmul_peak", "nominal_peak", "fraction_of_nominal_peak", "weights_finite")
    train = {k: ({f: v[f] for f in keep if f in v} if isinstance(v, dict) else None) for k, v in train.items()}
    paper = load_json(out / "paper_summary.json") if (out / "paper_summary.json").exists() else None
    if paper:
        paper = {k: v for k, v in paper.items() if not k.endswith("/horizon") and not isinstance(v, (list, dict))}
    summary = {"stages": stages, "train": train, "paper": paper, "env": load_json(out / "env.json")
               if (out / "env.json").exists() else None}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("stage            rc    seconds")
    for s in stages:
        print(f"{s['stage']:<16} {str(s['rc']):<5} {s['seconds']}{'  TIMED OUT' if s.get('timed_out') else ''}"
              f"{'  ' + s['skipped'] if s.get('skipped') else ''}")
    base = (train.get("fp32") or {}).get("seconds_per_iteration")
    for name, r in train.items():
        if not r:
            print(f"train {name}: no result")
            continue
        ratio = f" | {base / r['seconds_per_iteration']:.2f}x fp32 eager" if base else ""
        nominal = (f" | {100 * r['fraction_of_nominal_peak']:.2f}% of nominal {r['nominal_peak']}"
                   if r.get("fraction_of_nominal_peak") else "")
        print(f"train {name}: {r['seconds_per_iteration'] * 1e3:.2f} ms/iter{ratio} | "
              f"{r['flops_per_second'] / 1e12:.3f} TFLOP/s | {100 * r['fraction_of_matmul_peak']:.2f}% of "
              f"{r['matmul_dtype']} matmul{nominal} | warm-up {r['warmup_seconds']:.1f} s")
    if paper:
        print(f"paper: {paper.get('global_step')} iterations, test bce_per_frame {paper.get('test/bce_per_frame')} "
              f"(copy-last {paper.get('test/copy_last/bce_per_frame')}; paper 285.2), "
              f"s/iter {paper.get('seconds_per_iteration')}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
