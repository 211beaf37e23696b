"""Pretraining throughput: full steps (student + teacher + decoder + losses + optimizer + EMA)
through the real Lightning loop, on synthetic batches.

    # one measurement (prints audio s/s, audio-hours per device-hour, MFU, memory, phases)
    .venv/bin/python benchmarks/pretrain_throughput.py --config tiny --batch-size 8
    # before/after side by side in one run: the package at a git commit vs the working tree
    .venv/bin/python benchmarks/pretrain_throughput.py --config tiny mid --compare-ref 18870bb
    # GPU: bf16 autocast, compiled, MFU against the H100 table entry, table appended
    .venv/bin/python benchmarks/pretrain_throughput.py --config base --device cuda \
        --precision bf16-mixed --batch-size 16 --compile --record

Each measurement runs in its own subprocess (`--compare-ref` puts `git archive REF
emotion_ssl` first on PYTHONPATH for the "before" one), so both sides see the same machine state.
Throughput is timed over `--steps` steps with no extra synchronisation; the share of time per
phase comes from `--profile-steps` further steps with a device synchronisation at every phase
boundary (data and loop = everything between one step's EMA update and the next forward).
FLOPs (for MFU) are analytic: `emotion_ssl.utils.flops.pretrain_flops`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
PHASES = ("data_and_loop", "forward", "backward", "optimizer", "ema")

# encoder sizes: (preset, EncoderConfig overrides)
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("tiny", {}),
    # about 1/4 of base: 256-channel CNN, 384-d, 6 heads, 2 prenet + 4 shared blocks
    "mid": (
        "base",
        {
            "conv_layers": [[256, 10, 5]] + [[256, 3, 2]] * 4 + [[256, 2, 2]] * 2,
            "embed_dim": 384,
            "num_heads": 6,
            "prenet_depth": 2,
            "depth": 4,
            "decoder_dim": 192,
        },
    ),
    "base": ("base", {}),
}


# ------------------------------------------------------------------ worker (one measurement)
def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader, Dataset

    import emotion_ssl
    from emotion_ssl.data.batch import AudioBatch
    from emotion_ssl.losses import ObjectiveSettings
    from emotion_ssl.models.config import SAMPLE_RATE, EncoderSettings
    from emotion_ssl.models.masking import MaskingSettings
    from emotion_ssl.train.optim import OptimSettings
    from emotion_ssl.train.pretrain import PretrainSystem

    torch.set_num_threads(args.threads)
    preset, overrides = CONFIGS[args.config]
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    samples = int(args.clip_seconds * SAMPLE_RATE)
    min_samples = int((args.min_seconds or args.clip_seconds) * SAMPLE_RATE)

    class SyntheticBatches(Dataset):
        """Pre-collated batches of noise; lengths spread over [min, max] when asked."""

        def __init__(self, n: int) -> None:
            g = torch.Generator().manual_seed(0)
            self.batches = []
            for _ in range(n):
                lengths = torch.randint(min_samples, samples + 1, (args.batch_size,), generator=g)
                lengths[0] = samples
                waves = torch.randn(args.batch_size, samples, generator=g) * 0.1
                waves *= torch.arange(samples).unsqueeze(0) < lengths.unsqueeze(1)
                self.batches.append((waves, lengths))

        def __len__(self) -> int:
            return len(self.batches)

        def __getitem__(self, i: int) -> AudioBatch:
            waves, lengths = self.batches[i]
            return AudioBatch(
                waveforms=waves,
                lengths=lengths,
                labels=torch.full((len(lengths),), -1),
                keys=[f"{i}-{j}" for j in range(len(lengths))],
            )

    extra: dict[str, Any] = {}
    if args.compile:
        extra["compile"] = True
    if args.checkpointing:
        extra["activation_checkpointing"] = True
    depth = int(overrides.get("depth", 2 if preset == "tiny" else 8))
    system = PretrainSystem(
        encoder=EncoderSettings(preset=preset, overrides=overrides),
        masking=MaskingSettings(num_clones=args.clones),
        objective=ObjectiveSettings(top_k=min(8, depth)),
        optim=OptimSettings(warmup_steps=1),
        **extra,
    )

    steps_total = args.warmup + args.steps + args.profile_steps + 1
    timer = StepTimer(args.warmup, args.steps, args.profile_steps, sync)
    original_update = system.teacher.update

    def timed_update(student: Any, step: int) -> float:
        if timer.profiling:
            sync()
        start = time.perf_counter()
        tau = original_update(student, step)
        if timer.profiling:
            sync()
            timer.ema = time.perf_counter() - start
        return tau

    system.teacher.update = timed_update  # type: ignore[method-assign]
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        precision=args.precision,
        max_steps=steps_total,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
        default_root_dir=tempfile.mkdtemp(prefix="pretrain_throughput_"),
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    loader = DataLoader(SyntheticBatches(steps_total), batch_size=None, shuffle=False)
    trainer.fit(system, loader)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
        device_name = torch.cuda.get_device_name()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        device_name = cpu_name()
    audio_per_step = float(sum(b[1].sum() for b in loader.dataset.batches)) / steps_total / 16e3
    return {
        "package": str(Path(emotion_ssl.__file__).parent),
        "device_name": device_name,
        # CPU: the median step (robust to other processes); CUDA: the mean over the window
        # (per-step times are not synchronised there)
        "step_seconds": timer.window / args.steps if cuda else timer.median_step(),
        "mean_step_seconds": timer.window / args.steps,
        "audio_seconds_per_step": audio_per_step,
        "phases": timer.phase_totals(),
        "peak_memory_gib": peak,
        "peak_memory_kind": "max allocated (CUDA)" if cuda else "peak process RSS",
        "parameters": sum(p.numel() for p in system.student.parameters()),
    }


def cpu_name() -> str:
    name = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores)"


class StepTimer(L.Callback):
    """Times a window of steps (synchronised only at its ends), then per-phase shares over
    the profiled steps (synchronised at every boundary)."""

    def __init__(self, warmup: int, steps: int, profile_steps: int, sync: Any) -> None:
        self.warmup, self.steps, self.profile_steps, self.sync = warmup, steps, profile_steps, sync
        self.window = 0.0
        self.profiling = False
        self.ema = 0.0
        self.rows: list[dict[str, float]] = []
        self.starts: list[float] = []
        self._t: dict[str, float] = {}

    def _now(self) -> float:
        if self.profiling:
            self.sync()
        return time.perf_counter()

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
        first_profiled = self.warmup + self.steps
        if idx == self.warmup:
            self.sync()
            self._window_start = time.perf_counter()
        if idx == first_profiled:
            self.sync()
            self.window = time.perf_counter() - self._window_start
        now = self._now()
        if self.warmup <= idx <= first_profiled:
            self.starts.append(now)
        if self.profiling and "opt_end" in self._t:  # the previous profiled step's tail
            row = self.rows[-1]
            row["ema"] = self.ema
            row["data_and_loop"] = now - self._t["opt_end"] - self.ema
        self.profiling = first_profiled <= idx < first_profiled + self.profile_steps
        if self.profiling:
            self.sync()
            now = time.perf_counter()
            self.rows.append({})
        self._t = {"start": now}

    def on_before_backward(self, trainer: Any, module: Any, loss: Any) -> None:
        if self.profiling:
            self._t["fwd_end"] = self._now()
            self.rows[-1]["forward"] = self._t["fwd_end"] - self._t["start"]

    def on_after_backward(self, trainer: Any, module: Any) -> None:
        if self.profiling:
            self._t["bwd_end"] = self._now()
            self.rows[-1]["backward"] = self._t["bwd_end"] - self._t["fwd_end"]

    def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
        if self.profiling:
            self._t["opt_end"] = self._now()
            self.rows[-1]["optimizer"] = self._t["opt_end"] - self._t["bwd_end"]

    def median_step(self) -> float:
        steps = sorted(b - a for a, b in zip(self.starts, self.starts[1:], strict=False))
        return steps[len(steps) // 2]

    def phase_totals(self) -> dict[str, float]:
        rows = [r for r in self.rows if len(r) == len(PHASES)]
        return {p: sum(r[p] for r in rows) / max(1, len(rows)) for p in PHASES}


# ------------------------------------------------------------------ driver
def measure(args: argparse.Namespace, config: str, pythonpath: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", "--config", config]
    for key in (
        "batch_size",
        "clip_seconds",
        "min_seconds",
        "clones",
        "steps",
        "warmup",
        "profile_steps",
        "device",
        "precision",
        "threads",
    ):
        value = getattr(args, key)
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    cmd += ["--compile"] if args.compile and pythonpath == REPO else []
    cmd += ["--checkpointing"] if args.checkpointing and pythonpath == REPO else []
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"worker failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def derived(args: argparse.Namespace, config: str, raw: dict[str, Any]) -> dict[str, Any]:
    from emotion_ssl.models.config import EncoderConfig
    from emotion_ssl.utils.flops import peak_flops, pretrain_flops

    preset, overrides = CONFIGS[config]
    encoder_config = EncoderConfig.from_preset(preset, **overrides)
    audio_per_s = raw["audio_seconds_per_step"] / raw["step_seconds"]
    clip = raw["audio_seconds_per_step"] / args.batch_size
    flops = pretrain_flops(encoder_config, clip, args.clones).total
    dtype = "bf16" if "bf16" in args.precision else "fp16" if "16" in args.precision else "fp32"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(raw["device_name"], dtype)
    total = sum(raw["phases"].values()) or 1.0
    return {
        **raw,
        "audio_seconds_per_second": audio_per_s,
        "audio_hours_per_device_hour": audio_per_s,  # same ratio, named for the target
        "gflop_per_audio_second": flops / 1e9,
        "achieved_tflops": flops * audio_per_s / 1e12,
        "mfu": flops * audio_per_s / peak if peak else None,
        "peak_tflops": peak / 1e12 if peak else None,
        "shares": {p: v / total for p, v in raw["phases"].items()},
    }


def fmt_row(label: str, config: str, r: dict[str, Any]) -> str:
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    shares = " / ".join(f"{100 * r['shares'][p]:.0f}" for p in PHASES)
    return (
        f"| {config} | {label} | {r['step_seconds'] * 1e3:.0f} | "
        f"{r['audio_seconds_per_second']:.2f} | {r['audio_hours_per_device_hour']:.2f} | "
        f"{r['achieved_tflops'] * 1e3:.1f} | {mfu} | {r['peak_memory_gib']:.2f} | {shares} |"
    )


HEADER = (
    "| config | code | step ms | audio s/s | audio-h per device-h | achieved GFLOP/s | MFU | "
    "peak mem GiB | % data+loop / fwd / bwd / opt / EMA |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=["tiny"], choices=sorted(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--clip-seconds", type=float, default=4.0)
    parser.add_argument(
        "--min-seconds", type=float, default=None, help="spread lengths (padded batches)"
    )
    parser.add_argument("--clones", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="PretrainSystem(compile=True)")
    parser.add_argument(
        "--checkpointing", action="store_true", help="PretrainSystem(activation_checkpointing=True)"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="for MFU; else a table")
    parser.add_argument("--compare-ref", default=None, help="git commit measured as 'before'")
    parser.add_argument(
        "--compare-path",
        action="append",
        default=[],
        help="a folder holding another emotion_ssl package (e.g. an intermediate snapshot), "
        "measured after --compare-ref; repeatable",
    )
    parser.add_argument("--repeats", type=int, default=1, help="alternate runs, keep the best")
    parser.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.config = args.config[0]
        print("RESULT " + json.dumps(run_worker(args)), flush=True)
        return

    sys.path.insert(0, str(REPO))
    baseline_dir: Path | None = None
    if args.compare_ref:
        baseline_dir = Path(tempfile.mkdtemp(prefix="emotion_ssl_ref_"))
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.compare_ref, "emotion_ssl"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline_dir)], input=archive, check=True)
    options = " ".join(
        name
        for name, on in (("compile", args.compile), ("checkpointing", args.checkpointing))
        if on
    )
    rows, ratios = [], []
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for config in args.config:
        sides = [(f"{Path(p).name} (snapshot)", Path(p)) for p in args.compare_path]
        sides.append(("working tree" + (f" + {options}" if options else ""), REPO))
        if baseline_dir is not None:
            sides.insert(0, (f"{args.compare_ref} (before)", baseline_dir))
        for _ in range(args.repeats):
            for label, path in sides:
                r = derived(args, config, measure(args, config, path))
                best = results.get((config, label))
                if best is None or r["step_seconds"] < best["step_seconds"]:
                    results[(config, label)] = r
                print(f"{config:>5} {label:<28} {r['step_seconds'] * 1e3:8.1f} ms/step", flush=True)
        for label, _ in sides:
            rows.append(fmt_row(label, config, results[(config, label)]))
        if baseline_dir is not None:
            before, after = results[(config, sides[0][0])], results[(config, sides[-1][0])]
            ratios.append(
                f"{config}: {before['step_seconds'] / after['step_seconds']:.2f}x faster "
                f"({before['step_seconds'] * 1e3:.0f} -> {after['step_seconds'] * 1e3:.0f} ms/step)"
            )
    any_result = next(iter(results.values()))
    command = command_line("pretrain_throughput.py")
    lines = [
        f"Device: {any_result['device_name']}; torch threads {args.threads}; precision "
        f"{args.precision}; batch {args.batch_size} x {args.clip_seconds:g} s"
        + (f" (lengths from {args.min_seconds:g} s)" if args.min_seconds else "")
        + f", {args.clones} clones; {args.steps} timed steps after {args.warmup} warm-up"
        + (f", best of {args.repeats}" if args.repeats > 1 else "")
        + f"; {datetime.date.today().isoformat()}.",
        f"Command: `{command}`",
        "",
        HEADER,
        *rows,
    ]
    if ratios:
        lines += ["", "Step time, before -> after: " + "; ".join(ratios) + "."]
    if any(r["mfu"] is None for r in results.values()):
        lines += [
            "",
            "MFU n/a: no peak given (`--peak-tflops`) and the device is not in the table.",
        ]
    text = "\n".join(lines)
    print("\n" + text)
    if args.record:
        append_results("Pretraining throughput (benchmarks/pretrain_throughput.py)", text)


def command_line(script: str, argv: list[str] | None = None) -> str:
    """How a benchmark was invoked, for its RESULTS.md entry: 'python benchmarks/X.py ARGS'
    (`argv`: the arguments main() was given; None = the command line's)."""
    return f"python benchmarks/{script} " + shlex.join(sys.argv[1:] if argv is None else argv)


def append_results(title: str, text: str) -> None:
    """Append a section to RESULTS.md (shared with other benchmarks: read, then append)."""
    existing = RESULTS.read_text() if RESULTS.exists() else ""
    block = ("" if not existing or existing.endswith("\n\n") else "\n") + f"## {title}\n\n{text}\n"
    if not existing:
        block = "# Benchmark results\n\n" + block
    with open(RESULTS, "a") as f:
        f.write(block)
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
