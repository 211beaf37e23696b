"""Seeded quality study: does pretraining make the tiny encoder better at emotion?

    .venv/bin/python benchmarks/quality.py --ravdess ../shared/data/ravdess      # both corpora
    .venv/bin/python benchmarks/quality.py --corpora synthetic --seeds 1 2 3 --record
    .venv/bin/python benchmarks/quality.py --set model.objective.frame_target_norm=layer   # a variant
    .venv/bin/python benchmarks/quality.py --quick                               # smoke run

For each corpus and pretraining seed it pretrains the demo's tiny encoder with the demo's
settings (`emotion_ssl.demo.DemoSettings`: 16 x 1 s crops, 2 clones, lr 1e-3, the variance
hinge on clip means at weight 5, target 1, and the category term at weight 1) for --steps
updates (default 150), once per row:

- frame loss only (`--model.objective.utterance_weight 0`);
- frame + utterance, code-faithful (`--model.objective.utterance_mode code_faithful`, the released code);
- frame + utterance, default (`layer_norm` utterance target): label-free pretraining as the
  demo and recipes run it;
- frame + utterance without the variance hinge (`--model.objective.variance_weight 0`): the reference's
  dynamics, whose clip embeddings collapse (RESULTS.md, "read through the monitor");
- full objective (the category term on the labelled training speakers);

then runs the demo's linear probe (SPEC section 7 head) on the held-out speakers for the five
encoders, with the random-init encoder (seeded like the run) and MFCC statistics beside them;
the probe's validation holds out whole training speakers. Pretraining never sees the test
speakers' audio (checked): on the built-in corpus they are generated apart; on RAVDESS the
study pretrains on the actors of folds 1-3 only and tests on fold 4's six actors.

Each (corpus, seed) is a folder under --out holding its runs and `results.json`; a rerun with
the same settings skips what is done (resumable), and a folder made with other settings is an
error. The table (mean ± std over seeds, UA/WA on held-out speakers) goes to quality.md and,
with --record, to benchmarks/RESULTS.md. Where the runs logged the representation monitor
(`monitor.csv`), its probe-UA curves per row are plotted in monitor_<corpus>.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pretrain_throughput import append_results, command_line, cpu_name  # noqa: E402
from emotion_ssl import demo  # noqa: E402
from emotion_ssl.data.manifest import read_manifest, write_manifest  # noqa: E402
from emotion_ssl.export.convert import export_encoder  # noqa: E402

# row name -> (category term on, extra pretraining options)
ROWS: dict[str, tuple[bool, list[str]]] = {
    "frame only": (False, ["--model.objective.utterance_weight", "0"]),
    "frame + utterance (code-faithful)": (
        False,
        ["--model.objective.utterance_mode", "code_faithful"],
    ),
    "frame + utterance (default)": (False, []),
    "frame + utterance, no variance term": (False, ["--model.objective.variance_weight", "0"]),
    "full objective": (True, []),
}
BASELINES = ("random-init", "mfcc-stats")
LABEL_FREE = "frame + utterance (default)"
STUDY_STEPS = 150
"""Pretraining updates per run: 7.5 passes over the built-in corpus's 320 clips, 2.2 over
RAVDESS's 1080 at 16 clips per batch (longer runs: benchmarks/RESULTS.md). Both corpora x 5
rows x 3 seeds fit in about an hour on 2 cores."""


def seed_options(seed: int) -> list[str]:
    """The pretraining options that seed a run: the model's init, the data order, Lightning."""
    return ["--model.seed", str(seed), "--data.seed", str(seed), "--seed_everything", str(seed)]


def run_name(row: str) -> str:
    """A row's run and encoder folder name: 'frame only' -> 'frame_only'."""
    return "".join(c if c.isalnum() else "_" for c in row).strip("_")


def ravdess_study_data(root: Path, out: Path) -> demo.DemoData:
    """The demo's RAVDESS data, but pretraining sees only folds 1-3 (fold 4 = test actors);
    a folder data_prep cannot read is a one-line error (data_prep has said why)."""
    try:
        data = demo.ravdess_data(root, out)
    except RuntimeError as err:
        raise SystemExit(f"error: {err}; give --ravdess the folder of Actor_NN folders") from None
    entries = read_manifest(data.evaluation)
    seen = [e for e in entries if str(e.extra["fold"]) != data.test_fold]
    unlabelled = write_manifest(out / "corpus" / "pretrain_folds123.jsonl", seen)
    return dataclasses.replace(
        data,
        unlabelled=unlabelled,
        description=(
            f"RAVDESS ({len(entries)} clips, 24 actors): pretraining on the {len(seen)} clips "
            "of folds 1-3, their labels for the category term and the probe's training side, "
            "fold 4's 6 actors held out for the probe's test"
        ),
    )


