"""Extraction throughput of the base encoder: one clip at a time in fp32 (the reference's way)
versus our batched, length-sorted, padding-exact path (`emotion_ssl.export.extract`), with the
outputs compared.

    .venv/bin/python benchmarks/extract_speed.py                       # CPU, RAVDESS-like clips
    .venv/bin/python benchmarks/extract_speed.py --device cuda --clips 256 --record

Clips: `--clips` random waveforms with durations uniform in [--min-seconds, --max-seconds]
(RAVDESS spans 2.9-5.3 s); random base weights (speed does not depend on their values). Every
mode runs in this one process, interleaved over `--repeats` rounds (best round kept), so all
see the same machine state; the 1-minute load average is printed with the table because other
processes on a shared machine change CPU timings a lot.

Modes:
- one at a time: `encoder(clip[None])` per clip under `torch.no_grad()`, `--threads` threads;
- batched (X s batches): `FeatureExtractor.extract` (length-sorted batches of at most X s of
  padded audio, padding-exact), `--threads` threads; one mode per `--batch-seconds` value;
- batched, W workers x 1 thread: `ExtractConfig(workers=W)` (`emotion-ssl extract --workers W`):
  the length-sorted batches dealt round-robin to W threads with one intra-op thread each
  (torch releases the GIL);
- one at a time, W workers x 1 thread: the same threading without batching, to separate the
  two effects;
- with `--bf16`: bf16 autocast batches, for information only (their outputs are not within
  1e-4 of fp32, so they are excluded from the check).

Every exact mode must match one-at-a-time within 1e-4 (max abs difference of the frames), or
the script exits with an error.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pretrain_throughput import append_results, cpu_name  # noqa: E402
from emotion_ssl import EmotionEncoder, EncoderConfig  # noqa: E402
from emotion_ssl.export.extract import ExtractConfig, FeatureExtractor  # noqa: E402
from emotion_ssl.utils.flops import inference_flops  # noqa: E402

Features = list[dict[str, np.ndarray]]
INEXACT = "(not exact)"


def make_clips(n: int, low: float, high: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    seconds = rng.uniform(low, high, n)
    return [(0.1 * rng.standard_normal(int(s * 16_000))).astype(np.float32) for s in seconds]


def one_at_a_time(
    encoder: EmotionEncoder, clips: list[np.ndarray], device: torch.device
) -> Features:
    out = []
    with torch.no_grad():
        for clip in clips:
            result = encoder(torch.from_numpy(clip).unsqueeze(0).to(device))
            out.append(
                {
                    "frames": result.frames[0].float().cpu().numpy(),
                    "utterance": result.utterance[0].float().cpu().numpy(),
                }
            )
    return out


def in_workers(
    run: Callable[[list[np.ndarray]], Features], clips: list[np.ndarray], workers: int
) -> Features:
    """Deal the length-sorted clips round-robin to `workers` threads (one torch thread each)."""
    order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
    shares = [order[w::workers] for w in range(workers)]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda idx: run([clips[i] for i in idx]), shares))
    finally:
        torch.set_num_threads(previous)
    out: list[dict[str, np.ndarray]] = [{} for _ in clips]
    for idx, feats in zip(shares, results, strict=True):
        for i, f in zip(idx, feats, strict=True):
            out[i] = f
    return out


def matmul_gflops(device: torch.device, size: int = 2048, tries: int = 5) -> float:
    """Best fp32 GFLOP/s of a square matmul: the practical ceiling of this device."""
    a = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(tries):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def max_diff(a: Features, b: Features, key: str) -> float:
    return max(float(np.abs(x[key] - y[key]).max()) for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--min-seconds", type=float, default=2.9)
    parser.add_argument("--max-seconds", type=float, default=5.3)
    parser.add_argument(
        "--batch-seconds", type=float, nargs="+", default=[40.0], help="one mode per value"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also time bf16 autocast batches (informative: not within 1e-4 of fp32)",
    )
    parser.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    encoder = EmotionEncoder(EncoderConfig.base()).to(device).eval()
    encoder.requires_grad_(False)
    clips = make_clips(args.clips, args.min_seconds, args.max_seconds)
    audio = sum(len(c) for c in clips) / 16_000
    extractors = {
        b: FeatureExtractor(
            encoder, ExtractConfig(outputs=("frames", "utterance"), batch_seconds=b), device
        )
        for b in args.batch_seconds
    }

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    modes: dict[str, Callable[[], Features]] = {
        "one at a time": lambda: one_at_a_time(encoder, clips, device)
    }
    w = args.workers
    for b, extractor in extractors.items():
        modes[f"batched ({b:g} s batches)"] = lambda e=extractor: e.extract(clips)
        if device.type == "cpu" and w > 1:  # the library's own worker threads
            threaded = FeatureExtractor(
                encoder,
                ExtractConfig(outputs=("frames", "utterance"), batch_seconds=b, workers=w),
                device,
            )
            modes[f"batched ({b:g} s batches), {w} workers x 1 thread"] = lambda e=threaded: (
                e.extract(clips)
            )
    if args.bf16:
        b = args.batch_seconds[0]
        bf16 = FeatureExtractor(
            encoder,
            ExtractConfig(outputs=("frames", "utterance"), batch_seconds=b, dtype="bfloat16"),
            device,
        )
        modes[f"{INEXACT} batched ({b:g} s batches), bf16 autocast"] = lambda: bf16.extract(clips)
    if device.type == "cpu" and w > 1:
        modes[f"one at a time, {w} workers x 1 thread"] = lambda: in_workers(
            lambda part: one_at_a_time(encoder, part, device), clips, w
        )
    for extractor in extractors.values():
        extractor.extract(clips[:2])  # warm-up (allocator, kernels)
    best: dict[str, float] = {}
    outputs: dict[str, Features] = {}
    loads = []
    ceiling = 0.0
    for round_ in range(args.repeats):
        ceiling = max(ceiling, matmul_gflops(device))
        for name, run in modes.items():
            sync()
            start = time.perf_counter()
            outputs[name] = run()
            sync()
            elapsed = time.perf_counter() - start
            best[name] = min(best.get(name, float("inf")), elapsed)
            loads.append(os.getloadavg()[0])
            print(f"round {round_}: {name:<38} {elapsed:7.2f} s", flush=True)

    reference = outputs["one at a time"]
    base_time = best["one at a time"]
    flops = inference_flops(EncoderConfig.base(), audio / len(clips))
    rows = []
    for name in modes:
        t = best[name]
        diff = (
            "reference"
            if name == "one at a time"
            else f"{max_diff(outputs[name], reference, 'frames'):.1e} / "
            f"{max_diff(outputs[name], reference, 'utterance'):.1e}"
        )
        rows.append(
            f"| {name} | {t:.2f} | {t / audio:.4f} | {audio / t:.1f} | {base_time / t:.2f}x | "
            f"{flops * audio / t / 1e9:.0f} | {diff} |"
        )
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    command = "python benchmarks/extract_speed.py " + shlex.join(sys.argv[1:])
    text = "\n".join(
        [
            f"Device: {device_name}; torch threads {args.threads}; base encoder (random weights), "
            f"fp32; {len(clips)} clips, {audio:.1f} s of audio, durations uniform in "
            f"[{args.min_seconds:g}, {args.max_seconds:g}] s; best of {args.repeats} interleaved rounds; "
            f"1-min load average during the run {min(loads):.1f}-{max(loads):.1f}; "
            f"{datetime.date.today().isoformat()}. Ceiling: a 2048^3 fp32 matmul runs at "
            f"{ceiling:.0f} GFLOP/s here (best of the rounds); one at a time reaches "
            f"{100 * flops * audio / base_time / 1e9 / ceiling:.0f}% of it.",
            f"Command: `{command}`",
            "",
            "| mode | seconds | real-time factor | x real time | vs one at a time | GFLOP/s | "
            "max abs diff frames / utterance |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print("\n" + text)
    worst = max(
        max_diff(outputs[n], reference, k)
        for n in modes
        if n != "one at a time" and not n.startswith(INEXACT)
        for k in ("frames",)
    )
    if worst > 1e-4:
        raise SystemExit(f"outputs differ by {worst:.2e} > 1e-4 from one-at-a-time")
    if args.record:
        append_results("Extraction speed (benchmarks/extract_speed.py)", text)


if __name__ == "__main__":
    main()
