"""A shortened demo end to end through the real CLI: every file of the report is there and
every number in report.md comes from the run's own results."""

from __future__ import annotations

import json
from pathlib import Path

from emotion_ssl.cli import main


def test_quick_demo_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "demo_out"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    for name in (
        "report.md",
        "report.json",
        "loss_curves.png",
        "confusion_matrix.png",
        "embeddings_2d.png",
    ):
        assert (out / name).stat().st_size > 0, name
    for png in ("loss_curves.png", "confusion_matrix.png", "embeddings_2d.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
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
    # the full run used the category term, the other did not
    assert (
        "category_weight: 1.0" in (out / "runs" / "full" / "version_0" / "hparams.yaml").read_text()
    )
    assert (
        "category_weight: 0.0"
        in (out / "runs" / "no_category" / "version_0" / "hparams.yaml").read_text()
    )
