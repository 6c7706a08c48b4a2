"""The command line: LightningCLI in subclass mode, so YAML picks the generator and the data module.

``python train.py fit --config experiments/moving_mnist/dfn.yaml`` trains, then tests the best checkpoint
(by ``val/loss``) on the test set and prints a one-line summary. ``predict --ckpt_path ...`` writes GIFs
and ``.npy`` predictions. Every run logs to wandb (the mode: `dfn.wandb_mode`) and writes its outputs
into its own run directory (without a logger: ``runs/dfn/local-<time>-<id>``; under ``fast_dev_run``: a
temporary directory), never into the current directory. ``fit --ckpt_path <run dir>`` continues that run
(same directory, wandb id, data position; see ``dfn/checkpointing.py``).
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import wandb
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from torch.utils.flop_counter import FlopCounterMode

from dfn.callbacks import (FilterFlowGIFs, HorizonTables, IterationTimer, PredictionFiles, PredictionGIFs, run_dir,
                           write_json)
from dfn.checkpoint_files import CheckpointError, resolve_checkpoint, run_of_checkpoint
from dfn.checkpointing import NonFiniteLoss, RunGuard, RunInterrupted
from dfn.config_errors import BAD_INPUT, ConfigError, config_error, debugging
from dfn.data.samples import FetchError
from dfn.evaluation import EvalResult
from dfn.history import MetricsCSV
from dfn.metrics import better
from dfn.module import VideoPrediction
from dfn.nonfinite import NonFiniteGuard
from dfn.report import write_report
from dfn.wandb_extras import ModelArtifacts, SequenceTable, WandbMetrics
from dfn.wandb_mode import choose_wandb_mode


def flops_per_step(module: VideoPrediction, height: int, width: int) -> int:
    """FLOPs of one predicting step (encoder, recurrence, decoder, generator, filtering) for one sample,
    as counted by torch's FlopCounterMode (convolutions and matrix products)."""
    predictor = module.predictor
    frames = torch.rand(1, predictor.buffer_len, predictor.channels, height, width, device=module.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        predictor(frames, frames_out=1)
    return int(counter.get_total_flops())


def frame_size(data: L.LightningDataModule, predicting: bool = False) -> tuple[int, int]:
    """(height, width) of the frames the model sees: VideoFolder's keep_aspect frames are not square."""
    if callable(getattr(data, "frame_size", None)):
        return data.frame_size(predicting=predicting)
    size = getattr(data, "image_size", 64)
    return (size, size) if isinstance(size, int) else tuple(size)


class SaveRunConfig(SaveConfigCallback):
    """Saves the resolved config as ``<run dir>/config.yaml`` (a fresh directory per run, so running the
    same config twice never collides) and logs it to wandb with the parameter count and the generator's
    facts (the FLOPs per step are counted later, by the summary: `DFNCLI.summarise`)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        path = run_dir(trainer) / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=False)
        if isinstance(pl_module, VideoPrediction):
            facts = {"parameters": pl_module.parameter_count(), **pl_module.generator.summary()}
        else:  # another task (steerable filters, stereo): its own facts
            facts = {"parameters": sum(p.numel() for p in pl_module.parameters() if p.requires_grad)}
        pl_module.run_facts = facts
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": self.parser.dump(self.config, skip_none=False), **facts})


# Callbacks that read frame sequences from a VideoPrediction (GIFs, filter flow, horizon and sequence tables).
VIDEO_CALLBACKS = (PredictionGIFs, FilterFlowGIFs, PredictionFiles, HorizonTables, WandbMetrics, SequenceTable)


class DFNCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The model configures itself from the data (any frames_in/frames_out/channels).
        # Subclass mode for the model too: a YAML's `model: class_path:` picks the task (video prediction
        # by default, or e.g. the steerable-filter and stereo tasks); a link whose target the chosen task
        # does not take is skipped by jsonargparse.
        parser.set_defaults({"model": {"class_path": "dfn.module.VideoPrediction"}})
        for name in ("frames_in", "frames_out", "channels", "image_size"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss",  # model selection on validation only, never on test
            "checkpoint.mode": better("loss"),  # which way val/loss is better: dfn.metrics says
            "checkpoint.save_last": True,  # `fit --ckpt_path <run dir>` resumes from last.ckpt
            "checkpoint.enable_version_counter": False,  # RunGuard refreshes the same last.ckpt: no last-v1.ckpt
            "checkpoint.filename": "best-{epoch:03d}-{step}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(PredictionGIFs, "gifs")
        parser.add_lightning_class_args(FilterFlowGIFs, "flow_gifs")
        parser.add_lightning_class_args(PredictionFiles, "prediction_files")
        parser.add_lightning_class_args(HorizonTables, "horizon_tables")
        # Before the lr monitor: a stop after a signal comes at the next batch's start, before it logs anything.
        parser.add_lightning_class_args(RunGuard, "guard")  # periodic/on-signal last.ckpt
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")  # NaN/inf stop before the optimiser step
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(IterationTimer, "timer")
        parser.add_lightning_class_args(MetricsCSV, "metrics_csv")
        parser.add_lightning_class_args(WandbMetrics, "wandb_metrics")
        parser.add_lightning_class_args(SequenceTable, "sequence_table")
        parser.add_lightning_class_args(ModelArtifacts, "model_artifacts")

    def parse_arguments(self, parser, args) -> None:
        """Parse; then ``--ckpt_path`` may be a file or a run directory (its latest complete checkpoint) or
        ``pretrained:<name>``, resolved to a file and checked here, and ``fit`` continues the checkpoint's run.

        Here because LightningCLI reads the model's hyperparameters from ``ckpt_path`` right after this
        public hook (in its private ``_parse_ckpt_path``), and that step takes only a file.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        if config is not None and config.get("ckpt_path") and config["ckpt_path"] not in ("last", "best", "hpc",
                                                                                          "registry"):
            checkpoint = resolve_checkpoint(config["ckpt_path"], resume=subcommand == "fit")  # or pretrained:<name>
            config["ckpt_path"] = str(checkpoint)
            if subcommand == "fit":
                self._continue_run(config, checkpoint)

    def before_instantiate_classes(self) -> None:
        choose_wandb_mode()
        config = self.config[self.subcommand] if self.subcommand else self.config
        self._run_directory(config["trainer"])

    def _run_directory(self, trainer) -> None:
        """Where a run without a logger keeps its outputs: Lightning's default is the current directory
        (``default_root_dir``), which ``fit --trainer.fast_dev_run=true`` would litter with checkpoints, GIFs
        and metrics. A user's ``--trainer.default_root_dir`` is kept as it is."""
        if trainer.get("default_root_dir") is not None:
            return
        if trainer.get("fast_dev_run"):  # loggers are off: a smoke test's outputs go to a temporary directory
            self.scratch = tempfile.TemporaryDirectory(prefix="dfn-fast_dev_run-")  # removed with the CLI object
            trainer["default_root_dir"] = self.scratch.name
            print(f"dfn: fast_dev_run: outputs go to {self.scratch.name} (temporary, removed at exit)")
        elif trainer.get("logger") in (None, False):
            local = f"local-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"  # os.urandom: no global RNG
            trainer["default_root_dir"] = str(Path("runs") / "dfn" / local)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except BAD_INPUT as err:  # a constructor's check, wrapped by jsonargparse: one line (main prints it)
            problem = self._config_error(err)
            if problem is None:
                raise
            raise problem from err
        if not isinstance(self.model, VideoPrediction):
            # Another task (steerable filters, stereo): the callbacks that draw or score frame sequences
            # do not apply; checkpoints, RunGuard, NonFiniteGuard, metrics.csv, timing and the lr monitor do.
            self.trainer.callbacks = [c for c in self.trainer.callbacks if not isinstance(c, VIDEO_CALLBACKS)]

    def _run_subcommand(self, subcommand: str) -> None:
        # Overridden (a private LightningCLI method) because no public hook wraps the trainer call: the
        # before_/after_<subcommand> hooks run outside it, and a data module's prepare_data/setup errors are
        # raised inside trainer.fit/test/predict, which only this method surrounds.
        try:
            super()._run_subcommand(subcommand)
        except (*BAD_INPUT, FetchError) as err:  # a data module's files, checked when it prepares them
            problem = self._config_error(err, methods=("prepare_data", "setup"), kinds=(*BAD_INPUT, FetchError),
                                         anywhere=False)
            if problem is None:
                raise
            raise problem from err

    def _config_error(self, err: BaseException, methods: tuple[str, ...] = ("__init__",),
                      kinds: tuple[type[BaseException], ...] = BAD_INPUT, anywhere: bool = True) -> ConfigError | None:
        """`err` as a one-line ConfigError naming the config argument (see dfn/config_errors.py), or None."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        groups = {name: group.group_class for name, group in self._parser(self.subcommand).groups.items()
                  if getattr(group, "group_class", None) is not None}
        return config_error(err, config.as_dict(), groups, methods, kinds, anywhere)

    @staticmethod
    def _continue_run(config, checkpoint: Path) -> None:
        """Resuming is the same run: the checkpoint's run directory and wandb run id.

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
        # First the final weights (still in memory), as the paper reports them: test_final/...; then the
        # best checkpoint by validation loss (test/...): the test set played no part in choosing it.
        final = self.model.run_test(self.trainer, datamodule=self.datamodule, prefix="test_final")
        tested = self.model.run_test(self.trainer, datamodule=self.datamodule, prefix="test", ckpt_path=best or None)
        self.summarise(best, [final, tested])

    def after_test(self) -> None:
        if self.subcommand == "test" and not isinstance(self.model, VideoPrediction):
            self.summarise_task({k: v for k, v in self.trainer.callback_metrics.items() if k.startswith("test")})
        elif self.subcommand == "test":
            self.summarise(self.config["test"].get("ckpt_path") or "", [self.model.test_result])

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

    def summarise(self, checkpoint: str, results: list[EvalResult]) -> None:
        """Write ``<run dir>/summary.json`` and print one line: run directory, GIFs, the test metrics of
        `checkpoint` (the last result, ``test/...``) and, after a fit, of the final weights (``test_final/...``).

        The FLOPs per step are counted here, once per run (a forward pass under FlopCounterMode)."""
        if not self.trainer.is_global_zero:
            return
        height, width = frame_size(self.datamodule)
        facts = {**getattr(self.model, "run_facts", {}), "flops_per_step": flops_per_step(self.model, height, width)}
        for logger in self.trainer.loggers:
            logger.log_hyperparams({"flops_per_step": facts["flops_per_step"]})
        timer, gifs = self._callback(IterationTimer), self._callback(PredictionGIFs)
        directory = run_dir(self.trainer)
        summary = {
            "run_dir": str(directory),
            "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else "",
            "seconds_per_iteration": timer.seconds_per_iteration() if timer else None,
            "global_step": self.trainer.global_step,
            **facts,
        }
        for result in results:
            summary.update(result.summary())
        write_json(directory / "summary.json", summary)
        report = write_report(directory)
        tested, final = results[-1], next((r for r in results if r.prefix == "test_final"), None)
        metric = tested.loss_metric
        scores = f"test {metric} {tested.metrics[metric]:.2f}"
        if final is not None:  # after a fit: name both, the paper reports the final weights
            scores = (f"test {metric}: best-by-val checkpoint {tested.metrics[metric]:.2f}, "
                      f"final weights {final.metrics[metric]:.2f}")
        scores += f" (copy-last-frame {tested.copy_last[metric]:.2f})"
        gif_dir = directory / "gifs" if gifs and gifs.written else "none"
        print(f"dfn: run {directory} | GIFs {gif_dir} | {scores} | summary {directory / 'summary.json'} | report {report}")


def main(args: list[str] | None = None, run: bool = True) -> DFNCLI:
    """The CLI; with ``run=False`` only parse and instantiate (for tests and notebooks).

    A run stopped by a signal (checkpoint written) or by a non-finite loss exits with one message
    (exit status 128 + signal number, or 1) instead of a stack trace. A bad value or missing file in the
    configuration, or a checkpoint that cannot be used, exits with status 2 and one line,
    ``dfn: <argument>: <what is wrong and how to fix it>``; ``DFN_DEBUG=1`` shows the traceback instead.
    """
    try:
        return _main(args, run)
    except (RunInterrupted, NonFiniteLoss) as stop:
        if wandb.run is not None:
            wandb.finish(exit_code=1)  # write the run out (offline: runs/wandb/offline-run-*)
        print(stop, file=sys.stderr)
        sys.exit(128 + int(stop.signum) if isinstance(stop, RunInterrupted) else 1)
    except (ConfigError, CheckpointError) as err:
        if wandb.run is not None:
            wandb.finish(exit_code=1)
        if debugging():
            raise
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
