"""``python -m dfn.compare --jobs N``: configs run concurrently, the table keeps the order given."""

from __future__ import annotations

import os
import subprocess
import sys
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
    calls, positions, labels = [], {}, {}

    def run_config(config, out, max_steps, seed, group, overrides, threads=None, label="", position=None):
        calls.append((config.stem, overrides, threads))
        positions[config.stem], labels[config.stem] = position, label
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
    # the two running at once draw their progress bars on two different lines, 0 and 1
    assert {positions["slow"], positions["fast"]} == {0, 1} and positions["third"] in (0, 1)
    # each bar names its config and where it stands in the list
    assert labels == {c.stem: f"[{i}/3] {compare.shown_path(c)}" for i, c in enumerate(configs, start=1)}
    assert "--jobs 2" in out.read_text().splitlines()[0]


def test_one_job_runs_sequentially_and_prints_the_same_table(configs, tmp_path, monkeypatch):
    active, peak = [0], [0]

    def run_config(config, out, max_steps, seed, group, overrides, threads=None, label="", position=None):
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


def test_latest_step_reads_this_runs_metrics_csv(tmp_path):
    """Training rows of step s are logged after s + 1 iterations; rows without a step (-1) and files of an
    earlier run of the same config (older than the run's start) do not count."""
    old = tmp_path / "dfn" / "old" / "metrics.csv"
    old.parent.mkdir(parents=True)
    old.write_text("step,metric,value\n99,train/loss,1.0\n")
    since = old.stat().st_mtime + 1
    os.utime(old, (since - 10, since - 10))
    assert compare.latest_step(tmp_path, since) == 0
    new = tmp_path / "dfn" / "new" / "metrics.csv"
    new.parent.mkdir()
    new.write_text("step,metric,value\n1,train/loss,0.5\n3,train/loss,0.4\n-1,epoch,0\n")
    os.utime(new, (since + 1, since + 1))
    assert compare.latest_step(tmp_path, since) == 4


def test_watch_steps_follows_a_running_process(tmp_path):
    """A child that logs steps 0, 2 and 4 (and then 9, beyond the budget) while it runs: one item per
    iteration reached, capped at max_steps, and the watch ends with the process."""
    csv_path = tmp_path / "dfn" / "run" / "metrics.csv"
    csv_path.parent.mkdir(parents=True)
    script = ("import sys, time\n"
              f"path = {str(csv_path)!r}\n"
              "open(path, 'w').write('step,metric,value\\n')\n"
              "for step in (0, 2, 4, 9):\n"
              "    time.sleep(0.3)\n"
              "    open(path, 'a').write(f'{step},train/loss,1.0\\n')\n")
    since = time.time() - 1
    proc = subprocess.Popen([sys.executable, "-c", script])
    seen = list(compare.watch_steps(proc, tmp_path, since, max_steps=7, poll=0.05))
    assert proc.returncode == 0
    assert len(seen) == 7 and seen == list(range(7))
