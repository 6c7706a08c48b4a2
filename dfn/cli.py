"""The command line: LightningCLI in subclass mode, so YAML picks the generator and the data module.

``python train.py fit --config experiments/moving_mnist/dfn.yaml`` trains, then tests the best checkpoint
(by ``val/loss``) on the test set and prints a one-line summary. ``predict --ckpt_path ...`` writes GIFs
and ``.npy`` predictions. Every run logs to wandb: as the user chose (``WANDB_MODE``, ``WANDB_DISABLED``,
``wandb offline``), else online when the server accepts the configured key, else offline, never
prompting. ``fit --ckpt_path <run dir>`` continues that run (same directory, wandb id, data position;
see ``dfn/checkpointing.py``).
"""

from __future__ import annotations

import base64
import json
import netrc
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import lightning as L
import torch
import wandb
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from torch.utils.flop_counter import FlopCounterMode

from dfn.callbacks import FilterFlowGIFs, HorizonTables, PredictionFiles, PredictionGIFs, run_dir, write_json
from dfn.checkpoint_files import CheckpointError, resolve_checkpoint, run_of_checkpoint
from dfn.checkpointing import NonFiniteLoss, RunGuard, RunInterrupted
from dfn.history import MetricsCSV
from dfn.module import VideoPrediction
from dfn.report import write_report
from dfn.wandb_extras import ModelArtifacts, SequenceTable, WandbMetrics


