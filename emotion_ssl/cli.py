"""`emotion-ssl <command>`: the one entry point.

emotion-ssl pretrain -c recipes/pretrain/tiny.yaml --data.train_manifest M.jsonl
emotion-ssl pretrain -c recipes/pretrain/tiny.yaml --ckpt_path runs/.../last.ckpt
emotion-ssl demo [--out demo_out] [--steps 60]

An expected failure (a missing file, a bad manifest or checkpoint, an output folder that holds
someone else's files) is one `error: ...` line and exit status 1 (2 for a bad option);
`emotion-ssl --debug <command> ...` or EMOTION_SSL_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Any, NoReturn

COMMANDS = {
    "pretrain": "teacher-student pretraining (LightningCLI; `emotion-ssl pretrain --help`)",
    "import-fairseq": "fairseq data2vec 2.0 / emotion2vec checkpoint -> emotion-ssl encoder folder",
    "export-fairseq": "emotion-ssl encoder or training checkpoint -> fairseq/FunASR checkpoint",
    "export": "training checkpoint (or any encoder) -> frozen emotion-ssl encoder folder",
    "extract": "features (frames, utterance vectors, utterance tokens) for a manifest",
    "evaluate": "linear-probe evaluation on every fold, with baselines, as tables and PNGs",
    "finetune": "fine-tune an encoder with a classification head (LightningCLI), then test",
    "demo": "generate emotional speech, pretrain, evaluate, export, extract; write a report",
}


OVERWRITE_HELP = (
    "write into a folder that holds other files: replaces what an earlier emotion-ssl run "
    "recorded there (never files it did not write)"
)


def _usage() -> str:
    lines = ["usage: emotion-ssl [--debug] <command> [options]", "", "commands:"]
    lines += [f"  {name:<14} {text}" for name, text in COMMANDS.items()]
    lines += [
        "",
        "emotion-ssl <command> --help lists a command's options; --debug (or",
        "EMOTION_SSL_DEBUG=1) shows the traceback of an error.",
    ]
    return "\n".join(lines)


class CommandParser(argparse.ArgumentParser):
    """argparse with one-line errors that name the command and where its help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _parser(command: str) -> CommandParser:
    return CommandParser(prog=f"emotion-ssl {command}", description=COMMANDS[command])


def _expected(err: BaseException) -> bool:
    """Errors that come from the user's input or environment, not from a bug: reported as one
    line. (Our own error classes derive from ValueError, OSError or AudioReadError.)"""
    import pickle
    import zipfile

    from emotion_ssl.data.audio import AudioReadError

    if isinstance(err, OSError | ValueError | AudioReadError | pickle.UnpicklingError):
        return True
    if isinstance(err, zipfile.BadZipFile):
        return True
    names = {cls.__name__ for cls in type(err).__mro__}
    return bool(names & {"MisconfigurationException", "SafetensorError", "NonFiniteLossError"})


