"""``python -m dfn.compare --jobs N``: configs run concurrently, the table keeps the order given."""

from __future__ import annotations

import threading
import time

import pytest

import dfn.compare as compare


def fake_summary(config, generator):
    return {"config": compare.shown_path(config), "generator": generator, "mode": "local", "parameters": 7,
            "flops_per_step": 2e6, "seconds_per_iteration": 0.5, "test/bce_per_frame": 1.0,
            "test/copy_last/bce_per_frame": 2.0}


@pytest.fixture
def configs(tmp_path):
    paths = [tmp_path / f"{name}.yaml" for name in ("slow", "fast", "third")]
    for p in paths:
        p.write_text("seed_everything: 0\n")
    return paths


def test_jobs_run_concurrently_and_keep_the_order(configs, tmp_path, monkeypatch):
    """With --jobs 2 the first two configs must be running at the same time (a 2-party barrier would time
    out if they ran one after the other); the first finishes last, yet its row stays first."""
    barrier = threading.Barrier(2, timeout=20)
    calls = []

    def run_config(config, out, max_steps, seed, group, overrides, threads=None):
        calls.append((config.stem, overrides, threads))
        if config.stem in ("slow", "fast"):
            barrier.wait()
        if config.stem == "slow":
            time.sleep(0.3)
        return fake_summary(config, config.stem)

    monkeypatch.setattr(compare, "run_config", run_config)
    out = tmp_path / "res" / "compare.md"
    compare.main([*map(str, configs), "--jobs", "2", "--max-steps", "5", "--accelerator", "cuda",
                  "--devices", "1", "--out", str(out)])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "config |" not in line]
    assert [r.split(" | ")[1] for r in rows] == ["slow", "fast", "third", "—"]
    assert all(o == ["--trainer.accelerator=cuda", "--trainer.devices=1"] for _, o, _ in calls)
    assert all(t is not None and t >= 1 for _, _, t in calls)
    assert "--jobs 2" in out.read_text().splitlines()[0]


def test_one_job_runs_sequentially_and_prints_the_same_table(configs, tmp_path, monkeypatch):
    active, peak = [0], [0]

    def run_config(config, out, max_steps, seed, group, overrides, threads=None):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        active[0] -= 1
        return fake_summary(config, config.stem)

    monkeypatch.setattr(compare, "run_config", run_config)
    out = tmp_path / "compare.md"
    compare.main([*map(str, configs), "--out", str(out)])
    assert peak[0] == 1
    header, _, columns, rule, *rows = out.read_text().splitlines()
    assert columns.startswith("| config | generator | mode | parameters | MFLOPs/step | s/iter | test bce_per_frame")
    assert rows[0] == f"| {compare.shown_path(configs[0])} | slow | local | 7 | 2.0 | 0.500 | 1 | nan | nan | nan | nan | nan |"
    assert "--jobs" not in header


def test_jobs_must_be_positive(configs):
    with pytest.raises(SystemExit):
        compare.main([str(configs[0]), "--jobs", "0"])
