"""The ONNX Runtime backend of feature extraction (`emotion-ssl extract --backend`).

    from emotion_ssl.export.extract import ExtractConfig, FeatureExtractor

    extractor = FeatureExtractor(encoder, ExtractConfig(backend="onnxruntime"))
    features = extractor.extract(recordings)  # as with torch; frames within 1e-4
    print(extractor.backend_note)             # which backend ran, and why

The encoder is exported once per weights (`export_onnx`, about 20 s for base) into a cache
folder (`onnx_cache`, default `<tmp>/emotion-ssl-onnx`) under a name that is a hash of the
weights, the config, the layer and the source of the modules that define the graph, so a
cached file is never served for other weights or older code; the hash is also written into
the file and checked when it is opened. ONNX Runtime runs it with every graph optimisation
(operator fusion, NCHWc convolutions), dynamic batch and length, and the always-masked
forward of `MaskedEncoder`: padded batches give the valid frames of each clip alone.

Backends:
- "torch": eager PyTorch (any device, float32 or bfloat16 autocast);
- "onnxruntime": CPU, float32; its first batch also runs in torch and must agree within
  `TOLERANCE` (a cheap guard against a wrong file), else it stops;
- "auto": on a CPU, in float32, for a job of at least `AUTO_MIN_SECONDS` of audio (30 min;
  `AUTO_MIN_SECONDS_CACHED`, 10 min, when the export is cached) — the whole manifest under
  `extract_manifest`, else the first `extract` call — a timed trial on the first batch
  (each backend runs it once untimed, then twice interleaved, best kept; the frames are
  compared) picks onnxruntime unless torch is `TRIAL_MARGIN` (10%) faster; otherwise torch
  (the export would not pay for itself). The choice and its reason are logged and kept in
  `FeatureExtractor.backend_note`.

Threads: `threads` intra-op threads per session run (the extractor passes the torch thread
count divided by its workers); with workers, each worker thread runs whole batches through
the one shared session (`InferenceSession.run` is thread-safe and releases the GIL).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from emotion_ssl.export import onnx as onnx_export
from emotion_ssl.models import encoder as encoder_module
from emotion_ssl.models import feature_extractor, transformer
from emotion_ssl.models.encoder import EmotionEncoder
from emotion_ssl.utils.outputs import atomic_write

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "auto")
TOLERANCE = 1e-4
"""Largest allowed |onnxruntime - torch| on the first batch's frames and tokens."""
AUTO_MIN_SECONDS = 1800.0
"""`auto` exports the encoder only for a job of at least this much audio (30 min): the export,
session setup and trial (about 40 s for base on 2 cores) cost about what onnxruntime's
measured 1.1-1.2x saves on 30 min of audio (benchmarks/RESULTS.md)."""
AUTO_MIN_SECONDS_CACHED = 600.0
"""With the export already cached, session setup and trial (about 10 s) pay off from 10 min."""
TRIAL_RUNS = 2
"""Timed runs of the first batch per backend in `auto`'s trial (after one untimed run)."""
TRIAL_MARGIN = 1.1
"""`auto` keeps onnxruntime unless torch runs the trial batch at least this much faster: one
batch's timings are noisy on a shared machine, and onnxruntime was 1.2-1.3x faster than
eager torch in every benchmark run here (benchmarks/RESULTS.md)."""
CACHE_ENV = "EMOTION_SSL_ONNX_CACHE"
OPSET = 20
"""Opset of the backend's export: from 20 ONNX has a Gelu operator, which onnxruntime runs
fused with the bias before it (BiasGelu) instead of the five operators of the erf formula."""
# the code that shapes the exported graph: a change to any of it invalidates cached files
GRAPH_MODULES = (encoder_module, feature_extractor, transformer, onnx_export)

SegmentResult = dict[str, Tensor]  # {"frames": (T, D), "tokens": (E, D)} of one segment


def default_cache_dir() -> Path:
    """$EMOTION_SSL_ONNX_CACHE, else <tmp>/emotion-ssl-onnx."""
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "emotion-ssl-onnx")


