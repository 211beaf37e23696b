"""Fine-tuning: a pretrained encoder with a classification head, frozen, partly or fully."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emotion_ssl.data.batch import AudioBatch
from emotion_ssl.export.frozen import build_encoder, read_weights
from emotion_ssl.models.config import SettingsError
from emotion_ssl.models.heads import ClassificationHead, Pooling
from emotion_ssl.train.callbacks import run_folder
from emotion_ssl.train.metrics import classification_scores, plot_confusion
from emotion_ssl.train.optim import warmup_cosine
from emotion_ssl.train.settings import settings_copy, settings_dict

Freeze = Literal["all", "top", "none"]


@dataclass
class FreezeSettings:
    """Which parts of the pretrained encoder train with the head."""

    mode: Freeze = "top"
    """"all" = only the head trains; "top" = the head and the top `trainable_blocks`
    transformer blocks; "none" = everything (but the CNN when `freeze_cnn`)."""

    trainable_blocks: int = 4
    """With mode "top", how many blocks (from the top) train."""

    freeze_cnn: bool = True
    """Keep the CNN feature extractor frozen with mode "none"."""

    def __post_init__(self) -> None:
        if self.mode not in ("all", "top", "none"):
            raise SettingsError(f"freeze.mode must be 'all', 'top' or 'none', got {self.mode!r}")


@dataclass
class FinetuneOptimSettings:
    """AdamW with layer-wise learning rates, linear warm-up, then cosine decay to 0."""

    lr: float = 1e-3
    """Learning rate of the head."""

    encoder_lr: float = 5e-5
    """Learning rate of the top block; each block below gets `layer_decay` times the one
    above it (layer-wise decay)."""

    layer_decay: float = 0.8
    """Factor between the learning rates of neighbouring blocks."""

    weight_decay: float = 0.01
    """AdamW weight decay."""

    warmup_steps: int = 100
    """Linear warm-up updates (at most the whole run)."""


class FinetuneSystem(L.LightningModule):
    """Encoder + ClassificationHead trained with cross-entropy; early stopping on val UA.

    Args:
        encoder: the pretrained encoder (emotion-ssl folder, fairseq checkpoint or
            `pretrain` checkpoint).
        label_names: class names (the data module supplies them through the CLI).
        pooling: "mean" or "attentive" pooling of the frames.
        head_dropout: dropout on the pooled vector before the head's linear layer.
        freeze: which parts of the encoder train.
        optim: learning rates (layer-wise for the encoder), weight decay, warm-up.
        class_balanced: weight the loss by inverse class frequency of the training data.
    """

    def __init__(
        self,
        encoder: str,
        label_names: list[str] | None = None,
        pooling: Pooling = "mean",
        head_dropout: float = 0.1,
        freeze: FreezeSettings = FreezeSettings(),
        optim: FinetuneOptimSettings = FinetuneOptimSettings(),
        class_balanced: bool = False,
    ) -> None:
        super().__init__()
        if not label_names or len(label_names) < 2:
            raise ValueError(f"label_names needs at least 2 classes, got {label_names}")
        self.freezing = settings_copy(FreezeSettings, freeze)
        self.optim = settings_copy(FinetuneOptimSettings, optim)
        self.save_hyperparameters(
            {
                "encoder": encoder,
                "label_names": list(label_names),
                "pooling": pooling,
                "head_dropout": head_dropout,
                "freeze": settings_dict(self.freezing),
                "optim": settings_dict(self.optim),
                "class_balanced": class_balanced,
            }
        )
        weights = read_weights(encoder)
        self.encoder = build_encoder(weights)
        self.encoder_config = weights.config
        self.label_names = list(label_names)
        self.head = ClassificationHead(
            weights.config.embed_dim, len(label_names), pooling, head_dropout
        )
        self.hparams["head_config"] = self.head.config
        self.class_balanced = class_balanced
        self.register_buffer("class_weights", torch.ones(len(label_names)), persistent=False)
        self._frozen = self._apply_freezing()
        self._outputs: dict[str, list[Tensor]] = {}
        self.train()  # Lightning keeps the modes it finds: frozen parts start in eval mode

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the resolved architecture: an export needs neither the source file nor its path
        checkpoint["encoder_config"] = self.encoder_config.to_dict()

    # ------------------------------------------------------------------ freezing
    def blocks(self) -> list[nn.Module]:
        """Every transformer block, bottom (first prenet block) to top (last shared)."""
        context = self.encoder.context
        return [*context.prenet, *context.blocks]

    def _apply_freezing(self) -> list[nn.Module]:
        """Set requires_grad; returns the frozen modules (they stay in eval mode)."""
        blocks, f = self.blocks(), self.freezing
        if f.mode == "all":
            trainable: list[nn.Module] = []
        elif f.mode == "top":
            if not 1 <= f.trainable_blocks <= len(blocks):
                raise ValueError(
                    f"freeze.trainable_blocks={f.trainable_blocks} not in [1, {len(blocks)}]"
                )
            trainable = blocks[-f.trainable_blocks :]
        else:
            trainable = [
                m
                for m in self.encoder.children()
                if not (f.freeze_cnn and m is self.encoder.feature_extractor)
            ]
        self.encoder.requires_grad_(False)
        for module in trainable:
            module.requires_grad_(True)
        if f.mode == "none" and not f.freeze_cnn:
            self.encoder.requires_grad_(True)
        frozen = [
            m for m in self._leaf_groups() if not any(p.requires_grad for p in m.parameters())
        ]
        return frozen

    def _leaf_groups(self) -> list[nn.Module]:
        e = self.encoder
        c = e.context
        return [
            e.feature_extractor,
            e.feature_norm,
            e.feature_proj,
            c.pos_conv,
            c.prenet_norm,
            *self.blocks(),
        ]

    def train(self, mode: bool = True) -> FinetuneSystem:
        super().train(mode)
        for module in getattr(self, "_frozen", []):
            module.eval()  # frozen parts run without dropout or layerdrop
        return self

    # ------------------------------------------------------------------ steps
    def forward(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        """waveforms: (B, S) raw 16 kHz audio; lengths: (B,) -> logits (B, classes)"""
        out = self.encoder(waveforms, lengths)
        return self.head(out.frames, out.padding_mask)

    def on_fit_start(self) -> None:
        if not self.class_balanced:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_dataset", None)
        if dataset is None or not hasattr(dataset, "labels"):
            raise ValueError("class_balanced needs a data module whose train_dataset has labels")
        counts = np.bincount(np.asarray(dataset.labels), minlength=len(self.label_names)).astype(
            float
        )
        # inverse frequency, normalised so a balanced set gets weight 1 everywhere
        weights = counts.sum() / (len(counts) * np.maximum(counts, 1.0))
        self.class_weights = torch.tensor(weights, dtype=torch.float32, device=self.device)

    def training_step(self, batch: AudioBatch, batch_idx: int) -> Tensor:
        logits = self(batch.waveforms, batch.lengths)
        loss = F.cross_entropy(logits.float(), batch.labels, weight=self.class_weights)
        acc = (logits.argmax(-1) == batch.labels).float().mean()
        self.log_dict(
            {"train/loss": loss, "train/acc": acc}, prog_bar=True, batch_size=batch.batch_size
        )
        return loss

    def _eval_step(self, batch: AudioBatch, stage: str) -> None:
        logits = self(batch.waveforms, batch.lengths)
        loss = F.cross_entropy(logits.float(), batch.labels)
        self.log(f"{stage}/loss", loss, batch_size=batch.batch_size, sync_dist=True)
        self._outputs.setdefault(stage, []).append(
            torch.stack([logits.argmax(-1), batch.labels], 1).cpu()
        )

    def validation_step(self, batch: AudioBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: AudioBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, stage: str) -> None:
        rows = self._outputs.pop(stage, [])
        if not rows:
            return
        pairs = torch.cat(rows).numpy()
        scores = classification_scores(pairs[:, 1], pairs[:, 0], len(self.label_names))
        self.log_dict(
            {f"{stage}/{k}": v for k, v in scores.as_dict().items()}, prog_bar=stage == "val"
        )
        if stage == "test" and self.trainer.is_global_zero:
            out = run_folder(self.trainer)
            out.mkdir(parents=True, exist_ok=True)
            (out / "test_results.json").write_text(
                json.dumps(
                    {
                        **scores.as_dict(),
                        "labels": self.label_names,
                        "confusion": scores.confusion.tolist(),
                    },
                    indent=2,
                )
            )
            plot_confusion(
                scores.confusion,
                self.label_names,
                str(out / "test_confusion.png"),
                "fine-tuned: test fold",
            )

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Head at `lr`; block k from the top at encoder_lr * layer_decay**k; the rest of the
        encoder below the lowest block."""
        groups: list[dict[str, Any]] = [
            {"params": list(self.head.parameters()), "lr": self.optim.lr, "name": "head"}
        ]
        blocks = self.blocks()
        seen: set[int] = set()
        for depth, block in enumerate(reversed(blocks)):
            params = [p for p in block.parameters() if p.requires_grad]
            seen.update(id(p) for p in block.parameters())
            if params:
                groups.append(
                    {
                        "params": params,
                        "lr": self.optim.encoder_lr * self.optim.layer_decay**depth,
                        "name": f"block_{len(blocks) - 1 - depth}",
                    }
                )
        rest = [p for p in self.encoder.parameters() if p.requires_grad and id(p) not in seen]
        if rest:
            groups.append(
                {
                    "params": rest,
                    "lr": self.optim.encoder_lr * self.optim.layer_decay ** len(blocks),
                    "name": "encoder_rest",
                }
            )
        return groups

    def configure_optimizers(self) -> Any:
        groups = self.parameter_groups()
        for group in groups:
            group["initial_lr"] = group["lr"]
        optimizer = torch.optim.AdamW(groups, weight_decay=self.optim.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = warmup_cosine(optimizer, self.optim.warmup_steps, total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
