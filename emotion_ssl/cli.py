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


def _default(function: Any, name: str) -> Any:
    """The library's default for parameter `name` of `function`: written there, read here."""
    import inspect

    return inspect.signature(function).parameters[name].default


def pretrain(args: list[str]) -> Any:
    """LightningCLI's `fit` on PretrainSystem + PretrainDataModule (emotion_ssl/train/run.py)."""
    from emotion_ssl.train.run import pretrain as run_pretraining

    return run_pretraining(args)


def finetune(args: list[str]) -> Any:
    """Fit FinetuneSystem, then test the best checkpoint (emotion_ssl/train/run.py)."""
    from emotion_ssl.train.run import finetune as run_finetuning

    return run_finetuning(args)


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
        default=_default(run_demo, "corpus"),
        help="synthetic: generated emotional speech (default); ravdess: RAVDESS from --root",
    )
    parser.add_argument("--root", help="with --corpus ravdess: the folder of Actor_NN folders")
    parser.add_argument("--steps", type=int, help="pretraining updates per run")
    parser.add_argument(
        "--precision",
        choices=["auto", "32-true", "bf16-mixed"],
        default=DemoSettings.precision,
        help="pretraining precision; auto: bf16-mixed where the CPU has bf16 instructions, "
        "else 32-true",
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long version (tests)")
    opts = parser.parse_args(args)
    settings = DemoSettings.quick() if opts.quick else DemoSettings()
    if opts.steps is not None:
        settings.steps = opts.steps
    settings.precision = opts.precision
    run_demo(opts.out, opts.corpus, opts.root, settings, overwrite=opts.overwrite)


def import_fairseq(args: list[str]) -> None:
    """A fairseq checkpoint -> encoder folder (emotion_ssl/export/convert.py)."""
    from emotion_ssl.export.convert import import_fairseq as run_import

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
    done = run_import(
        opts.checkpoint,
        opts.out_dir,
        labels=opts.labels,
        encoder_only=opts.encoder_only,
        trust_pickle=opts.trust_pickle,
        overwrite=opts.overwrite,
    )
    print(done.summary)


def export_fairseq(args: list[str]) -> None:
    """Our encoder (with its teacher / decoder when present) in the fairseq layout."""
    from emotion_ssl.export.convert import export_fairseq as run_export

    parser = _parser("export-fairseq")
    parser.add_argument(
        "source", help="emotion-ssl encoder folder or `pretrain` checkpoint (.ckpt)"
    )
    parser.add_argument("out", help="fairseq checkpoint to write (.pt); must not exist")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT file")
    opts = parser.parse_args(args)
    print("\n".join(run_export(opts.source, opts.out, overwrite=opts.overwrite).notes))


def export(args: list[str]) -> None:
    """A training checkpoint -> frozen encoder folder (emotion_ssl/export/convert.py)."""
    from emotion_ssl.export.convert import export_encoder

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
        default=_default(export_encoder, "which"),
        help="the student (default) or the EMA teacher's weights",
    )
    parser.add_argument(
        "--results", help="an `evaluate` results.json whose table goes into the model card"
    )
    parser.add_argument(
        "--format",
        choices=["folder", "onnx"],
        default=_default(export_encoder, "format"),
        help="folder (safetensors + config + card) or onnx (OUT_DIR/encoder.onnx as well)",
    )
    opts = parser.parse_args(args)
    done = export_encoder(
        opts.checkpoint,
        opts.out_dir,
        which=opts.which,
        results=opts.results,
        format=opts.format,
        overwrite=opts.overwrite,
    )
    print(done.summary)


