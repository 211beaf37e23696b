"""A shortened demo end to end through the real CLI: every file of the report is there and
every number in report.md comes from the run's own results."""

from __future__ import annotations

import json
from pathlib import Path

from emotion_ssl.cli import main
from emotion_ssl.demo import DemoSettings


def test_quick_demo_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "demo_out"
    assert main(["demo", "--quick", "--out", str(out), "--precision", "32-true"]) == 0
    for name in (
        "report.md",
        "report.json",
        "loss_curves.png",
        "confusion_matrix.png",
        "embeddings_2d.png",
    ):
        assert (out / name).stat().st_size > 0, name
    for png in ("loss_curves.png", "confusion_matrix.png", "embeddings_2d.png", "monitor.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "![representation monitor](monitor.png)" in report
    # the monitor probed the labelled training speakers: its rows carry the labelled metrics
    monitor = (out / "runs" / "no_category" / "version_0" / "monitor.csv").read_text()
    assert "monitor/last/probe_ua" in monitor.splitlines()[0]
    assert len(monitor.splitlines()) >= 3  # update 0 (random init), ..., the last update
    results = json.loads((out / "evaluation" / "results.json").read_text())
    assert set(results["feature_sets"]) == {
        "pretrained (full objective)",
        "pretrained, no category term",
        "random-init",
        "mfcc-stats",
    }
    for name, r in results["feature_sets"].items():
        row = f"| {name} | {100 * r['mean']['wa']:.1f} | {100 * r['mean']['ua']:.1f} | {100 * r['mean']['wf1']:.1f} |"
        assert row in report  # the table is the run's numbers, not typed in
    assert json.loads((out / "report.json").read_text())["results"] == results
    # both encoders exported; features extracted for five files
    for encoder in ("full", "no_category"):
        assert (out / "encoders" / encoder / "model.safetensors").exists()
    assert len((out / "features" / "index.jsonl").read_text().splitlines()) == 5
    # the full run used the category term, the other did not; both took the demo's settings
    full = (out / "runs" / "full" / "version_0" / "hparams.yaml").read_text()
    plain = (out / "runs" / "no_category" / "version_0" / "hparams.yaml").read_text()
    settings = DemoSettings.quick()
    assert f"category_weight: {settings.category_weight}" in full
    assert "category_weight: 0.0" in plain
    for hparams in (full, plain):
        assert f"num_clones: {settings.num_clones}" in hparams
        assert f"lr: {settings.lr}" in hparams
    assert results["probe"]["batch_size"] == settings.probe_batch_size
    # --precision reaches the runs and the report (fp32 even on a CPU with bf16 instructions)
    assert json.loads((out / "report.json").read_text())["precision"] == "32-true"
    for run in ("full", "no_category"):
        config = (out / "runs" / run / "version_0" / "config.yaml").read_text()
        assert "precision: 32-true" in config


def test_quick_demo_on_ravdess(tmp_path: Path) -> None:
    """`emotion-ssl demo --corpus ravdess --root PATH` on the real RAVDESS speech clips: actors of
    folds 1-3 labelled, fold 4's six actors held out for the probe."""
    from tests.conftest import SHARED, require_shared

    root = require_shared(SHARED / "data" / "ravdess")
    out = tmp_path / "demo_out"
    args = ["demo", "--quick", "--corpus", "ravdess", "--root", str(root), "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "evaluation" / "results.json").read_text())
    assert results["folds"] == ["4"] and results["fold_field"] == "fold"
    assert len(results["labels"]) == 8  # the 8 RAVDESS categories
    # 24 actors x 60 clips; fold 4 holds 6 actors = 360 clips
    full = results["feature_sets"]["pretrained (full objective)"]
    assert full["folds"]["4"]["n_test"] == 360
    assert "RAVDESS (1440 clips, 24 actors)" in (out / "report.md").read_text()
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
