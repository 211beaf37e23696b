"""`emotion-ssl evaluate`: the linear probe on every fold, against baselines, as tables and PNGs.

Features are extracted once per feature set into `OUT/features/NAME/` (resumable), then every
fold trains a fresh probe head on the training side and tests on the held-out side.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from emotion_ssl.data.audio import AudioReadError, load_audio
from emotion_ssl.data.manifest import ManifestEntry, read_manifest
from emotion_ssl.export.extract import (
    ExtractConfig,
    FeatureExtractor,
    FeatureWriter,
    extract_manifest,
    read_features,
)
from emotion_ssl.export.frozen import load_encoder
from emotion_ssl.models.encoder import EmotionEncoder
from emotion_ssl.train.metrics import plot_confusion, scores_from_confusion
from emotion_ssl.train.probe import ProbeConfig, evaluate_fold, mfcc_statistics

logger = logging.getLogger(__name__)

BASELINES = ("random", "mfcc")


def resolve_manifest(data: str | Path) -> Path:
    """A manifest file, or a folder holding `manifest.jsonl` (what data_prep writes)."""
    path = Path(data)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{data}: no manifest (a .jsonl file or a folder with manifest.jsonl)"
        )
    return path


def _encoder_features(
    encoder: EmotionEncoder,
    entries: Sequence[ManifestEntry],
    out: Path,
    layer: int,
    device: str,
    progress: bool,
) -> dict[str, np.ndarray]:
    config = ExtractConfig(layer=layer, outputs=("frames",))
    writer = FeatureWriter(out, "shards", shard_size=500)
    extract_manifest(FeatureExtractor(encoder, config, device), entries, writer, progress=progress)
    return read_features(out) if (out / "index.jsonl").exists() else {}


def _mfcc_features(entries: Sequence[ManifestEntry], out: Path) -> dict[str, np.ndarray]:
    cache = out / "mfcc.npz"
    if cache.exists():
        return dict(np.load(cache))
    features = {}
    for entry in entries:
        try:
            features[entry.key] = mfcc_statistics(load_audio(entry.path))
        except AudioReadError as err:
            logger.warning("skipping %s: %s", entry.path, err)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **features)  # type: ignore[arg-type]
    return features


def evaluate(
    encoder_path: str | None,
    data: str | Path,
    out_dir: str | Path,
    folds: str | Sequence[str] = "all",
    fold_field: str = "fold",
    baselines: Sequence[str] = BASELINES,
    probe: ProbeConfig | None = None,
    layer: int = -1,
    labels: Sequence[str] | None = None,
    device: str = "cpu",
    progress: bool = True,
    extra_encoders: dict[str, str] | None = None,
    encoder_name: str = "encoder",
) -> dict:
    """Run the probe for the encoder (if given, reported as `encoder_name`), any
    `extra_encoders` (name -> path) and each baseline; write results.json, results.md and one
    confusion matrix PNG per feature set. Returns the results dict."""
    probe = probe or ProbeConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = resolve_manifest(data)
    entries = [e for e in read_manifest(manifest) if e.label is not None]
    if not entries:
        raise ValueError(f"{manifest}: no labelled entries to evaluate on")
    label_names = list(labels) if labels else sorted({str(e.label) for e in entries})
    unknown = sorted({str(e.label) for e in entries} - set(label_names))
    if unknown:
        raise ValueError(f"{manifest}: labels {unknown} are not in --labels {label_names}")
    lacking = [e.key for e in entries if fold_field not in e.extra]
    if lacking:
        raise ValueError(
            f"{manifest}: {len(lacking)} entries lack the fold field {fold_field!r} (first: {lacking[0]})"
        )
    all_folds = sorted({str(e.extra[fold_field]) for e in entries}, key=_fold_order)
    chosen = all_folds if folds == "all" else [str(f) for f in folds]
    missing = sorted(set(chosen) - set(all_folds))
    if missing:
        raise ValueError(f"{manifest}: no {fold_field} {missing}; the folds are {all_folds}")
    corpus = entries[0].corpus

    feature_sets: dict[str, dict[str, np.ndarray]] = {}
    base_config = None
    if encoder_path is not None:
        encoder = load_encoder(encoder_path)
        base_config = encoder.config
        feature_sets[encoder_name] = _encoder_features(
            encoder, entries, out / "features" / slug(encoder_name), layer, device, progress
        )
    for name, path in (extra_encoders or {}).items():
        feature_sets[name] = _encoder_features(
            load_encoder(path), entries, out / "features" / slug(name), layer, device, progress
        )
    for name in baselines:
        if name == "random":
            if base_config is None:
                raise ValueError(
                    "the random-init baseline needs --encoder (it copies its architecture)"
                )
            torch.manual_seed(probe.seed)
            random_encoder = EmotionEncoder(base_config).eval()
            feature_sets["random-init"] = _encoder_features(
                random_encoder, entries, out / "features" / "random-init", layer, device, progress
            )
        elif name == "mfcc":
            feature_sets["mfcc-stats"] = _mfcc_features(entries, out / "features")
        else:
            raise ValueError(f"unknown baseline {name!r}; use {BASELINES}")

    results: dict = {
        "manifest": str(manifest),
        "corpus": corpus,
        "encoder": encoder_path,
        "fold_field": fold_field,
        "folds": chosen,
        "labels": label_names,
        "probe": asdict(probe),
        "layer": layer,
        "feature_sets": {},
    }
    for name, features in feature_sets.items():
        usable = [e for e in entries if e.key in features]
        y = np.array([label_names.index(str(e.label)) for e in usable])
        fold_of = np.array([str(e.extra[fold_field]) for e in usable])
        feats = [features[e.key] for e in usable]
        speakers = [e.speaker for e in usable]  # validation holds out whole speakers
        confusion = np.zeros((len(label_names), len(label_names)), dtype=np.int64)
        per_fold = {}
        for fold in chosen:
            test_idx = np.flatnonzero(fold_of == fold)
            train_idx = np.flatnonzero(fold_of != fold)
            scores, _, info = evaluate_fold(
                feats, y, train_idx, test_idx, len(label_names), probe, speakers
            )
            confusion += scores.confusion
            per_fold[fold] = {**scores.as_dict(), "n_test": int(len(test_idx)), **info}
            logger.info(
                "%s fold %s: WA %.3f UA %.3f WF1 %.3f", name, fold, scores.wa, scores.ua, scores.wf1
            )
        metrics = {m: [per_fold[f][m] for f in chosen] for m in ("wa", "ua", "wf1")}
        results["feature_sets"][name] = {
            "folds": per_fold,
            "mean": {m: float(np.mean(v)) for m, v in metrics.items()},
            "std": {m: float(np.std(v)) for m, v in metrics.items()},
            "pooled": scores_from_confusion(confusion).as_dict(),
            "confusion": confusion.tolist(),
            "num_utterances": len(usable),
        }
        plot_confusion(
            confusion,
            label_names,
            str(out / f"confusion_{slug(name)}.png"),
            f"{corpus}: {name} (all test folds)",
        )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    return results


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _fold_order(value: str) -> tuple[int, str]:
    return (int(value), "") if value.lstrip("-").isdigit() else (1 << 30, value)


def results_markdown(results: dict) -> str:
    """The tables a person reads: mean ± std per feature set, then every fold."""
    lines = [
        f"# Linear-probe evaluation: {results['corpus']}",
        "",
        f"- manifest: `{results['manifest']}`; encoder: `{results['encoder']}`",
        f"- folds: {results['fold_field']} = {', '.join(results['folds'])} (each held out once)",
        f"- classes: {', '.join(results['labels'])}",
        f"- probe: {results['probe']}",
        "",
        "| features | WA | UA | WF1 |",
        "|---|---|---|---|",
    ]
    for name, r in results["feature_sets"].items():
        cells = [f"{100 * r['mean'][m]:.2f} ± {100 * r['std'][m]:.2f}" for m in ("wa", "ua", "wf1")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += [
        "",
        "Per fold (WA / UA / WF1, %):",
        "",
        "| fold | n | " + " | ".join(results["feature_sets"]) + " |",
    ]
    lines.append("|---|---|" + "---|" * len(results["feature_sets"]))
    for fold in results["folds"]:
        sets = list(results["feature_sets"].values())
        n = sets[0]["folds"][fold]["n_test"]
        cells = [
            " / ".join(f"{100 * r['folds'][fold][m]:.1f}" for m in ("wa", "ua", "wf1"))
            for r in sets
        ]
        lines.append(f"| {fold} | {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        *[f"![{name}](confusion_{slug(name)}.png)" for name in results["feature_sets"]],
        "",
    ]
    return "\n".join(lines)
