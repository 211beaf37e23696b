"""`emotion-ssl evaluate`: the linear probe on every fold, against baselines, as tables and PNGs.

Features are extracted once per feature set into `OUT/features/NAME/` (resumable; keyed by
the encoder's content and the manifest's, so a changed encoder at the same path is extracted
again), then every fold trains a fresh probe head on the training side and tests on the
held-out side. Nonsense is refused before any work: fewer than two classes, a fold whose
test side holds a class its training side lacks, an empty side; a fold with few clips is
warned about in the log and in results.md.
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
    claim_extraction_dir,
    encoder_identity,
    extract_manifest,
    read_features,
)
from emotion_ssl.export.frozen import load_encoder
from emotion_ssl.models.encoder import EmotionEncoder
from emotion_ssl.train.metrics import plot_confusion, scores_from_confusion
from emotion_ssl.train.probe import ProbeConfig, evaluate_fold, mfcc_statistics
from emotion_ssl.utils.outputs import claim_output_dir, file_identity
from emotion_ssl.utils.results import results_markdown, slug

logger = logging.getLogger(__name__)

BASELINES = ("random", "mfcc")
MIN_TEST_CLIPS = 10
"""A held-out fold with fewer clips gives scores too coarse to compare (one clip = 10%+)."""
MIN_TRAIN_CLIPS = 20
"""A training side with fewer clips leaves the probe almost nothing to learn from."""


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
    name: str,
    manifest_id: str,
) -> dict[str, np.ndarray]:
    """Frames of every entry, cached in `out`: the cache is reused only for the same encoder
    (by content), manifest (by content) and layer; otherwise it is extracted again."""
    config = ExtractConfig(layer=layer, outputs=("frames",))
    claimed = claim_extraction_dir(
        out,
        encoder_identity(encoder),
        manifest_id,
        config,
        "shards",
        replace_changed=True,
        command="evaluate-features",
    )
    if claimed.status == "replaced":
        logger.info(
            "%s: the encoder or manifest changed since %s was cached: extracting again", name, out
        )
    writer = FeatureWriter(out, "shards", shard_size=500)
    extractor = FeatureExtractor(encoder, config, device)
    extract_manifest(extractor, entries, writer, progress=progress, desc=f"features: {name}")
    return read_features(out) if (out / "index.jsonl").exists() else {}


def _mfcc_features(
    entries: Sequence[ManifestEntry], out: Path, manifest_id: str
) -> dict[str, np.ndarray]:
    claim_output_dir(
        out, "evaluate-mfcc", {"manifest": manifest_id}, ["mfcc.npz"], replace_changed=True
    )
    cache = out / "mfcc.npz"
    if cache.exists():
        return dict(np.load(cache))
    features = {}
    for entry in entries:
        try:
            features[entry.key] = mfcc_statistics(load_audio(entry.path))
        except AudioReadError as err:
            logger.warning("skipping %s: %s", entry.path, err)
    np.savez(cache, **features)  # type: ignore[arg-type]
    return features


def check_folds(
    entries: Sequence[ManifestEntry], fold_field: str, folds: Sequence[str], where: str
) -> list[str]:
    """Refuse an evaluation whose numbers would mean nothing; returns warnings.

    Errors (ValueError naming the manifest and fold): fewer than two classes among the
    entries; a fold with an empty training or test side; a fold whose test side holds a class
    the training side lacks (the probe could never predict it). Warnings: a test side of
    fewer than MIN_TEST_CLIPS clips or a training side of fewer than MIN_TRAIN_CLIPS."""
    present = sorted({str(e.label) for e in entries})
    if len(present) < 2:
        raise ValueError(
            f"{where}: {len(present)} class ({', '.join(present)}) among {len(entries)} clips: "
            "accuracy against one class is 100% whatever the features; a probe needs at least "
            "two classes (check the label field)"
        )
    warnings: list[str] = []
    for fold in folds:
        test = [e for e in entries if str(e.extra[fold_field]) == fold]
        train = [e for e in entries if str(e.extra[fold_field]) != fold]
        if not test or not train:
            side = "test" if not test else "training"
            raise ValueError(f"{where}: {fold_field} {fold} leaves the {side} side empty")
        unseen = sorted({str(e.label) for e in test} - {str(e.label) for e in train})
        if unseen:
            raise ValueError(
                f"{where}: {fold_field} {fold}: class(es) {unseen} are in the test side but not "
                "in training, so the probe can never predict them; use other folds or leave "
                "those clips out"
            )
        if len(test) < MIN_TEST_CLIPS or len(train) < MIN_TRAIN_CLIPS:
            warnings.append(
                f"{fold_field} {fold}: only {len(test)} test and {len(train)} training clips "
                f"(fewer than {MIN_TEST_CLIPS} / {MIN_TRAIN_CLIPS}): its scores are coarse"
            )
    for warning in warnings:
        logger.warning("%s: %s", where, warning)
    return warnings


def evaluate(
    encoder_path: str | None,
    data: str | Path,
    out_dir: str | Path,
    folds: str | Sequence[str] = "all",
    fold_field: str = "fold",
    baselines: Sequence[str] | None = None,
    probe: ProbeConfig | None = None,
    layer: int = -1,
    labels: Sequence[str] | None = None,
    device: str = "cpu",
    progress: bool = True,
    extra_encoders: dict[str, str] | None = None,
    encoder_name: str = "encoder",
    overwrite: bool = False,
) -> dict:
    """Run the probe for the encoder (if given, reported as `encoder_name`), any
    `extra_encoders` (name -> path) and each baseline; write results.json, results.md and one
    confusion matrix PNG per feature set. Returns the results dict (`summary(results)`: one
    line per feature set). `baselines`: any of BASELINES; None = both with an encoder, MFCC
    statistics alone without.

    `out_dir` is claimed as in `emotion_ssl.utils.outputs`: new, empty, or an earlier
    evaluation with the same settings (its feature caches are checked by content); anything
    else needs `overwrite`."""
    probe = probe or ProbeConfig()
    out = Path(out_dir)
    if baselines is None:  # random-init copies the encoder's architecture: only with one
        baselines = list(BASELINES) if encoder_path is not None else ["mfcc"]
    if encoder_path is None and "random" in baselines:
        raise ValueError(
            "the random-init baseline copies the encoder's architecture: give --encoder, or "
            "--baselines mfcc for baselines only"
        )
    unknown_baselines = sorted(set(baselines) - set(BASELINES))
    if unknown_baselines:
        raise ValueError(f"unknown baseline(s) {unknown_baselines}; use {', '.join(BASELINES)}")
    if encoder_path is None and not extra_encoders and not baselines:
        raise ValueError("nothing to evaluate: give --encoder and/or --baselines")
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
    warnings = check_folds(entries, fold_field, chosen, str(manifest))
    corpus = entries[0].corpus

    def absolute(path: str) -> str:
        return str(Path(path).absolute())

    names = [
        *([encoder_name] if encoder_path is not None else []),
        *(extra_encoders or {}),
        *(["random-init"] if "random" in baselines else []),
        *(["mfcc-stats"] if "mfcc" in baselines else []),
    ]
    identity = {
        "manifest": absolute(str(manifest)),
        "encoder": absolute(encoder_path) if encoder_path is not None else None,
        "extra_encoders": {n: absolute(p) for n, p in (extra_encoders or {}).items()},
        "encoder_name": encoder_name,
        "folds": chosen,
        "fold_field": fold_field,
        "baselines": list(baselines),
        "probe": asdict(probe),
        "layer": layer,
        "labels": label_names,
    }
    outputs = [
        "results.json",
        "results.md",
        "features",
        *[f"confusion_{slug(n)}.png" for n in names],
    ]
    claim_output_dir(out, "evaluate", identity, outputs, overwrite=overwrite)
    manifest_id = file_identity(manifest)

    feature_sets: dict[str, dict[str, np.ndarray]] = {}
    base_config = None
    encoders = dict(extra_encoders or {})
    if encoder_path is not None:
        encoders = {encoder_name: encoder_path, **encoders}
    for name, path in encoders.items():
        encoder = load_encoder(path)
        base_config = base_config if name != encoder_name else encoder.config
        feature_sets[name] = _encoder_features(
            encoder,
            entries,
            out / "features" / slug(name),
            layer,
            device,
            progress,
            name,
            manifest_id,
        )
    if "random" in baselines:
        assert base_config is not None  # checked above: random needs the encoder
        torch.manual_seed(probe.seed)
        random_encoder = EmotionEncoder(base_config).eval()
        feature_sets["random-init"] = _encoder_features(
            random_encoder,
            entries,
            out / "features" / "random-init",
            layer,
            device,
            progress,
            "random-init",
            manifest_id,
        )
    if "mfcc" in baselines:
        feature_sets["mfcc-stats"] = _mfcc_features(
            entries, out / "features" / "mfcc-stats", manifest_id
        )

    results: dict = {
        "manifest": str(manifest),
        "corpus": corpus,
        "encoder": encoder_path,
        "fold_field": fold_field,
        "folds": chosen,
        "labels": label_names,
        "probe": asdict(probe),
        "layer": layer,
        "warnings": warnings,
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
            if len(test_idx) == 0 or len(train_idx) == 0:
                raise ValueError(
                    f"{manifest}: {name}, {fold_field} {fold}: no readable clip on the "
                    f"{'test' if len(test_idx) == 0 else 'training'} side (see the skipped files)"
                )
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


def _fold_order(value: str) -> tuple[int, str]:
    return (int(value), "") if value.lstrip("-").isdigit() else (1 << 30, value)


def summary(results: dict) -> str:
    """One line per feature set: WA, UA and WF1 as mean ± std over the folds, in %."""
    lines = []
    for name, r in results["feature_sets"].items():
        mean, std = r["mean"], r["std"]
        lines.append(
            f"{name:<12} WA {100 * mean['wa']:.2f} ± {100 * std['wa']:.2f}  "
            f"UA {100 * mean['ua']:.2f} ± {100 * std['ua']:.2f}  "
            f"WF1 {100 * mean['wf1']:.2f} ± {100 * std['wf1']:.2f}"
        )
    return "\n".join(lines)
