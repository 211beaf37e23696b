"""Saving and loading encoders: the frozen-encoder folder, fairseq checkpoints, extraction."""

from emotion_ssl.export.frozen import load_classifier, load_encoder, read_weights, save_encoder_dir
from emotion_ssl.export.weights import PretrainedWeights

__all__ = [
    "PretrainedWeights",
    "load_classifier",
    "load_encoder",
    "read_weights",
    "save_encoder_dir",
]
