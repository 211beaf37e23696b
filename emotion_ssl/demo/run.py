"""`emotion-ssl demo`: the whole life cycle on a built-in corpus (or RAVDESS) in minutes on CPU.

1. data: the built-in emotional speech generator (speaker-split manifests), or RAVDESS
   prepared by data_prep (actors of fold 4 held out);
2. pretraining of the tiny encoder on the unlabelled pool with the full objective (frame +
   utterance + category term on the labelled training speakers), and the same run without
   the category term;
3. export of both encoders; the linear probe on held-out speakers against the random-init
   encoder and MFCC statistics;
4. feature extraction for a few files;
5. `report.md` with the table, loss curves, a confusion matrix and a 2-D projection of the
   utterance embeddings, every number computed by this run.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from emotion_ssl.data.manifest import ManifestEntry, read_manifest, write_manifest

FULL = "pretrained (full objective)"
NO_CATEGORY = "pretrained, no category term"
RECIPE = resources.files("emotion_ssl") / "recipes" / "pretrain" / "tiny.yaml"
"""The recipe the demo's runs start from, shipped inside the package (an installed wheel has it)."""
DEMO_OUTPUTS = (
    "corpus",
    "runs",
    "encoders",
    "evaluation",
    "features",
    "report.md",
    "report.json",
    "loss_curves.png",
    "confusion_matrix.png",
    "embeddings_2d.png",
    "monitor.png",
)
"""What the demo writes into its folder."""


@dataclass
class DemoSettings:
    """How big the demo is; `quick()` is the seconds-long version the tests run.

    The pretraining settings override `emotion_ssl/recipes/pretrain/tiny.yaml` for a 400-update run: many
    short crops per batch (16 x 1 s, 2 clones each) so that every batch holds several labelled
    utterances of each category, the category term at weight 1 on 75% labelled items (at
    weight 5 it fits the labelled speakers' categories and lowers the probe on held-out ones:
    benchmarks/RESULTS.md, "Quality study, every row") and lr 1e-3, and the variance hinge on
    clip means (`variance_weight`; without it the clip embeddings collapse within 50 updates
    and the label-free row stays below random-init).
    The probe keeps SPEC section 7's head and schedule but uses batches of 32: the
    demo's ~190 training clips make only two updates per epoch at 128, too few for the probe to
    converge. Measured on the built-in corpus (docs/pretraining.md, "The category term").
    """

    speakers: int = 36
    utterances: int = 4  # per speaker and emotion
    steps: int = 400
    lr: float = 1e-3
    num_clones: int = 2
    crop_seconds: float = 1.0
    clips_per_batch: int = 16
    category_weight: float = 1.0
    category_batch_centring: bool = True
    labelled_fraction: float = 0.75
    # ours: the variance hinge on clip means that keeps label-free pretraining from collapsing
    # the clip embeddings (benchmarks/RESULTS.md, "Label-free pretraining ... the monitor")
    variance_weight: float = 5.0
    variance_target: float = 1.0
    probe_epochs: int = 100
    probe_batch_size: int = 32
    precision: str = "auto"

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(speakers=10, utterances=1, steps=4, probe_epochs=2)


