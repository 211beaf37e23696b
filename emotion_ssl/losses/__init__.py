"""Losses: targets, frame, utterance, contrastive, and the objective that combines them."""

from emotion_ssl.losses.contrastive import (
    CategoryMemory,
    ProjectionHead,
    PrototypeBank,
    SupConOutput,
    centred_unit,
    supervised_contrastive_loss,
)
from emotion_ssl.losses.frame import frame_loss
from emotion_ssl.losses.guards import (
    CollapseGuard,
    NonFiniteGuard,
    NonFiniteLossError,
    TrainingCollapsedError,
)
from emotion_ssl.losses.objective import LossOutput, ObjectiveSettings, PretrainObjective
from emotion_ssl.losses.targets import (
    feature_std,
    frame_targets,
    instance_norm_over_time,
    utterance_target,
)
from emotion_ssl.losses.utterance import utterance_loss, utterance_prediction

__all__ = [
    "CategoryMemory",
    "CollapseGuard",
    "LossOutput",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "ObjectiveSettings",
    "PretrainObjective",
    "PrototypeBank",
    "ProjectionHead",
    "SupConOutput",
    "TrainingCollapsedError",
    "centred_unit",
    "feature_std",
    "frame_loss",
    "frame_targets",
    "instance_norm_over_time",
    "supervised_contrastive_loss",
    "utterance_loss",
    "utterance_prediction",
    "utterance_target",
]