def extract(args: list[str]) -> None:
    """Batched, padding-exact, resumable feature extraction (emotion_ssl/export/extract.py)."""
    from emotion_ssl.export.extract import (
        FOLDER_CONFIG,
        ExtractConfig,
        default_device,
        extract_to_folder,
    )

    defaults = FOLDER_CONFIG  # every default below is read from the library
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
    parser.add_argument(
        "--layer", type=int, default=defaults.layer, help="block for frames (-1 = final)"
    )
    parser.add_argument(
        "--outputs",
        default=",".join(defaults.outputs),
        help="comma list of frames (T, D), utterance (D,), tokens (E, D)",
    )
    parser.add_argument(
        "--format",
        choices=["npy", "shards"],
        default=_default(extract_to_folder, "format"),
        help="npy: one file per utterance and output; shards: safetensors files of "
        "--shard-size utterances",
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        default=_default(extract_to_folder, "shard_size"),
        help="utterances per shard",
    )
    parser.add_argument("--device", default=default_device(), help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=defaults.dtype,
        help="bfloat16 autocast is faster on a GPU, not exact",
    )
    parser.add_argument(
        "--batch-seconds",
        type=float,
        default=defaults.batch_seconds,
        help="padded audio per batch (default 160 on a GPU, 10 on a CPU)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="CPU: threads that each encode whole batches with one torch thread "
        "(2 with 10 s batches measured 1.14-1.2x one worker on 2 cores; docs/performance.md)",
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime"],
        default=defaults.backend,
        help="auto: on a CPU (float32, at least 30 min of audio, 10 once exported) ONNX "
        "Runtime when a timed trial on the first batch finds it faster, else torch; the choice "
        "is printed (emotion_ssl/export/ort.py)",
    )
    parser.add_argument(
        "--onnx-cache",
        default=defaults.onnx_cache,
        help="folder for the ONNX export of the encoder, one file per weights "
        "(default $EMOTION_SSL_ONNX_CACHE or <tmp>/emotion-ssl-onnx)",
    )
    parser.add_argument(
        "--chunk-seconds",
        type=float,
        default=defaults.chunk_seconds,
        help="recordings longer than this are cut into overlapping chunks",
    )
    parser.add_argument(
        "--overlap-seconds",
        type=float,
        default=defaults.overlap_seconds,
        help="overlap between chunks",
    )
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
    done = extract_to_folder(
        opts.encoder,
        opts.manifest,
        opts.out,
        config,
        format=opts.format,
        shard_size=opts.shard_size,
        device=opts.device,
        overwrite=opts.overwrite,
        progress=not opts.no_progress,
    )
    print(done.summary)


def evaluate(args: list[str]) -> None:
    """The linear probe on every fold, with baselines (emotion_ssl/train/evaluate.py)."""
    from emotion_ssl.export.extract import default_device
    from emotion_ssl.train.evaluate import BASELINES, summary
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
    parser.add_argument(
        "--folds",
        default=_default(run_evaluation, "folds"),
        help="'all' or a comma list, e.g. 1,2",
    )
    parser.add_argument(
        "--fold-field",
        default=_default(run_evaluation, "fold_field"),
        help="manifest field naming the fold",
    )
    parser.add_argument(
        "--baselines",
        help=f"comma list of {', '.join(BASELINES)}; '' for none (default: both, or mfcc "
        "alone without --encoder, since random-init copies the encoder's architecture)",
    )
    parser.add_argument(
        "--layer",
        type=int,
        default=_default(run_evaluation, "layer"),
        help="encoder block (-1 = final)",
    )
    parser.add_argument("--labels", help="comma list fixing the class order")
    parser.add_argument(
        "--epochs", type=int, default=ProbeConfig.epochs, help="probe training epochs"
    )
    parser.add_argument(
        "--seed", type=int, default=ProbeConfig.seed, help="probe and random-init seed"
    )
    parser.add_argument(
        "--valid-split",
        choices=["speaker", "class"],
        default=ProbeConfig.valid_split,
        help="the probe's validation (its epoch choice): whole training speakers (default) or "
        "a share of each class over the same speakers",
    )
    parser.add_argument("--device", default=default_device(), help="cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    opts = parser.parse_args(args)
    results = run_evaluation(
        opts.encoder,
        opts.data,
        opts.out,
        folds="all" if opts.folds == "all" else opts.folds.split(","),
        fold_field=opts.fold_field,
        baselines=None
        if opts.baselines is None
        else [b.strip() for b in opts.baselines.split(",") if b.strip()],
        probe=ProbeConfig(epochs=opts.epochs, seed=opts.seed, valid_split=opts.valid_split),
        layer=opts.layer,
        labels=opts.labels.split(",") if opts.labels else None,
        device=opts.device,
        progress=not opts.no_progress,
        overwrite=opts.overwrite,
    )
    print(summary(results))
    print(f"tables in {opts.out}/results.md")


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
