"""ONNX export of the frozen encoder, and a thin onnxruntime runner for the exported file.

    from emotion_ssl.export import load_encoder
    from emotion_ssl.export.onnx import OnnxEncoder, export_onnx

    export_onnx(load_encoder("encoders/emotion2vec_base"), "emotion2vec_base.onnx")
    encoder = OnnxEncoder("emotion2vec_base.onnx")  # runs on onnxruntime
    out = encoder(waveforms, lengths)  # waveforms (B, S) float32 at 16 kHz, lengths (B,) samples
    out["utterance"]                   # (B, D); also "frames", "frame_padding_mask", "tokens"

The graph (dynamic axes: batch, samples, frames):

    inputs   waveforms           (batch, samples) float32, raw 16 kHz audio, right-padded
             padding_mask        (batch, samples) bool, True = padding
    outputs  frames              (batch, frames, D) float32, final block output at 50 Hz
             frame_padding_mask  (batch, frames) bool, True = padding
             utterance           (batch, D) float32, mean over valid frames
             tokens              (batch, E, D) float32, utterance-token outputs

Only the number of valid samples per row is read from `padding_mask` (padding must be a
suffix, as `collate` makes it). Valid frames, `utterance` and `tokens` equal `EmotionEncoder`'s
in eval mode; padded frames carry no meaning. The file's metadata (`custom_metadata_map`) holds
the encoder config, sample and frame rates, `min_samples` (the shortest valid utterance) and
`layer`. `export_onnx(..., layer=k)` makes `frames` (and `utterance`) those of block k
(0-based over prenet then shared blocks) instead of the final block; `tokens` stay the final
block's. Feature extraction runs such files through `emotion_ssl.export.ort`.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from emotion_ssl.models.config import SAMPLE_RATE
from emotion_ssl.models.encoder import EmotionEncoder, masked_mean
from emotion_ssl.models.feature_extractor import (
    conv_output_lengths,
    lengths_to_padding_mask,
    normalize_waveform,
)

if TYPE_CHECKING:
    import onnx_ir as ir

logger = logging.getLogger(__name__)

FORMAT = "emotion-ssl-encoder-onnx"
INPUT_NAMES = ("waveforms", "padding_mask")
OUTPUT_NAMES = ("frames", "frame_padding_mask", "utterance", "tokens")
MIN_OPSET = 18


class MaskedEncoder(nn.Module):
    """`EmotionEncoder`'s eval forward with masks always on: nothing depends on the values.

    The eager forward skips masking when nothing is padded and checks lengths on the host;
    a traced graph would bake such decisions in. Here every step runs on tensors, so one graph
    serves any batch and any padding. An all-False mask gives the unpadded forward exactly.
    """

    def __init__(self, encoder: EmotionEncoder, layer: int = -1) -> None:
        """layer: the block whose output gives `frames` and `utterance` (-1 = the final one)."""
        super().__init__()
        num_blocks = encoder.config.num_layers
        if not -1 <= layer < num_blocks:
            raise ValueError(f"layer {layer} not in [-1, {num_blocks - 1}]")
        self.encoder = encoder
        self.layer = layer

    def forward(
        self, waveforms: Tensor, padding_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """waveforms: (B, S) float32; padding_mask: (B, S) bool, True = padding ->
        frames (B, T, D), frame_padding_mask (B, T) bool, utterance (B, D), tokens (B, E, D)"""
        encoder = self.encoder
        S = waveforms.size(1)
        lengths = (~padding_mask).sum(dim=1)  # (B,) valid samples
        if encoder.config.normalize_waveform:
            x = normalize_waveform(waveforms, lengths)  # (B, S), padding = 0
        else:
            x = waveforms.float().masked_fill(lengths_to_padding_mask(lengths, S), 0.0)
        x = encoder.feature_extractor(x)  # (B, C, T)
        x = encoder.feature_proj(encoder.feature_norm(x.transpose(1, 2)))  # (B, T, D)
        frame_lengths = conv_output_lengths(lengths, encoder.config.conv_layers)  # (B,)
        frame_padding = lengths_to_padding_mask(frame_lengths, x.size(1))  # (B, T)
        # zero padded frames, as the eager forward does: nothing downstream may read them
        x = x.masked_fill(frame_padding.unsqueeze(-1), 0.0)
        out = encoder.context(x, frame_padding, return_layers=self.layer != -1)
        if self.layer == -1:
            frames = out.frames  # (B, T, D)
        else:
            assert out.layers is not None
            frames = out.layers[self.layer][:, out.num_tokens :]  # (B, T, D) of block `layer`
        return frames, frame_padding, masked_mean(frames, frame_padding), out.tokens


def export_onnx(
    encoder: EmotionEncoder,
    path: str | Path,
    opset: int = 18,
    layer: int = -1,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `encoder` (eval mode, float32, CPU) to one self-contained .onnx file.

    Inputs `waveforms`, `padding_mask`; outputs `frames`, `frame_padding_mask`, `utterance`,
    `tokens` (shapes in the module docstring), with dynamic axes named batch, samples, frames.
    The caller's encoder is not changed (a float32 copy is exported). `opset` must be at least
    18, the lowest torch's exporter writes. `layer`: the block giving `frames` (-1 = final).
    `metadata`: extra entries for the file's metadata map. Takes about 20 s on a CPU (mostly
    symbolic shape reasoning, whatever the model size). Returns `path`.
    """
    if opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset}: torch {torch.__version__}'s ONNX exporter writes opset {MIN_OPSET} "
            f"or newer (onnxruntime has read opset {MIN_OPSET} since 1.14)"
        )
    _require("onnxscript", "export")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = MaskedEncoder(copy.deepcopy(encoder).cpu().float().eval(), layer)
    module.requires_grad_(False)
    config = encoder.config
    min_samples = encoder.min_samples
    # a padded example; batch and samples stay symbolic, so these sizes are not baked in
    S = 2 * min_samples + config.hop_length
    waveforms = torch.randn(2, S)
    padding_mask = torch.zeros(2, S, dtype=torch.bool)
    padding_mask[1, min_samples + 1 :] = True
    axes = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    # the math attention kernel: the fused CPU kernel's shape checks would pin the batch size
    with sdpa_kernel(SDPBackend.MATH):
        exported = torch.export.export(
            module,
            (waveforms, padding_mask),
            dynamic_shapes={"waveforms": axes, "padding_mask": axes},
        )
    program = torch.onnx.export(
        exported,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    if program is None:  # only the TorchScript exporter returns None
        raise RuntimeError(f"{out}: torch.onnx.export returned no program")
    _name_axes(program.model)
    program.model.doc_string = __doc__
    program.model.metadata_props.update(
        {
            "format": FORMAT,
            "encoder": json.dumps(config.to_dict()),
            "sample_rate": str(SAMPLE_RATE),
            "frame_rate": str(SAMPLE_RATE / config.hop_length),
            "feature_dim": str(config.embed_dim),
            "num_utterance_tokens": str(config.num_utterance_tokens),
            "min_samples": str(min_samples),
            "layer": str(layer),
            "inputs": ", ".join(INPUT_NAMES),
            "outputs": ", ".join(OUTPUT_NAMES),
            **(metadata or {}),
        }
    )
    # one file: even the base encoder (about 370 MB) is far below protobuf's 2 GB limit
    program.save(out, external_data=False)
    logger.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def _name_axes(model: ir.Model) -> None:
    """Name the symbolic axes batch, samples and frames (torch writes its own symbols, and
    the frame count as the conv length formula over samples)."""
    import onnx_ir as ir

    axis_names: dict[str, tuple[str, ...]] = {
        "waveforms": ("batch", "samples"),
        "padding_mask": ("batch", "samples"),
        "frames": ("batch", "frames"),
        "frame_padding_mask": ("batch", "frames"),
        "utterance": ("batch",),
        "tokens": ("batch",),
    }
    for value in [*model.graph.inputs, *model.graph.outputs]:
        if value.shape is None or value.name not in axis_names:
            continue
        dims: list[Any] = list(value.shape)
        for axis, name in enumerate(axis_names[value.name]):
            dims[axis] = ir.SymbolicDim(name)
        value.shape = ir.Shape(dims)


class OnnxEncoder:
    """Run an exported encoder with onnxruntime (CPU by default).

    >>> encoder = OnnxEncoder("emotion2vec_base.onnx")  # doctest: +SKIP
    >>> out = encoder(waveforms, lengths)                # doctest: +SKIP
    >>> out["frames"].shape, out["utterance"].shape      # doctest: +SKIP
    ((2, 49, 768), (2, 768))
    """

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        num_threads: int = 0,
        spin: bool = True,
    ) -> None:
        """providers: onnxruntime execution providers (default CPU); num_threads: intra-op
        threads (0 = onnxruntime's default, one per core); spin: let idle intra-op threads
        busy-wait for the next operator (onnxruntime's default; off gives cores back to other
        processes between operators). All graph optimisations are on (operator fusion, NCHWc
        convolution layouts)."""
        ort = _require("onnxruntime", "run")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.path), options, providers=providers or ["CPUExecutionProvider"]
        )
        self.metadata: dict[str, Any] = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.metadata.get("format") != FORMAT:
            raise ValueError(
                f"{self.path}: metadata format {self.metadata.get('format')!r}, expected "
                f"{FORMAT!r} (not written by emotion_ssl.export.onnx.export_onnx)"
            )
        self.min_samples = int(self.metadata["min_samples"])

    def __call__(self, waveforms: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        """waveforms: (B, S) float raw 16 kHz audio; lengths: (B,) valid samples per row ->
        {"frames": (B, T, D), "frame_padding_mask": (B, T) bool, "utterance": (B, D),
        "tokens": (B, E, D)}"""
        waveforms = np.ascontiguousarray(waveforms, dtype=np.float32)
        lengths = np.asarray(lengths, dtype=np.int64)
        if waveforms.ndim != 2 or lengths.shape != (waveforms.shape[0],):
            raise ValueError(
                f"{self.path}: waveforms must be (batch, samples) and lengths (batch,), got "
                f"{waveforms.shape} and {lengths.shape}"
            )
        S = waveforms.shape[1]
        if (lengths > S).any() or (lengths < self.min_samples).any():
            raise ValueError(
                f"{self.path}: every length must be in [{self.min_samples}, {S}] samples "
                f"(the CNN needs {self.min_samples} for one frame); got {lengths.tolist()}"
            )
        padding_mask = np.arange(S)[None, :] >= lengths[:, None]  # (B, S) True = padding
        outputs = self.session.run(
            list(OUTPUT_NAMES), {"waveforms": waveforms, "padding_mask": padding_mask}
        )
        return dict(zip(OUTPUT_NAMES, outputs, strict=True))


def _require(package: str, what: str) -> Any:
    """Import an ONNX package (a dependency; missing in a partial install) or say how to get it."""
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise ImportError(
            f"emotion_ssl.export.onnx: to {what} ONNX encoders install {package} "
            "(a dependency of emotion-ssl: `pip install -e .` brings onnx, onnxscript and "
            "onnxruntime)"
        ) from error


__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "MaskedEncoder", "OnnxEncoder", "export_onnx"]
