"""Shipped models (dfn.pretrained): export, load, the SHA-256 check, ``--ckpt_path pretrained:<name>`` and
fine-tuning with ``--model.init_from``, through the real CLI, on a model trained here for one step."""

from __future__ import annotations

import hashlib
import json
import shutil
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from conftest import ROOT
from dfn import pretrained
from dfn.callbacks import run_dir
from dfn.checkpoint_files import CheckpointError
from dfn.cli import main
from dfn.module import VideoPrediction

# The quickstart config, shrunk to seconds: 32x32 canvas, 3 -> 2 frames, a narrow network, fp32.
DATA = ["--data.init_args.batch_size", "4", "--data.init_args.val_size", "4", "--data.init_args.test_size", "8",
        "--data.init_args.predict_size", "4", "--data.init_args.train_batches_per_epoch", "2"]
BASE = ["--config", str(ROOT / "experiments" / "quickstart.yaml"), "--trainer.enable_progress_bar", "false",
        "--trainer.precision", "32-true", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.logger.init_args.save_dir", "runs", *DATA]
NARROW = ["--model.encoder_width", "4", "--model.hidden", "8", "--model.decoder_width", "8", "--model.features", "8",
          "--model.generator.init_args.kernel_size", "5", "--data.init_args.image_size", "32",
          "--data.init_args.frames_in", "3", "--data.init_args.frames_out", "2"]
INPUTS = torch.rand(2, 3, 1, 32, 32, generator=torch.Generator().manual_seed(0))  # (B, frames_in, C, H, W)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Networks this narrow run fastest on one thread (and a busy machine's other threads stay free)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FirstBatch(L.Callback):
    """Test-only: what the model and optimiser hold when each fit starts training (before its first batch,
    after any checkpoint was restored)."""

    seen: list[dict] = []

    def on_train_start(self, trainer, pl_module):
        FirstBatch.seen.append({"step": trainer.global_step,
                                "weights": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                                "optimiser_state": len(trainer.optimizers[0].state)})


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """One training step of the narrow quickstart network (a real run: config.yaml, summary.json,
    last.ckpt), exported as ``tiny`` (fp32, the run's own test metrics) and ``tiny_bf16`` (bf16, the
    metrics of a given file). Returns the folder, the run directory, its summary, and its last.ckpt's
    weights and predictions for INPUTS (by Lightning's own loader)."""
    cwd = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setenv("WANDB_MODE", "offline")
        cli = main(["fit", *BASE, *NARROW, "--trainer.max_steps", "1"])
        run = run_dir(cli.trainer)
    (cwd / "scores.json").write_text(json.dumps({"test/bce_per_frame": 123.5, "test/horizon": [1.0, 2.0]}))
    folder = cwd / "shipped"
    for name, extra in (("tiny", []), ("tiny_bf16", ["--dtype", "bf16", "--metrics", str(cwd / "scores.json")])):
        pretrained.main(["export", str(run), "--name", name, "--command", "python train.py fit", "--data",
                         "Moving MNIST, embedded digits", "--machine", "2-core AMD EPYC", "--wall_time", "2 s",
                         "--dir", str(folder), *extra])
    model = VideoPrediction.load_from_checkpoint(run / "checkpoints" / "last.ckpt").eval()  # Lightning's own loader
    with torch.no_grad():
        predictions = model(INPUTS)
    summary = json.loads((run / "summary.json").read_text())
    return SimpleNamespace(folder=folder, predictions=predictions, summary=summary, run=run,
                           weights={k: v.clone() for k, v in model.state_dict().items()})


def test_export_then_load_gives_identical_predictions(shipped):
    folder, predictions, weights, summary = shipped.folder, shipped.predictions, shipped.weights, shipped.summary
    model = pretrained.load("tiny", folder)
    assert isinstance(model, VideoPrediction) and not model.training
    with torch.no_grad():
        assert torch.equal(model(INPUTS), predictions)
    info = json.loads((folder / "tiny.json").read_text())
    assert info["sha256"] == hashlib.sha256((folder / "tiny.pt").read_bytes()).hexdigest()
    assert info["iterations"] == 1 and info["command"] == "python train.py fit"
    assert info["metrics"]["test/bce_per_frame"] == summary["test/bce_per_frame"]  # the run's summary.json
    assert "encoder_width: 4" in info["resolved_config"]  # the run's config.yaml, embedded
    bf16 = json.loads((folder / "tiny_bf16.json").read_text())
    assert bf16["metrics"] == {"test/bce_per_frame": 123.5}  # a given file; numbers only, the curve left out
    assert "pretrained:tiny" in (folder / "tiny.md").read_text()
    saved = torch.load(folder / "tiny.pt", weights_only=True)
    assert "optimizer_states" not in saved and saved["state_dict"].keys() == weights.keys()
    # bf16: every tensor is the fp32 one rounded to bf16, in half the bytes
    half = pretrained.load("tiny_bf16", folder)
    for key, value in half.state_dict().items():
        assert torch.equal(value, weights[key].to(torch.bfloat16).float()), key
    assert (folder / "tiny_bf16.pt").stat().st_size < 0.7 * (folder / "tiny.pt").stat().st_size


def test_a_changed_file_is_refused(shipped, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "shipped"
    shutil.copytree(shipped.folder, folder)
    blob = bytearray((folder / "tiny.pt").read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one bit of one byte
    (folder / "tiny.pt").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"pretrained:tiny: refusing .*tiny\.pt: its SHA-256 is [0-9a-f]{64} "
                                              r"but its card .*tiny\.json says [0-9a-f]{64}"):
        pretrained.load("tiny", folder)
    monkeypatch.setenv(pretrained.FOLDER_VARIABLE, str(folder))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:  # the CLI: one line, before any testing
        main(["test", *BASE, "--ckpt_path", "pretrained:tiny"])
    assert stop.value.code == 2 and "refusing" in capsys.readouterr().err.splitlines()[-1]
    assert pretrained.load("tiny_bf16", folder) is not None  # the untouched one still loads


def test_a_missing_name_lists_the_shipped_ones(shipped, tmp_path):
    with pytest.raises(CheckpointError, match=r"pretrained:natural: no shipped model of that name in .*; "
                                              r"shipped: tiny, tiny_bf16$"):
        pretrained.load("natural", shipped.folder)
    with pytest.raises(CheckpointError, match="shipped: none$"):
        pretrained.load("tiny", tmp_path)
    assert pretrained.names(shipped.folder) == ["tiny", "tiny_bf16"]


def test_cli_test_and_predict_use_the_shipped_model(shipped, tmp_path, monkeypatch):
    """``test``/``predict --ckpt_path pretrained:tiny`` with the quickstart config's own (wider) network and
    other data (48x48, 4 -> 3 frames): the network is the checkpoint's, as Lightning reads it, and the
    scores and predictions are the shipped model's, recomputed here."""
    folder = shipped.folder
    monkeypatch.setenv(pretrained.FOLDER_VARIABLE, str(folder))
    monkeypatch.chdir(tmp_path)
    other_data = ["--data.init_args.image_size", "48", "--data.init_args.frames_in", "4",
                  "--data.init_args.frames_out", "3"]
    cli = main(["test", *BASE, *other_data, "--ckpt_path", "pretrained:tiny"])
    assert cli.model.hparams.encoder_width == 4 and cli.model.hparams.generator["init_args"]["kernel_size"] == 5
    summary = json.loads((run_dir(cli.trainer) / "summary.json").read_text())
    model = pretrained.load("tiny", folder)
    clips = torch.stack([cli.datamodule.test_set[i] for i in range(len(cli.datamodule.test_set))])  # (8, 7, 1, 48, 48)
    with torch.no_grad():
        p = model(clips[:, :4], frames_out=3).clamp(1e-7, 1 - 1e-7).double().numpy()
    t = clips[:, 4:].double().numpy()
    bce = np.mean(np.sum(-(t * np.log(p) + (1 - t) * np.log(1 - p)), axis=(2, 3, 4)))  # per frame, as the paper
    assert summary["test/bce_per_frame"] == pytest.approx(bce, rel=1e-5)

    cli = main(["predict", *BASE, *other_data, "--ckpt_path", "pretrained:tiny"])
    written = np.load(run_dir(cli.trainer) / "predictions" / "batch0000_rank0.npy")  # (4, 3, 1, 48, 48)
    batch = next(iter(cli.datamodule.predict_dataloader()))
    with torch.no_grad():
        expected = model(batch[:, :4], frames_out=3).numpy()
    np.testing.assert_allclose(written, expected, rtol=0, atol=1e-6)


def test_fine_tuning_starts_from_the_shipped_weights_and_a_resume_keeps_its_own(shipped, tmp_path, monkeypatch):
    folder, weights = shipped.folder, shipped.weights
    monkeypatch.setenv(pretrained.FOLDER_VARIABLE, str(folder))
    monkeypatch.chdir(tmp_path)
    FirstBatch.seen = []
    recorder = ["--trainer.callbacks+", json.dumps({"class_path": "test_pretrained.FirstBatch"})]
    cli = main(["fit", *BASE, *NARROW, *recorder, "--trainer.max_epochs", "1", "--model.init_from", "pretrained:tiny"])
    first = FirstBatch.seen[0]
    assert first["step"] == 0 and first["optimiser_state"] == 0  # a new run: fresh Adam, step 0
    for key, value in weights.items():
        assert torch.equal(first["weights"][key], value), key  # ... from the shipped weights exactly
    run = run_dir(cli.trainer)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2 and not torch.equal(last["state_dict"]["predictor.mid.weight"],
                                                        weights["predictor.mid.weight"])  # it trained

    main(["fit", "--config", str(run / "config.yaml"), "--ckpt_path", str(run), "--trainer.max_epochs", "2"])
    resumed = FirstBatch.seen[-1]
    assert resumed["step"] == 2 and resumed["optimiser_state"] > 0  # the run's own Adam state ...
    for key, value in last["state_dict"].items():
        assert torch.equal(resumed["weights"][key], value), key  # ... and weights, not the shipped ones again
    monkeypatch.setenv(pretrained.FOLDER_VARIABLE, str(tmp_path / "nothing"))  # the init weights gone:
    VideoPrediction.load_from_checkpoint(run / "checkpoints" / "last.ckpt")  # a fine-tuned model still loads


def test_mismatched_or_resumed_shipped_weights_are_refused_clearly(shipped, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(pretrained.FOLDER_VARIABLE, str(shipped.folder))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:  # the quickstart's own widths (8 encoder channels, not 4), from a run dir
        main(["fit", *BASE, "--trainer.fast_dev_run", "1", "--model.init_from", str(shipped.run)])
    message = capsys.readouterr().err.splitlines()[-1]
    assert stop.value.code == 2 and message.startswith(
        f"dfn: model.init_from {shipped.run}: tensor predictor.encoder.0.weight is (4, 1, 3, 3) in the checkpoint "
        "but (8, 1, 3, 3) in this model; hyperparameters that differ: generator.init_args.kernel_size 5 there, 9 here"), message
    with pytest.raises(SystemExit) as stop:  # weights only: nothing to resume, say how to fine-tune
        main(["fit", *BASE, *NARROW, "--ckpt_path", "pretrained:tiny"])
    assert stop.value.code == 2 and "--model.init_from pretrained:tiny" in capsys.readouterr().err.splitlines()[-1]
    with pytest.raises(SystemExit) as stop:  # checked at construction
        main([*BASE, *NARROW, "--model.init_from", " "], run=False)
    assert stop.value.code == 2 and ("init_from must be a checkpoint file, a run directory or pretrained:<name>"
                                     in capsys.readouterr().err.splitlines()[-1])
