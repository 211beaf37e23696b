"""Where CPU extraction time goes: the CNN front end's share of the time in torch and in ONNX
Runtime, torch eager stage by stage, and each backend's heaviest operators. Random seeded
weights of `--config` (base by default), the clips of benchmarks/extract_speed.py, one clip at
a time, `--threads` threads.

    .venv/bin/python benchmarks/extract_profile.py --record

- Stages (torch eager): forward hooks time each CNN layer (conv, LayerNorm, GELU), the
  feature norm + projection, the positional convolution and the transformer blocks; "rest"
  is the whole forward minus those (waveform normalisation, attention bias, tokens, mean).
- CNN share per backend: the front end alone (waveform normalisation + the 7 conv layers),
  run the backend's way, against the whole encoder on the same clips; for onnxruntime the
  front end is exported on its own (same opset and session options as the backend's graph).
- Operators: torch.profiler's self CPU time per aten operator, onnxruntime's profiler per
  operator type of the optimised graph (its fused kernels: BiasGelu, SkipLayerNormalization,
  FusedMatMul, and NCHWc Reorder nodes around convolutions).
- Matmul ceilings: fp32 GFLOP/s of a bare matrix product in torch and in onnxruntime (MLAS)
  at the encoder's shapes for a 4 s clip (E + 200 rows: qkv, FFN in and out) and 2048^3;
  with every other operator free, extraction could run at most this fast.
Profilers add overhead: read their columns as shares, the stage table for seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.extract_speed import load_average, make_clips, make_encoder  # noqa: E402
from benchmarks.pretrain_throughput import append_results, command_line, cpu_name  # noqa: E402
from emotion_ssl import EmotionEncoder, EncoderConfig  # noqa: E402
from emotion_ssl.export import ort  # noqa: E402
from emotion_ssl.models.feature_extractor import normalize_waveform  # noqa: E402
from emotion_ssl.utils.flops import inference_flops  # noqa: E402


class FrontEnd(nn.Module):
    """Waveform normalisation + CNN of an encoder: (B, S) -> (B, C, T) (unpadded clips)."""

    def __init__(self, encoder: EmotionEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, waveforms: Tensor) -> Tensor:
        lengths = torch.full((waveforms.size(0),), waveforms.size(1), device=waveforms.device)
        return self.encoder.feature_extractor(normalize_waveform(waveforms, lengths))


def best_of(repeats: int, run: Callable[[], object]) -> float:
    run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def torch_stages(
    encoder: EmotionEncoder, clips: list[Tensor], repeats: int
) -> tuple[float, dict[str, float]]:
    """Best whole pass over the clips and the seconds of each stage in that pass."""
    stages: dict[str, list[float]] = defaultdict(list)
    modules: list[tuple[str, nn.Module]] = [
        *((f"CNN layer {i}", layer) for i, layer in enumerate(encoder.feature_extractor.layers)),
        ("feature norm", encoder.feature_norm),
        ("projection", encoder.feature_proj),
        ("positional conv", encoder.context.pos_conv),
        *(("transformer blocks", b) for b in [*encoder.context.prenet, *encoder.context.blocks]),
    ]
    handles = []
    for name, module in modules:
        handles.append(
            module.register_forward_pre_hook(
                lambda m, a, name=name: stages[name].append(-time.perf_counter())
            )
        )
        handles.append(
            module.register_forward_hook(
                lambda m, a, o, name=name: stages[name].__setitem__(
                    -1, stages[name][-1] + time.perf_counter()
                )
            )
        )
    best, best_stages = float("inf"), {}
    try:
        with torch.inference_mode():
            for c in clips[:2]:
                encoder(c)
            for _ in range(repeats):
                stages.clear()
                start = time.perf_counter()
                for c in clips:
                    encoder(c)
                elapsed = time.perf_counter() - start
                if elapsed < best:
                    best, best_stages = elapsed, {k: sum(v) for k, v in stages.items()}
    finally:
        for handle in handles:
            handle.remove()
    best_stages["rest"] = best - sum(best_stages.values())
    return best, best_stages


def torch_operators(encoder: EmotionEncoder, clips: list[Tensor], top: int) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for c in clips:
            encoder(c)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return [f"{e.key} {100 * e.self_cpu_time_total / total:.1f}%" for e in events[:top]]


def ort_session(path: Path, threads: int, profile_prefix: str | None = None):  # type: ignore[no-untyped-def]
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_front_end(encoder: EmotionEncoder, path: Path) -> Path:
    waveforms = torch.randn(2, 2 * encoder.min_samples + encoder.config.hop_length)
    axes = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    exported = torch.export.export(
        FrontEnd(encoder).eval(), (waveforms,), dynamic_shapes={"waveforms": axes}
    )
    program = torch.onnx.export(
        exported, input_names=["waveforms"], opset_version=ort.OPSET, dynamo=True
    )
    assert program is not None
    program.save(path)
    return path


def ort_operators(path: Path, clips: list[np.ndarray], threads: int, top: int) -> list[str]:
    with tempfile.TemporaryDirectory() as scratch:
        session = ort_session(path, threads, str(Path(scratch) / "profile"))
        for c in clips:
            session.run(None, {"waveforms": c[None], "padding_mask": np.zeros((1, len(c)), bool)})
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    total = sum(by_op.values())
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
    return [f"{op} {100 * us / total:.1f}%" for op, us in ranked]


def matmul_ceilings(config: EncoderConfig, threads: int) -> list[str]:
    """Table rows: GFLOP/s of (M, K) x (K, N) in torch and onnxruntime, `threads` threads."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    rows = config.num_utterance_tokens + 200  # a 4 s clip
    D, hidden = config.embed_dim, int(config.embed_dim * config.mlp_ratio)
    shapes = [
        ("qkv", rows, D, 3 * D),
        ("FFN in", rows, D, hidden),
        ("FFN out", rows, hidden, D),
        ("2048^3", 2048, 2048, 2048),
    ]
    out = []
    for name, M, K, N in shapes:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((M, K), dtype=np.float32)
        w = rng.standard_normal((K, N), dtype=np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "matmul",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])],
            [numpy_helper.from_array(w, "w")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ort.OPSET)])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        reps = max(3, int(4e9 / (2 * M * K * N)))
        flop = 2 * M * K * N * reps / 1e9
        t_torch = best_of(3, lambda xt=xt, wt=wt, reps=reps: [xt @ wt for _ in range(reps)])
        t_ort = best_of(
            3, lambda s=session, x=x, reps=reps: [s.run(None, {"x": x}) for _ in range(reps)]
        )
        out.append(f"| {name} ({M} x {K} x {N}) | {flop / t_torch:.0f} | {flop / t_ort:.0f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="base", choices=["base", "tiny"])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--min-seconds", type=float, default=2.9)
    parser.add_argument("--max-seconds", type=float, default=5.3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=10, help="operators listed per backend")
    parser.add_argument("--onnx-cache", default=None)
    parser.add_argument("--record", action="store_true", help="append the tables to RESULTS.md")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = load_average()
    encoder = make_encoder(args.config, torch.device("cpu"))
    arrays = make_clips(args.clips, args.min_seconds, args.max_seconds)
    clips = [torch.from_numpy(a).unsqueeze(0) for a in arrays]
    audio = sum(len(a) for a in arrays) / 16_000

    whole, stages = torch_stages(encoder, clips, args.repeats)
    front_end = FrontEnd(encoder)
    with torch.inference_mode():
        torch_cnn = best_of(args.repeats, lambda: [front_end(c) for c in clips])
    torch_ops = torch_operators(encoder, clips, args.top)

    full_path, _ = ort.cached_onnx(encoder, -1, args.onnx_cache)
    with tempfile.TemporaryDirectory() as scratch:
        cnn_session = ort_session(
            export_front_end(encoder, Path(scratch) / "cnn.onnx"), args.threads
        )
        full_session = ort_session(full_path, args.threads)

        def run_full() -> None:
            for a in arrays:
                full_session.run(
                    ["frames"], {"waveforms": a[None], "padding_mask": np.zeros((1, len(a)), bool)}
                )

        ort_cnn, ort_whole = float("inf"), float("inf")
        for _ in range(args.repeats):  # interleaved, best kept
            ort_cnn = min(
                ort_cnn,
                best_of(1, lambda: [cnn_session.run(None, {"waveforms": a[None]}) for a in arrays]),
            )
            ort_whole = min(ort_whole, best_of(1, run_full))
    ort_ops = ort_operators(full_path, arrays, args.threads, args.top)
    ceilings = matmul_ceilings(encoder.config, args.threads)
    load_after = load_average()

    flops = inference_flops(encoder.config, audio / len(arrays))  # per second of audio
    cnn_rows = [
        f"| torch eager | {whole:.2f} | {torch_cnn:.2f} | {100 * torch_cnn / whole:.0f}% |",
        f"| onnxruntime | {ort_whole:.2f} | {ort_cnn:.2f} | {100 * ort_cnn / ort_whole:.0f}% |",
    ]
    stage_rows = [
        f"| {name} | {seconds:.2f} | {100 * seconds / whole:.0f}% |"
        for name, seconds in stages.items()
    ]
    cnn_total = sum(s for n, s in stages.items() if n.startswith("CNN"))
    operators = [
        f"| {i + 1} | {t} | {o} |"
        for i, (t, o) in enumerate(
            zip(torch_ops + [""] * args.top, ort_ops + [""] * args.top, strict=False)
        )
        if t or o
    ][: args.top]
    command = command_line("extract_profile.py")
    text = "\n".join(
        [
            f"Device: {cpu_name()}; {args.threads} threads; {args.config} encoder (random seeded "
            f"weights), fp32, one clip at a time; {len(arrays)} clips, {audio:.1f} s of audio in "
            f"[{args.min_seconds:g}, {args.max_seconds:g}] s; best of {args.repeats}; load average "
            f"(1, 5, 15 min) {load_before} before, {load_after} after; "
            f"{datetime.date.today().isoformat()}.",
            f"Command: `{command}`",
            "",
            "The CNN front end (waveform normalisation + 7 conv layers) alone vs the whole encoder:",
            "",
            "| backend | whole encoder, s | CNN front end alone, s | CNN share |",
            "|---|---|---|---|",
            *cnn_rows,
            "",
            f"Torch eager by stage (forward hooks; the CNN layers together: {cnn_total:.2f} s, "
            f"{100 * cnn_total / whole:.0f}%):",
            "",
            "| stage | seconds | share |",
            "|---|---|---|",
            *stage_rows,
            "",
            "Heaviest operators (share of profiled operator time):",
            "",
            "| rank | torch eager (aten, self CPU) | onnxruntime (optimised graph) |",
            "|---|---|---|",
            *operators,
            "",
            f"Matmul ceilings (fp32, {args.threads} threads; the whole encoder runs at "
            f"{flops * audio / whole / 1e9:.0f} GFLOP/s in torch eager, "
            f"{flops * audio / ort_whole / 1e9:.0f} in onnxruntime, one clip at a time):",
            "",
            "| product (M x K x N) | torch GFLOP/s | onnxruntime GFLOP/s |",
            "|---|---|---|",
            *ceilings,
        ]
    )
    print("\n" + text)
    if args.record:
        append_results("Extraction profile (benchmarks/extract_profile.py)", text)


if __name__ == "__main__":
    main()
