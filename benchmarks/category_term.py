"""The category term on the built-in corpus: does it help, and which embedding lets it learn.

    .venv/bin/python benchmarks/category_term.py                # ~6 min on 2 CPU cores
    .venv/bin/python benchmarks/category_term.py --record       # append the table to RESULTS.md

Runs the demo's tiny pretraining (`emotion_ssl.demo.DemoSettings`: 400 updates, 16 x 1 s crops,
2 clones, lr 1e-3, category weight 1 on 75% labelled items; 5 when its RESULTS.md table
was made) three ways on the demo's corpus:

- category term with batch-centred embeddings (`category_batch_centring=True`, the default);
- category term with plain unit embeddings (SPEC section 5 as written);
- no category term;

then the demo's linear probe on the held-out speakers for each, with the random-init encoder and
MFCC statistics beside them. For each run it also prints the mean category loss over the last 100
updates and the spread of the utterance vectors across clips (mean over dimensions of the
standard deviation of the held-out clips' mean-pooled final-block frames; a collapsed
representation shows a small spread) and the mean cosine similarity between the utterance-token
means of different held-out clips, the category head's input (near 1: nearly collinear).
One seed: with 160 held-out clips a UA has a standard error of about 4 points.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pretrain_throughput import append_results, cpu_name  # noqa: E402
from emotion_ssl import EmotionEncoder, EncoderConfig, demo  # noqa: E402
from emotion_ssl.data.audio import load_audio  # noqa: E402
from emotion_ssl.export.convert import export_encoder  # noqa: E402
from emotion_ssl.export.extract import read_features  # noqa: E402
from emotion_ssl.export.frozen import load_encoder  # noqa: E402
from emotion_ssl.utils.results import slug  # noqa: E402

RUNS = {
    "category term, batch-centred (default)": ("centred", True, True),
    "category term, plain unit vectors": ("plain", True, False),
    "no category term": ("none", False, True),
}


def last_category_loss(run_dir: Path, updates: int = 100) -> float:
    with open(run_dir / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    last = float(rows[-1]["step"])
    values = [
        float(r["train/category_loss"])
        for r in rows
        if float(r["step"]) > last - updates and r.get("train/category_loss")
    ]
    return float(np.mean(values)) if values else float("nan")


def spread(features_dir: Path, keys: list[str]) -> float:
    features = read_features(features_dir)
    means = np.stack([features[k].mean(axis=0) for k in keys])
    return float(means.std(axis=0).mean())


def token_cosine(encoder: EmotionEncoder, clips: list[np.ndarray]) -> float:
    """Mean cosine similarity between the utterance-token means (the category head's input)
    of different clips."""
    encoder.eval()
    with torch.no_grad():
        means = torch.cat([encoder(torch.from_numpy(c)[None]).tokens.mean(dim=1) for c in clips])
    z = torch.nn.functional.normalize(means, dim=-1)
    similarity = z @ z.t()
    n = len(clips)
    return float((similarity.sum() - similarity.diagonal().sum()) / (n * (n - 1)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/emotion_ssl_category_term")
    parser.add_argument("--steps", type=int, default=demo.DemoSettings.steps)
    parser.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="the demo's seconds-long settings")
    args = parser.parse_args(argv)
    out = Path(args.out)
    base = demo.DemoSettings.quick() if args.quick else demo.DemoSettings()
    settings = dataclasses.replace(base, steps=args.steps if not args.quick else base.steps)
    start = time.perf_counter()
    data = demo.synthetic_data(out, settings)
    encoders: dict[str, str] = {}
    losses: dict[str, float] = {}
    for name, (short, category, centring) in RUNS.items():
        print(f"[category_term] pretraining: {name}", flush=True)
        run_settings = dataclasses.replace(settings, category_batch_centring=centring)
        ckpt = demo.pretrain_run(short, data, out, run_settings, category)
        target = out / "encoders" / short
        export_encoder(ckpt, target)
        encoders[name] = str(target)
        losses[name] = last_category_loss(ckpt.parent.parent) if category else float("nan")
    results = demo.probe(data, out / "evaluation", settings, encoders, progress=False)
    test_entries = demo.held_out(data)
    test_keys = [e.key for e in test_entries]
    clips = [load_audio(e.path) for e in test_entries[:: max(1, len(test_entries) // 40)]]
    torch.manual_seed(0)
    cosines = {name: token_cosine(load_encoder(path), clips) for name, path in encoders.items()}
    cosines["random-init"] = token_cosine(EmotionEncoder(EncoderConfig.tiny()), clips)
    lines = [
        "| features | UA % | WA % | WF1 % | category loss, last 100 updates | "
        "utterance-vector spread | token-mean cosine between clips |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["feature_sets"].items():
        loss = losses.get(name, float("nan"))
        feature_dir = out / "evaluation" / "features" / slug(name)
        has_index = (feature_dir / "index.jsonl").exists()  # the MFCC cache has none
        width = f"{spread(feature_dir, test_keys):.3f}" if has_index else "n/a"
        lines.append(
            f"| {name} | {100 * r['mean']['ua']:.1f} | {100 * r['mean']['wa']:.1f} | "
            f"{100 * r['mean']['wf1']:.1f} | {'n/a' if np.isnan(loss) else f'{loss:.2f}'} | "
            f"{width} | {f'{cosines[name]:.4f}' if name in cosines else 'n/a'} |"
        )
    table = "\n".join(lines)
    header = (
        f"Device: {cpu_name()}; demo settings ({args.steps} updates per run, "
        f"precision {demo._precision(settings.precision)}); {data.description}; "
        f"{time.perf_counter() - start:.0f} s; {datetime.date.today()}.\n"
        f"Command: `python benchmarks/category_term.py{' --steps ' + str(args.steps) if args.steps != demo.DemoSettings.steps else ''} --record`\n"
    )
    text = header + "\n" + table + "\n"
    print(text)
    if args.record:
        append_results(
            "The category term on the built-in corpus (benchmarks/category_term.py)", text
        )


if __name__ == "__main__":
    main()
