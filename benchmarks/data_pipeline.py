"""Data pipeline measurements, written as tables into benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/data_pipeline.py --write benchmarks/RESULTS.md

1. Decoding: seconds of audio decoded per second by one worker (one thread), WAV and FLAC of
   the same clips, with soundfile (`load_audio`) and fairseq2's `AudioDecoder`.
2. Loading: the pretraining train loader end to end (plan, decode, crop, collate; worker
   start-up included, as every epoch pays it), torch DataLoader vs fairseq2 DataPipeline,
   seconds of audio per second, and per worker.
3. Waste: padding (bucketed batches) and cropping (crop-to-shortest, max_sample_size) for
   the real length distributions of RAVDESS and CREMA-D, with this project's planner
   (`LengthBucketBatchSampler`) and with fairseq2's own `bucket_by_length`; and what
   fairseq2's `shard` does to batch counts over 8 ranks.

Audio: the real RAVDESS clips in ../shared/data/ravdess (FLAC; WAV copies are written to a
temporary folder), else a synthetic corpus. Lengths: RAVDESS headers and
../shared/data/crema-d/audiowav_durations.tsv, else a log-normal stand-in.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emotion_ssl.data import (  # noqa: E402
    ManifestEntry,
    load_audio,
    read_manifest,
    write_manifest,
)
from emotion_ssl.data.fairseq2_pipeline import Fairseq2AudioDecoder, load_fairseq2_data  # noqa: E402
from emotion_ssl.data.pretrain import (  # noqa: E402
    Backend,
    Decoder,
    LengthBucketBatchSampler,
    PretrainDataModule,
)
from emotion_ssl.demo.corpus import write_synthetic_corpus  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
RATE = 16_000
START, END = "<!-- data_pipeline:start -->", "<!-- data_pipeline:end -->"


# ------------------------------------------------------------------------------ corpora
def audio_corpus(work: Path, num_files: int) -> tuple[str, Path, Path]:
    """(source description, WAV manifest, FLAC manifest) over the same clips."""
    ravdess = SHARED / "ravdess"
    if ravdess.is_dir():
        flacs = sorted(ravdess.glob("Actor_*/*.flac"))[:num_files]
        source = f"{len(flacs)} real RAVDESS clips (16 kHz mono 16-bit)"
    else:
        manifest = write_synthetic_corpus(
            work / "synthetic", num_files=num_files, seed=0, min_seconds=2.0, max_seconds=6.0
        )
        flacs = []
        for entry in read_manifest(manifest):
            flac = Path(entry.path).with_suffix(".flac")
            sf.write(flac, sf.read(entry.path, dtype="int16")[0], RATE, subtype="PCM_16")
            flacs.append(flac)
        source = f"{len(flacs)} synthetic clips of 2-6 s (no ../shared/data/ravdess)"
    wav_dir = work / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    wav_entries: list[ManifestEntry] = []
    flac_entries: list[ManifestEntry] = []
    for i, flac in enumerate(flacs):
        samples, rate = sf.read(flac, dtype="int16")
        wav = wav_dir / f"{i:05d}.wav"
        sf.write(wav, samples, rate, subtype="PCM_16")
        for path, entries in ((wav, wav_entries), (flac, flac_entries)):
            entries.append(
                ManifestEntry(
                    f"c{i:05d}", str(path), len(samples), rate, len(samples) / rate, "bench"
                )
            )
    return (
        source,
        write_manifest(work / "wav.jsonl", wav_entries),
        write_manifest(work / "flac.jsonl", flac_entries),
    )


def length_sets(work: Path) -> dict[str, np.ndarray]:
    """Real 16 kHz lengths (samples) of RAVDESS and CREMA-D, and their union."""
    sets: dict[str, np.ndarray] = {}
    ravdess = SHARED / "ravdess"
    if ravdess.is_dir():
        sets["RAVDESS (1440)"] = np.array(
            [sf.info(str(p)).frames for p in sorted(ravdess.glob("Actor_*/*.flac"))]
        )
    tsv = SHARED / "crema-d" / "audiowav_durations.tsv"
    if tsv.is_file():
        rows = tsv.read_text().splitlines()[1:]
        sets["CREMA-D (7442)"] = np.array([round(float(r.split("\t")[2]) * RATE) for r in rows])
    if len(sets) == 2:
        sets["both (8882)"] = np.concatenate(list(sets.values()))
    if not sets:
        seconds = np.clip(np.random.default_rng(0).lognormal(np.log(3.0), 0.5, 5000), 1, 15)
        sets["log-normal stand-in (5000)"] = (seconds * RATE).astype(np.int64)
    return sets


# ------------------------------------------------------------------------------ timing
def best_of(repeats: int, run: Callable[[], float]) -> float:
    """The fastest of `repeats` runs (the least disturbed by other load on the machine)."""
    return min(run() for _ in range(repeats))


def decode_rate(paths: list[str], decode: Callable[[str], np.ndarray], repeats: int) -> float:
    seconds = sum(sf.info(p).duration for p in paths)

    def run() -> float:
        start = time.perf_counter()
        for path in paths:
            decode(path)
        return time.perf_counter() - start

    return seconds / best_of(repeats, run)


def loader_rate(
    manifest: Path, backend: Backend, decoder: Decoder, workers: int, repeats: int
) -> float:
    def run() -> float:
        module = PretrainDataModule(
            str(manifest),
            max_tokens=1_280_000,
            max_sample_size=320_000,
            backend=backend,
            decoder=decoder,
            num_workers=workers,
        )
        loader = module.train_dataloader()
        start = time.perf_counter()
        audio = sum(int(batch.lengths.sum()) for batch in loader)
        return (time.perf_counter() - start) / (audio / RATE)

    return 1.0 / best_of(repeats, run)


def gil_share(work: Path, decoders: dict[str, Callable[[str], np.ndarray]]) -> dict[str, float]:
    """How fast a pure-Python thread runs during one long decode, relative to during a sleep.

    Near the sleep's value means the decoder releases the GIL, so decoding threads (the
    fairseq2 backend) run in parallel with each other and with the training loop.
    """
    import threading

    path = work / "long.flac"
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, RATE * 300).astype(np.float32)
    sf.write(path, noise, RATE, subtype="PCM_16")

    def spinner_rate(call: Callable[[], object]) -> float:
        count, stop = [0], [False]

        def spin() -> None:
            while not stop[0]:
                count[0] += 1

        thread = threading.Thread(target=spin)
        thread.start()
        time.sleep(0.05)
        before, start = count[0], time.perf_counter()
        call()
        rate = (count[0] - before) / (time.perf_counter() - start)
        stop[0] = True
        thread.join()
        return rate

    asleep = spinner_rate(lambda: time.sleep(0.5))
    return {
        name: spinner_rate(lambda d=decode: d(str(path))) / asleep  # type: ignore[misc]
        for name, decode in decoders.items()
    }


# ------------------------------------------------------------------------------ waste
def planner_waste(
    lengths: np.ndarray, max_tokens: int, max_sample_size: int, epochs: int = 3
) -> dict[str, float]:
    cropped = np.minimum(lengths, max_sample_size)
    sampler = LengthBucketBatchSampler(cropped, max_tokens, seed=1)
    valid = padded = kept_shortest = batches = 0
    for epoch in range(epochs):
        for batch in sampler.global_batches(epoch):
            rows = cropped[batch]
            valid += int(rows.sum())
            padded += len(rows) * int(rows.max())
            kept_shortest += len(rows) * int(rows.min())
            batches += 1
    return {
        "batches": batches / epochs,
        "padding": 1 - valid / padded,
        "crop_to_shortest": 1 - kept_shortest / valid,
        "max_sample_size_crop": 1 - cropped.sum() / lengths.sum(),
        "fill": padded / (batches * max_tokens),
    }


def fairseq2_waste(
    lengths: np.ndarray, max_tokens: int, max_sample_size: int, world_size: int = 8
) -> dict[str, float]:
    """fairseq2's own plan: shuffle, bucket_by_length(create_bucket_sizes(...)), shard."""
    from fairseq2.data.data_pipeline import create_bucket_sizes

    f2 = load_fairseq2_data()
    cropped = np.minimum(lengths, max_sample_size)
    buckets = create_bucket_sizes(max_num_elements=max_tokens, max_seq_len=max_sample_size)
    items = [{"index": i, "length": int(n)} for i, n in enumerate(cropped)]

    def plan(shard: tuple[int, int] | None, shard_after: bool) -> list[list[int]]:
        builder = f2.read_sequence(items)
        if shard is not None and not shard_after:
            builder = builder.shard(*shard)
        builder = builder.shuffle(0, seed=1).bucket_by_length(buckets, selector="length")
        if shard is not None and shard_after:
            builder = builder.shard(*shard)
        return [[item["index"] for item in batch] for batch in builder.and_return()]

    batches = plan(None, False)
    valid = sum(int(cropped[b].sum()) for b in batches)
    padded = sum(len(b) * int(cropped[b].max()) for b in batches)
    before = [len(plan((r, world_size), False)) for r in range(world_size)]
    after = [len(plan((r, world_size), True)) for r in range(world_size)]
    return {
        "batches": len(batches),
        "padding": 1 - valid / padded,
        "fill": padded / (len(batches) * max_tokens),
        "shard_first_min": min(before),
        "shard_first_max": max(before),
        "shard_after_dropped": len(batches) - sum(after),
    }