@dataclass
class DemoData:
    unlabelled: Path
    labelled: Path
    evaluation: Path  # labelled + held-out, with the fold field
    fold_field: str
    test_fold: str
    labels: list[str]
    description: str


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def synthetic_data(out: Path, settings: DemoSettings) -> DemoData:
    from emotion_ssl.demo.corpus import EMOTIONS, CorpusSpec, write_emotion_corpus

    train_speakers = max(2, settings.speakers // 3)
    test_speakers = max(2, settings.speakers * 2 // 9)
    spec = CorpusSpec(
        num_speakers=settings.speakers, utterances_per_speaker_per_emotion=settings.utterances
    )
    paths = write_emotion_corpus(
        out / "corpus", spec, labelled_speakers=(train_speakers, test_speakers)
    )
    evaluation = [*read_manifest(paths["train"]), *read_manifest(paths["test"])]
    eval_path = write_manifest(out / "corpus" / "evaluation.jsonl", evaluation)
    n_unlabelled = len(read_manifest(paths["unlabelled"]))
    return DemoData(
        unlabelled=paths["unlabelled"],
        labelled=paths["train"],
        evaluation=eval_path,
        fold_field="split",
        test_fold="test",
        labels=list(EMOTIONS),
        description=(
            f"built-in generated emotional speech: {settings.speakers} speakers x "
            f"{len(EMOTIONS)} categories x {settings.utterances}; {n_unlabelled} unlabelled clips "
            f"for pretraining, {train_speakers} labelled training speakers, {test_speakers} "
            "held-out speakers for the probe"
        ),
    )


def ravdess_data(root: Path, out: Path) -> DemoData:
    from data_prep.ravdess import main as prepare

    prepared = out / "corpus"
    if prepare(["--root", str(root), "--out", str(prepared)]) != 0:
        raise RuntimeError(f"data_prep.ravdess failed on {root}")
    entries = read_manifest(prepared / "manifest.jsonl")
    train = [e for e in entries if str(e.extra["fold"]) != "4"]
    labelled = write_manifest(prepared / "labelled.jsonl", train)
    return DemoData(
        unlabelled=prepared / "manifest.jsonl",  # pretraining ignores its labels
        labelled=labelled,
        evaluation=prepared / "manifest.jsonl",
        fold_field="fold",
        test_fold="4",
        labels=sorted({str(e.label) for e in entries}),
        description=(
            f"RAVDESS ({len(entries)} clips, {len({e.speaker for e in entries})} actors): all "
            "clips unlabelled for pretraining, "
            "actors of folds 1-3 labelled, fold 4's actors held out for the probe"
        ),
    )


def _precision(requested: str) -> str:
    if requested != "auto":
        return requested
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "bf16-mixed" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "32-true"


def pretrain_run(
    name: str,
    data: DemoData,
    out: Path,
    settings: DemoSettings,
    category: bool,
    extra: Sequence[str] = (),
) -> Path:
    """One tiny pretraining, run as `emotion-ssl pretrain` runs it (`extra`: more of its
    options, last so they win); returns its last checkpoint."""
    from emotion_ssl.train.run import pretrain

    crop = int(settings.crop_seconds * 16000)
    args = [
        "--data.train_manifest", str(data.unlabelled),
        "--trainer.max_steps", str(settings.steps),
        "--trainer.precision", _precision(settings.precision),
        "--trainer.logger.init_args.save_dir", str(out / "runs"),
        "--trainer.logger.init_args.name", name,
        "--trainer.logger.init_args.version", "0",
        "--checkpoint.every_n_train_steps", str(max(1, settings.steps)),
        "--model.optim.warmup_steps", str(max(1, settings.steps // 10)),
        "--model.optim.lr", str(settings.lr),
        "--model.objective.variance_weight", str(settings.variance_weight),
        "--model.objective.variance_target", str(settings.variance_target),
        # the monitor probes the labelled training speakers (never the held-out ones)
        "--monitor.manifest", str(data.labelled),
        "--model.masking.num_clones", str(settings.num_clones),
        "--data.max_sample_size", str(crop),
        "--data.max_tokens", str(crop * settings.clips_per_batch),
    ]  # fmt: skip
    if category:
        args += [
            "--data.labelled_manifest", str(data.labelled),
            "--data.labelled_fraction", str(settings.labelled_fraction),
            "--data.label_names", json.dumps(data.labels),
            "--model.objective.category_weight", str(settings.category_weight),
            "--model.objective.num_classes", str(len(data.labels)),
            "--model.objective.category_ramp_steps", str(max(1, settings.steps // 5)),
            "--model.objective.category_batch_centring", str(settings.category_batch_centring).lower(),
        ]  # fmt: skip
    args += list(extra)
    run_dir = out / "runs" / name / "version_0"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a rerun starts clean
    with resources.as_file(RECIPE) as recipe:  # a real file for the parser, even from a zip
        pretrain(["-c", str(recipe), *args])
    return run_dir / "checkpoints" / "last.ckpt"


def held_out(data: DemoData) -> list[ManifestEntry]:
    """The probe's test clips (held-out speakers)."""
    return [
        e for e in read_manifest(data.evaluation) if str(e.extra[data.fold_field]) == data.test_fold
    ]


def probe(
    data: DemoData,
    out: Path,
    settings: DemoSettings,
    encoders: dict[str, str],
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """The demo's linear probe on held-out speakers for `encoders` (name -> folder; the first
    is the main one), with the random-init encoder and MFCC statistics beside them (`seed`:
    the probe's and the random-init encoder's)."""
    from emotion_ssl.train.evaluate import evaluate
    from emotion_ssl.train.probe import ProbeConfig

    (first, path), *rest = encoders.items()
    return evaluate(
        path,
        data.evaluation,
        out,
        folds=[data.test_fold],
        fold_field=data.fold_field,
        probe=ProbeConfig(
            epochs=settings.probe_epochs, batch_size=settings.probe_batch_size, seed=seed
        ),
        labels=data.labels,
        progress=progress,
        extra_encoders=dict(rest),
        encoder_name=first,
    )


def project_embeddings(
    encoder_dir: Path, entries: list[ManifestEntry], labels: list[str], path: Path, title: str
) -> None:
    """PCA of the utterance vectors of `entries`, coloured by category, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from emotion_ssl.data.audio import load_audio
    from emotion_ssl.export.extract import ExtractConfig, FeatureExtractor
    from emotion_ssl.export.frozen import load_encoder

    extractor = FeatureExtractor(load_encoder(encoder_dir), ExtractConfig(outputs=("utterance",)))
    vectors = np.stack(
        [f["utterance"] for f in extractor.extract([load_audio(e.path) for e in entries])]
    )
    centred = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    fig, ax = plt.subplots(figsize=(6, 5))
    for i, label in enumerate(labels):
        pick = np.array([e.label == label for e in entries])
        ax.scatter(xy[pick, 0], xy[pick, 1], s=14, label=label, color=plt.cm.tab10(i))
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def monitor_plot(runs: Mapping[str, Path | Sequence[Path]], path: Path) -> None:
    """The monitor's curves (last block): probe UA, kNN accuracy, utterance RankMe, from each
    run folder's monitor.csv. One line per name; a name with several run folders (seeds) is
    drawn as their mean with a band from the lowest to the highest seed."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {
        "monitor/last/probe_ua": "probe UA",
        "monitor/last/knn_acc": "kNN accuracy",
        "monitor/last/rankme_utt": "utterance RankMe",
    }
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.6))
    for i, (name, folders) in enumerate(runs.items()):
        folders = [folders] if isinstance(folders, Path) else list(folders)
        tables = []
        for run_dir in folders:
            if (run_dir / "monitor.csv").exists():
                with open(run_dir / "monitor.csv") as f:
                    tables.append(list(csv.DictReader(f)))
        for ax, key in zip(axes, panels, strict=True):
            curves = [
                {float(r["step"]): float(r[key]) for r in rows if r.get(key)} for rows in tables
            ]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if not steps:
                continue
            values = np.array([[c[s] for s in steps] for c in curves])  # (seeds, steps)
            label = name if len(curves) == 1 else f"{name} (mean of {len(curves)})"
            color = plt.cm.tab10(i % 10)
            ax.plot(steps, values.mean(axis=0), marker="o", ms=3, color=color, label=label)
            if len(curves) > 1:
                ax.fill_between(
                    steps, values.min(axis=0), values.max(axis=0), color=color, alpha=0.15
                )
    for ax, title in zip(axes, panels.values(), strict=True):
        ax.set_title(title)
        ax.set_xlabel("optimizer update")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(handles) - 1) // 3), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def combined_loss_plot(runs: dict[str, Path], path: Path) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, run_dir in runs.items():
        with open(run_dir / "losses.csv") as f:
            rows = list(csv.DictReader(f))
        steps = [float(r["step"]) for r in rows]
        axes[0].plot(steps, [float(r["train/frame_loss"]) for r in rows], label=name)
        axes[1].plot(
            steps, [float(r["train/utterance_loss"]) for r in rows], label=f"{name}: utterance"
        )
        if any(float(r.get("train/category_loss") or 0) for r in rows):
            axes[1].plot(
                steps, [float(r["train/category_loss"]) for r in rows], label=f"{name}: category"
            )
    axes[0].set_title("frame loss")
    axes[1].set_title("utterance and category losses")
    for ax in axes:
        ax.set_xlabel("optimizer update")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(
    out_dir: str | Path,
    corpus: str = "synthetic",
    root: str | None = None,
    settings: DemoSettings | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The whole demo; returns what report.md shows. `out_dir` must be new, empty or an
    earlier demo's folder (whose files it replaces); `overwrite` lets it write into a folder
    that holds other files (which it leaves alone)."""
    from emotion_ssl.export.convert import export_encoder
    from emotion_ssl.export.extract import extract_to_folder
    from emotion_ssl.utils.outputs import claim_output_dir
    from emotion_ssl.utils.results import slug

    settings = settings or DemoSettings()
    out = Path(out_dir)
    claim_output_dir(
        out,
        "demo",
        {"corpus": corpus, "root": root, "settings": settings.__dict__},
        DEMO_OUTPUTS,
        overwrite=overwrite,
        replace_changed=True,  # the demo's folder is its own scratch space
        legacy=lambda folder: (folder / "report.json").is_file(),
    )
    timings: dict[str, float] = {}
    start = time.perf_counter()

    _say(f"1/5 data ({corpus})")
    t = time.perf_counter()
    if corpus == "synthetic":
        data = synthetic_data(out, settings)
    elif corpus == "ravdess":
        if root is None:
            raise ValueError("--corpus ravdess needs --root (the folder of Actor_NN folders)")
        data = ravdess_data(Path(root), out)
    else:
        raise ValueError(f"unknown corpus {corpus!r}; use 'synthetic' or 'ravdess'")
    timings["data"] = time.perf_counter() - t
    _say(data.description)

    runs = {}
    for name, category in (("full objective", True), ("no category term", False)):
        _say(f"2/5 pretraining the tiny encoder, {name} ({settings.steps} updates)")
        t = time.perf_counter()
        run_name = "full" if category else "no_category"
        ckpt = pretrain_run(run_name, data, out, settings, category)
        timings[f"pretraining ({name})"] = time.perf_counter() - t
        runs[name] = ckpt

    _say("3/5 export and linear-probe evaluation on held-out speakers")
    t = time.perf_counter()
    encoders = {}
    for name, ckpt in runs.items():
        target = out / "encoders" / ("full" if name == "full objective" else "no_category")
        export_encoder(ckpt, target, overwrite=True)  # a rerun replaces its own
        encoders[name] = target
    named = {FULL: str(encoders["full objective"]), NO_CATEGORY: str(encoders["no category term"])}
    results = probe(data, out / "evaluation", settings, named)  # a progress bar per encoder
    timings["evaluation"] = time.perf_counter() - t

    _say("4/5 feature extraction for a few files")
    t = time.perf_counter()
    few = read_manifest(data.evaluation)[:5]
    few_path = write_manifest(out / "features" / "few.jsonl", few)
    extract_to_folder(
        encoders["full objective"],
        few_path,
        out / "features",
        overwrite=True,  # beside few.jsonl; a rerun replaces its own features
        progress=False,
    )
    timings["extraction"] = time.perf_counter() - t

    _say("5/5 report")
    project_embeddings(
        encoders["full objective"],
        held_out(data),
        data.labels,
        out / "embeddings_2d.png",
        "held-out speakers: utterance vectors (PCA)",
    )
    run_dirs = {name: ckpt.parent.parent for name, ckpt in runs.items()}
    combined_loss_plot(run_dirs, out / "loss_curves.png")
    monitor_plot(run_dirs, out / "monitor.png")
    shutil.copy(out / "evaluation" / f"confusion_{slug(FULL)}.png", out / "confusion_matrix.png")
    timings["total"] = time.perf_counter() - start
    report = {
        "data": data.description,
        "settings": settings.__dict__,
        "results": results,
        "timings": timings,
        "precision": _precision(settings.precision),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(report_markdown(report))
    _say(f"done in {timings['total']:.0f} s: {out / 'report.md'}")
    return report


def report_markdown(report: dict[str, Any]) -> str:
    results = report["results"]
    sets = results["feature_sets"]
    lines = [
        "# emotion-ssl demo report",
        "",
        f"Data: {report['data']}.",
        "",
        f"Pretraining: tiny encoder, {report['settings']['steps']} updates each, precision "
        f"{report['precision']}; the full objective adds the category term (weight "
        f"{report['settings']['category_weight']}) on the labelled training speakers.",
        "",
        f"Linear probe (SPEC section 7 head, {results['probe']['epochs']} epochs, batch "
        f"{results['probe']['batch_size']}) trained on the "
        f"labelled speakers, tested on held-out speakers ({results['fold_field']} = "
        f"{', '.join(results['folds'])}); classes {', '.join(results['labels'])}.",
        "",
        "| features | WA % | UA % | WF1 % |",
        "|---|---|---|---|",
    ]
    for name, r in sets.items():
        lines.append(
            f"| {name} | {100 * r['mean']['wa']:.1f} | {100 * r['mean']['ua']:.1f} | {100 * r['mean']['wf1']:.1f} |"
        )
    full = sets[FULL]["mean"]["ua"]
    random = sets["random-init"]["mean"]["ua"]
    plain = sets[NO_CATEGORY]["mean"]["ua"]
    verdict = "above" if full > random else "NOT above"
    lines += [
        "",
        f"The pretrained encoder's probe UA ({100 * full:.1f}%) is {verdict} the random-init "
        f"encoder's ({100 * random:.1f}%) on held-out speakers; the same pretraining without "
        f"the category term gives {100 * plain:.1f}% (what each term contributes: "
        'docs/pretraining.md, "The category term").',
        "",
        "![loss curves](loss_curves.png)",
        "",
        'The representation monitor during pretraining (docs/pretraining.md, "The '
        'representation monitor"): probe UA and kNN accuracy on the labelled training '
        "speakers (leave-one-speaker-out), and the effective rank of the clip embeddings.",
        "",
        "![representation monitor](monitor.png)",
        "",
        "![confusion matrix: pretrained encoder, held-out speakers](confusion_matrix.png)",
        "",
        "![utterance embeddings of held-out speakers, PCA](embeddings_2d.png)",
        "",
        "Time (seconds): " + ", ".join(f"{k} {v:.0f}" for k, v in report["timings"].items()) + ".",
        "",
        "Produced by `emotion-ssl demo`; every number above comes from this run "
        "(`report.json`, `evaluation/results.json`). Encoders: `encoders/`; features of five "
        "files: `features/`.",
        "",
    ]
    return "\n".join(lines)