def graph_key(encoder: EmotionEncoder, layer: int = -1) -> str:
    """Hex digest naming one exported graph: the encoder's config and every weight (name,
    dtype, shape, bytes), the layer, the opset, the torch version and the source of
    `GRAPH_MODULES`."""
    digest = hashlib.blake2b(digest_size=20)
    header = {
        "config": encoder.config.to_dict(),
        "layer": layer,
        "opset": OPSET,
        "torch": torch.__version__,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for module in GRAPH_MODULES:
        digest.update(inspect.getsource(module).encode())
    state = encoder.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # raw bytes, any dtype
    return digest.hexdigest()


def cache_path(
    encoder: EmotionEncoder, layer: int = -1, cache_dir: str | Path | None = None
) -> tuple[Path, str]:
    """Where the export of `encoder` (block `layer` as `frames`) is cached: (path, key)."""
    key = graph_key(encoder, layer)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"encoder-{key}.onnx", key


def cached_onnx(
    encoder: EmotionEncoder, layer: int = -1, cache_dir: str | Path | None = None
) -> tuple[Path, str]:
    """The ONNX file of `encoder` (block `layer` as `frames`) in `cache_dir`, exported unless a
    file with the same `graph_key` is there. Returns (path, key). The export writes a
    temporary file and renames it, so concurrent extractions never read a partial file."""
    path, key = cache_path(encoder, layer, cache_dir)
    folder = path.parent
    if path.is_file():
        logger.info("onnxruntime: using the cached export %s", path)
        return path, key
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with atomic_write(path, suffix=".onnx") as temporary:
        onnx_export.export_onnx(
            encoder, temporary, opset=OPSET, layer=layer, metadata={"graph_key": key}
        )
    logger.info("onnxruntime: exported %s in %.0f s", path, time.perf_counter() - start)
    return path, key


class OrtBatchEncoder:
    """Encodes padded batches of recordings with ONNX Runtime, as the torch path does.

    >>> runner = OrtBatchEncoder(*cached_onnx(encoder), threads=2)  # doctest: +SKIP
    >>> runner([clip_a, clip_b])[0]["frames"].shape                  # doctest: +SKIP
    torch.Size([49, 768])
    """

    def __init__(self, path: str | Path, key: str, threads: int = 1) -> None:
        """path: a file from `cached_onnx`, whose metadata must hold `key`; threads: intra-op
        threads of every run."""
        self.runner = onnx_export.OnnxEncoder(path, num_threads=threads)
        found = self.runner.metadata.get("graph_key")
        if found != key:
            raise ValueError(
                f"{path}: made from other weights or code (graph_key {found!r}, expected {key!r})"
            )
        self.threads = threads

    def __call__(self, audios: Sequence[np.ndarray]) -> list[SegmentResult]:
        """audios: B float32 arrays of 16 kHz samples -> per recording {"frames": (T, D),
        "tokens": (E, D)} float32 tensors."""
        lengths = np.array([len(a) for a in audios], dtype=np.int64)
        waves = np.zeros((len(audios), int(lengths.max())), dtype=np.float32)  # (B, S)
        for row, audio in enumerate(audios):
            waves[row, : len(audio)] = audio
        out = self.runner(waves, lengths)
        frame_counts = (~out["frame_padding_mask"]).sum(axis=1)  # (B,)
        return [
            {
                "frames": torch.from_numpy(out["frames"][row, : frame_counts[row]]),
                "tokens": torch.from_numpy(out["tokens"][row]),
            }
            for row in range(len(audios))
        ]


@dataclass
class BackendChoice:
    """What `choose_backend` decided: the backend, why (printed), the onnxruntime runner when
    chosen, and the first batch's outputs when the decision computed them (to reuse)."""

    backend: str
    note: str
    runner: OrtBatchEncoder | None = None
    first_batch: list[SegmentResult] | None = None


def onnxruntime_missing() -> str | None:
    """Which package the backend needs but cannot import, or None."""
    for package in ("onnxruntime", "onnxscript", "onnx"):
        try:
            importlib.import_module(package)
        except ImportError:
            return package
    return None


def choose_backend(
    requested: str,
    encoder: EmotionEncoder,
    *,
    layer: int,
    device: torch.device,
    dtype: str,
    seconds: float,
    threads: int,
    cache_dir: str | Path | None,
    first_batch: Sequence[np.ndarray],
    torch_encode: Callable[[], list[SegmentResult]],
) -> BackendChoice:
    """Resolve `requested` ("torch", "onnxruntime" or "auto"; see the module docstring).

    seconds: audio of the job (the manifest's, or the first `extract` call's); first_batch:
    the first batch (its recordings); torch_encode: runs that batch in torch.
    """
    if requested not in BACKENDS:
        raise ValueError(f"backend {requested!r}: expected one of {', '.join(BACKENDS)}")
    if requested == "torch":
        return BackendChoice("torch", "torch (requested)")
    unsupported = None
    if device.type != "cpu":
        unsupported = f"it runs on the CPU here, not {device}"
    elif dtype != "float32":
        unsupported = f"its graph is float32, not {dtype}"
    elif missing := onnxruntime_missing():
        unsupported = f"{missing} is not installed (pip install -e .)"
    if requested == "auto":
        if unsupported:
            return BackendChoice("torch", f"torch (auto: not onnxruntime, {unsupported})")
        too_little = None
        if seconds < AUTO_MIN_SECONDS_CACHED:
            too_little = f"the {AUTO_MIN_SECONDS_CACHED:.0f} s that pay for setting up onnxruntime"
        elif seconds < AUTO_MIN_SECONDS and not cache_path(encoder, layer, cache_dir)[0].is_file():
            too_little = f"the {AUTO_MIN_SECONDS:.0f} s that pay for the ONNX export (none cached)"
        if too_little:
            return BackendChoice(
                "torch",
                f"torch (auto: {seconds:.0f} s of audio, below {too_little}; "
                "--backend onnxruntime forces it)",
            )
    elif unsupported:
        raise ValueError(f"backend onnxruntime: {unsupported}")

    runner = OrtBatchEncoder(*cached_onnx(encoder, layer, cache_dir), threads=threads)

    def run_torch() -> list[SegmentResult]:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)  # the threads torch would get: a fair trial
        try:
            return torch_encode()
        finally:
            torch.set_num_threads(previous)

    want, got = run_torch(), runner(first_batch)  # also the warm-up of both
    difference = max(
        float((g[name] - w[name]).abs().max())
        for g, w in zip(got, want, strict=True)
        for name in ("frames", "tokens")
    )
    agreement = f"first batch within {difference:.1e} of torch"
    trial = requested == "auto"
    if difference > TOLERANCE:
        message = (
            f"onnxruntime differs from torch by {difference:.2e} > {TOLERANCE:g} on the first batch"
        )
        if not trial:
            raise RuntimeError(f"{runner.runner.path}: {message}")
        logger.warning("%s; using torch", message)
        return BackendChoice("torch", f"torch (auto: {message})", first_batch=want)
    if not trial:
        return BackendChoice(
            "onnxruntime", f"onnxruntime (requested; {agreement})", runner, first_batch=got
        )
    torch_seconds = ort_seconds = float("inf")
    for _ in range(TRIAL_RUNS):  # interleaved, best of each: both see the same machine state
        torch_seconds = min(torch_seconds, _seconds(run_torch))
        ort_seconds = min(ort_seconds, _seconds(lambda: runner(first_batch)))
    timing = (
        f"first batch ({len(first_batch)} clips): onnxruntime {ort_seconds:.2f} s, torch "
        f"{torch_seconds:.2f} s, {threads} thread(s)"
    )
    if torch_seconds * TRIAL_MARGIN > ort_seconds:
        return BackendChoice(
            "onnxruntime", f"onnxruntime (auto: {timing}; {agreement})", runner, first_batch=got
        )
    return BackendChoice("torch", f"torch (auto: {timing})", first_batch=want)


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


__all__ = [
    "AUTO_MIN_SECONDS",
    "AUTO_MIN_SECONDS_CACHED",
    "BACKENDS",
    "BackendChoice",
    "OrtBatchEncoder",
    "cache_path",
    "cached_onnx",
    "choose_backend",
    "default_cache_dir",
    "graph_key",
]
