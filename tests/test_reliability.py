"""Issue 14, "never lose or misreport a user's work": one test per row of the table in
docs/reliability.md (each failed on the code before the fix)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from emotion_ssl.cli import main
from emotion_ssl.data.manifest import read_manifest, write_manifest
from emotion_ssl.demo.corpus import write_synthetic_corpus
from emotion_ssl.export import save_encoder_dir
from emotion_ssl.export.weights import PretrainedWeights
from emotion_ssl.models import EmotionEncoder, EncoderConfig

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "pretrain" / "tiny.yaml"
CLI = Path(sys.executable).with_name("emotion-ssl")
SMALL_RUN = [  # a few hundred milliseconds per update on one thread
    "-c", str(TINY),
    "--data.max_sample_size", "8000",
    "--data.min_sample_size", "4000",
    "--data.max_tokens", "32000",
    "--trainer.enable_progress_bar", "false",
]  # fmt: skip


def encoder_dir(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    encoder = EmotionEncoder(EncoderConfig.tiny())
    weights = PretrainedWeights(
        path=f"seed {seed}", config=encoder.config, encoder_state=encoder.state_dict()
    )
    return save_encoder_dir(path, weights)


def labelled_corpus(
    root: Path, labels: tuple[str, ...] = ("ang", "hap"), num_files: int = 8
) -> Path:
    """Short clips with `labels` in turn and a `fold` field: 1, 1, 2, 2, 1, 1, ..."""
    manifest = write_synthetic_corpus(
        root, num_files=num_files, labels=labels, min_seconds=0.5, max_seconds=0.8
    )
    entries = [
        dataclasses.replace(e, extra={**e.extra, "fold": 1 + (i // 2) % 2})
        for i, e in enumerate(read_manifest(manifest))
    ]
    return write_manifest(root / "labelled.jsonl", entries)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `emotion-ssl` command, as a user runs it."""
    return subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------ overwrites and caches
def test_extract_refuses_a_folder_holding_the_users_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = labelled_corpus(tmp_path / "corpus")
    encoder = encoder_dir(tmp_path / "encoder", seed=0)
    out = tmp_path / "mine"
    (out / "frames").mkdir(parents=True)
    (out / "frames" / "x.npy").write_bytes(b"the user's array")
    (out / "index.jsonl").write_text('{"mine": true}\n')
    args = ["extract", "--encoder", str(encoder), "--manifest", str(manifest), "--no-progress"]
    assert main([*args, "--out", str(out)]) == 1
    assert "is not empty" in capsys.readouterr().err
    # --overwrite adds to a foreign folder, but never replaces a file it did not write
    assert main([*args, "--out", str(out), "--overwrite"]) == 1
    assert "mine/frames was not written by emotion-ssl" in capsys.readouterr().err
    assert (out / "frames" / "x.npy").read_bytes() == b"the user's array"
    assert (out / "index.jsonl").read_text() == '{"mine": true}\n'
    assert sorted(p.name for p in out.iterdir()) == ["frames", "index.jsonl"]
    # a folder with other files of the user's: added to with --overwrite, theirs untouched
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "notes.txt").write_text("keep")
    assert main([*args, "--out", str(tmp_path / "shared"), "--overwrite"]) == 0
    assert (tmp_path / "shared" / "notes.txt").read_text() == "keep"
    assert (tmp_path / "shared" / "emotion-ssl.json").is_file()


