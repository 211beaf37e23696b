"""Extraction throughput of the base encoder, every backend on the same clips in one process:
one clip at a time in eager fp32 torch (the reference's way, and the reference of every
difference below) against our batched, length-sorted, padding-exact extraction
(`emotion_ssl.export.extract`) on torch, torch.compile and ONNX Runtime.

    .venv/bin/python benchmarks/extract_speed.py --backends torch compile onnxruntime --int8 --bf16
    .venv/bin/python benchmarks/extract_speed.py --device cuda --clips 256 --batch-seconds 160 \\
        --backends torch compile --bf16 --record

Clips: `--clips` random waveforms with durations uniform in [--min-seconds, --max-seconds]
(RAVDESS spans 2.9-5.3 s); random seeded weights of `--config` (speed does not depend on
their values). Every mode runs in this one process, interleaved over `--repeats` rounds (best
round kept), so all see the same machine state; the load averages before and after
is printed with the table, because other processes on a shared machine change CPU timings a
lot. One-time costs (ONNX export, session setup, compilation) are excluded from the timings
and listed under the table.

Modes (`--backends` picks the families; W = `--workers`, T = `--threads`):
- one at a time: `encoder(clip[None])` per clip under `torch.no_grad()`, T torch threads;
- torch: `FeatureExtractor.extract` in X s batches (one mode per `--batch-seconds`), T threads,
  and on a CPU the same dealt to W worker threads of one torch thread each, and one at a
  time in W workers;
- compile: `torch.compile(encoder, dynamic=True)` in the first X s batches;
- onnxruntime: `ExtractConfig(backend="onnxruntime")` (emotion_ssl/export/ort.py): one clip
  per batch and X s batches, each with T intra-op threads and in W workers x 1 thread;
  plus the default of `emotion-ssl extract` (`--backend auto`, library defaults otherwise),
  deciding as it would for a long manifest (30 min or more), with the choice printed;
- `--int8`: onnxruntime with int8 dynamic quantisation of the weights (MatMul and Gemm
  nodes; not exact, outputs stated); `--bf16`: bf16 autocast torch batches (not exact).

Every exact mode must match one-at-a-time within 1e-4 (max abs difference of the frames), or
the script exits with an error.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pretrain_throughput import append_results, command_line, cpu_name  # noqa: E402
from emotion_ssl import EmotionEncoder, EncoderConfig  # noqa: E402
from emotion_ssl.export import ort  # noqa: E402
from emotion_ssl.export.extract import ExtractConfig, FeatureExtractor  # noqa: E402
from emotion_ssl.utils.flops import inference_flops  # noqa: E402

Features = list[dict[str, np.ndarray]]
INEXACT = "(not exact)"
REFERENCE = "one at a time"
OUTPUTS = ("frames", "utterance")


def make_clips(n: int, low: float, high: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    seconds = rng.uniform(low, high, n)
    return [(0.1 * rng.standard_normal(int(s * 16_000))).astype(np.float32) for s in seconds]


def make_encoder(config: str, device: torch.device) -> EmotionEncoder:
    """Random seeded weights of a named EncoderConfig preset."""
    torch.manual_seed(0)
    encoder = EmotionEncoder(getattr(EncoderConfig, config)()).to(device).eval()
    return encoder.requires_grad_(False)


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
    """Best fp32 GFLOP/s of a square torch matmul: the practical ceiling of this device."""
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


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (other processes change CPU timings a lot)."""
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def max_diff(a: Features, b: Features, key: str) -> float:
    return max(float(np.abs(x[key] - y[key]).max()) for x, y in zip(a, b, strict=True))


