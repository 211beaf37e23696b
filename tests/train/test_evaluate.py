"""`emotion-ssl evaluate` end to end on real speech (RAVDESS, actor-independent folds)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from shared_corpora import subset_manifest

from emotion_ssl.cli import main
from emotion_ssl.data.manifest import read_manifest
from emotion_ssl.train.probe import ProbeConfig, split_validation, train_probe


def test_ravdess_evaluation_writes_tables_and_plots(
    tmp_path: Path, golden_dir: Path, ravdess_manifest: Path
) -> None:
    # 4 actors, one in each of the 4 actor-independent folds (240 clips): seconds, not minutes
    manifest = subset_manifest(ravdess_manifest, tmp_path, actors=(1, 3, 5, 7))
    out = tmp_path / "eval"
    encoder = golden_dir / "emotion2vec_tiny" / "checkpoint.pt"
    args = [
        "evaluate",
        "--encoder",
        str(encoder),
        "--data",
        str(manifest),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--no-progress",
    ]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["labels"] == ["ang", "cal", "dis", "fea", "hap", "neu", "sad", "sur"]
    assert set(results["feature_sets"]) == {"encoder", "random-init", "mfcc-stats"}
    entries = read_manifest(manifest)
    for r in results["feature_sets"].values():
        assert sum(f["n_test"] for f in r["folds"].values()) == len(entries) == 240
        assert np.asarray(r["confusion"]).sum() == 240  # every utterance tested once
        for fold in r["folds"].values():
            assert 0.0 <= fold["ua"] <= 1.0 and 0.0 <= fold["wa"] <= 1.0
            # the probe's epoch was chosen on a held-out training actor (60 clips of 180)
            assert fold["valid_by_speaker"] == 1.0 and fold["valid_clips"] == 60
    # speaker independence: each fold's test actors are absent from its training side
    folds = {}
    for e in entries:
        folds.setdefault(str(e.extra["fold"]), set()).add(e.speaker)
    assert all(a.isdisjoint(b) for k, a in folds.items() for j, b in folds.items() if k != j)
    table = (out / "results.md").read_text()
    assert "| encoder |" in table and "| mfcc-stats |" in table
    for name in results["feature_sets"]:
        assert (out / f"confusion_{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_fold_is_a_clear_error(
    tmp_path: Path, ravdess_manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = subset_manifest(ravdess_manifest, tmp_path, actors=(1, 2))
    args = ["evaluate", "--data", str(manifest), "--out", str(tmp_path / "e")]
    assert main([*args, "--folds", "9", "--baselines", "mfcc"]) == 1
    assert re.search(r"^error: .*no fold \['9'\]; the folds are", capsys.readouterr().err, re.M)


def test_probe_learns_separable_frames() -> None:
    """Two classes whose frames differ in mean: the SPEC head separates them."""
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 40)
    feats = [
        rng.standard_normal((rng.integers(5, 30), 8)).astype(np.float32) + 2.0 * y for y in labels
    ]
    head, info = train_probe(feats, labels, 2, ProbeConfig(epochs=30, batch_size=16))
    assert info["valid_ua"] == 1.0


def test_validation_split_is_stratified() -> None:
    labels = np.array([0] * 10 + [1] * 5 + [2])
    split = split_validation(labels, 0.2, seed=0)  # no speakers: stratified by class
    train, valid = split.train, split.valid
    assert split.by == "class"
    assert sorted(np.concatenate([train, valid]).tolist()) == list(range(16))
    assert np.bincount(labels[valid], minlength=3).tolist() == [
        2,
        1,
        0,
    ]  # a singleton stays in train
