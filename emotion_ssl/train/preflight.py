"""Checks that end a bad run in seconds, before its first update, instead of at its first save.

`check_manifest_options` runs on the parsed command line, before anything is built: every
`--data.*manifest` option names a file that exists and parses. `Preflight` (a callback) runs
when fitting starts, after the data module has read its manifests:

- the checkpoint folder and the run folder can be written (a probe file is created there);
- a sample of each dataset's clips decodes, and decodes to the length its manifest gives;
- labels are consistent: at least two training classes, and no validation or test class
  without training examples;
- temporary files left by a checkpoint save that was killed are removed;
- the run folder gets a record (`emotion-ssl.json`: command, input identities), and its path
  is printed when the run starts and when it ends.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from emotion_ssl.data.audio import TARGET_RATE, AudioReadError, load_audio, resampled_length
from emotion_ssl.data.manifest import ManifestEntry, read_manifest
from emotion_ssl.train.callbacks import run_folder
from emotion_ssl.train.checkpoint import remove_stale_temporaries
from emotion_ssl.utils.outputs import file_identity, write_record

logger = logging.getLogger(__name__)

SAMPLE_CLIPS = 4
"""Clips decoded per dataset: enough to catch a wrong audio root or format, cheap for any corpus."""


class PreflightError(ValueError):
    """A run that cannot succeed; the message names the option or file and the fix."""


def check_manifest_options(data_options: Mapping[str, Any]) -> dict[str, list[ManifestEntry]]:
    """Every `*manifest` option of the data section that is set names a readable manifest.

    Returns option name -> entries. Raises PreflightError naming the option, or the
    manifest's own error (file:line: problem)."""
    found: dict[str, list[ManifestEntry]] = {}
    for name, value in data_options.items():
        if not name.endswith("manifest") or value is None:
            continue
        path = Path(str(value))
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise PreflightError(
                f"--data.{name} {path}: the manifest {what}; give the manifest.jsonl that "
                "data_prep wrote (python -m data_prep.folder --root AUDIO --out FOLDER)"
            )
        found[name] = read_manifest(path)
    return found


def check_writable(folder: str | Path, what: str) -> None:
    """Create `folder` if needed and write and remove a probe file in it."""
    path = Path(folder)
    probe = path / f".emotion-ssl-write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PreflightError(
            f"{what} {path} is not writable ({err.strerror or err}): choose a folder you can "
            "write to before training starts"
        ) from err


def sample_entries(
    entries: Sequence[ManifestEntry], count: int = SAMPLE_CLIPS
) -> list[ManifestEntry]:
    """`count` entries spread evenly over the list (first and last included)."""
    if len(entries) <= count:
        return list(entries)
    picks = np.linspace(0, len(entries) - 1, count).round().astype(int)
    return [entries[i] for i in sorted(set(picks.tolist()))]


def check_audio_sample(entries: Sequence[ManifestEntry], name: str) -> list[str]:
    """Decode a sample of `entries`; returns warnings (unreadable clips, lengths that differ
    from the manifest). Raises PreflightError when no sampled clip decodes."""
    sample = sample_entries(entries)
    problems: list[str] = []
    failed = 0
    for entry in sample:
        try:
            audio = load_audio(entry.path)
        except AudioReadError as err:
            failed += 1
            problems.append(f"{name}: {err}")
            continue
        expected = resampled_length(entry.num_samples, entry.sample_rate, TARGET_RATE)
        if len(audio) != expected:
            problems.append(
                f"{name}: {entry.path} decodes to {len(audio) / TARGET_RATE:.2f} s but the "
                f"manifest says {expected / TARGET_RATE:.2f} s (truncated or replaced file? "
                "prepare the manifest again)"
            )
    if sample and failed == len(sample):
        raise PreflightError(
            f"{name}: none of {len(sample)} sampled clips could be decoded ({problems[0]}); "
            "check the audio paths in the manifest (relative paths start at its folder)"
        )
    return problems


def check_labels(datamodule: Any) -> None:
    """Fine-tuning data: at least two training classes; every validation or test class has
    training examples."""
    train = getattr(datamodule, "train_dataset", None)
    if train is None or not hasattr(train, "class_counts"):
        return
    counts = train.class_counts()
    present = [label for label, n in counts.items() if n > 0]
    if len(present) < 2:
        raise PreflightError(
            f"{train.name}: the training side holds {len(present)} class(es) {present}; a "
            "classifier needs at least two (check the labels and the fold)"
        )
    for split in ("valid_dataset", "test_dataset"):
        other = getattr(datamodule, split, None)
        if other is None:
            continue
        unseen = sorted(
            label for label, n in other.class_counts().items() if n > 0 and counts[label] == 0
        )
        if unseen:
            raise PreflightError(
                f"{other.name}: classes {unseen} have no training examples; choose another "
                "fold or leave those clips out"
            )


def _datasets(datamodule: Any) -> list[Any]:
    names = ("train_dataset", "labelled_dataset", "valid_dataset", "test_dataset")
    return [
        d
        for d in (getattr(datamodule, n, None) for n in names)
        if d is not None and hasattr(d, "entries")
    ]


class Preflight(L.Callback):
    """The checks of the module docstring, at the start of fitting (rank 0 writes)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_dir = run_folder(trainer)
        checkpoint = trainer.checkpoint_callback
        ckpt_dir = getattr(checkpoint, "dirpath", None)
        if trainer.is_global_zero:
            if ckpt_dir is not None:
                check_writable(ckpt_dir, "the checkpoint folder")
                for stale in remove_stale_temporaries(ckpt_dir):
                    logger.info("removed %s, left by a checkpoint save that was cut short", stale)
            check_writable(run_dir, "the run folder")
        datamodule = getattr(trainer, "datamodule", None)
        datasets = _datasets(datamodule)
        check_labels(datamodule)
        if trainer.is_global_zero:
            for dataset in datasets:
                for problem in check_audio_sample(dataset.entries, dataset.name):
                    logger.warning(problem)
            self._write_record(trainer, run_dir, datamodule)
            print(f"emotion-ssl {self.command}: run folder {run_dir}", flush=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        run_dir = run_folder(trainer)
        checkpoint = trainer.checkpoint_callback
        last = getattr(checkpoint, "last_model_path", "") or getattr(
            checkpoint, "best_model_path", ""
        )
        where = f"; newest checkpoint {last}" if last else ""
        print(
            f"emotion-ssl {self.command}: finished after {trainer.global_step} updates: run "
            f"folder {run_dir}{where}",
            flush=True,
        )

    def _write_record(self, trainer: L.Trainer, run_dir: Path, datamodule: Any) -> None:
        manifests = {
            name: str(value)
            for name, value in vars(datamodule or object()).items()
            if name.endswith("manifest") and isinstance(value, str)
        }
        identity = {
            "manifests": {
                name: {"path": str(Path(path).absolute()), "sha256": file_identity(path)}
                for name, path in manifests.items()
                if Path(path).is_file()
            },
            "resumed_from": str(trainer.ckpt_path) if trainer.ckpt_path else None,
        }
        outputs = ["checkpoints", "config.yaml", "hparams.yaml", "metrics.csv"]
        write_record(run_dir, self.command, identity, outputs, {"argv": sys.argv})
