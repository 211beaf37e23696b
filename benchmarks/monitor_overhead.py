"""What the representation monitor costs a pretraining run, relative to its steps.

    .venv/bin/python benchmarks/monitor_overhead.py            # ~4 min on 2 CPU cores
    .venv/bin/python benchmarks/monitor_overhead.py --record   # append the table to RESULTS.md

Trains `recipes/pretrain/tiny.yaml` (its model, data and trainer settings, as `emotion-ssl
pretrain` builds them, without checkpoints) on the built-in corpus's unlabelled speakers, with
the `RepresentationMonitor` on its held-out labelled speakers, twice: with the recipe's
`monitor:` settings and with the code defaults (256 clips, each at most 4 s; the corpus's clips
are 4-6 s, so every clip is cropped to the full 4 s). In both runs the monitor evaluates every
`--measure-every` updates, so that one run times several evaluations; the overhead is then

    overhead = one evaluation (s) / (interval x mean step (s))

at the setting's own interval (`every_n_steps`). One evaluation is the wall time of the hook:
encoding, metrics, logging, writing monitor.csv and monitor.png. A step is the time between
the starts of consecutive updates (data loading included) over the updates after which the
monitor did not run, after two warm-up updates.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pretrain_throughput import append_results, cpu_name  # noqa: E402
from emotion_ssl.data.pretrain import PretrainDataModule  # noqa: E402
from emotion_ssl.demo.corpus import CorpusSpec, write_emotion_corpus  # noqa: E402
from emotion_ssl.train.monitor import RepresentationMonitor  # noqa: E402
from emotion_ssl.train.pretrain import PretrainSystem  # noqa: E402

RECIPE = REPO / "recipes" / "pretrain" / "tiny.yaml"


class StepClock(L.Callback):
    """The time each update starts (first in the callback list)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())


@dataclasses.dataclass
class Measurement:
    name: str
    interval: int
    clips: int
    audio_seconds: float
    evaluation: float  # mean wall time of one evaluation, s
    first: float  # the update-0 evaluation (first call: warm-up included), s
    step: float  # mean update, s
    steps_timed: int
    draw: float  # one drawing of monitor.png, s

    @property
    def overhead(self) -> float:
        """Encoding, metrics, logging and monitor.csv, per second of training."""
        return self.evaluation / (self.interval * self.step)

    @property
    def drawing(self) -> float:
        """monitor.png, per second of training: drawn at an evaluation when the last drawing
        is 1 / draw_budget times its cost old (`RepresentationMonitor.draw_budget`)."""
        period = self.interval * self.step + self.evaluation
        return self.draw / max(period, self.draw / RepresentationMonitor.draw_budget)


def measure(
    name: str,
    recipe: dict[str, Any],
    monitor_settings: dict[str, Any],
    manifests: dict[str, Path],
    steps: int,
    measure_every: int,
    out: Path,
) -> Measurement:
    interval = int(monitor_settings.get("every_n_steps", 100))
    L.seed_everything(1, verbose=False)  # the CLI's seed_everything_default
    system = PretrainSystem(**recipe["model"])
    data = PretrainDataModule(str(manifests["unlabelled"]), **recipe["data"])
    monitor = RepresentationMonitor(
        **{**monitor_settings, "manifest": str(manifests["test"]), "every_n_steps": measure_every}
    )
    clock = StepClock()
    trainer_settings = {**recipe["trainer"], "max_steps": steps}
    trainer = L.Trainer(
        **trainer_settings,
        logger=CSVLogger(out / "runs", name=name.split(" ")[0], version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[clock, monitor],
    )
    trainer.fit(system, datamodule=data)
    assert monitor.clips is not None
    starts = np.array(clock.starts)
    # update i (0-based) runs from starts[i] to starts[i + 1]; after it, global step is i + 1
    durations = [
        starts[i + 1] - starts[i] for i in range(2, len(starts) - 1) if (i + 1) % measure_every
    ]
    evaluations = monitor.eval_seconds
    return Measurement(
        name=name,
        interval=interval,
        clips=monitor.clips.num_clips,
        audio_seconds=monitor.clips.seconds,
        evaluation=float(np.mean(evaluations[1:])) if len(evaluations) > 1 else evaluations[0],
        first=evaluations[0],
        step=float(np.mean(durations)),
        steps_timed=len(durations),
        draw=monitor.draw_seconds,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/emotion_ssl_monitor_overhead")
    parser.add_argument("--steps", type=int, default=40, help="updates per run")
    parser.add_argument(
        "--measure-every", type=int, default=5, help="updates between timed evaluations"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-long version (tests): tiny corpus"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    start = time.perf_counter()
    recipe = yaml.safe_load(RECIPE.read_text())
    spec = CorpusSpec(num_speakers=24, min_seconds=4.0, max_seconds=6.0)
    split = (4, 14)  # labelled speakers: 4 unused, 14 held out (280 clips) for the monitor
    if args.quick:
        spec = CorpusSpec(
            num_speakers=6, utterances_per_speaker_per_emotion=1, min_seconds=1.0, max_seconds=1.5
        )
        split = (2, 2)
    manifests = write_emotion_corpus(out / "corpus", spec, labelled_speakers=split)
    shutil.rmtree(out / "runs", ignore_errors=True)  # a rerun starts clean
    settings = {
        f"tiny.yaml ({_describe(recipe.get('monitor') or {})})": recipe.get("monitor") or {},
        "code defaults (256 clips, <= 4 s, every 100 updates)": {},
    }
    results = []
    for name, monitor_settings in settings.items():
        print(f"[monitor_overhead] {name}", flush=True)
        results.append(
            measure(name, recipe, monitor_settings, manifests, args.steps, args.measure_every, out)
        )
    lines = [
        "| monitor settings | clips | audio s | one evaluation s (first) | interval (updates) | "
        "mean update s | evaluations, % of step time | + monitor.png, % | total % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in results:
        lines.append(
            f"| {m.name} | {m.clips} | {m.audio_seconds:.0f} | {m.evaluation:.2f} "
            f"({m.first:.2f}) | {m.interval} | {m.step:.3f} | {100 * m.overhead:.1f} | "
            f"{100 * m.drawing:.1f} ({m.draw:.2f} s a drawing) | "
            f"{100 * (m.overhead + m.drawing):.1f} |"
        )
    command = "python benchmarks/monitor_overhead.py" + (
        f" --steps {args.steps}" if args.steps != 40 else ""
    )
    header = (
        f"Device: {cpu_name()}; torch threads {args.threads}; tiny recipe "
        f"(`recipes/pretrain/tiny.yaml`: precision {recipe['trainer'].get('precision')}, batches "
        f"of {recipe['data']['max_tokens'] / 16000:g} s, {recipe['model']['masking']['num_clones']} clones); "
        f"{args.steps} updates per setting, the monitor timed every {args.measure_every}; "
        f"monitor clips: the built-in corpus's held-out speakers ({spec.min_seconds:g}-"
        f"{spec.max_seconds:g} s clips); load average {_load()}; "
        f"{time.perf_counter() - start:.0f} s; {datetime.date.today()}.\n"
        f"Command: `{command}{' --record' if args.record else ''}`\n"
    )
    text = header + "\n" + "\n".join(lines) + "\n"
    print(text)
    if args.record and not args.quick:
        append_results("Representation monitor overhead (benchmarks/monitor_overhead.py)", text)


def _describe(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items()) or "code defaults"


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