# ------------------------------------------------------------------------------ report
def section(args: argparse.Namespace) -> str:
    torch.set_num_threads(1)
    load_fairseq2_data()
    work = Path(tempfile.mkdtemp(prefix="data_pipeline_"))
    source, wav_manifest, flac_manifest = audio_corpus(work, args.files)
    fairseq2_decode = Fairseq2AudioDecoder()
    decoders: dict[str, Callable[[str], np.ndarray]] = {
        "soundfile": load_audio,
        "fairseq2": fairseq2_decode,
    }
    lines = [
        START,
        "## Data pipeline (`benchmarks/data_pipeline.py`)",
        "",
        "Command: `.venv/bin/python benchmarks/data_pipeline.py "
        f"--files {args.files} --workers {' '.join(map(str, args.workers))} "
        f"--repeats {args.repeats} --write benchmarks/RESULTS.md`",
        "",
        f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"load average at start {os.getloadavg()[0]:.1f}, torch threads 1; "
        f"audio: {source}. Best of {args.repeats} runs.",
        "",
        "### 1. Decoding, one worker (seconds of audio per second)",
        "",
        "| format | soundfile (`load_audio`) | fairseq2 `AudioDecoder` |",
        "|---|---|---|",
    ]
    manifests = {"WAV": wav_manifest, "FLAC": flac_manifest}
    decode_results: dict[tuple[str, str], float] = {}
    for fmt, manifest in manifests.items():
        paths = [e.path for e in read_manifest(manifest)]
        row = []
        for name, decode in decoders.items():
            decode_results[(fmt, name)] = rate = decode_rate(paths, decode, args.repeats)
            row.append(f"{rate:,.0f}")
            print(f"decode {fmt} {name}: {rate:,.0f} s/s", flush=True)
        lines.append(f"| {fmt} | {' | '.join(row)} |")
    shares = gil_share(work, decoders)
    lines += [
        "",
        "A pure-Python thread keeps running during a 5-minute FLAC decode at "
        + ", ".join(f"{100 * share:.0f} % ({name})" for name, share in shares.items())
        + " of its speed during a sleep: both decoders release the GIL, so the fairseq2 "
        "backend's decoding threads run in parallel (the rest of its per-batch work, crop "
        "and collate, is numpy/torch calls).",
    ]

    lines += [
        "",
        "### 2. Pretraining train loader, one epoch (seconds of audio per second; per worker)",
        "",
        "Plan, decode, crop, collate; worker start-up included (each epoch pays it). "
        "max_tokens 1 280 000, max_sample_size 320 000.",
        "",
        "| format | backend + decoder | "
        + " | ".join(f"{w} worker(s)" for w in args.workers)
        + " |",
        "|---|---|" + "---|" * len(args.workers),
    ]
    combos: list[tuple[Backend, Decoder]] = [
        ("torch", "soundfile"),
        ("torch", "fairseq2"),
        ("fairseq2", "fairseq2"),
        ("fairseq2", "soundfile"),
    ]
    loader_results: dict[tuple[str, str, str, int], float] = {}
    for fmt, manifest in manifests.items():
        for backend, decoder in combos:
            cells = []
            for workers in args.workers:
                rate = loader_rate(manifest, backend, decoder, workers, args.repeats)
                loader_results[(fmt, backend, decoder, workers)] = rate
                cells.append(f"{rate:,.0f}; {rate / workers:,.0f}")
                print(f"loader {fmt} {backend}+{decoder} x{workers}: {rate:,.0f} s/s", flush=True)
            lines.append(f"| {fmt} | {backend} + {decoder} | {' | '.join(cells)} |")

    lines += [
        "",
        "### 3. Padding and cropping waste (share of audio samples)",
        "",
        "This project's planner (`LengthBucketBatchSampler`: sort by length within 0.1 s, cut "
        "under the budget; mean of 3 epochs) and fairseq2's `bucket_by_length` with "
        "`create_bucket_sizes` (full shuffle). padding = padded zeros / batch samples "
        "(`batching=bucket`); crop-to-shortest = audio cut away by cropping each batch to its "
        "shortest clip (`batching=crop_to_shortest`); max_sample_size = audio cut by the "
        "320 000-sample crop; fill = batch samples / max_tokens.",
        "",
        "| lengths | max_tokens | planner: batches, padding, fill | crop-to-shortest | "
        "max_sample_size crop | fairseq2 bucket_by_length: batches, padding, fill | "
        "fairseq2 over 8 ranks: shard first (batches per rank) / shard after (batches dropped) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, lengths in length_sets(work).items():
        for max_tokens in (640_000, 1_280_000):
            ours = planner_waste(lengths, max_tokens, 320_000)
            theirs = fairseq2_waste(lengths, max_tokens, 320_000)
            lines.append(
                f"| {name} | {max_tokens:,} | {ours['batches']:.0f}, "
                f"{100 * ours['padding']:.2f} %, {100 * ours['fill']:.1f} % | "
                f"{100 * ours['crop_to_shortest']:.2f} % | "
                f"{100 * ours['max_sample_size_crop']:.2f} % | "
                f"{theirs['batches']:.0f}, {100 * theirs['padding']:.2f} %, "
                f"{100 * theirs['fill']:.1f} % | "
                f"{theirs['shard_first_min']:.0f}-{theirs['shard_first_max']:.0f} / "
                f"{theirs['shard_after_dropped']:.0f} |"
            )
            print(f"waste {name} {max_tokens}: ours {ours} fairseq2 {theirs}", flush=True)

    most = max(args.workers)
    summary = []
    for fmt in manifests:
        torch_rate = loader_results[(fmt, "torch", "soundfile", most)]
        f2_rate = loader_results[(fmt, "fairseq2", "fairseq2", most)]
        summary.append(
            f"{fmt}: fairseq2 pipeline {f2_rate:,.0f} vs torch DataLoader {torch_rate:,.0f} s/s "
            f"with {most} worker(s) ({f2_rate / torch_rate:.2f}x)"
        )
    lines += ["", "Loader summary: " + "; ".join(summary) + ".", "", END]
    return "\n".join(lines) + "\n"


def write_section(results: Path, text: str) -> None:
    old = results.read_text() if results.is_file() else "# Benchmark results\n"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END) + "\n?", re.S)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip() + "\n\n" + text
    results.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=480, help="clips to decode")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=sorted({1, min(4, os.cpu_count() or 1)})
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path, help="replace this benchmark's section in a file")
    args = parser.parse_args(argv)
    text = section(args)
    print(text)
    if args.write:
        write_section(args.write, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
