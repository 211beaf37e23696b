"""The training runs behind `emotion-ssl pretrain` and `emotion-ssl finetune`: LightningCLI over
the systems' typed signatures, with what every run needs around it (atomic checkpoints, loss
curves, the representation monitor, preflight, multi-process launches).

    from emotion_ssl.train.run import pretrain
    pretrain(["-c", "recipes/pretrain/tiny.yaml", "--data.train_manifest", "train.jsonl"])

Both take LightningCLI's options (`--help` lists them; YAML files through `-c`), the one
config language of training runs: Lightning's launcher starts the other ranks of a
multi-process run by re-running the command line, so a run's settings must be a command line
(`emotion_ssl.utils.launch.rank_command` makes sys.argv this run's command).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.plugins.io import CheckpointIO

from emotion_ssl.data.labelled import LabelledDataModule
from emotion_ssl.data.pretrain import PretrainDataModule
from emotion_ssl.train.callbacks import LossCurves
from emotion_ssl.train.checkpoint import AtomicCheckpointIO
from emotion_ssl.train.finetune import FinetuneSystem
from emotion_ssl.train.lightning_cli import EmotionSSLCLI
from emotion_ssl.train.monitor import RepresentationMonitor
from emotion_ssl.train.pretrain import PretrainSystem
from emotion_ssl.utils.launch import rank_command, stop_ranks_on_failure, watch_rank_startup


def _trainer_defaults(command: str) -> dict[str, Any]:
    """Runs log to runs/<command>/version_N/ unless told otherwise (--trainer.logger...)."""
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": "runs", "name": command},
        },
        "log_every_n_steps": 10,
    }


class PretrainCLI(EmotionSSLCLI):
    """`emotion-ssl pretrain`: PretrainSystem + PretrainDataModule, with --checkpoint.* and
    --monitor.*, atomic checkpoints, loss curves and the rank start-up watch."""

    command = "pretrain"

    def __init__(self, *args: Any, trainers: list[Any] | None = None, **kwargs: Any) -> None:
        self.trainers = trainers if trainers is not None else []
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(RepresentationMonitor, "monitor")  # --monitor.*
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.every_n_train_steps": 1000,
                "checkpoint.save_top_k": -1,
            }
        )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())  # never a half-written checkpoint
        config["plugins"] = plugins
        callbacks = [*callbacks, LossCurves()]
        trainer = super()._instantiate_trainer(config, callbacks)
        watch_rank_startup(trainer)  # a rank that never starts ends the run at once
        self.trainers.append(trainer)
        return trainer


def pretrain(args: Sequence[str]) -> PretrainCLI:
    """Run LightningCLI's `fit` on PretrainSystem + PretrainDataModule with `args` (the options
    of `emotion-ssl pretrain`); returns the CLI (its `.model`, `.trainer`)."""
    # the teacher's modules are in eval mode on purpose
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # no valid_manifest: the data module's empty validation list is intended
    warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
    # sys.argv is set to this command on purpose (rank_command) and `args` says the same
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    trainers: list[Any] = []
    # Lightning's launcher starts the other ranks by re-running sys.argv: make it this command
    with rank_command("pretrain", list(args)), stop_ranks_on_failure(trainers):
        return PretrainCLI(
            PretrainSystem,
            PretrainDataModule,
            args=["fit", *args],
            trainers=trainers,
            seed_everything_default=1,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=_trainer_defaults("pretrain"),
        )


def _classes(data: LabelledDataModule) -> list[str]:
    data.setup("fit")
    return list(data.label_names or [])


class FinetuneCLI(EmotionSSLCLI):
    """`emotion-ssl finetune`: FinetuneSystem + LabelledDataModule, early stopping and best
    checkpoints on validation UA, the head's classes linked from the data."""

    command = "finetune"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "early_stopping.monitor": "val/ua",
                "early_stopping.mode": "max",
                "early_stopping.patience": 5,
                "checkpoint.monitor": "val/ua",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}-{step}",
            }
        )
        parser.link_arguments(
            "data", "model.label_names", compute_fn=_classes, apply_on="instantiate"
        )


def finetune(args: Sequence[str]) -> FinetuneCLI:
    """Fit FinetuneSystem with early stopping on validation UA, then test the best checkpoint
    on the held-out fold (when the data module has one); `args`: the options of
    `emotion-ssl finetune`. Returns the CLI."""
    warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    trainers: list[Any] = []
    # Lightning's launcher starts the other ranks by re-running sys.argv: make it this command
    with rank_command("finetune", list(args)), stop_ranks_on_failure(trainers):
        cli = FinetuneCLI(
            FinetuneSystem,
            LabelledDataModule,
            args=list(args),
            run=False,
            seed_everything_default=1,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=_trainer_defaults("finetune"),
        )
        trainers.append(cli.trainer)
        watch_rank_startup(cli.trainer)  # a rank that never starts ends the run at once
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        if cli.datamodule.test_dataset is not None:
            checkpoint = cli.trainer.checkpoint_callback
            best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
            cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None)
    return cli