def _error_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def pretrain(args: list[str]) -> Any:
    """Run LightningCLI's `fit` on PretrainSystem + PretrainDataModule."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningArgumentParser
    from lightning.pytorch.plugins.io import CheckpointIO

    from emotion_ssl.data.pretrain import PretrainDataModule
    from emotion_ssl.train.callbacks import LossCurves
    from emotion_ssl.train.checkpoint import AtomicCheckpointIO
    from emotion_ssl.train.lightning_cli import EmotionSSLCLI
    from emotion_ssl.train.pretrain import PretrainSystem
    from emotion_ssl.utils.launch import (
        rank_command,
        stop_ranks_on_failure,
        watch_rank_startup,
    )

    class PretrainCLI(EmotionSSLCLI):  # one-line errors, preflight, run folder printed
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            from emotion_ssl.train.monitor import RepresentationMonitor

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
            trainers.append(trainer)
            return trainer

    # the teacher's modules are in eval mode on purpose
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # no valid_manifest: the data module's empty validation list is intended
    warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
    # sys.argv is set to this command on purpose (rank_command) and `args` says the same
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    trainers: list[Any] = []
    # Lightning's launcher starts the other ranks by re-running sys.argv: make it this command
    with rank_command("pretrain", args), stop_ranks_on_failure(trainers):
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


def demo(args: list[str]) -> None:
    """The whole life cycle on the built-in corpus (or RAVDESS): see emotion_ssl/demo/."""
    from emotion_ssl.demo import DemoSettings, run_demo

    parser = _parser("demo")
    parser.add_argument(
        "--out",
        default="demo_out",
        help="output folder (default demo_out): new, empty or an earlier demo's",
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument(
        "--corpus",
        choices=["synthetic", "ravdess"],
        default="synthetic",
        help="synthetic: generated emotional speech (default); ravdess: RAVDESS from --root",
    )
    parser.add_argument("--root", help="with --corpus ravdess: the folder of Actor_NN folders")
    parser.add_argument("--steps", type=int, help="pretraining updates per run")
    parser.add_argument("--quick", action="store_true", help="a seconds-long version (tests)")
    opts = parser.parse_args(args)
    settings = DemoSettings.quick() if opts.quick else DemoSettings()
    if opts.steps is not None:
        settings.steps = opts.steps
    run_demo(opts.out, opts.corpus, opts.root, settings, overwrite=opts.overwrite)


def import_fairseq(args: list[str]) -> None:
    """Read a fairseq checkpoint with torch only, check it strictly, write our format."""
    from emotion_ssl.export.fairseq import read_fairseq_checkpoint
    from emotion_ssl.export.frozen import describe, save_encoder_dir, validate_weights

    parser = _parser("import-fairseq")
    parser.add_argument("checkpoint", help="fairseq checkpoint (.pt) with 'model' and 'cfg'")
    parser.add_argument(
        "out_dir", help="new or empty folder to write (model.safetensors, config.json, ...)"
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load with torch.load(weights_only=False): only for files you trust",
    )
    parser.add_argument("--labels", help="label list of an emotion2vec+ classifier, one per line")
    parser.add_argument(
        "--encoder-only",
        action="store_true",
        help="leave out the teacher (_ema) and the decoder (a frozen encoder for inference)",
    )
    opts = parser.parse_args(args)
    from pathlib import Path

    from emotion_ssl.export.sniff import check_checkpoint_file
    from emotion_ssl.utils.outputs import path_identity

    if Path(opts.checkpoint).is_dir():
        raise ValueError(
            f"{opts.checkpoint} is a folder: import-fairseq reads one fairseq checkpoint file "
            "(.pt); an emotion-ssl encoder folder needs no import (load_encoder reads it)"
        )
    check_checkpoint_file(opts.checkpoint)
    weights = read_fairseq_checkpoint(opts.checkpoint, opts.trust_pickle, opts.labels)
    validate_weights(weights)
    identity = {
        "checkpoint": path_identity(opts.checkpoint),
        "labels": path_identity(opts.labels) if opts.labels else None,
        "encoder_only": opts.encoder_only,
    }
    _claim_encoder_dir(opts.out_dir, "import-fairseq", identity, opts.overwrite)
    out = save_encoder_dir(opts.out_dir, weights, include_pretraining_state=not opts.encoder_only)
    print(describe(weights))
    dropped = []
    if opts.encoder_only:
        dropped += [
            p
            for p, s in (("teacher", weights.teacher_state), ("decoder", weights.decoder_state))
            if s
        ]
    print(f"{'dropped':<18}  {', '.join(dropped) if dropped else 'nothing'}")
    print(f"wrote {out}")


def export_fairseq(args: list[str]) -> None:
    """Write our encoder (and its teacher / decoder when present) in the fairseq layout."""
    from emotion_ssl.export.fairseq import save_fairseq_checkpoint
    from emotion_ssl.export.frozen import read_weights, validate_weights

    parser = _parser("export-fairseq")
    parser.add_argument(
        "source", help="emotion-ssl encoder folder or `pretrain` checkpoint (.ckpt)"
    )
    parser.add_argument("out", help="fairseq checkpoint to write (.pt); must not exist")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT file")
    opts = parser.parse_args(args)
    from emotion_ssl.utils.outputs import check_new_file

    check_new_file(opts.out, opts.overwrite)
    weights = read_weights(opts.source)
    validate_weights(weights)
    path = save_fairseq_checkpoint(
        opts.out,
        weights.config,
        weights.encoder_state,
        weights.decoder_state,
        weights.teacher_state,
        weights.head_state,
        weights.labels,
    )
    print(
        f"wrote {path} ({sum(v.numel() for v in weights.encoder_state.values()):,} encoder parameters)"
    )


def export(args: list[str]) -> None:
    """A training checkpoint -> frozen encoder folder (no teacher, decoder or optimizer)."""
    from dataclasses import replace

    from emotion_ssl.export.frozen import (
        describe,
        read_weights,
        save_encoder_dir,
        teacher_context_state,
        validate_weights,
    )

    parser = _parser("export")
    parser.add_argument(
        "checkpoint", help="`pretrain` checkpoint (.ckpt), fairseq checkpoint or encoder folder"
    )
    parser.add_argument(
        "out_dir", help="new or empty folder to write (model.safetensors, config.json, README.md)"
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument(
        "--which",
        choices=["student", "teacher"],
        default="student",
        help="the student (default) or the EMA teacher's weights",
    )
    parser.add_argument(
        "--results", help="an `evaluate` results.json whose table goes into the model card"
    )
    parser.add_argument(
        "--format",
        choices=["folder", "onnx"],
        default="folder",
        help="folder (safetensors + config + card) or onnx (OUT_DIR/encoder.onnx as well)",
    )
    opts = parser.parse_args(args)
    from emotion_ssl.utils.outputs import path_identity

    weights = read_weights(opts.checkpoint)
    validate_weights(weights)
    identity = {
        "checkpoint": path_identity(opts.checkpoint),
        "which": opts.which,
        "format": opts.format,
        "results": path_identity(opts.results) if opts.results else None,
    }
    _claim_encoder_dir(opts.out_dir, "export", identity, opts.overwrite)
    if opts.which == "teacher":
        teacher = teacher_context_state(weights)
        if teacher is None:
            raise ValueError(f"{opts.checkpoint} holds no teacher weights: export the student")
        encoder_state = {
            k: v for k, v in weights.encoder_state.items() if not k.startswith("context.")
        }
        encoder_state.update({f"context.{k}": v for k, v in teacher.items()})
        weights = replace(weights, encoder_state=encoder_state)
    weights.metadata["exported"] = opts.which
    card = None
    if opts.results:
        import json
        from pathlib import Path

        from emotion_ssl.export.frozen import default_model_card
        from emotion_ssl.train.evaluate import results_markdown

        table = results_markdown(json.loads(Path(opts.results).read_text()))
        table = "\n".join(line for line in table.splitlines() if not line.startswith("!["))
        card = default_model_card(weights, False) + "\n## Evaluation\n\n" + table.split("\n", 2)[2]
        weights.metadata["evaluation"] = opts.results
    out = save_encoder_dir(opts.out_dir, weights, model_card=card, include_pretraining_state=False)
    if opts.format == "onnx":
        from emotion_ssl.export.frozen import build_encoder
        from emotion_ssl.export.onnx import export_onnx

        onnx_path = export_onnx(build_encoder(weights).eval(), out / "encoder.onnx")
        print(f"wrote {onnx_path} (inputs: waveforms, padding_mask; dynamic batch and length)")
    print(describe(weights))
    print(f"wrote {out} ({opts.which})")


ENCODER_DIR_FILES = (
    "model.safetensors",
    "config.json",
    "README.md",
    "teacher.safetensors",
    "decoder.safetensors",
    "head.safetensors",
    "encoder.onnx",
)


def _claim_encoder_dir(
    out_dir: str, command: str, identity: dict[str, Any], overwrite: bool
) -> None:
    """An encoder folder is written only where it loses nobody's files (see
    emotion_ssl/utils/outputs.py); one from an emotion-ssl without records counts as ours."""
    import json
    from pathlib import Path

    from emotion_ssl.utils.outputs import claim_output_dir

    def older_export(folder: Path) -> bool:
        try:
            meta = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and meta.get("format") == "emotion-ssl-encoder"

    claimed = claim_output_dir(
        out_dir, command, identity, ENCODER_DIR_FILES, overwrite=overwrite, legacy=older_export
    )
    if claimed.status == "replaced":
        print(f"replacing the encoder emotion-ssl wrote in {out_dir} (--overwrite)")


def extract(args: list[str]) -> None:
    """Batched, padding-exact, resumable feature extraction."""
    from emotion_ssl.data.manifest import read_manifest
    from emotion_ssl.export.extract import (
        ExtractConfig,
        FeatureExtractor,
        FeatureWriter,
        claim_extraction_dir,
        encoder_identity,
        extract_manifest,
    )
    from emotion_ssl.export.frozen import load_encoder

    parser = _parser("extract")
    parser.add_argument("--encoder", required=True, help="encoder folder, fairseq .pt or .ckpt")
    parser.add_argument("--manifest", required=True, help="JSONL manifest of the audio")
    parser.add_argument(
        "--out",
        required=True,
        help="output folder: new or empty, or an earlier extraction with the same encoder "
        "(by content) and settings, which resumes",
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--layer", type=int, default=-1, help="block for frames (-1 = final)")
    parser.add_argument(
        "--outputs",
        default="frames,utterance,tokens",
        help="comma list of frames (T, D), utterance (D,), tokens (E, D)",
    )
    parser.add_argument(
        "--format",
        choices=["npy", "shards"],
        default="npy",
        help="npy: one file per utterance and output; shards: safetensors files of "
        "--shard-size utterances",
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="utterances per shard")
    parser.add_argument(
        "--device", default="cuda" if _cuda() else "cpu", help="cpu, cuda or cuda:N"
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="bfloat16 autocast is faster on a GPU, not exact",
    )
    parser.add_argument(
        "--batch-seconds",
        type=float,
        default=None,
        help="padded audio per batch (default 160 on a GPU, 10 on a CPU)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="CPU: threads that each encode whole batches with one torch thread "
        "(2 with 10 s batches measured 1.14-1.2x one worker on 2 cores; docs/performance.md)",
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime"],
        default="auto",
        help="auto: on a CPU (float32, at least 30 min of audio, 10 once exported) ONNX "
        "Runtime when a timed trial on the first batch finds it faster, else torch; the choice "
        "is printed (emotion_ssl/export/ort.py)",
    )
    parser.add_argument(
        "--onnx-cache",
        default=None,
        help="folder for the ONNX export of the encoder, one file per weights "
        "(default $EMOTION_SSL_ONNX_CACHE or <tmp>/emotion-ssl-onnx)",
    )
    parser.add_argument(
        "--chunk-seconds",
        type=float,
        default=30.0,
        help="recordings longer than this are cut into overlapping chunks",
    )
    parser.add_argument("--overlap-seconds", type=float, default=4.0, help="overlap between chunks")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    opts = parser.parse_args(args)
    config = ExtractConfig(
        layer=opts.layer,
        outputs=tuple(o.strip() for o in opts.outputs.split(",") if o.strip()),
        batch_seconds=opts.batch_seconds,
        chunk_seconds=opts.chunk_seconds,
        overlap_seconds=opts.overlap_seconds,
        dtype=opts.dtype,
        workers=opts.workers,
        backend=opts.backend,
        onnx_cache=opts.onnx_cache,
    )
    from pathlib import Path

    out = Path(opts.out)
    entries = read_manifest(opts.manifest)
    encoder = load_encoder(opts.encoder)
    claimed = claim_extraction_dir(
        out,
        encoder_identity(encoder),
        str(Path(opts.manifest).absolute()),
        config,
        opts.format,
        overwrite=opts.overwrite,
        info={"encoder_path": str(Path(opts.encoder).absolute())},
    )
    extractor = FeatureExtractor(encoder, config, opts.device)
    writer = FeatureWriter(out, opts.format, opts.shard_size)
    counts = extract_manifest(extractor, entries, writer, progress=not opts.no_progress)
    if claimed.status == "replaced":
        print(f"replaced the earlier extraction in {out} (--overwrite)")
    print(
        f"extracted {counts['extracted']}, already done {counts['already_done']}, "
        f"failed {counts['failed']} -> {out / 'index.jsonl'}"
    )
    if extractor.backend_note:
        print(f"backend: {extractor.backend_note}")


def evaluate(args: list[str]) -> None:
    from emotion_ssl.train.evaluate import BASELINES
    from emotion_ssl.train.evaluate import evaluate as run_evaluation
    from emotion_ssl.train.probe import ProbeConfig

    parser = _parser("evaluate")
    parser.add_argument(
        "--encoder", help="encoder folder, fairseq .pt or .ckpt (omit: baselines only)"
    )
    parser.add_argument(
        "--data", required=True, help="manifest .jsonl or a data_prep output folder"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output folder (results.md, results.json, PNGs, features/): new or empty, or an "
        "earlier evaluation with the same settings",
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--folds", default="all", help="'all' or a comma list, e.g. 1,2")
    parser.add_argument("--fold-field", default="fold", help="manifest field naming the fold")
    parser.add_argument(
        "--baselines",
        help=f"comma list of {', '.join(BASELINES)}; '' for none (default: both, or mfcc "
        "alone without --encoder, since random-init copies the encoder's architecture)",
    )
    parser.add_argument("--layer", type=int, default=-1, help="encoder block (-1 = final)")
    parser.add_argument("--labels", help="comma list fixing the class order")
    parser.add_argument(
        "--epochs", type=int, default=ProbeConfig.epochs, help="probe training epochs"
    )
    parser.add_argument("--seed", type=int, default=0, help="probe and random-init seed")
    parser.add_argument(
        "--valid-split",
        choices=["speaker", "class"],
        default=ProbeConfig.valid_split,
        help="the probe's validation (its epoch choice): whole training speakers (default) or "
        "a share of each class over the same speakers",
    )
    parser.add_argument(
        "--device", default="cuda" if _cuda() else "cpu", help="cpu, cuda or cuda:N"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    opts = parser.parse_args(args)
    if opts.baselines is None:
        baselines = list(BASELINES) if opts.encoder else ["mfcc"]
    else:
        baselines = [b.strip() for b in opts.baselines.split(",") if b.strip()]
    results = run_evaluation(
        opts.encoder,
        opts.data,
        opts.out,
        folds="all" if opts.folds == "all" else opts.folds.split(","),
        fold_field=opts.fold_field,
        baselines=baselines,
        probe=ProbeConfig(epochs=opts.epochs, seed=opts.seed, valid_split=opts.valid_split),
        layer=opts.layer,
        labels=opts.labels.split(",") if opts.labels else None,
        device=opts.device,
        progress=not opts.no_progress,
        overwrite=opts.overwrite,
    )
    for name, r in results["feature_sets"].items():
        mean, std = r["mean"], r["std"]
        print(
            f"{name:<12} WA {100 * mean['wa']:.2f} ± {100 * std['wa']:.2f}  "
            f"UA {100 * mean['ua']:.2f} ± {100 * std['ua']:.2f}  "
            f"WF1 {100 * mean['wf1']:.2f} ± {100 * std['wf1']:.2f}"
        )
    print(f"tables in {opts.out}/results.md")


def finetune(args: list[str]) -> Any:
    """LightningCLI over FinetuneSystem + LabelledDataModule: fit with early stopping on
    validation UA, then test the best checkpoint on the held-out fold."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.cli import LightningArgumentParser

    from emotion_ssl.data.labelled import LabelledDataModule
    from emotion_ssl.train.finetune import FinetuneSystem
    from emotion_ssl.train.lightning_cli import EmotionSSLCLI
    from emotion_ssl.utils.launch import rank_command, stop_ranks_on_failure, watch_rank_startup

    def classes(data: LabelledDataModule) -> list[str]:
        data.setup("fit")
        return list(data.label_names or [])

    class FinetuneCLI(EmotionSSLCLI):
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
                "data", "model.label_names", compute_fn=classes, apply_on="instantiate"
            )

    warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    trainers: list[Any] = []
    # Lightning's launcher starts the other ranks by re-running sys.argv: make it this command
    with rank_command("finetune", args), stop_ranks_on_failure(trainers):
        cli = FinetuneCLI(
            FinetuneSystem,
            LabelledDataModule,
            args=args,
            run=False,
            seed_everything_default=1,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": "runs", "name": "finetune"},
                },
                "log_every_n_steps": 10,
            },
        )
        trainers.append(cli.trainer)
        watch_rank_startup(cli.trainer)  # a rank that never starts ends the run at once
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        if cli.datamodule.test_dataset is not None:
            checkpoint = cli.trainer.checkpoint_callback
            best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
            cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None)
    return cli


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("EMOTION_SSL_DEBUG", "") not in ("", "0")
    if argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
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
    run = {
        "pretrain": pretrain,
        "demo": demo,
        "import-fairseq": import_fairseq,
        "export-fairseq": export_fairseq,
        "export": export,
        "extract": extract,
        "evaluate": evaluate,
        "finetune": finetune,
    }.get(command)
    if run is None:
        print(f"{_usage()}\n\nerror: unknown command {command!r}", file=sys.stderr)
        return 2
    try:
        run(rest)
    except KeyboardInterrupt:
        print(f"error: emotion-ssl {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug or not _expected(err):
            raise
        print(f"error: {_error_line(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