def check_held_out(data: demo.DemoData) -> None:
    """Fail if pretraining could see a test speaker's audio."""
    test = {e.speaker for e in demo.held_out(data)}
    pretrain = {e.speaker for e in read_manifest(data.unlabelled)}
    pretrain |= {e.speaker for e in read_manifest(data.labelled)}
    if test & pretrain:
        raise RuntimeError(f"pretraining sees test speakers {sorted(map(str, test & pretrain))}")


def settings_key(settings: demo.DemoSettings, extra: list[str], rows: list[str]) -> str:
    text = json.dumps([dataclasses.asdict(settings), extra, rows], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_seed(
    corpus: str,
    data: demo.DemoData,
    out: Path,
    settings: demo.DemoSettings,
    seed: int,
    extra: list[str],
    rows: list[str],
) -> dict[str, Any]:
    """Pretrain every row with `seed`, probe them; resumable through out/results.json."""
    key = settings_key(settings, extra, rows)
    record = out / "study.json"
    if record.exists() and json.loads(record.read_text())["key"] != key:
        raise SystemExit(f"error: {out} holds a study made with other settings; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"key": key, "corpus": corpus, "seed": seed, "extra": extra}))
    results_path = out / "results.json"
    if results_path.exists():
        print(f"[quality] {corpus} seed {seed}: done before, reusing {results_path}", flush=True)
        return json.loads(results_path.read_text())
    encoders: dict[str, str] = {}
    for name in rows:
        category, options = ROWS[name]
        short = run_name(name)
        target = out / "encoders" / short
        if not (target / "model.safetensors").exists():
            print(f"[quality] {corpus} seed {seed}: pretraining '{name}'", flush=True)
            ckpt = demo.pretrain_run(
                short,
                data,
                out,
                settings,
                category,
                [
                    *options,
                    *seed_options(seed),
                    # the monitor's probe: the labelled training speakers (never the test's)
                    "--monitor.manifest",
                    str(data.labelled),
                    *extra,
                ],
            )
            export_encoder(ckpt, target, overwrite=True)
        encoders[name] = str(target)
    print(f"[quality] {corpus} seed {seed}: probing {len(encoders)} encoders", flush=True)
    probe_settings = dataclasses.replace(settings)
    results = demo.probe(
        data, out / "evaluation", probe_settings, encoders, progress=False, seed=seed
    )
    results_path.write_text(json.dumps(results, indent=2, default=str))
    return results


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """feature set -> metric -> (mean, std over seeds), in percent."""
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for name in per_seed[0]["feature_sets"]:
        table[name] = {}
        for metric in ("ua", "wa"):
            values = [100 * r["feature_sets"][name]["mean"][metric] for r in per_seed]
            table[name][metric] = (float(np.mean(values)), float(np.std(values)))
    return table


def monitor_plot(corpus_out: Path, path: Path) -> bool:
    """The monitor's curves per row, mean over the seeds with their range
    (`demo.monitor_plot`); False if no run logged the monitor."""
    rows: dict[str, list[Path]] = {}
    for name in ROWS:
        short = run_name(name)
        found = sorted(corpus_out.glob(f"seed*/runs/{short}/version_0/monitor.csv"))
        if found:
            rows[name] = [f.parent for f in found]
    if rows:
        demo.monitor_plot(rows, path)
    return bool(rows)


def markdown(
    corpus: str,
    description: str,
    table: dict[str, dict[str, tuple[float, float]]],
    seeds: list[int],
    per_seed: list[dict[str, Any]],
    steps: int,
) -> str:
    lines = [
        f"**{corpus}** ({description}); {steps} pretraining updates per run, {len(seeds)} "
        f"pretraining seed{'s' if len(seeds) != 1 else ''} {seeds}, probe on held-out speakers, "
        "mean ± std over seeds:",
        "",
        "| features | UA % | WA % |",
        "|---|---|---|",
    ]
    for name, m in table.items():
        lines.append(
            f"| {name} | {m['ua'][0]:.1f} ± {m['ua'][1]:.1f} | {m['wa'][0]:.1f} ± {m['wa'][1]:.1f} |"
        )
    lines += ["", *comparisons(table, per_seed)]
    return "\n".join(lines) + "\n"


def comparisons(
    table: dict[str, dict[str, tuple[float, float]]], per_seed: list[dict[str, Any]]
) -> list[str]:
    """The issue's two questions, in UA points: label-free vs random-init (is the gap at least
    5 and larger than either row's std over seeds?) and the full objective vs label-free; with
    the per-seed paired differences (each seed's runs share the random-init seed and probe)."""

    def paired(a: str, b: str) -> str:
        diffs = [
            100 * (r["feature_sets"][a]["mean"]["ua"] - r["feature_sets"][b]["mean"]["ua"])
            for r in per_seed
        ]
        return ", ".join(f"{d:+.1f}" for d in diffs)

    lines = []
    if LABEL_FREE in table and "random-init" in table:
        (m, s), (r, rs) = table[LABEL_FREE]["ua"], table["random-init"]["ua"]
        met = m - r >= 5 and m - r > max(s, rs)
        lines.append(
            f"- Label-free ({LABEL_FREE}) minus random-init: {m - r:+.1f} UA points (per seed "
            f"{paired(LABEL_FREE, 'random-init')}; stds {s:.1f} and {rs:.1f}): "
            + (
                "at least 5 and larger than both stds."
                if met
                else "NOT at least 5 points above random-init with a gap larger than both stds."
            )
        )
    if "full objective" in table and LABEL_FREE in table:
        gap = table["full objective"]["ua"][0] - table[LABEL_FREE]["ua"][0]
        lines.append(
            f"- Full objective minus label-free: {gap:+.1f} UA points (per seed "
            f"{paired('full objective', LABEL_FREE)})."
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="quality_out", help="study folder (resumable)")
    parser.add_argument(
        "--corpora", nargs="+", default=["synthetic", "ravdess"], choices=["synthetic", "ravdess"]
    )
    parser.add_argument(
        "--ravdess",
        default=str(REPO.parent / "shared/data/ravdess"),
        help="the folder of Actor_NN folders",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument(
        "--steps",
        type=int,
        help=f"pretraining updates per run (default {STUDY_STEPS}; --quick: "
        f"{demo.DemoSettings.quick().steps})",
    )
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="a pretraining option for every run, e.g. model.objective.frame_target_norm=layer",
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long settings (tests)")
    parser.add_argument("--record", action="store_true", help="append the tables to RESULTS.md")
    args = parser.parse_args(argv)
    base = demo.DemoSettings.quick() if args.quick else demo.DemoSettings()
    steps = (base.steps if args.quick else STUDY_STEPS) if args.steps is None else args.steps
    settings = dataclasses.replace(base, steps=steps)
    extra: list[str] = []
    for item in args.set:
        option, sep, value = item.partition("=")
        if not sep:
            parser.error(
                f"--set {item!r}: write OPTION=VALUE, e.g. model.objective.frame_target_norm=layer"
            )
        extra += [f"--{option.lstrip('-')}", value]
    out = Path(args.out)
    start = time.perf_counter()
    sections = []
    for corpus in args.corpora:
        corpus_start = time.perf_counter()
        corpus_out = out / corpus
        if corpus == "synthetic":
            data = demo.synthetic_data(corpus_out / "data", settings)
        else:
            data = ravdess_study_data(Path(args.ravdess), corpus_out / "data")
        check_held_out(data)
        per_seed = [
            run_seed(corpus, data, corpus_out / f"seed{seed}", settings, seed, extra, args.rows)
            for seed in args.seeds
        ]
        table = summarise(per_seed)
        section = markdown(corpus, data.description, table, args.seeds, per_seed, settings.steps)
        if monitor_plot(corpus_out, out / f"monitor_{corpus}.png"):
            section += f"\nMonitor curves: `{out / f'monitor_{corpus}.png'}`.\n"
        section += f"\n({corpus}: {time.perf_counter() - corpus_start:.0f} s in this invocation.)\n"
        sections.append(section)
        print(section, flush=True)
    command = command_line("quality.py", argv)
    text = (
        f"Device: {cpu_name()}; the demo's settings (variance hinge weight "
        f"{base.variance_weight:g}, target {base.variance_target:g}, category weight "
        f"{base.category_weight:g}, precision {demo._precision(base.precision)}), "
        f"{settings.steps} pretraining updates per run; extra options: {extra or 'none'}; "
        f"{time.perf_counter() - start:.0f} s; {datetime.date.today()}.\n"
        f"Command: `{command.strip()}`\n\n" + "\n".join(sections)
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(text)
    print(f"[quality] wrote {out / 'quality.md'}")
    if args.record:
        append_results("Quality study: pretraining vs random-init (benchmarks/quality.py)", text)


if __name__ == "__main__":
    main()