def _user_wandb_mode() -> str | None:
    """The mode a user chose outside this program: ``WANDB_MODE``, ``WANDB_DISABLED`` (which wandb itself
    no longer reads), or ``wandb offline/online/disabled`` (wandb's workspace and global settings files)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes", "on"):
        return "disabled"
    try:
        return wandb.Settings().read_system_settings().all().get("mode") or None
    except Exception:  # an unreadable settings file is wandb's to report, not ours
        return None


def _api_key(host: str) -> str | None:
    """``WANDB_API_KEY``, else the key `wandb login` stored in ~/.netrc (or ``$NETRC``) for `host`."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def _key_verdict(base_url: str, key: str, timeout: float) -> str | None:
    """None when the server accepts `key`, else why not (one short phrase). One bounded request."""
    request = urllib.request.Request(
        base_url.rstrip("/") + "/graphql", data=json.dumps({"query": "query { viewer { id } }"}).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return f"the server rejected the API key (HTTP {err.code})" if err.code in (401, 403) else f"HTTP {err.code}"
    except (OSError, ValueError) as err:  # refused, timed out, not JSON
        return f"no answer ({type(err).__name__})"
    if not (answer.get("data") or {}).get("viewer"):
        return "the server did not accept the API key"
    return None


def choose_wandb_mode(timeout: float = 3.0) -> str:
    """Pick wandb's mode without ever prompting, blocking or overriding the user (issue 10).

    The user's choice wins and is left as it is (``WANDB_MODE``, ``WANDB_DISABLED``, ``wandb offline``).
    Otherwise: online only when an API key is configured and the server accepts it within `timeout`
    seconds; a rejected key or a silent server gives offline with a one-line warning. Sets
    ``WANDB_MODE`` only in that last case (to the mode it picked).
    """
    chosen = _user_wandb_mode()
    if chosen:
        if chosen == "disabled" and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "disabled"  # WANDB_DISABLED: wandb 0.31 ignores the variable itself
        return chosen
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = urlparse(base_url).hostname or "api.wandb.ai"
    key = _api_key(host)
    mode = "offline"
    if key:
        problem = _key_verdict(base_url, key, timeout)
        if problem is None:
            mode = "online"
        else:
            print(f"dfn: wandb logs offline: {base_url}: {problem} (`wandb sync` uploads the run later)",
                  file=sys.stderr)
    os.environ["WANDB_MODE"] = mode
    return mode


def flops_per_step(module: VideoPrediction, height: int, width: int) -> int:
    """FLOPs of one predicting step (encoder, recurrence, decoder, generator, filtering) for one sample,
    as counted by torch's FlopCounterMode (convolutions and matrix products)."""
    predictor = module.predictor
    frames = torch.rand(1, predictor.buffer_len, predictor.channels, height, width, device=module.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        predictor(frames, frames_out=1)
    return int(counter.get_total_flops())


class SaveRunConfig(SaveConfigCallback):
    """Saves the resolved config as ``<run dir>/config.yaml`` (a fresh directory per run, so running the
    same config twice never collides) and logs it to wandb with the parameter and FLOP counts."""

    def save_config(self, trainer: L.Trainer, pl_module: VideoPrediction, stage: str) -> None:
        path = run_dir(trainer) / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=False)
        if not isinstance(pl_module, VideoPrediction):  # another task (steerable filters, stereo): its own facts
            facts = {"parameters": sum(p.numel() for p in pl_module.parameters() if p.requires_grad)}
            pl_module.run_facts = facts
            for logger in trainer.loggers:
                logger.log_hyperparams({"config": self.parser.dump(self.config, skip_none=False), **facts})
            return
        data = trainer.datamodule
        if callable(getattr(data, "frame_size", None)):  # VideoFolder: keep_aspect frames are not square
            height, width = data.frame_size(predicting=stage == "predict")
        else:
            size = getattr(data, "image_size", 64)
            height, width = (size, size) if isinstance(size, int) else size
        facts = {"parameters": pl_module.parameter_count(), "flops_per_step": flops_per_step(pl_module, height, width),
                 **pl_module.generator.summary()}
        pl_module.run_facts = facts
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": self.parser.dump(self.config, skip_none=False), **facts})


class IterationTimer(L.Callback):
    """Seconds per training iteration (median over the run), for the summary and the comparison table."""

    def __init__(self) -> None:
        self.durations: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.durations.append(time.perf_counter() - self.start)

    def seconds_per_iteration(self) -> float | None:
        return float(torch.tensor(self.durations).median()) if self.durations else None


# Callbacks that read frame sequences from a VideoPrediction (GIFs, filter flow, horizon and sequence tables).
VIDEO_CALLBACKS = (PredictionGIFs, FilterFlowGIFs, PredictionFiles, HorizonTables, WandbMetrics, SequenceTable)


class DFNCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The model configures itself from the data (REFERENCE: any frames_in/frames_out/channels).
        # Subclass mode for the model too: a YAML's `model: class_path:` picks the task (video prediction
        # by default, or e.g. the steerable-filter and stereo tasks); a link whose target the chosen task
        # does not take is skipped by jsonargparse.
        parser.set_defaults({"model": {"class_path": "dfn.module.VideoPrediction"}})
        for name in ("frames_in", "frames_out", "channels", "image_size"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss",  # model selection on validation only, never on test
            "checkpoint.mode": "min",
            "checkpoint.save_last": True,  # `fit --ckpt_path <run dir>` resumes from last.ckpt (issue 10)
            "checkpoint.filename": "best-{epoch:03d}-{step}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(PredictionGIFs, "gifs")
        parser.add_lightning_class_args(FilterFlowGIFs, "flow_gifs")
        parser.add_lightning_class_args(PredictionFiles, "prediction_files")
        parser.add_lightning_class_args(HorizonTables, "horizon_tables")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(IterationTimer, "timer")
        parser.add_lightning_class_args(RunGuard, "guard")  # periodic/on-signal last.ckpt, NaN stop (issue 10)
        parser.add_lightning_class_args(MetricsCSV, "metrics_csv")
        parser.add_lightning_class_args(WandbMetrics, "wandb_metrics")
        parser.add_lightning_class_args(SequenceTable, "sequence_table")
        parser.add_lightning_class_args(ModelArtifacts, "model_artifacts")

    def before_instantiate_classes(self) -> None:
        choose_wandb_mode()

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if not isinstance(self.model, VideoPrediction):
            # Another task (steerable filters, stereo): the callbacks that draw or score frame sequences
            # do not apply; checkpoints, RunGuard, metrics.csv, timing and the lr monitor do.
            self.trainer.callbacks = [c for c in self.trainer.callbacks if not isinstance(c, VIDEO_CALLBACKS)]

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path``: a file or a run directory (its latest complete checkpoint), checked before
        Lightning reads the model's hyperparameters from it; ``fit`` continues the checkpoint's run."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        if config is not None and config.get("ckpt_path") and config["ckpt_path"] not in ("last", "best", "hpc",
                                                                                          "registry"):
            checkpoint = resolve_checkpoint(config["ckpt_path"])
            config["ckpt_path"] = str(checkpoint)
            if subcommand == "fit":
                self._continue_run(config, checkpoint)
        super()._parse_ckpt_path()

    @staticmethod
    def _continue_run(config, checkpoint: Path) -> None:
        """Resuming is the same run: the checkpoint's run directory and wandb run id (issue 10).

        The run directory is ``<save_dir>/<project>/<wandb id>``; giving WandbLogger that id with
        ``resume="allow"`` makes Lightning derive the same directory (so ModelCheckpoint restores its best
        score and top-k list) and makes wandb continue the run (online; offline it writes another
        ``offline-run-*`` folder with the same id, which ``wandb sync`` uploads into the same run).
        """
        run = run_of_checkpoint(checkpoint)
        logger = config["trainer"].get("logger")
        wandb_logger = (getattr(logger, "class_path", "") or "").endswith("WandbLogger")
        if run is None or not wandb_logger or config["checkpoint"].get("dirpath"):
            print(f"dfn: resuming from {checkpoint} in a new run directory (it is not in a <run>/checkpoints/ "
                  f"folder of a wandb-logged run, or checkpoint.dirpath is set)")
            return
        logger.init_args.id = run.name
        logger.init_args.resume = "allow"
        logger.init_args.save_dir = str(run.parent.parent)
        logger.init_args.project = run.parent.name
        print(f"dfn: resuming run {run} from {checkpoint.name}")

    def _callback(self, kind: type) -> L.Callback | None:
        return next((c for c in self.trainer.callbacks if isinstance(c, kind)), None)

    def after_fit(self) -> None:
        if self.trainer.fast_dev_run or self.trainer.interrupted:
            return
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        if not isinstance(self.model, VideoPrediction):  # another task: test the final weights once
            results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=None)
            self.summarise_task(results[0] if results else {})
            return
        # First the final weights (still in memory), as the paper reports them: logged as test_final/...
        self.model.test_prefix = "test_final"
        try:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=None)
        finally:
            self.model.test_prefix = "test"
        final = dict(getattr(self.model, "last_test_results", {}))
        # Then the best checkpoint by validation loss (test/...); the test set played no part in choosing it.
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        self.summarise(best, final)

    def after_test(self) -> None:
        if self.subcommand == "test" and not isinstance(self.model, VideoPrediction):
            self.summarise_task({k: v for k, v in self.trainer.callback_metrics.items() if k.startswith("test")})
        elif self.subcommand == "test":
            self.summarise(self.config["test"].get("ckpt_path") or "")

    def summarise_task(self, results: dict) -> None:
        """Summary of a task other than video prediction: ``<run dir>/summary.json`` and one line."""
        if not self.trainer.is_global_zero:
            return
        directory = run_dir(self.trainer)
        timer = self._callback(IterationTimer)
        results = {k: float(v) for k, v in results.items()}
        write_json(directory / "summary.json", {
            "run_dir": str(directory), "global_step": self.trainer.global_step,
            "seconds_per_iteration": timer.seconds_per_iteration() if timer else None,
            **getattr(self.model, "run_facts", {}), **results})
        scores = ", ".join(f"{k} {v:.4g}" for k, v in sorted(results.items())) or "no test metrics"
        print(f"dfn: run {directory} | {scores} | summary {directory / 'summary.json'}")

    def after_predict(self) -> None:
        writer = self._callback(PredictionFiles)
        if self.trainer.is_global_zero and writer is not None and writer.written:
            print(f"dfn: wrote {len(writer.written)} prediction GIFs (+ .npy) under {writer.written[0].parent}")

    def summarise(self, checkpoint: str, final: dict | None = None) -> None:
        """Write ``<run dir>/summary.json`` and print one line: run directory, GIFs, test metrics of
        `checkpoint` (``test/...``) and, after a fit, of the final weights (`final`, ``test_final/...``)."""
        if not self.trainer.is_global_zero:
            return
        results = {**(final or {}), **getattr(self.model, "last_test_results", {})}
        timer, gifs = self._callback(IterationTimer), self._callback(PredictionGIFs)
        directory = run_dir(self.trainer)
        summary = {
            "run_dir": str(directory),
            "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else "",
            "seconds_per_iteration": timer.seconds_per_iteration() if timer else None,
            "global_step": self.trainer.global_step,
            **getattr(self.model, "run_facts", {}),
            **results,
        }
        write_json(directory / "summary.json", summary)
        report = write_report(directory)
        metric = "bce_per_frame" if self.model.loss_name == "bce" else "mse_per_frame"
        model_score = results.get(f"test/{metric}")
        copy_score = results.get(f"test/copy_last/{metric}")
        final_score = results.get(f"test_final/{metric}")
        scores = "no test metrics"
        if model_score is not None:
            scores = f"test {metric} {float(model_score):.2f}"
            if final_score is not None:  # after a fit: name both, the paper reports the final weights
                scores = (f"test {metric}: best-by-val checkpoint {float(model_score):.2f}, "
                          f"final weights {float(final_score):.2f}")
            scores += f" (copy-last-frame {float(copy_score):.2f})"
        gif_dir = directory / "gifs" if gifs and gifs.written else "none"
        print(f"dfn: run {directory} | GIFs {gif_dir} | {scores} | summary {directory / 'summary.json'} | report {report}")