def test_export_refuses_to_replace_another_encoder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = encoder_dir(tmp_path / "a", 0), encoder_dir(tmp_path / "b", 1)
    out = tmp_path / "exported"
    assert main(["export", str(first), str(out)]) == 0
    weights = (out / "model.safetensors").read_bytes()
    assert main(["export", str(first), str(out)]) == 0  # the same export again: fine
    assert main(["export", str(second), str(out)]) == 1
    err = capsys.readouterr().err
    assert re.search(r"^error: .*exported holds what was written by other inputs", err, re.M)
    assert "--overwrite" in err
    assert (out / "model.safetensors").read_bytes() == weights
    assert main(["export", str(second), str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()


def test_extract_refuses_features_of_a_changed_encoder_at_the_same_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = labelled_corpus(tmp_path / "corpus")
    encoder = encoder_dir(tmp_path / "encoder", seed=0)
    out = tmp_path / "features"
    args = ["extract", "--encoder", str(encoder), "--manifest", str(manifest)]
    args += ["--out", str(out), "--no-progress", "--outputs", "utterance"]
    assert main(args) == 0
    old = np.load(next((out / "utterance").iterdir()))
    encoder_dir(tmp_path / "encoder", seed=1)  # another encoder, same path
    assert main(args) == 1
    assert "encoder:" in capsys.readouterr().err  # the record's encoder hash differs
    assert main([*args, "--overwrite"]) == 0
    new = np.load(next((out / "utterance").iterdir()))
    assert not np.allclose(old, new)  # extracted again, not "already done"


def test_evaluate_recomputes_features_of_a_changed_encoder_at_the_same_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from emotion_ssl.export.extract import read_features

    manifest = labelled_corpus(tmp_path / "corpus")
    encoder = encoder_dir(tmp_path / "encoder", seed=0)
    out = tmp_path / "eval"
    args = ["evaluate", "--encoder", str(encoder), "--data", str(manifest), "--out", str(out)]
    args += ["--baselines", "", "--epochs", "1"]
    assert main(args) == 0
    old = read_features(out / "features" / "encoder")
    encoder_dir(tmp_path / "encoder", seed=1)
    assert main(args) == 0
    new = read_features(out / "features" / "encoder")
    assert old.keys() == new.keys()
    assert all(not np.allclose(old[k], new[k]) for k in old)
    # and the features are the new encoder's
    from emotion_ssl.export import load_encoder
    from emotion_ssl.export.extract import ExtractConfig, FeatureExtractor

    entry = read_manifest(manifest)[0]
    audio = sf.read(entry.path, dtype="float32")[0]
    want = FeatureExtractor(load_encoder(encoder), ExtractConfig()).extract([audio])[0]["frames"]
    assert np.abs(new[entry.key] - want).max() <= 1e-5


# ------------------------------------------------------------------ runs that fail or die
def test_unwritable_checkpoint_folder_fails_before_the_first_update(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_synthetic_corpus(tmp_path / "corpus", num_files=4, seed=0)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = ["pretrain", *SMALL_RUN, "--data.train_manifest", str(manifest)]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    args += ["--checkpoint.dirpath", str(blocker / "checkpoints")]  # cannot be created
    assert main(args) == 1
    err = capsys.readouterr().err
    assert re.search(
        r"^error: the checkpoint folder .*a-file/checkpoints is not writable", err, re.M
    )
    assert "Traceback" not in err
    metrics = tmp_path / "runs" / "pretrain" / "version_0" / "metrics.csv"
    assert not metrics.exists() or "train/loss" not in metrics.read_text()  # no update ran


KILL_AT_LAST_CHECKPOINT = """
import os, signal, sys
from emotion_ssl.train import checkpoint

save = checkpoint.AtomicCheckpointIO.save_checkpoint

def killed_while_saving_last(self, ckpt, path, storage_options=None):
    if os.path.basename(str(path)) == "last.ckpt" and ckpt["global_step"] == 4:
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 between step=4.ckpt and last.ckpt
    save(self, ckpt, path, storage_options)

checkpoint.AtomicCheckpointIO.save_checkpoint = killed_while_saving_last
from emotion_ssl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_keeps_its_record(tmp_path: Path) -> None:
    manifest = write_synthetic_corpus(tmp_path / "corpus", num_files=4, seed=0)
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    stale = ckpt_dir / ".last.ckpt.k2j3x9_a.tmp"  # what an earlier killed save left behind
    stale.write_bytes(b"half a checkpoint")
    (ckpt_dir / "notes.tmp").write_text("the user's")
    args = ["pretrain", *SMALL_RUN, "--data.train_manifest", str(manifest)]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    args += ["--checkpoint.dirpath", str(ckpt_dir), "--checkpoint.every_n_train_steps", "2"]
    args += ["--trainer.max_steps", "100", "--trainer.log_every_n_steps", "1"]
    result = subprocess.run(
        [sys.executable, "-c", KILL_AT_LAST_CHECKPOINT, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == -9, result.stderr[-2000:]
    run = tmp_path / "runs" / "pretrain" / "version_0"
    steps = [
        int(float(line.split(",")[0])) for line in (run / "losses.csv").read_text().split()[1:]
    ]
    assert steps == [1, 2, 3, 4]
    assert (run / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    (step_4,) = ckpt_dir.glob("*step=4.ckpt")
    newest = torch.load(step_4, weights_only=True, map_location="cpu")
    last = torch.load(ckpt_dir / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == newest["global_step"] == 4
    assert not stale.exists() and (ckpt_dir / "notes.tmp").read_text() == "the user's"
    record = json.loads((run / "emotion-ssl.json").read_text())
    assert record["command"] == "pretrain"
    assert record["identity"]["manifests"]["train_manifest"]["sha256"]


# ------------------------------------------------------------------ evaluation
def test_evaluate_refuses_one_class_and_unseen_test_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    one_class = labelled_corpus(tmp_path / "one", labels=("neu",))
    args = ["evaluate", "--data", str(one_class), "--out", str(tmp_path / "e"), "--epochs", "1"]
    assert main([*args, "--baselines", "mfcc", "--no-progress"]) == 1
    assert "a probe needs at least two classes" in capsys.readouterr().err
    assert not (tmp_path / "e" / "results.json").exists()
    from emotion_ssl.train.evaluate import check_folds

    entries = read_manifest(labelled_corpus(tmp_path / "two", num_files=8))
    # fold 2's "sad" clip has no training counterpart
    odd = [*entries[:-1], dataclasses.replace(entries[-1], label="sad")]
    with pytest.raises(ValueError, match=r"fold 2: class\(es\) \['sad'\] are in the test side"):
        check_folds(odd, "fold", ["1", "2"], "m.jsonl")
    with caplog.at_level(logging.WARNING):
        warned = check_folds(entries, "fold", ["1", "2"], "m.jsonl")
    assert len(warned) == 2 and "only 4 test and 4 training clips" in warned[0]
    assert "scores are coarse" in caplog.text


def test_evaluate_without_encoder_runs_the_baselines(tmp_path: Path) -> None:
    manifest = labelled_corpus(tmp_path / "corpus")
    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(manifest), "--out", str(out), "--epochs", "1"]
    assert main([*args, "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["feature_sets"]) == ["mfcc-stats"]
    assert "**warning**" in (out / "results.md").read_text()  # 8 clips: coarse scores


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("case", ["missing manifest", "malformed JSON", "bad checkpoint"])
def test_expected_errors_are_one_line(tmp_path: Path, case: str) -> None:
    if case == "missing manifest":
        args = ["pretrain", *SMALL_RUN, "--data.train_manifest", str(tmp_path / "nope.jsonl")]
        named = "--data.train_manifest"
    elif case == "malformed JSON":
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"key": "a", "path": "a.wav",\n')
        args = ["evaluate", "--data", str(bad), "--out", str(tmp_path / "e"), "--baselines", "mfcc"]
        named = f"{bad}:1: invalid JSON"
    else:
        ckpt = tmp_path / "last.ckpt"
        ckpt.write_bytes(b"PK\x03\x04" + bytes(100))  # a checkpoint cut short
        args = ["export", str(ckpt), str(tmp_path / "enc")]
        named = "is an incomplete checkpoint"
    result = cli(*args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert named in line, line
    assert error_lines(result.stderr)[-1] == result.stderr.strip().splitlines()[-1]
    if case == "bad checkpoint":  # the traceback is one switch away
        debug = cli(*args, env={"EMOTION_SSL_DEBUG": "1"})
        assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_misspelt_pretrain_option_is_one_line_with_a_suggestion() -> None:
    result = cli("pretrain", "-c", str(TINY), "--data.train_manifst", "x.jsonl")
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert "unrecognized arguments: --data.train_manifst" in line
    assert "did you mean --data.train_manifest?" in line
    assert "see emotion-ssl pretrain --help" in line
    assert "usage:" not in result.stderr and "fit --help" not in result.stderr


def test_random_bytes_are_not_a_checkpoint_even_with_trust_pickle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    assert main(["import-fairseq", str(noise), str(tmp_path / "a"), "--trust-pickle"]) == 1
    err = capsys.readouterr().err
    assert "is not a PyTorch checkpoint" in err and "trust-pickle" not in err
    # a real checkpoint that pickles Python objects still gets the --trust-pickle advice
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": {}, "cfg": argparse.Namespace(model="data2vec")}, pickled)
    assert main(["import-fairseq", str(pickled), str(tmp_path / "b")]) == 1
    assert "--trust-pickle" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_import_fairseq_names_a_folder_as_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = encoder_dir(tmp_path / "encoder", seed=0)
    assert main(["import-fairseq", str(folder), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "is a folder: import-fairseq reads one fairseq checkpoint file" in err
    assert "no such" not in err


# ------------------------------------------------------------------ odd audio
def test_truncated_wav_is_reported_by_the_scan_and_at_load_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from data_prep.folder import main as scan
    from emotion_ssl.data.pretrain import PretrainDataset

    root = tmp_path / "audio"
    root.mkdir()
    audio = (np.random.default_rng(0).standard_normal(48_000) * 0.1).astype(np.float32)
    sf.write(root / "whole.wav", audio, 16_000, subtype="PCM_16")
    sf.write(root / "cut.wav", audio, 16_000, subtype="PCM_16")
    manifest = write_manifest(
        tmp_path / "before.jsonl",
        [e for e in read_manifest_from(root)],  # prepared while cut.wav was whole
    )
    data = (root / "cut.wav").read_bytes()
    (root / "cut.wav").write_bytes(data[: 44 + 2 * 16_000])  # header says 3 s, data 1 s
    assert scan(["--root", str(root), "--out", str(tmp_path / "scan")]) == 0
    report = json.loads((tmp_path / "scan" / "report.json").read_text())
    assert [(r["path"], r["reason"]) for r in report["rejected_files"]] == [
        ("cut.wav", "truncated")
    ]
    assert (
        "the header says 3.000 s, the file holds 1.000 s" in report["rejected_files"][0]["detail"]
    )
    assert "truncated" in (tmp_path / "scan" / "report.md").read_text()
    dataset = PretrainDataset(read_manifest(manifest), max_sample_size=64_000)
    with caplog.at_level(logging.WARNING):
        items = [dataset[i] for i in range(len(dataset))]
    assert sorted(len(item.waveform) for item in items) == [16_000, 48_000]
    assert "decodes to 1.00 s but its manifest entry says 3.00 s" in caplog.text
    assert dataset.num_shorter == 1


def read_manifest_from(root: Path) -> list:  # type: ignore[type-arg]
    from emotion_ssl.data.manifest import entry_from_audio_file

    return [entry_from_audio_file(p, corpus="t") for p in sorted(root.glob("*.wav"))]


# ------------------------------------------------------------------ the surface
def test_exported_weights_and_checkpoints_follow_the_umask(tmp_path: Path) -> None:
    from emotion_ssl.data.manifest import write_text_atomically
    from emotion_ssl.train.checkpoint import atomic_torch_save

    previous = os.umask(0o022)
    try:
        folder = encoder_dir(tmp_path / "encoder", seed=0)
        atomic_torch_save({"a": torch.zeros(2)}, tmp_path / "x.ckpt")
        write_text_atomically(tmp_path / "m.jsonl", "{}\n")
    finally:
        os.umask(previous)
    for path in [*folder.iterdir(), tmp_path / "x.ckpt", tmp_path / "m.jsonl"]:
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_extraction_progress_bars_are_named_and_never_clamped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tqdm import TqdmWarning

    from emotion_ssl.export.extract import (
        ExtractConfig,
        FeatureExtractor,
        FeatureWriter,
        extract_manifest,
    )

    manifest = labelled_corpus(tmp_path / "corpus")
    encoder = encoder_dir(tmp_path / "encoder", seed=0)
    args = ["evaluate", "--encoder", str(encoder), "--data", str(manifest)]
    assert (
        main([*args, "--out", str(tmp_path / "e"), "--baselines", "random", "--epochs", "1"]) == 0
    )
    err = capsys.readouterr().err
    assert "features: encoder: 100%" in err and "features: random-init: 100%" in err
    audio = (np.random.default_rng(0).standard_normal(16_320) * 0.1).astype(np.float32)
    sf.write(tmp_path / "a.wav", audio, 16_000, subtype="FLOAT")  # 1.02 s: rounds to 1.0
    entries = read_manifest_from(tmp_path)
    torch.manual_seed(0)
    extractor = FeatureExtractor(EmotionEncoder(EncoderConfig.tiny()).eval(), ExtractConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error", TqdmWarning)  # "clamping frac to range [0, 1]"
        extract_manifest(extractor, entries, FeatureWriter(tmp_path / "f"), progress=True)


def test_pretrain_says_where_its_run_goes_and_counts_updates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from emotion_ssl.cli import pretrain

    manifest = write_synthetic_corpus(tmp_path / "corpus", num_files=4, seed=0)
    args = [*SMALL_RUN, "--data.train_manifest", str(manifest), "--trainer.max_steps", "1"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    cli_run = pretrain([*args, "--trainer.enable_progress_bar", "true"])
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "pretrain" / "version_0"
    assert f"emotion-ssl pretrain: run folder {run}" in out
    assert f"finished after 1 updates: run folder {run}; newest checkpoint" in out
    bar = cli_run.trainer.progress_bar_callback
    description = bar._get_train_description(0) if hasattr(bar, "_get_train_description") else ""
    assert "/-2" not in description and "update 1/1" in description


def test_every_option_has_help_and_usage_lines_can_be_pasted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = {}

    class Parsed(Exception):
        pass

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        seen[self.prog] = self
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    for command in ("extract", "export", "export-fairseq", "import-fairseq", "evaluate", "demo"):
        with pytest.raises(Parsed):
            main([command])
    assert len(seen) == 6
    for prog, parser in seen.items():
        assert parser.format_usage().startswith(f"usage: {prog} "), prog
        bare = [a.dest for a in parser._actions if not a.help]
        assert bare == [], (prog, bare)
    result = cli("pretrain", "--help")
    assert result.stdout.startswith("usage: emotion-ssl pretrain ")
    # each option with its help text: on its own line, or beside a short option name
    lines = result.stdout.splitlines()
    options = []
    for i, line in enumerate(lines):
        name = r"(--(?:data|model|monitor)\.[\w.]+)(?: \S+)?(?:, --[\w.+]+ \S+)?"
        found = re.match(rf"  {name}(?: {{2,}}(\S.*))?$", line)
        if found:
            options.append((found[1], found[2] or lines[i + 1].strip()))
    assert len(options) >= 70
    bare = [name for name, text in options if text.startswith("(")]  # only "(type: ...)"
    assert bare == [], bare
    # the settings groups' fields are listed one by one, with their docstrings as help
    names = {name for name, _ in options}
    assert {"--model.objective.variance_weight", "--model.optim.lr"} <= names


def test_docs_table_names_these_tests() -> None:
    """docs/reliability.md pins each row to a test here: the names exist, and none is left out."""
    table = (REPO / "docs" / "reliability.md").read_text()
    named = set(re.findall(r"`(test_\w+)`", table))
    here = {name for name in globals() if name.startswith("test_")} - {
        "test_docs_table_names_these_tests"
    }
    assert named == here