def int8_runner(encoder: EmotionEncoder, cache: str | None, threads: int) -> ort.OrtBatchEncoder:
    """The cached fp32 export with int8 dynamic quantisation of its MatMul/Gemm weights
    (activations quantised per batch at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path, key = ort.cached_onnx(encoder, -1, cache)
    quantised = path.with_name(f"{path.stem}-int8.onnx")
    if not quantised.exists():
        with tempfile.TemporaryDirectory() as scratch:
            temporary = Path(scratch) / quantised.name
            quantize_dynamic(
                path,
                temporary,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
            )
            temporary.replace(quantised)
    return ort.OrtBatchEncoder(quantised, key, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="base", choices=["base", "tiny"])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--min-seconds", type=float, default=2.9)
    parser.add_argument("--max-seconds", type=float, default=5.3)
    parser.add_argument(
        "--batch-seconds", type=float, nargs="+", default=[10.0], help="one mode per value"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=["torch", "compile", "onnxruntime"],
        default=["torch"],
        help="mode families to time (onnxruntime: CPU only, exports the encoder once)",
    )
    parser.add_argument(
        "--int8", action="store_true", help="also onnxruntime int8 dynamic quantisation (not exact)"
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also time bf16 autocast batches (informative: not within 1e-4 of fp32)",
    )
    parser.add_argument(
        "--onnx-cache", default=None, help="export cache (default: emotion_ssl.export.ort's)"
    )
    parser.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    encoder = make_encoder(args.config, device)
    clips = make_clips(args.clips, args.min_seconds, args.max_seconds)
    audio = sum(len(c) for c in clips) / 16_000
    w, b0 = args.workers, args.batch_seconds[0]
    load_before = load_average()
    use_ort = "onnxruntime" in args.backends or args.int8
    if use_ort and not cpu:
        raise SystemExit("onnxruntime modes run on the CPU only (use --device cpu)")
    if use_ort and (missing := ort.onnxruntime_missing()):
        raise SystemExit(f"onnxruntime modes need {missing} (pip install -e .)")

    def extractor(encoder: EmotionEncoder = encoder, **settings: object) -> FeatureExtractor:
        config = ExtractConfig(outputs=OUTPUTS, onnx_cache=args.onnx_cache, **settings)  # type: ignore[arg-type]
        return FeatureExtractor(encoder, config, device)

    modes: dict[str, Callable[[], Features]] = {
        REFERENCE: lambda: one_at_a_time(encoder, clips, device)
    }
    setup: dict[str, float] = {}  # one-time seconds: warm-up, export, session, compilation
    notes: list[str] = []

    def add(name: str, e: FeatureExtractor, warm_clips: int = 4) -> FeatureExtractor:
        start = time.perf_counter()
        e.extract(clips[:warm_clips])  # warm-up: chooses the backend, exports, compiles
        setup[name] = time.perf_counter() - start
        modes[name] = lambda: e.extract(clips)
        return e

    if "torch" in args.backends:
        for b in args.batch_seconds:
            add(f"batched ({b:g} s batches)", extractor(batch_seconds=b))
            if cpu and w > 1:  # the library's own worker threads
                add(
                    f"batched ({b:g} s batches), {w} workers x 1 thread",
                    extractor(batch_seconds=b, workers=w),
                )
        if cpu and w > 1:
            modes[f"one at a time, {w} workers x 1 thread"] = lambda: in_workers(
                lambda part: one_at_a_time(encoder, part, device), clips, w
            )
    if "compile" in args.backends:
        compiled = torch.compile(encoder, dynamic=True)
        add(f"torch.compile, batched ({b0:g} s batches)", extractor(compiled, batch_seconds=b0))  # type: ignore[arg-type]
    if "onnxruntime" in args.backends:
        onnx = {"backend": "onnxruntime"}
        add("onnxruntime, one at a time", extractor(batch_seconds=0.01, **onnx))
        if w > 1:
            add(
                f"onnxruntime, one at a time, {w} workers x 1 thread",
                extractor(batch_seconds=0.01, workers=w, **onnx),
            )
        add(f"onnxruntime, batched ({b0:g} s batches)", extractor(batch_seconds=b0, **onnx))
        if w > 1:
            add(
                f"onnxruntime, batched ({b0:g} s batches), {w} workers x 1 thread",
                extractor(batch_seconds=b0, workers=w, **onnx),
            )
    if use_ort or not cpu:
        # `emotion-ssl extract`'s defaults: --backend auto, deciding as for a long manifest
        ort.AUTO_MIN_SECONDS = ort.AUTO_MIN_SECONDS_CACHED = 0.0
        default = extractor(backend="auto")
        start = time.perf_counter()
        default.extract(clips[:4])
        name = f"default: `extract` (auto -> {default.backend})"
        setup[name] = time.perf_counter() - start
        modes[name] = lambda: default.extract(clips)
        notes.append(f"`--backend auto` decided: {default.backend_note}.")
    if args.int8:
        quantised = extractor(batch_seconds=b0)
        # benchmark only: the library never serves an inexact graph, so set the runner here
        start = time.perf_counter()
        quantised.backend, quantised._onnx = (
            "onnxruntime",
            int8_runner(encoder, args.onnx_cache, args.threads),
        )
        quantised.extract(clips[:4])
        name = f"{INEXACT} onnxruntime int8 dynamic quantisation, batched ({b0:g} s batches)"
        setup[name] = time.perf_counter() - start
        modes[name] = lambda: quantised.extract(clips)
    if args.bf16:
        add(
            f"{INEXACT} batched ({b0:g} s batches), bf16 autocast",
            extractor(batch_seconds=b0, dtype="bfloat16"),
        )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    one_at_a_time(encoder, clips[:2], device)  # warm-up of the reference
    best: dict[str, float] = {}
    outputs: dict[str, Features] = {}
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
            print(f"round {round_}: {name:<60} {elapsed:7.2f} s", flush=True)
    load_after = load_average()

    reference = outputs[REFERENCE]
    base_time = best[REFERENCE]
    flops = inference_flops(encoder.config, audio / len(clips))
    rows = []
    for name in modes:
        t = best[name]
        diff = (
            "reference"
            if name == REFERENCE
            else f"{max_diff(outputs[name], reference, 'frames'):.1e} / "
            f"{max_diff(outputs[name], reference, 'utterance'):.1e}"
        )
        rows.append(
            f"| {name} | {t:.2f} | {audio / t:.1f} | {base_time / t:.2f}x | "
            f"{flops * audio / t / 1e9:.0f} | {diff} |"
        )
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    command = command_line("extract_speed.py")
    one_time = "; ".join(f"{name} {seconds:.1f} s" for name, seconds in setup.items())
    text = "\n".join(
        [
            f"Device: {device_name}; torch threads {args.threads}; {args.config} encoder (random "
            f"seeded weights), fp32 unless marked; {len(clips)} clips, {audio:.1f} s of audio, "
            f"durations uniform in [{args.min_seconds:g}, {args.max_seconds:g}] s; best of "
            f"{args.repeats} interleaved rounds; load average (1, 5, 15 min) {load_before} "
            f"before, {load_after} after; torch {torch.__version__}"
            + (f", onnxruntime {_ort_version()}" if use_ort else "")
            + f"; {datetime.date.today().isoformat()}. Ceiling: a 2048^3 fp32 torch matmul runs "
            f"at {ceiling:.0f} GFLOP/s here; one at a time reaches "
            f"{100 * flops * audio / base_time / 1e9 / ceiling:.0f}% of it.",
            f"Command: `{command}`",
            "",
            "| mode | seconds | x real time | vs one at a time | GFLOP/s | "
            "max abs diff to one at a time, frames / utterance |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            *notes,
            f"One-time costs, not in the timings (warm-up on 4 clips, including any export, "
            f"session setup or compilation): {one_time or 'none'}.",
        ]
    )
    print("\n" + text)
    worst = max(
        (
            max_diff(outputs[n], reference, "frames")
            for n in modes
            if n != REFERENCE and not n.startswith(INEXACT)
        ),
        default=0.0,
    )
    if worst > 1e-4:
        raise SystemExit(f"outputs differ by {worst:.2e} > 1e-4 from one-at-a-time")
    if args.record:
        backends = ", ".join(args.backends + ["int8"] * args.int8 + ["bf16"] * args.bf16)
        append_results(f"Extraction speed: {backends} (benchmarks/extract_speed.py)", text)


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


if __name__ == "__main__":
    main()
