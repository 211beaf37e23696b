"""`emotion-ssl <command>`: the one entry point.

emotion-ssl pretrain -c recipes/pretrain/tiny.yaml --data.train_manifest M.jsonl
emotion-ssl pretrain -c recipes/pretrain/tiny.yaml --ckpt_path runs/.../last.ckpt
emotion-ssl demo [--out demo_out] [--steps 60]
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Any

COMMANDS = {
    "pretrain": "teacher-student pretraining (LightningCLI; `emotion-ssl pretrain --help`)",
    "demo": "generate speech-like audio and run a short tiny pretraining on it",
}


def _usage() -> str:
    lines = ["usage: emotion-ssl <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def pretrain(args: list[str]) -> Any:
    """Run LightningCLI's `fit` on PretrainSystem + PretrainDataModule."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
    from lightning.pytorch.plugins.io import CheckpointIO

    from emotion_ssl.data.pretrain import PretrainDataModule
    from emotion_ssl.train.callbacks import LossCurves
    from emotion_ssl.train.checkpoint import AtomicCheckpointIO
    from emotion_ssl.train.pretrain import PretrainSystem

    class PretrainCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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
            return super()._instantiate_trainer(config, callbacks)

    # the teacher's modules are in eval mode on purpose
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # no valid_manifest: the data module's empty validation list is intended
    warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI reads `args`, not the process argv
    try:
        return PretrainCLI(
            PretrainSystem,
            PretrainDataModule,
            args=["fit", *args],
            seed_everything_default=1,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": "runs", "name": "pretrain"},
                },
                "log_every_n_steps": 10,
            },
        )
    finally:
        sys.argv = argv


def demo(args: list[str]) -> None:
    """A short tiny pretraining on generated audio (until the full demo lands)."""
    from pathlib import Path

    from emotion_ssl.data.synthetic import write_synthetic_corpus

    parser = argparse.ArgumentParser(prog="emotion-ssl demo", description=COMMANDS["demo"])
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer updates (default 60)")
    parser.add_argument("--files", type=int, default=48, help="generated clips (default 48)")
    opts = parser.parse_args(args)
    out = Path(opts.out)
    print(f"[demo] writing {opts.files} generated clips to {out / 'data'}", flush=True)
    manifest = write_synthetic_corpus(out / "data", num_files=opts.files, seed=0)
    print(f"[demo] pretraining the tiny encoder for {opts.steps} updates", flush=True)
    cli = pretrain(
        [
            "-c",
            str(Path(__file__).resolve().parents[1] / "recipes" / "pretrain" / "tiny.yaml"),
            "--data.train_manifest",
            str(manifest),
            "--trainer.max_steps",
            str(opts.steps),
            "--trainer.logger.init_args.save_dir",
            str(out / "runs"),
            "--trainer.default_root_dir",
            str(out / "runs"),
        ]
    )
    log_dir = Path(cli.trainer.log_dir or out)
    print(
        f"[demo] done: loss curves in {log_dir / 'loss_curves.png'}, "
        f"checkpoints in {log_dir / 'checkpoints'}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the package's own INFO lines (data summaries, skipped files) reach the console
    package_logger = logging.getLogger("emotion_ssl")
    if not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        package_logger.addHandler(handler)
        package_logger.setLevel(logging.INFO)
        package_logger.propagate = False
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command == "pretrain":
        pretrain(rest)
    elif command == "demo":
        demo(rest)
    else:
        print(f"emotion-ssl: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
