"""The pretraining system: where student, teacher, masking and the objective meet.

One step, top to bottom (`forward_step`, then `optimizer_step`): the teacher turns the clip into
targets, the student encodes masked clones of it, the decoder predicts every frame, the
objective compares; after the optimizer update the teacher takes its EMA step.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from einops import repeat
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import Tensor

from emotion_ssl.losses import (
    CollapseGuard,
    LossOutput,
    NonFiniteGuard,
    NonFiniteLossError,
    ObjectiveSettings,
    PretrainObjective,
    frame_targets,
)
from emotion_ssl.models import EmotionEncoder, EncoderConfig
from emotion_ssl.models.config import SAMPLE_RATE, EncoderSettings
from emotion_ssl.models.decoder import ConvDecoder
from emotion_ssl.models.masking import (
    MaskingSettings,
    clone_lengths,
    compute_span_mask,
    to_device,
)
from emotion_ssl.models.teacher import EMATeacher, TeacherSettings, full_parameters
from emotion_ssl.train.optim import OptimSettings, warmup_cosine
from emotion_ssl.train.settings import settings_copy, settings_dict

if TYPE_CHECKING:
    from emotion_ssl.data.batch import AudioBatch

__all__ = ["NonFiniteLossError", "PretrainSystem", "StepOutput", "TeacherTargets"]

# PretrainSystem moves its batches itself on purpose (lengths stay on the host, see
# `transfer_batch_to_device`); Lightning warns about that whenever a DataModule is used
warnings.filterwarnings(
    "ignore", message=r"You have overridden `transfer_batch_to_device` in `LightningModule`"
)


@dataclass
class TeacherTargets:
    """What the teacher makes of one unmasked clip. frames: (B, T, D) fp32 frame targets;
    layers: per shared block (B, T, D) FFN outputs, utterance tokens removed; tokens:
    (B, E, D) utterance-token outputs (the pseudo-labels' prototypes)."""

    frames: Tensor
    layers: list[Tensor]
    tokens: Tensor


@dataclass
class StepOutput:
    """One forward pass of pretraining (for tests and for debugging a run).

    mask: (R, T) True = masked; frame_target: (B, T, D); prediction: (R, T, D) decoder
    output; decoder_input: (R, T, D); teacher_layers: per shared block (B, T, D) FFN outputs;
    kept_frames: (R, K, D) student outputs of the kept frames, kept_positions: (R, K) their
    time indices, kept_padding: (R, K) True = not a kept frame, or None.
    """

    losses: LossOutput
    mask: Tensor
    frame_target: Tensor
    prediction: Tensor
    decoder_input: Tensor
    teacher_layers: list[Tensor]
    tokens: Tensor
    kept_frames: Tensor
    kept_positions: Tensor
    kept_padding: Tensor | None = None

    @property
    def num_encoded_frames(self) -> int:
        """Frames the student's transformer encoded (reads the device: keep it off the hot
        path)."""
        R, K = self.kept_frames.shape[:2]
        if self.kept_padding is None:
            return R * K
        return R * K - int(self.kept_padding.sum())


class PretrainSystem(L.LightningModule):
    """Teacher-student online distillation (emotion2vec / data2vec 2.0).

    Each group of settings is a dataclass owned by the component that uses it; its fields
    carry their documentation (and `emotion-ssl pretrain --help` shows it).

    Args:
        encoder: which encoder to build: a preset and the EncoderConfig fields it changes.
        masking: the clone batch and the span masks of the student's input.
        teacher: the EMA teacher's decay schedule.
        objective: the losses, their weights and modes, and the teacher targets.
        collapse: when collapsed targets or predictions stop the run.
        nonfinite: how many non-finite losses in a row are skipped before the run stops.
        optim: AdamW and the warm-up + cosine schedule.
        seed: base of every per-step random choice (masks, noise, dropout), so a resumed run
            repeats an uninterrupted one exactly.
        init_from: start from pretrained weights: an emotion-ssl encoder folder, a fairseq
            data2vec 2.0 / emotion2vec checkpoint or an `emotion-ssl pretrain` checkpoint. The
            teacher starts from its teacher weights (`_ema`) when present, else from the
            student; utterance tokens the source lacks (data2vec 2.0) start fresh.
        compile: `torch.compile` every transformer block and positional conv (student and
            teacher), the CNN and the decoder (same weights and state-dict keys; the first
            steps pay the compilation). Measured slower on CPU (docs/performance.md).
        activation_checkpointing: recompute the student's blocks in backward instead of storing
            their activations (less memory, about one more transformer forward per step).
    """

    def __init__(
        self,
        encoder: EncoderSettings = EncoderSettings(),
        masking: MaskingSettings = MaskingSettings(),
        teacher: TeacherSettings = TeacherSettings(),
        objective: ObjectiveSettings = ObjectiveSettings(),
        collapse: CollapseGuard = CollapseGuard(),
        nonfinite: NonFiniteGuard = NonFiniteGuard(),
        optim: OptimSettings = OptimSettings(),
        seed: int = 1,
        init_from: str | None = None,
        compile: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        encoder = settings_copy(EncoderSettings, encoder)
        self.masking = settings_copy(MaskingSettings, masking)
        self.teacher_settings = settings_copy(TeacherSettings, teacher)
        objective = settings_copy(ObjectiveSettings, objective)
        self.collapse = settings_copy(CollapseGuard, collapse)
        self.nonfinite = settings_copy(NonFiniteGuard, nonfinite)  # counts this run's losses
        self.optim = settings_copy(OptimSettings, optim)
        self.seed, self.init_from = seed, init_from
        self.config: EncoderConfig = encoder.resolve()
        if objective.top_k > self.config.depth:
            raise ValueError(
                f"objective.top_k={objective.top_k} must be at most depth={self.config.depth}"
            )
        groups = {
            "encoder": encoder,
            "masking": self.masking,
            "teacher": self.teacher_settings,
            "objective": objective,
            "collapse": self.collapse,
            "nonfinite": self.nonfinite,
            "optim": self.optim,
        }
        # plain dicts: a checkpoint then loads with torch.load(weights_only=True)
        self.save_hyperparameters(
            {
                **{name: settings_dict(group) for name, group in groups.items()},
                "seed": seed,
                "init_from": init_from,
                "compile": compile,
                "activation_checkpointing": activation_checkpointing,
            }
        )
        self.student = EmotionEncoder(self.config)
        self.decoder = ConvDecoder(self.config)
        t = self.teacher_settings
        self.teacher = EMATeacher(self.student.context, t.decay_start, t.decay_end, t.anneal_steps)
        self.objective = PretrainObjective(self.config.embed_dim, objective)
        self._last_batch_end: float | None = None
        self.student.context.activation_checkpointing = activation_checkpointing
        if compile:
            for module in (
                *self.student.context.prenet,
                *self.student.context.blocks,
                *self.teacher.encoder.prenet,
                *self.teacher.encoder.blocks,
                self.student.context.pos_conv,
                self.teacher.encoder.pos_conv,
                self.student.feature_extractor,
                self.decoder,
            ):
                module.compile()  # in place: parameters and state-dict keys unchanged

    @property
    def nonfinite_skipped(self) -> int:
        """Updates skipped for a non-finite loss (fused optimizer: as of the last check)."""
        return self.nonfinite.skipped

    def on_fit_start(self) -> None:
        if self.teacher_settings.anneal_steps < 0:  # -1: the decay rises over the run
            self.teacher.anneal_steps = max(1, int(self.trainer.estimated_stepping_batches))
        # by now a resumed run has restored its checkpoint (trainer.ckpt_path is set): then
        # init_from is history and its file need not exist any more
        if self.init_from and self.trainer.ckpt_path is None:
            self.load_pretrained(self.init_from)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the resolved architecture: `export` rebuilds the encoder from it alone
        checkpoint["encoder_config"] = self.config.to_dict()

    # ------------------------------------------------------------------ the step
    def forward_step(
        self,
        waveforms: Tensor,
        lengths: Tensor | None,
        labels: Tensor,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """One pretraining forward pass. waveforms: (B, S), lengths: (B,) samples on the host
        (or None), labels: (B,) long, -1 = unlabelled. `mask` (B * num_clones, T) may be given
        (e.g. the reference's masks); otherwise it is drawn from `generator`."""
        C = self.masking.num_clones
        # the CNN runs once per clip, not once per clone: (B, T, D)
        features, padding_mask, _ = self.student.local_features(waveforms, lengths)

        targets = self.teacher_targets(features, padding_mask)  # 1. teacher: unmasked clip

        # 2. student: C masked clones of each clip, only their kept frames encoded
        mask, num_kept = self.clone_masks(features, lengths, mask, padding_mask, generator)
        features_c = repeat(features, "b t d -> (b c) t d", c=C)  # row b*C + c
        padding_c = None if padding_mask is None else repeat(padding_mask, "b t -> (b c) t", c=C)
        student = self.student.context(features_c, padding_c, mask=mask, num_kept=num_kept)

        # 3. decoder: every frame predicted from the kept ones (noise where masked)
        decoder_input = self.decoder.make_input(
            student.frames,
            student.positions,
            student.padding_mask,
            features.size(1),
            self.config.mask_noise_std,
            generator,
        )
        prediction = self.decoder(decoder_input, padding_c)  # (R, T, D)

        losses = self.objective(  # 4. objective
            prediction=prediction,
            frame_target=targets.frames,
            mask=mask,
            teacher_layers=targets.layers,
            padding_mask=padding_mask,
            tokens=student.tokens,
            kept_frames=student.frames,
            kept_padding=student.padding_mask,
            labels=labels,
            num_clones=C,
            step=self.global_step,
            teacher_tokens=targets.tokens,
        )
        return StepOutput(
            losses=losses,
            mask=mask,
            frame_target=targets.frames,
            prediction=prediction,
            decoder_input=decoder_input,
            teacher_layers=targets.layers,
            tokens=student.tokens,
            kept_frames=student.frames,
            kept_positions=student.positions,
            kept_padding=student.padding_mask,
        )

    def teacher_targets(self, features: Tensor, padding_mask: Tensor | None) -> TeacherTargets:
        """features: (B, T, D) the student's projected CNN features (detached: no gradient
        reaches the student through its teacher)."""
        out = self.teacher(features.detach(), padding_mask)
        assert out.ffn_outputs is not None
        E = out.num_tokens
        layers = [f[:, E:] for f in out.ffn_outputs[-self.config.depth :]]  # frames only
        s = self.objective.settings
        frames = frame_targets(layers, padding_mask, s.top_k, s.frame_target_norm)
        return TeacherTargets(frames=frames, layers=layers, tokens=out.tokens)

    def clone_masks(
        self,
        features: Tensor,
        lengths: Tensor | None,
        mask: Tensor | None,
        padding_mask: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, int | None]:
        """(R, T) span masks of the clones, R = B * num_clones, and the kept frames per row
        when every row keeps the same number (drawn masks) or None (a given mask)."""
        C = self.masking.num_clones
        B, T = features.shape[:2]
        if mask is not None:
            if padding_mask is not None and bool(
                (mask & repeat(padding_mask, "b t -> (b c) t", c=C)).any()
            ):
                raise ValueError("the mask covers padded frames")
            return mask, None
        # frame counts where `lengths` lives (the host in training: no device read)
        frames = (
            torch.full((B,), T, dtype=torch.long)
            if lengths is None
            else self.student.frame_lengths(lengths)
        )
        m = self.masking
        drawn = compute_span_mask(
            clone_lengths(frames, C), T, m.mask_prob, m.mask_length, m.mask_prob_adjust, generator
        )
        # exact counts: no row keeps more than T - floor(mask_prob * T) frames
        return to_device(drawn, features.device), T - int(T * m.mask_prob)

    def training_step(self, batch: AudioBatch, batch_idx: int) -> Tensor | None:
        generator = self._seed_step(batch_idx)
        out = self.forward_step(batch.waveforms, batch.lengths, batch.labels, None, generator)
        losses, step = out.losses, self.global_step
        if self.skip_nonfinite(losses, batch_idx):
            return None  # no backward, no update
        if self.collapse.due(step):
            self.collapse.check(step, float(losses.target_std), float(losses.prediction_std))
        self._log_step(batch, losses)
        return losses.total

    def skip_nonfinite(self, losses: LossOutput, batch_idx: int) -> bool:
        """`NonFiniteGuard`: a non-finite loss skips its update. With the fused optimizer this
        system builds (`configure_optimizers`) the skip happens on the device, without waiting
        for the loss; otherwise the loss is read here. True = return None from the step."""
        finite = torch.isfinite(losses.total)
        optimizer = self._fused_optimizer()
        if optimizer is not None:
            first_of_window = batch_idx % self.trainer.accumulate_grad_batches == 0
            skipped = self.nonfinite.skip_on_device(optimizer, finite, first_of_window)
            self.log("train/nonfinite_skipped", skipped.float())
            if self.nonfinite.check_every and self.global_step % self.nonfinite.check_every == 0:
                self.nonfinite.check(self.global_step)
            return False
        detail = (
            f" (frame={losses.frame}, utterance={losses.utterance}, category={losses.category})"
        )
        skip = self.nonfinite.skip_on_host(finite, self.global_step, detail)
        if skip:
            self.log("train/nonfinite_skipped", float(self.nonfinite.skipped))
        return skip

    def _fused_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer when it is the fused AdamW `configure_optimizers` made (it reads
        `found_inf`), else None (no trainer, or bf16-mixed with clipping: not fused)."""
        trainer = self._trainer
        if trainer is None or not trainer.optimizers:
            return None
        optimizer = trainer.optimizers[0]
        fused = isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults.get("fused")
        return optimizer if fused else None

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer update, then the teacher's EMA step: once per update, never per
        micro-batch, and before any checkpoint of this update is written."""
        super().optimizer_step(*args, **kwargs)
        self.update_teacher(self.global_step + 1)  # global_step counts this update only after

    def update_teacher(self, step: int) -> None:
        """teacher = tau(step) * teacher + (1 - tau(step)) * student (`EMATeacher.update`)."""
        # under FSDP the parameters are shards between steps: gather them for the EMA step
        with full_parameters(self.trainer.strategy.model or self):
            self.teacher.update(self.student.context, step)

    # ------------------------------------------------------------------ logging
    def _log_step(self, batch: AudioBatch, losses: LossOutput) -> None:
        valid_frames = self.student.frame_lengths(batch.lengths).sum() * self.masking.num_clones
        log: dict[str, Tensor | float] = {
            "train/loss": losses.total,
            "train/frame_loss": losses.frame,
            "train/utterance_loss": losses.utterance,
            "train/category_loss": losses.category,
            "train/category_weight": losses.category_weight,
            "train/target_std": losses.target_std,
            "train/prediction_std": losses.prediction_std,
            "train/masked_fraction": losses.num_masked / valid_frames,
            "train/num_anchors": losses.num_anchors.float(),
            "train/cross_utterance_positives": losses.cross_utterance_positives.float(),
            "train/category_skipped": losses.category_skip_reason.float(),
            "train/variance_loss": losses.variance,
            "train/ema_decay": self.teacher.decay(self.global_step),
        }
        log.update(self._global_means(log, self.GLOBAL_MEAN_KEYS))
        size = batch.waveforms.size(0)
        self.log_dict(log, prog_bar=False, batch_size=size)
        self.log("loss", log["train/loss"], prog_bar=True, logger=False, batch_size=size)
        self._audio_seconds = batch.lengths.sum() / float(SAMPLE_RATE)

    # logged as the mean over ranks: every rank logs the same value for the global batch
    GLOBAL_MEAN_KEYS = (
        "train/loss",
        "train/frame_loss",
        "train/utterance_loss",
        "train/category_loss",
        "train/target_std",
        "train/prediction_std",
    )

    def _global_means(self, log: dict[str, Tensor | float], keys: tuple[str, ...]) -> dict:
        """The rank mean of `log[key]` for each key, in one all-reduce (no host read); the
        values themselves with one process."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return {}
        present = [k for k in keys if isinstance(log.get(k), Tensor)]
        stacked = torch.stack([log[k].detach().float() for k in present])  # type: ignore[union-attr]
        mean = trainer.strategy.reduce(stacked, reduce_op="mean")
        return dict(zip(present, mean.unbind(), strict=True))

    def on_train_end(self) -> None:
        self.nonfinite.check(self.global_step)

    def validation_step(self, batch: AudioBatch, batch_idx: int) -> Tensor:
        # fixed masks per batch: validation losses are comparable across the run
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + batch_idx)
        out = self.forward_step(batch.waveforms, batch.lengths, batch.labels, None, generator)
        losses = out.losses
        size = batch.waveforms.size(0)
        self.log_dict(
            {
                "val/loss": losses.total,
                "val/frame_loss": losses.frame,
                "val/utterance_loss": losses.utterance,
                "val/category_loss": losses.category,
                "val/target_std": losses.target_std,
                "val/prediction_std": losses.prediction_std,
            },
            batch_size=size,
            sync_dist=True,
        )
        return losses.total

    # --------------------------------------------------------------- bookkeeping
    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        moved = super().transfer_batch_to_device(batch, device, dataloader_idx)
        if hasattr(batch, "lengths") and hasattr(moved, "lengths"):
            # lengths stay on the host: frame counts, padding and masks are decided there
            # without reading the device back (each read would stall the step)
            moved.lengths = batch.lengths
        return moved

    def on_train_start(self) -> None:
        self._last_batch_end = None

    def on_train_batch_end(self, outputs: Any, batch: AudioBatch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_batch_end is not None and hasattr(self, "_audio_seconds"):
            elapsed = now - self._last_batch_end
            self.log("train/audio_seconds_per_second", self._audio_seconds / elapsed)
        self._last_batch_end = now
        optimizer = self.trainer.optimizers[0] if self.trainer.optimizers else None
        if optimizer is not None:
            self.log("train/lr", optimizer.param_groups[0]["lr"])

    def _seed_step(self, batch_idx: int) -> torch.Generator:
        """Every random choice of a step derives from (seed, epoch, batch, rank)."""
        key = f"{self.seed}:{self.current_epoch}:{batch_idx}:{self.global_rank}"
        seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") % (2**63)
        torch.manual_seed(seed)  # dropout and layerdrop
        return torch.Generator().manual_seed(seed)  # masks and decoder noise

    def configure_optimizers(self) -> Any:
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for module in (self.student, self.decoder, self.objective):
            for name, p in module.named_parameters():
                if not p.requires_grad:
                    continue
                # no weight decay on biases, norms, utterance tokens and ALiBi scales
                (
                    no_decay
                    if p.ndim < 2 or "utterance_tokens" in name or "alibi" in name
                    else decay
                ).append(p)
        # one fused kernel over all parameters (on the CPU too: faster than foreach), except
        # where Lightning refuses it: gradient clipping under mixed precision (a fused optimizer
        # unscales internally, so the clipped gradients could still be scaled)
        clipping = bool(self.trainer.gradient_clip_val) and isinstance(
            self.trainer.precision_plugin, MixedPrecision
        )
        o = self.optim
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": o.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=o.lr,
            betas=(float(o.betas[0]), float(o.betas[1])),
            eps=o.eps,
            fused=True if self.device.type in ("cuda", "cpu") and not clipping else None,
        )
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = warmup_cosine(optimizer, o.warmup_steps, total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # --------------------------------------------------------------- loading
    def load_pretrained(self, path: str) -> dict[str, str]:
        """Fill student, decoder and teacher from `path` (see `init_from`); returns what was
        loaded and what started fresh. The architecture must match this system's, except for
        where the same stack of blocks is split into prenet and shared blocks: data2vec 2.0
        base's 0 + 12 load into emotion2vec's 4 + 8 (`resplit_blocks`, docs/interop.md)."""
        from emotion_ssl.export.frozen import (
            load_strict,
            read_weights,
            resplit_blocks,
            teacher_context_state,
            validate_weights,
        )

        weights = read_weights(path)
        source, resplit = weights.config, None
        if (
            source.prenet_depth != self.config.prenet_depth
            and source.num_layers == self.config.num_layers
        ):
            validate_weights(weights)  # key errors name the file's own block numbers
            weights = resplit_blocks(weights, self.config.prenet_depth)
            P, N = self.config.prenet_depth, source.num_layers
            # blocks counted along the source's chain (prenet first): data2vec 2.0's blocks.i
            resplit = (f"source blocks 0..{P - 1} -> prenet 0..{P - 1}, " if P else "") + (
                f"source blocks {P}..{N - 1} -> shared 0..{N - P - 1} (the source has "
                f"{source.prenet_depth} prenet + {source.depth} shared blocks)"
            )
        fresh_tokens = (
            weights.config.num_utterance_tokens == 0 and self.config.num_utterance_tokens > 0
        )
        ignore: tuple[str, ...] = ("num_utterance_tokens",) if fresh_tokens else ()
        if weights.decoder_state is None:
            ignore += EncoderConfig.DECODER_FIELDS
        differences = self.config.architecture_differences(weights.config, ignore=ignore)
        if differences:
            raise ValueError(
                f"init_from={path}: its architecture differs from this run's "
                f"(this run vs file): {differences}"
            )
        report = {"student": "loaded"}
        if resplit is not None:
            report["blocks"] = resplit
        encoder_state = dict(weights.encoder_state)
        teacher = teacher_context_state(weights)
        # at fit start FSDP has sharded the parameters: fill whole ones, each rank keeps its part
        strategy_model = self._trainer.strategy.model if self._trainer is not None else None
        with full_parameters(strategy_model or self):
            if fresh_tokens:  # data2vec 2.0 has no utterance tokens: keep our fresh ones
                encoder_state["context.utterance_tokens"] = self.student.context.utterance_tokens
                report["utterance_tokens"] = "fresh (the source has none)"
            load_strict(self.student, encoder_state, f"{path} (student)")
            if weights.decoder_state is not None:
                load_strict(self.decoder, weights.decoder_state, f"{path} (decoder)")
                report["decoder"] = "loaded"
            else:
                report["decoder"] = "fresh (the source has none)"
            if teacher is not None:
                if fresh_tokens:
                    teacher["utterance_tokens"] = self.student.context.utterance_tokens.detach()
                load_strict(self.teacher.encoder, teacher, f"{path} (teacher)")
                report["teacher"] = "loaded from the source's teacher (_ema)"
            else:
                self.teacher.copy_from(self.student.context)
                report["teacher"] = "copied from the student"
        logging.getLogger(__name__).info("init_from %s: %s", path, report)
        return report
