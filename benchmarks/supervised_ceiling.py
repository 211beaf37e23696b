"""What the tiny encoder reaches on RAVDESS *with* labels: the ceiling for the quality study.

    .venv/bin/python benchmarks/supervised_ceiling.py --out /tmp/ceiling --record
    .venv/bin/python benchmarks/supervised_ceiling.py --out /tmp/ceiling \
        --encoder "label-free=/tmp/study/ravdess/seed{seed}/encoders/frame___utterance__default"

The quality study asks label-free pretraining of the tiny encoder to beat its random-init copy
by 5 UA points on RAVDESS's held-out actors, read by a linear probe. This benchmark measures
how far the same architecture gets when it is trained end to end on the labels: it fine-tunes
the whole tiny encoder (CNN included) from a seeded random init with `emotion-ssl finetune` on
the actors of folds 1-3 (validation: whole held-out training actors, early stopping) and tests
on fold 4's six actors, the probe's test speakers. `--encoder NAME=DIR` adds other starting
points (an exported pretrained encoder; `{seed}` in DIR is replaced by the seed, so each seed
starts from its own pretraining run), fine-tuned the same way with the same seeds.

Each (encoder, seed) run is a folder under --out/runs; a rerun skips finished runs. A folder
made with other --epochs or --precision, or a starting point's name reused for another
DIR, is an error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pretrain_throughput import append_results, command_line, cpu_name  # noqa: E402
from benchmarks.quality import ravdess_study_data  # noqa: E402
from emotion_ssl.export.frozen import save_encoder_dir  # noqa: E402
from emotion_ssl.export.weights import PretrainedWeights  # noqa: E402
from emotion_ssl.models.config import EncoderConfig  # noqa: E402
from emotion_ssl.models.encoder import EmotionEncoder  # noqa: E402


def random_encoder(path: Path, seed: int) -> Path:
    """A seeded random-init tiny encoder as an encoder folder (what finetune reads)."""
    if not (path / "model.safetensors").exists():
        torch.manual_seed(seed)
        config = EncoderConfig.from_preset("tiny")
        weights = PretrainedWeights(
            path=f"random-init (seed {seed})",
            config=config,
            encoder_state=EmotionEncoder(config).state_dict(),
        )
        save_encoder_dir(path, weights, include_pretraining_state=False)
    return path


def finetune(
    encoder: Path, manifest: Path, runs: Path, name: str, seed: int, epochs: int, precision: str
) -> dict:
    """One `emotion-ssl finetune` run (the installed command); returns its test_results.json."""
    run_dir = runs / name / "version_0"
    results = run_dir / "test_results.json"
    if results.exists():
        print(f"[ceiling] {name}: done before, reusing {results}", flush=True)
        return json.loads(results.read_text())
    if run_dir.exists():  # an unfinished run of this script's: start it again
        shutil.rmtree(run_dir)
    command = [
        str(Path(sys.executable).parent / "emotion-ssl"), "finetune",
        "--model.encoder", str(encoder),
        "--data.manifest", str(manifest),
        "--data.fold", "4",
        "--data.valid_split", "speaker",
        "--model.freeze.mode", "none",
        "--model.freeze.freeze_cnn", "false",
        "--model.optim.lr", "1e-3",
        "--model.optim.encoder_lr", "1e-3",
        "--data.batch_size", "16",
        "--data.max_sample_size", "64000",
        "--trainer.max_epochs", str(epochs),
        "--early_stopping.patience", "4",
        "--trainer.accelerator", "cpu",
        "--trainer.precision", precision,
        "--seed_everything", str(seed),
        "--trainer.logger.init_args.save_dir", str(runs),
        "--trainer.logger.init_args.name", name,
        "--trainer.logger.init_args.version", "0",
    ]  # fmt: skip
    print(f"[ceiling] {name}: {shlex.join(command[1:])}", flush=True)
    log = runs / f"{name}.log"
    runs.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0 or not results.exists():
        raise SystemExit(f"error: {name} failed (exit {done.returncode}); see {log}")
    return json.loads(results.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="ceiling_out", help="folder for the runs (resumable)")
    parser.add_argument(
        "--ravdess", default=str(REPO.parent / "shared/data/ravdess"), help="Actor_NN folders"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=12, help="most epochs per run")
    parser.add_argument(
        "--precision", default="bf16-mixed", help="e.g. 32-true on CPUs without bf16"
    )
    parser.add_argument(
        "--encoder",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another starting point to fine-tune (an exported encoder folder)",
    )
    parser.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    start = time.perf_counter()
    others: dict[str, str] = {}
    for item in args.encoder:
        name, sep, path = item.partition("=")
        missing = [
            s for s in args.seeds if not (Path(path.format(seed=s)) / "config.json").exists()
        ]
        if not sep or missing:
            parser.error(
                f"--encoder {item!r}: write NAME=DIR with DIR an exported encoder folder "
                "({seed} in DIR stands for the seed)"
            )
        others[name] = path
    record = out / "ceiling.json"
    settings = {"epochs": args.epochs, "precision": args.precision}
    done = json.loads(record.read_text()) if record.exists() else {**settings, "encoders": {}}
    if {k: done[k] for k in settings} != settings:
        raise SystemExit(
            f"error: {out} holds runs made with other --epochs or --precision; use another --out"
        )
    for name, path in others.items():
        if done["encoders"].get(name, path) != path:
            raise SystemExit(
                f"error: {out} already fine-tuned {name!r} from {done['encoders'][name]}; "
                "rename it or use another --out"
            )
    done["encoders"].update(others)
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(done, indent=1))
    data = ravdess_study_data(Path(args.ravdess), out / "data")
    scores: dict[str, list[dict]] = {}
    for seed in args.seeds:
        starts = {"random-init": random_encoder(out / "encoders" / f"random-init-seed{seed}", seed)}
        starts.update({name: Path(path.format(seed=seed)) for name, path in others.items()})
        for name, encoder in starts.items():
            result = finetune(
                encoder,
                data.evaluation,
                out / "runs",
                f"{name}_seed{seed}",
                seed,
                args.epochs,
                args.precision,
            )
            scores.setdefault(name, []).append(result)
    lines = [
        "| starting point, fine-tuned end to end | UA % | WA % | per seed UA |",
        "|---|---|---|---|",
    ]
    for name, results in scores.items():
        ua = [100 * r["ua"] for r in results]
        wa = [100 * r["wa"] for r in results]
        lines.append(
            f"| {name} | {np.mean(ua):.1f} ± {np.std(ua):.1f} | {np.mean(wa):.1f} ± "
            f"{np.std(wa):.1f} | {', '.join(f'{u:.1f}' for u in ua)} |"
        )
    command = command_line("supervised_ceiling.py", argv)
    text = (
        f"Device: {cpu_name()}; the tiny encoder fine-tuned end to end on RAVDESS folds 1-3 "
        f"(validation on held-out training actors, early stopping, at most {args.epochs} "
        f"epochs, {args.precision}), tested on fold 4's six actors; seeds {args.seeds}; "
        f"{time.perf_counter() - start:.0f} s; {datetime.date.today()}.\n"
        f"Command: `{command.strip()}`\n\n" + "\n".join(lines) + "\n"
    )
    (out / "ceiling.md").write_text(text)
    print(text, flush=True)
    if args.record:
        append_results(
            "RAVDESS: the tiny encoder trained with labels (benchmarks/supervised_ceiling.py)", text
        )


if __name__ == "__main__":
    main()