def main(args: list[str] | None = None, run: bool = True) -> DFNCLI:
    """The CLI; with ``run=False`` only parse and instantiate (for tests and notebooks).

    A run stopped by a signal (checkpoint written) or by a non-finite loss exits with one message
    (exit status 128 + signal number, or 1) instead of a stack trace.
    """
    try:
        return _main(args, run)
    except (RunInterrupted, NonFiniteLoss) as stop:
        if wandb.run is not None:
            wandb.finish(exit_code=1)  # write the run out (offline: runs/wandb/offline-run-*)
        print(stop, file=sys.stderr)
        sys.exit(128 + int(stop.signum) if isinstance(stop, RunInterrupted) else 1)
    except CheckpointError as err:
        print(f"dfn: {err}", file=sys.stderr)
        sys.exit(2)


def _main(args: list[str] | None, run: bool) -> DFNCLI:
    cli = DFNCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveRunConfig,
        save_config_kwargs={"save_to_log_dir": False},
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.WandbLogger",
                       "init_args": {"project": "dfn", "save_dir": "runs"}},
            "use_distributed_sampler": False,  # the data modules shard themselves without padding (exact test sets)
        },
        args=args,
        run=run,
    )
    if cli.trainer.is_global_zero and wandb.run is not None:
        wandb.finish()  # write the run out now (offline: runs/wandb/offline-run-*), not at interpreter exit
    return cli
