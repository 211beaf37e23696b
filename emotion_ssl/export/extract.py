"""Batched, padding-exact feature extraction from a frozen encoder (what ALMs and probes read).

Recordings are cut into segments (a recording longer than `chunk_seconds` becomes overlapping
chunks), segments are sorted by length and run in padded batches under an audio budget, and
each recording's outputs are put back together:

- `frames` (T, D): 50 Hz features of one block (the final one by default);
- `utterance` (D,): mean of those frames over the recording;
- `tokens` (E, D): the final block's utterance-token outputs (for a chunked recording, the
  mean of its chunks' tokens weighted by their frame counts).

Padding is exact (a batch equals one recording at a time). Chunk seams: chunk k+1 starts
`chunk_seconds - overlap_seconds` after chunk k, on the frame grid; across the overlap each
side keeps the frames nearer its own centre, so every kept frame has at least
`overlap_seconds / 2` of context on both sides. Memory: one batch holds at most
`batch_seconds` of padded audio; the attention of one segment needs about
heads x (E + T)^2 x 4 bytes (T = 50 x segment seconds), e.g. 108 MB per 30 s chunk for base.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from emotion_ssl.data.audio import AudioReadError, load_audio, resampled_length
from emotion_ssl.data.manifest import ManifestEntry
from emotion_ssl.models.config import SAMPLE_RATE
from emotion_ssl.models.encoder import EmotionEncoder, masked_mean
from emotion_ssl.utils.outputs import OutputDir, atomic_write, claim_output_dir, tensors_identity

if TYPE_CHECKING:
    from emotion_ssl.export.ort import OrtBatchEncoder

logger = logging.getLogger(__name__)

Output = Literal["frames", "utterance", "tokens"]


@dataclass
class ExtractConfig:
    """What to extract and how.

    layer: block whose output gives `frames` and `utterance` (0-based over prenet then shared
        blocks; -1 = the final block).
    outputs: any of "frames", "utterance", "tokens".
    batch_seconds: padded audio per batch; None = 160 s on a GPU, 10 s on a CPU, where large
        batches only add cache misses (2 cores, base encoder: 160 s batches ran at 0.77-0.86x the
        speed of one clip at a time, 10 s batches at 1.02-1.06x; benchmarks/extract_speed.py).
    chunk_seconds, overlap_seconds: recordings longer than chunk_seconds are cut into chunks.
    dtype: "float32" or "bfloat16" (autocast; float32 is exact).
    workers: on a CPU, deal the batches to this many threads that each run one torch thread
        (torch releases the GIL), instead of one batch at a time over all threads. Same
        outputs; on 2 cores, 2 workers with 10 s batches measured 1.14-1.2x one worker
        (benchmarks/extract_speed.py). Ignored on a GPU.
    backend: "torch" (eager PyTorch), "onnxruntime" (CPU, float32: the encoder exported to
        ONNX once per weights and run by ONNX Runtime; frames within 1e-4 of torch) or "auto"
        (onnxruntime when a timed trial on the first batch finds it faster, for a CPU float32
        job of at least 30 min of audio, 10 min once exported; `emotion-ssl extract`'s
        default). Rules, threads and the export cache: emotion_ssl/export/ort.py.
    onnx_cache: folder of the exported ONNX files (None: $EMOTION_SSL_ONNX_CACHE or
        <tmp>/emotion-ssl-onnx); a file is named by a hash of the weights and config.
    batch_seconds, workers, backend and onnx_cache change the speed, not the features
    (within 1e-5 for torch, 1e-4 across backends): an extraction folder may be resumed with
    other values.
    """

    layer: int = -1
    outputs: tuple[str, ...] = ("frames", "utterance", "tokens")
    batch_seconds: float | None = None
    chunk_seconds: float = 30.0
    overlap_seconds: float = 4.0
    dtype: Literal["float32", "bfloat16"] = "float32"
    workers: int = 1
    backend: Literal["torch", "onnxruntime", "auto"] = "torch"
    onnx_cache: str | None = None

    def __post_init__(self) -> None:
        self.outputs = tuple(self.outputs)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.backend not in ("torch", "onnxruntime", "auto"):
            raise ValueError(f"backend must be torch, onnxruntime or auto; got {self.backend!r}")
        unknown = set(self.outputs) - {"frames", "utterance", "tokens"}
        if unknown or not self.outputs:
            raise ValueError(f"outputs must be frames, utterance and/or tokens; got {self.outputs}")
        if not 0 < 2 * self.overlap_seconds < self.chunk_seconds:
            raise ValueError(
                f"need 0 < 2 x overlap_seconds < chunk_seconds, got {self.overlap_seconds} and "
                f"{self.chunk_seconds}"
            )


@dataclass
class _Segment:
    recording: int
    start: int  # sample offset in the recording (a multiple of the hop)
    audio: np.ndarray


class FeatureExtractor:
    """Runs a frozen encoder over recordings (numpy float32 arrays of 16 kHz samples)."""

    def __init__(
        self,
        encoder: EmotionEncoder,
        config: ExtractConfig | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.config = config or ExtractConfig()
        self.device = torch.device(device)
        default_batch = 160.0 if self.device.type == "cuda" else 10.0
        self.batch_seconds = self.config.batch_seconds or default_batch
        self.encoder = encoder.to(self.device).eval()
        num_blocks = encoder.config.num_layers
        if not -1 <= self.config.layer < num_blocks:
            raise ValueError(f"layer {self.config.layer} not in [-1, {num_blocks - 1}]")
        hop = encoder.config.hop_length
        self.hop = hop
        self.chunk = int(self.config.chunk_seconds * SAMPLE_RATE) // hop * hop
        self.stride = self.chunk - int(self.config.overlap_seconds * SAMPLE_RATE) // hop * hop
        self.backend: str | None = None  # "torch" or "onnxruntime", chosen by the first extract
        self.backend_note = ""  # which backend runs, and why
        self._onnx: OrtBatchEncoder | None = None
        # audio of the whole job when the caller knows it (extract_manifest sets it): backend
        # "auto" weighs the one-time ONNX export against it, not against one call's audio
        self.planned_seconds = 0.0

    # ------------------------------------------------------------------ segments
    def _segments(self, index: int, audio: np.ndarray) -> list[_Segment]:
        if len(audio) <= self.chunk:
            return [_Segment(index, 0, audio)]
        segments = []
        start = 0
        while True:
            segments.append(_Segment(index, start, audio[start : start + self.chunk]))
            if start + self.chunk >= len(audio):
                return segments
            start += self.stride

    def _batches(self, segments: list[_Segment]) -> Iterator[list[_Segment]]:
        """Length-sorted batches whose padded audio stays within batch_seconds."""
        budget = self.batch_seconds * SAMPLE_RATE
        ordered = sorted(segments, key=lambda s: len(s.audio), reverse=True)
        batch: list[_Segment] = []
        for segment in ordered:
            longest = len(batch[0].audio) if batch else len(segment.audio)
            if batch and longest * (len(batch) + 1) > budget:
                yield batch
                batch = []
            batch.append(segment)
        if batch:
            yield batch

    # ------------------------------------------------------------------ encoding
    @torch.inference_mode()
    def _encode(self, batch: list[_Segment]) -> list[dict[str, Tensor]]:
        if self._onnx is not None:
            return self._onnx([s.audio for s in batch])
        lengths = torch.tensor([len(s.audio) for s in batch])
        waves = torch.zeros(len(batch), int(lengths.max()))
        for row, segment in enumerate(batch):
            waves[row, : len(segment.audio)] = torch.from_numpy(segment.audio)
        waves, lengths = waves.to(self.device), lengths.to(self.device)
        autocast = self.config.dtype == "bfloat16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = self.encoder(waves, lengths, return_layers=self.config.layer != -1)
        frames = out.frames if self.config.layer == -1 else out.layers[self.config.layer]  # type: ignore[index]
        frames = frames.float()
        results = []
        for row in range(len(batch)):
            T = int(out.lengths[row])
            results.append(
                {"frames": frames[row, :T].cpu(), "tokens": out.tokens[row].float().cpu()}
            )
        return results

    def extract(self, recordings: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Features of each recording, in input order (see the module docstring)."""
        segments = [s for i, audio in enumerate(recordings) for s in self._segments(i, audio)]
        batches = list(self._batches(segments))
        first = None
        if self.backend is None and batches:
            seconds = max(sum(map(len, recordings)) / SAMPLE_RATE, self.planned_seconds)
            first = self._choose_backend(batches[0], seconds)
        rest = self._encode_all(batches[1:] if first is not None else batches)
        encoded: dict[tuple[int, int], dict[str, Tensor]] = {}
        for batch, results in zip(batches, rest if first is None else [first, *rest], strict=True):
            for segment, result in zip(batch, results, strict=True):
                encoded[(segment.recording, segment.start)] = result
        outputs = []
        for index, audio in enumerate(recordings):
            parts = [(s.start, encoded[(index, s.start)]) for s in self._segments(index, audio)]
            outputs.append(self._assemble(len(audio), parts))
        return outputs

    def _choose_backend(
        self, batch: list[_Segment], seconds: float
    ) -> list[dict[str, Tensor]] | None:
        """Resolve config.backend (emotion_ssl/export/ort.py); returns the batch's outputs
        when the decision computed them."""
        from emotion_ssl.export.ort import choose_backend

        torch_threads = torch.get_num_threads()
        workers = self.config.workers if self.device.type == "cpu" else 1
        choice = choose_backend(
            self.config.backend,
            self.encoder,
            layer=self.config.layer,
            device=self.device,
            dtype=self.config.dtype,
            seconds=seconds,
            threads=max(1, torch_threads // workers),  # the cores, shared by the workers
            cache_dir=self.config.onnx_cache,
            first_batch=[s.audio for s in batch],
            torch_encode=lambda: self._encode(batch),
        )
        self.backend, self.backend_note, self._onnx = choice.backend, choice.note, choice.runner
        logger.info("extraction backend: %s", self.backend_note)
        return choice.first_batch

    def _encode_all(self, batches: list[list[_Segment]]) -> list[list[dict[str, Tensor]]]:
        workers = min(self.config.workers, len(batches))
        if workers <= 1 or self.device.type != "cpu":
            return [self._encode(batch) for batch in batches]
        # batches come longest first: dealing them round-robin balances the workers
        shares = [list(range(w, len(batches), workers)) for w in range(workers)]
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                done = list(pool.map(lambda ids: [self._encode(batches[i]) for i in ids], shares))
        finally:
            torch.set_num_threads(previous)
        results: list[list[dict[str, Tensor]]] = [[] for _ in batches]
        for ids, outputs in zip(shares, done, strict=True):
            for i, output in zip(ids, outputs, strict=True):
                results[i] = output
        return results

    def _assemble(
        self, num_samples: int, parts: list[tuple[int, dict[str, Tensor]]]
    ) -> dict[str, np.ndarray]:
        """Stitch chunk outputs: across each overlap, each side keeps its half."""
        if len(parts) == 1:
            frames, tokens = parts[0][1]["frames"], parts[0][1]["tokens"]
        else:
            pieces, weights = [], []
            cut = 0  # first global frame the next piece must provide
            for k, (start, result) in enumerate(parts):
                first = start // self.hop
                end = first + result["frames"].size(0)
                if k + 1 < len(parts):
                    next_first = parts[k + 1][0] // self.hop
                    stop = (next_first + end) // 2  # middle of the overlap
                else:
                    stop = end
                pieces.append(result["frames"][cut - first : stop - first])
                weights.append(stop - cut)
                cut = stop
            frames = torch.cat(pieces)
            w = torch.tensor(weights, dtype=torch.float32)
            tokens = (
                torch.stack([r["tokens"] for _, r in parts]) * (w / w.sum()).view(-1, 1, 1)
            ).sum(0)
        expected = int(self.encoder.frame_lengths(torch.tensor([num_samples]))[0])
        if frames.size(0) != expected:
            raise RuntimeError(f"stitched {frames.size(0)} frames, expected {expected}")
        out: dict[str, np.ndarray] = {}
        if "frames" in self.config.outputs:
            out["frames"] = frames.numpy()
        if "utterance" in self.config.outputs:
            out["utterance"] = masked_mean(frames.unsqueeze(0), None)[0].numpy()
        if "tokens" in self.config.outputs:
            out["tokens"] = tokens.numpy()
        return out


# ---------------------------------------------------------------------------- on disk
def safe_name(key: str) -> str:
    """A file name for a manifest key (path separators and odd characters replaced)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", key)


class FeatureWriter:
    """Writes outputs as one .npy per utterance and output (`npy`) or one safetensors shard
    per `shard_size` utterances (`shards`), plus `index.jsonl` (one line per finished
    utterance, written after its files). Resumable: keys already in the index are skipped."""

    def __init__(
        self, out_dir: str | Path, fmt: Literal["npy", "shards"] = "npy", shard_size: int = 1000
    ) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.fmt = fmt
        self.shard_size = shard_size
        self.index_path = self.out / "index.jsonl"
        self.done = self._read_index()
        self._pending: list[tuple[str, dict[str, np.ndarray], dict[str, object]]] = []
        self._next_shard = (
            len(list((self.out / "shards").glob("shard_*.safetensors"))) if fmt == "shards" else 0
        )

    def _read_index(self) -> set[str]:
        if not self.index_path.exists():
            return set()
        done = set()
        for line in self.index_path.read_text().splitlines():
            if line.strip():
                done.add(json.loads(line)["key"])
        return done

    def add(self, key: str, features: dict[str, np.ndarray], info: dict[str, object]) -> None:
        if self.fmt == "npy":
            files = {}
            for name, array in features.items():
                path = self.out / name / f"{safe_name(key)}.npy"
                path.parent.mkdir(exist_ok=True)
                np.save(path, array)
                files[name] = str(path.relative_to(self.out))
            self._append_index([{"key": key, "files": files, **info}])
        else:
            self._pending.append((key, features, info))
            if len(self._pending) >= self.shard_size:
                self.flush()

    def flush(self) -> None:
        if self.fmt != "shards" or not self._pending:
            return
        from safetensors.numpy import save_file

        name = f"shard_{self._next_shard:05d}.safetensors"
        path = self.out / "shards" / name
        path.parent.mkdir(exist_ok=True)
        tensors = {
            f"{key}/{kind}": np.ascontiguousarray(a)
            for key, feats, _ in self._pending
            for kind, a in feats.items()
        }
        with atomic_write(path) as tmp:
            save_file(tensors, str(tmp))
        self._append_index(
            [{"key": key, "shard": f"shards/{name}", **info} for key, _, info in self._pending]
        )
        self._next_shard += 1
        self._pending = []

    def _append_index(self, rows: list[dict[str, object]]) -> None:
        with open(self.index_path, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
            f.flush()
        self.done.update(str(row["key"]) for row in rows)


def extract_manifest(
    extractor: FeatureExtractor,
    entries: Sequence[ManifestEntry],
    writer: FeatureWriter,
    group_seconds: float = 600.0,
    progress: bool = True,
    desc: str = "extracting",
) -> dict[str, int]:
    """Extract every entry not yet in the writer's index; unreadable files are reported in
    `failed.jsonl` and skipped. A file whose decoded length differs from its manifest
    entry's `num_samples` is extracted as decoded, with a warning (the index row keeps the
    manifest's length too). `desc` names the progress bar. Returns counts (done, skipped as
    already done, failed)."""
    todo = [e for e in entries if e.key not in writer.done]
    already = len(entries) - len(todo)
    todo.sort(key=lambda e: e.duration)  # groups of similar lengths: little padding
    groups: list[list[ManifestEntry]] = [[]]
    for entry in todo:
        if groups[-1] and sum(e.duration for e in groups[-1]) + entry.duration > group_seconds:
            groups.append([])
        groups[-1].append(entry)
    total = sum(e.duration for e in todo)
    extractor.planned_seconds = total
    failed = 0
    bar = _progress(total, progress, desc)
    start = time.perf_counter()
    seconds_done = 0.0

    def load(group: list[ManifestEntry]) -> list[tuple[ManifestEntry, np.ndarray | str]]:
        out: list[tuple[ManifestEntry, np.ndarray | str]] = []
        for entry in group:
            try:
                out.append((entry, load_audio(entry.path)))
            except AudioReadError as err:
                out.append((entry, str(err)))
        return out

    with ThreadPoolExecutor(max_workers=1) as pool:  # read the next group while encoding
        futures = [pool.submit(load, g) for g in groups[:1]]
        for i in range(len(groups)):
            if not groups[i]:
                continue
            loaded = futures[i].result()
            if i + 1 < len(groups):
                futures.append(pool.submit(load, groups[i + 1]))
            good = [(e, a) for e, a in loaded if isinstance(a, np.ndarray)]
            for entry, reason in ((e, a) for e, a in loaded if isinstance(a, str)):
                failed += 1
                logger.warning("skipping %s: %s", entry.path, reason)
                with open(writer.out / "failed.jsonl", "a") as f:
                    f.write(
                        json.dumps({"key": entry.key, "path": entry.path, "reason": reason}) + "\n"
                    )
            features = extractor.extract([a for _, a in good])
            for (entry, audio), feats in zip(good, features, strict=True):
                info: dict[str, object] = {
                    "num_samples": len(audio),
                    "duration": len(audio) / SAMPLE_RATE,
                }
                expected = resampled_length(entry.num_samples, entry.sample_rate, SAMPLE_RATE)
                if len(audio) != expected:
                    info["manifest_num_samples"] = expected
                    logger.warning(
                        "%s decodes to %.2f s but its manifest entry says %.2f s (truncated "
                        "or replaced file?); extracted as decoded",
                        entry.path,
                        len(audio) / SAMPLE_RATE,
                        expected / SAMPLE_RATE,
                    )
                if "frames" in feats:
                    info["num_frames"] = int(feats["frames"].shape[0])
                writer.add(entry.key, feats, info)
            seconds = sum(e.duration for e, _ in loaded)
            seconds_done += seconds
            bar.update(min(seconds, bar.total - bar.n))  # float sums never pass the total
            bar.set_postfix_str(
                f"{seconds_done / max(time.perf_counter() - start, 1e-9):.1f} audio-s/s"
            )
    writer.flush()
    bar.close()
    return {"extracted": len(todo) - failed, "already_done": already, "failed": failed}


def _progress(total: float, enabled: bool, desc: str):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="audio-s",
        unit_scale=False,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of audio "
        "[{elapsed}<{remaining}{postfix}]",
        disable=not enabled,
        dynamic_ncols=True,
    )


EXTRACT_OUTPUTS = (
    "index.jsonl",
    "failed.jsonl",
    "extract_config.json",
    "frames",
    "utterance",
    "tokens",
    "shards",
)
"""What an extraction writes into its folder (besides its record)."""


def encoder_identity(encoder: EmotionEncoder) -> str:
    """sha256 of the encoder's configuration and weights: features are keyed by this, never
    by the path the encoder was read from."""
    return tensors_identity(encoder.config.to_dict(), encoder.state_dict())


def claim_extraction_dir(
    out_dir: str | Path,
    encoder_id: str,
    manifest: str,
    config: ExtractConfig,
    fmt: str,
    *,
    overwrite: bool = False,
    replace_changed: bool = False,
    command: str = "extract",
    info: dict[str, object] | None = None,
) -> OutputDir:
    """Claim an extraction folder (`emotion_ssl.utils.outputs.claim_output_dir`): its record
    holds the encoder's content identity, the manifest and every setting that changes the
    features, so a rerun resumes only the same extraction. A changed encoder at the same
    path is refused (or, with `replace_changed`, recomputed)."""
    identity: dict[str, object] = {"encoder": encoder_id, "manifest": manifest, "format": fmt}
    identity.update(asdict(config))
    identity["outputs"] = list(config.outputs)
    for speed_only in ("batch_seconds", "workers", "backend", "onnx_cache"):  # resumable
        del identity[speed_only]
    return claim_output_dir(
        out_dir,
        command,
        identity,
        EXTRACT_OUTPUTS,
        overwrite=overwrite,
        replace_changed=replace_changed,
        info=info,
        legacy=lambda folder: (folder / "extract_config.json").is_file(),
    )


def read_features(out_dir: str | Path, kind: str = "frames") -> dict[str, np.ndarray]:
    """key -> array of one output kind, from an extraction folder (either format)."""
    from safetensors.numpy import load_file

    out = Path(out_dir)
    result: dict[str, np.ndarray] = {}
    shards: dict[str, dict[str, np.ndarray]] = {}
    for line in (out / "index.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "shard" in row:
            shard = shards.setdefault(row["shard"], load_file(str(out / row["shard"])))
            result[row["key"]] = shard[f"{row['key']}/{kind}"]
        else:
            result[row["key"]] = np.load(out / row["files"][kind])
    return result


# ---------------------------------------------------------------------------- a folder job
FOLDER_CONFIG = ExtractConfig(backend="auto")
"""`extract_to_folder`'s (and `emotion-ssl extract`'s) settings when not told: the dataclass
defaults, except backend "auto": a manifest job knows its total audio, so it can weigh the
one-time ONNX export against it (`FeatureExtractor` alone defaults to torch)."""


@dataclass
class Extraction:
    """What `extract_to_folder` did."""

    out_dir: Path
    counts: dict[str, int]
    """extracted, already_done (an earlier run's, resumed), failed (see failed.jsonl)."""
    replaced: bool
    """An earlier extraction in the folder was replaced (`overwrite`)."""
    backend_note: str
    """Which backend ran, and why."""

    @property
    def summary(self) -> str:
        lines = []
        if self.replaced:
            lines.append(f"replaced the earlier extraction in {self.out_dir} (--overwrite)")
        lines.append(
            f"extracted {self.counts['extracted']}, already done {self.counts['already_done']}, "
            f"failed {self.counts['failed']} -> {self.out_dir / 'index.jsonl'}"
        )
        if self.backend_note:
            lines.append(f"backend: {self.backend_note}")
        return "\n".join(lines)


def default_device() -> str:
    """The device extraction runs on when not told: cuda when a GPU is visible, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def extract_to_folder(
    encoder: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    config: ExtractConfig = FOLDER_CONFIG,
    format: Literal["npy", "shards"] = "npy",
    shard_size: int = 1000,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Extraction:
    """Features of every clip of `manifest` into `out_dir` (`emotion-ssl extract`).

    encoder: an encoder folder, fairseq .pt or `pretrain` .ckpt; format: "npy" (one file per
    clip and output) or "shards" (safetensors files of `shard_size` clips), with index.jsonl;
    device: None = `default_device()`. The folder must be new, empty, or an earlier extraction
    with the same encoder (by content), manifest and settings, which resumes; anything else
    needs `overwrite`. Read the result with `read_features(out_dir, "utterance")`.
    """
    from emotion_ssl.data.manifest import read_manifest
    from emotion_ssl.export.frozen import load_encoder

    out = Path(out_dir)
    entries = read_manifest(manifest)
    model = load_encoder(encoder)
    claimed = claim_extraction_dir(
        out,
        encoder_identity(model),
        str(Path(manifest).absolute()),
        config,
        format,
        overwrite=overwrite,
        info={"encoder_path": str(Path(encoder).absolute())},
    )
    extractor = FeatureExtractor(model, config, device or default_device())
    writer = FeatureWriter(out, format, shard_size)
    counts = extract_manifest(extractor, entries, writer, progress=progress)
    return Extraction(out, counts, claimed.status == "replaced", extractor.backend_note)
