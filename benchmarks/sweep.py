"""One-seed sweep of the label-free row: which pretraining option moves the probe?

    .venv/bin/python benchmarks/sweep.py --out /tmp/sweep \
        --variant "demo settings=" \
        --variant "2 s crops=--data.max_sample_size 32000 --data.max_tokens 256000" \
        --variant "faster teacher=--model.teacher.decay_start 0.9 --model.teacher.decay_end 0.99"

A scouting tool for `benchmarks/quality.py`, not a quality claim: each variant is the study's
label-free row ("frame + utterance (default)", the demo's settings, `--steps` updates) with
the variant's pretraining options added last, pretrained once with `--seed` and probed on the
held-out speakers; random-init and MFCC statistics are probed once beside them. One seed's UA
moves by a few points with the seed (the study's stds), so only a large gap means anything;
confirm it with quality.py's seeds. RAVDESS pretraining sees folds 1-3 only, as in the study.
Resumable: a variant already probed with the same options is skipped; a folder made with
another corpus, seed or step count, or a variant name reused with other options, is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pretrain_throughput import append_results, command_line, cpu_name  # noqa: E402
from benchmarks.quality import (  # noqa: E402
    STUDY_STEPS,
    check_held_out,
    ravdess_study_data,
    run_name,
    seed_options,
    settings_key,
)
from emotion_ssl import demo  # noqa: E402
from emotion_ssl.export.convert import export_encoder  # noqa: E402
from emotion_ssl.train.evaluate import evaluate  # noqa: E402
from emotion_ssl.train.probe import ProbeConfig  # noqa: E402


def parse_variant(item: str) -> tuple[str, list[str]]:
    """'NAME=OPTIONS' -> (name, the options split as a shell would)."""
    name, sep, options = item.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--variant {item!r}: write NAME=OPTIONS (OPTIONS may be empty)")
    return name.strip(), shlex.split(options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="sweep_out", help="sweep folder (resumable)")
    parser.add_argument("--corpus", default="ravdess", choices=["synthetic", "ravdess"])
    parser.add_argument(
        "--ravdess", default=str(REPO.parent / "shared/data/ravdess"), help="Actor_NN folders"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--steps", type=int, help=f"updates per run (default: the study's {STUDY_STEPS})"
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long settings (tests)")
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=OPTIONS")
    parser.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args(argv)
    try:
        variants = dict(parse_variant(v) for v in args.variant)
    except ValueError as err:
        parser.error(str(err))
    start = time.perf_counter()
    out = Path(args.out)
    base = demo.DemoSettings.quick() if args.quick else demo.DemoSettings()
    steps = (base.steps if args.quick else STUDY_STEPS) if args.steps is None else args.steps
    settings = dataclasses.replace(base, steps=steps)
    # what the results depend on besides each variant's options (checked on a rerun)
    key = settings_key(settings, [args.corpus, *seed_options(args.seed)], [])
    record = out / "sweep.json"
    done = json.loads(record.read_text()) if record.exists() else {"key": key, "options": {}}
    if done["key"] != key:
        raise SystemExit(
            f"error: {out} holds a sweep made with another corpus, seed or settings; use another --out"
        )
    for name, options in variants.items():
        if done["options"].get(name, options) != options:
            raise SystemExit(
                f"error: {out} already holds variant {name!r} with other options "
                f"({shlex.join(done['options'][name])}); rename the variant or use another --out"
            )
    ua: dict[str, float] = done.setdefault("ua", {})
    if args.corpus == "synthetic":
        data = demo.synthetic_data(out / "data", settings)
    else:
        data = ravdess_study_data(Path(args.ravdess), out / "data")
    check_held_out(data)

    def probe(name: str, encoder: Path, baselines: tuple[str, ...]) -> None:
        results = evaluate(
            str(encoder),
            data.evaluation,
            out / "evaluation" / run_name(name),
            folds=[data.test_fold],
            fold_field=data.fold_field,
            baselines=baselines,
            probe=ProbeConfig(
                epochs=settings.probe_epochs, batch_size=settings.probe_batch_size, seed=args.seed
            ),
            labels=data.labels,
            progress=False,
            encoder_name=name,
            overwrite=True,
        )
        for feature_set, value in results["feature_sets"].items():
            ua[feature_set] = round(100 * value["mean"]["ua"], 1)
        done["options"][name] = variants[name]
        out.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(done, indent=1))
        print(f"[sweep] {name}: UA {ua[name]:.1f}", flush=True)

    for name, options in variants.items():
        if name in ua:
            continue
        short = run_name(name)
        print(f"[sweep] pretraining '{name}': {shlex.join(options)}", flush=True)
        ckpt = demo.pretrain_run(
            short, data, out, settings, False, [*seed_options(args.seed), *options]
        )
        encoder = out / "encoders" / short
        export_encoder(ckpt, encoder, overwrite=True)
        baselines = tuple(
            b for b, n in (("random", "random-init"), ("mfcc", "mfcc-stats")) if n not in ua
        )
        probe(name, encoder, baselines)
    lines = [
        "| variant (label-free row) | extra pretraining options | probe UA % |",
        "|---|---|---|",
    ]
    for name, options in variants.items():
        lines.append(f"| {name} | `{shlex.join(options)}` | {ua[name]:.1f} |")
    for baseline in ("random-init", "mfcc-stats"):
        lines.append(f"| {baseline} | | {ua[baseline]:.1f} |")
    command = command_line("sweep.py", argv)
    text = (
        f"Device: {cpu_name()}; {args.corpus}, seed {args.seed}, {steps} updates per run "
        f"(the demo's settings plus each variant's options), probe on the held-out speakers; "
        f"{time.perf_counter() - start:.0f} s; {datetime.date.today()}.\n"
        f"Command: `{command.strip()}`\n\n" + "\n".join(lines) + "\n"
    )
    (out / "sweep.md").write_text(text)
    print(text, flush=True)
    if args.record:
        append_results(
            f"One-seed sweep of the label-free row, {args.corpus} (benchmarks/sweep.py)", text
        )


if __name__ == "__main__":
    main()
