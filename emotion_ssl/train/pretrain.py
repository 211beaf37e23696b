"""The pretraining system: where student, teacher, masking and the objective meet."""

from __future__ import annotations

import hashlib
import logging
import math
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import Tensor

from emotion_ssl.losses import CollapseGuard, LossOutput, PretrainObjective, frame_targets
from emotion_ssl.losses.targets import FrameTargetNorm
from emotion_ssl.losses.utterance import UtteranceVariant
from emotion_ssl.models import EmotionEncoder, EncoderConfig
from emotion_ssl.models.decoder import ConvDecoder
from emotion_ssl.models.masking import clone_lengths, compute_span_mask, to_device
from emotion_ssl.models.teacher import EMATeacher, full_parameters

if TYPE_CHECKING:
    from emotion_ssl.data.batch import AudioBatch

Preset = Literal["tiny", "base"]

# PretrainSystem moves its batches itself on purpose (lengths stay on the host, see
# `transfer_batch_to_device`); Lightning warns about that whenever a DataModule is used
warnings.filterwarnings(
    "ignore", message=r"You have overridden `transfer_batch_to_device` in `LightningModule`"
)


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


class TeacherUpdate(L.Callback):
    """Moves the EMA teacher once per optimizer update, never per micro-batch: the guard on
    `trainer.global_step` of Lightning's WeightAveraging. A callback (not a module hook) so it
    runs before ModelCheckpoint, and a checkpoint written at update N holds the teacher after
    its N-th EMA step."""

    def __init__(self) -> None:
        self._last_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if trainer.global_step > self._last_step:
            assert isinstance(pl_module, PretrainSystem)
            # under FSDP the parameters are shards between steps: gather them for the step
            with full_parameters(trainer.strategy.model or pl_module):
                pl_module.teacher.update(pl_module.student.context, trainer.global_step)
            self._last_step = trainer.global_step


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive updates with a non-finite loss."""


def build_encoder_config(preset: Preset, overrides: dict[str, Any] | None) -> EncoderConfig:
    """A named preset with field overrides (unknown fields are an error naming them)."""
    presets = {"tiny": EncoderConfig.tiny, "base": EncoderConfig.base}
    if preset not in presets:
        raise ValueError(f"unknown encoder preset {preset!r}; use one of {sorted(presets)}")
    values = presets[preset]().to_dict()
    values.update(overrides or {})
    return EncoderConfig.from_dict(values)


class PretrainSystem(L.LightningModule):
    """Teacher-student online distillation (emotion2vec / data2vec 2.0).

    Args:
        preset: encoder size, "tiny" or "base" (93.2 M parameters).
        encoder_overrides: EncoderConfig fields to change, e.g. {"dropout": 0.0}.
        num_clones: masked copies of each utterance (clone batch).
        mask_prob: share of each clone's frames masked (exactly floor(mask_prob * T)).
        mask_length: frames per mask span.
        mask_prob_adjust: extra span centres drawn before the count is made exact.
        top_k: teacher blocks averaged into the targets (the top ones).
        frame_target_norm: "instance" (reference: each channel over the clip's frames, which
            removes clip-level cues from the targets) or "layer" (each frame over channels,
            keeps them; `emotion_ssl.losses.targets.frame_targets`).
        utterance_weight: alpha, weight of the utterance-level loss (reference 1.0).
        utterance_variant: "chunk" (mean of the utterance tokens), "token" (the last one) or
            "global" (mean of the kept frames).
        utterance_mode: "layer_norm" (a non-degenerate target, mean over clones) or
            "code_faithful" (the released code: a zero target summed over clones).
        category_weight: gamma, weight of the category-level SupCon term (0 = off).
        category_ramp_steps: gamma rises linearly from 0 over this many updates.
        num_classes: labelled emotion classes (needed for pseudo-labels).
        temperature: SupCon temperature.
        pseudo_labels: confident unlabelled clips join with teacher-prototype pseudo-labels.
        pseudo_label_threshold: cosine to the nearest prototype needed for a pseudo-label.
        pseudo_label_warmup_steps: updates before pseudo-labels are used.
        category_batch_centring: centre the projections over the global batch before
            normalising (ours); False = SPEC's plain unit vectors.
        category_clone_positives: a clip's own clones count as its positives (SPEC); False
            leaves them out of its keys.
        category_memory_size: rows of past micro-batches kept as extra SupCon keys (0 =
            none); see docs/pretraining.md, "The category term".
        variance_weight: ours, opt-in (0 = off): weight of a VICReg-style hinge that keeps
            the clip means of the student's frames spread across the batch
            (`emotion_ssl.losses.objective.clip_variance_hinge`).
        variance_target: the std per dimension the hinge asks of the clip means.
        ema_decay: the teacher's decay at update 0.
        ema_end_decay: the teacher's decay after the rise.
        ema_anneal_steps: updates of the linear rise; -1 = the whole run (the trainer's
            max_steps), so a short run's teacher follows the same curve as a long one's.
        lr: peak learning rate of AdamW.
        betas: AdamW betas.
        eps: AdamW epsilon.
        weight_decay: AdamW weight decay (not on biases, norms, tokens, ALiBi scales).
        warmup_steps: linear warm-up updates, then cosine decay to 0 at the last update.
        collapse_after_steps: the collapse guard acts after this many updates.
        min_target_std: the guard stops the run below this target std.
        min_prediction_std: the guard stops the run below this prediction std.
        collapse_check_every: updates between the guard's checks (each reads the device).
        max_nonfinite_in_row: consecutive non-finite losses tolerated (each skips its update).
            With a fused optimizer (GPU; CPU without bf16-mixed + clipping) the skip happens on
            the device and the counts are read every `collapse_check_every` updates, so the
            run stops at the first check after the limit is reached.
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
        preset: Preset = "base",
        encoder_overrides: dict[str, Any] | None = None,
        num_clones: int = 8,
        mask_prob: float = 0.5,
        mask_length: int = 5,
        mask_prob_adjust: float = 0.05,
        top_k: int = 8,
        frame_target_norm: FrameTargetNorm = "instance",
        utterance_weight: float = 1.0,
        utterance_variant: UtteranceVariant = "chunk",
        utterance_mode: Literal["code_faithful", "layer_norm"] = "layer_norm",
        category_weight: float = 0.0,
        category_ramp_steps: int = 1000,
        num_classes: int = 0,
        temperature: float = 0.1,
        pseudo_labels: bool = False,
        pseudo_label_threshold: float = 0.8,
        pseudo_label_warmup_steps: int = 1000,
        category_batch_centring: bool = True,
        category_clone_positives: bool = True,
        category_memory_size: int = 0,
        variance_weight: float = 0.0,
        variance_target: float = 0.5,
        ema_decay: float = 0.999,
        ema_end_decay: float = 0.99999,
        ema_anneal_steps: int = 20_000,
        lr: float = 7.5e-5,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        warmup_steps: int = 5000,
        collapse_after_steps: int = 5000,
        min_target_std: float = 0.1,
        min_prediction_std: float = 0.01,
        collapse_check_every: int = 100,
        max_nonfinite_in_row: int = 10,
        seed: int = 1,
        init_from: str | None = None,
        compile: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = build_encoder_config(preset, encoder_overrides)
        if not 1 <= top_k <= self.config.depth:
            raise ValueError(f"top_k={top_k} must be in [1, depth={self.config.depth}]")
        self.student = EmotionEncoder(self.config)
        self.decoder = ConvDecoder(self.config)
        self.teacher = EMATeacher(self.student.context, ema_decay, ema_end_decay, ema_anneal_steps)
        self.objective = PretrainObjective(
            self.config.embed_dim,
            utterance_weight=utterance_weight,
            utterance_variant=utterance_variant,
            utterance_mode=utterance_mode,
            top_k=top_k,
            category_weight=category_weight,
            category_ramp_steps=category_ramp_steps,
            num_classes=num_classes,
            temperature=temperature,
            pseudo_labels=pseudo_labels,
            pseudo_label_threshold=pseudo_label_threshold,
            pseudo_label_warmup_steps=pseudo_label_warmup_steps,
            batch_centring=category_batch_centring,
            clone_positives=category_clone_positives,
            memory_size=category_memory_size,
            variance_weight=variance_weight,
            variance_target=variance_target,
        )
        self.guard = CollapseGuard(collapse_after_steps, min_target_std, min_prediction_std)
        self.num_clones = num_clones
        self.mask_prob, self.mask_length, self.mask_prob_adjust = (
            mask_prob,
            mask_length,
            mask_prob_adjust,
        )
        self.top_k = top_k
        self.frame_target_norm: FrameTargetNorm = frame_target_norm
        self.lr, self.betas, self.eps = lr, (float(betas[0]), float(betas[1])), eps
        self.weight_decay, self.warmup_steps = weight_decay, warmup_steps
        self.collapse_check_every = collapse_check_every
        self.max_nonfinite_in_row = max_nonfinite_in_row
        self.seed = seed
        self.init_from = init_from
        self._nonfinite_in_row = 0
        self.nonfinite_skipped = 0
        self._nonfinite_counts: Tensor | None = None  # run, longest run, total (device)
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

    def on_fit_start(self) -> None:
        if self.hparams.get("ema_anneal_steps", 0) < 0:  # -1: the decay rises over the run
            self.teacher.anneal_steps = max(1, int(self.trainer.estimated_stepping_batches))
        # by now a resumed run has restored its checkpoint (trainer.ckpt_path is set): then
        # init_from is history and its file need not exist any more
        if self.init_from and self.trainer.ckpt_path is None:
            self.load_pretrained(self.init_from)

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

    # ------------------------------------------------------------------ the step
    def forward_step(
        self,
        waveforms: Tensor,
        lengths: Tensor | None,
        labels: Tensor,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """One pretraining forward pass. `mask` (B * num_clones, T) may be given (e.g. the
        reference's masks); otherwise it is drawn from `generator`."""
        C = self.num_clones
        features, padding_mask, _ = self.student.local_features(waveforms, lengths)
        # features: (B, T, D); the CNN runs once per utterance, not once per clone
        B, T = features.shape[:2]

        teacher_out = self.teacher(features.detach(), padding_mask)
        E = teacher_out.num_tokens
        assert teacher_out.ffn_outputs is not None
        teacher_layers = [f[:, E:] for f in teacher_out.ffn_outputs[-self.config.depth :]]
        frame_target = frame_targets(  # (B, T, D)
            teacher_layers, padding_mask, self.top_k, self.frame_target_norm
        )

        features_c = features.repeat_interleave(C, dim=0)  # (R, T, D), row b*C + c
        padding_c = None if padding_mask is None else padding_mask.repeat_interleave(C, dim=0)
        num_kept: int | None = None
        if mask is None:
            # frame counts where `lengths` lives (the host in training: no device read)
            frames = (
                torch.full((B,), T, dtype=torch.long)
                if lengths is None
                else self.student.frame_lengths(lengths)
            )
            mask = compute_span_mask(
                clone_lengths(frames, C),
                T,
                self.mask_prob,
                self.mask_length,
                self.mask_prob_adjust,
                generator,
            )
            mask = to_device(mask, features.device)
            # exact counts: no row keeps more than T - floor(mask_prob * T) frames
            num_kept = T - int(T * self.mask_prob)
        elif padding_c is not None and bool((mask & padding_c).any()):  # a given mask only
            raise ValueError("the mask covers padded frames")

        student_out = self.student.context(features_c, padding_c, mask=mask, num_kept=num_kept)
        decoder_input = self.decoder.make_input(
            student_out.frames,
            student_out.positions,
            student_out.padding_mask,
            T,
            self.config.mask_noise_std,
            generator,
        )
        prediction = self.decoder(decoder_input, padding_c)  # (R, T, D)

        losses = self.objective(
            prediction,
            frame_target,
            mask,
            teacher_layers,
            padding_mask,
            student_out.tokens,
            student_out.frames,
            student_out.padding_mask,
            labels,
            C,
            self.global_step,
            teacher_tokens=teacher_out.tokens,  # (B, E, D): pseudo-label prototypes
        )
        return StepOutput(
            losses=losses,
            mask=mask,
            frame_target=frame_target,
            prediction=prediction,
            decoder_input=decoder_input,
            teacher_layers=teacher_layers,
            tokens=student_out.tokens,
            kept_frames=student_out.frames,
            kept_positions=student_out.positions,
            kept_padding=student_out.padding_mask,
        )

    def training_step(self, batch: AudioBatch, batch_idx: int) -> Tensor | None:
        generator = self._seed_step(batch_idx)
        out = self.forward_step(batch.waveforms, batch.lengths, batch.labels, None, generator)
        losses = out.losses
        step = self.global_step

        finite = torch.isfinite(losses.total)
        if self._skip_on_device(finite, batch_idx):
            # no host read: the fused optimizer skips a non-finite update on the device
            # (`found_inf`), and the run/total counters are read every collapse_check_every
            if step % self.collapse_check_every == 0:
                self._check_nonfinite_counts(step)
        elif not bool(finite):  # other optimizers: read the loss back and skip here
            self._nonfinite_in_row += 1
            self.nonfinite_skipped += 1
            self.log("train/nonfinite_skipped", float(self.nonfinite_skipped))
            if self._nonfinite_in_row >= self.max_nonfinite_in_row:
                raise NonFiniteLossError(
                    f"{self._nonfinite_in_row} consecutive non-finite losses at step "
                    f"{self.global_step} (frame={losses.frame}, utterance={losses.utterance}, "
                    f"category={losses.category}); lower the learning rate or check the data"
                )
            return None  # skips backward and this update
        else:
            self._nonfinite_in_row = 0

        if step % self.collapse_check_every == 0:
            self.guard.check(step, float(losses.target_std), float(losses.prediction_std))

        valid_frames = self.student.frame_lengths(batch.lengths).sum() * self.num_clones
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
        self.log_dict(log, prog_bar=False, batch_size=batch.waveforms.size(0))
        self.log(
            "loss",
            log["train/loss"],
            prog_bar=True,
            logger=False,
            batch_size=batch.waveforms.size(0),
        )
        self._audio_seconds = batch.lengths.sum() / 16000.0
        return losses.total

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

    def _skip_on_device(self, finite: Tensor, batch_idx: int) -> bool:
        """With a fused optimizer (it accepts `found_inf`, as under AMP's GradScaler), hand it
        "this update is not finite" as a device tensor and count on the device; the step then
        never waits for the loss. Returns False where that is not possible (no trainer, or a
        non-fused optimizer: bf16-mixed with clipping on CPU)."""
        trainer = self._trainer
        if trainer is None or not trainer.optimizers:
            return False
        optimizer = trainer.optimizers[0]
        if not (
            optimizer.defaults.get("fused")
            and getattr(optimizer, "_step_supports_amp_scaling", False)
        ):
            return False
        bad = (~finite).to(torch.float32)
        previous = getattr(optimizer, "found_inf", None)
        first_of_window = batch_idx % trainer.accumulate_grad_batches == 0
        flag = bad if first_of_window or previous is None else previous.maximum(bad)
        optimizer.found_inf = flag  # type: ignore[attr-defined]  # read by fused AdamW.step
        if self._nonfinite_counts is None or self._nonfinite_counts.device != finite.device:
            self._nonfinite_counts = torch.zeros(3, dtype=torch.long, device=finite.device)
        run, worst, total = self._nonfinite_counts.unbind()
        run = torch.where(finite, 0, run + 1)
        self._nonfinite_counts = torch.stack([run, worst.maximum(run), total + (~finite).long()])
        self.log("train/nonfinite_skipped", self._nonfinite_counts[2].float())
        return True

    def _check_nonfinite_counts(self, step: int) -> None:
        """The periodic host read of the device-side non-finite counters."""
        if self._nonfinite_counts is None:
            return
        _, worst, total = (int(v) for v in self._nonfinite_counts.tolist())
        self.nonfinite_skipped = total
        if worst >= self.max_nonfinite_in_row:
            raise NonFiniteLossError(
                f"{worst} consecutive non-finite losses by step {step} (their updates were "
                "skipped); lower the learning rate or check the data"
            )

    def on_train_end(self) -> None:
        self._check_nonfinite_counts(self.global_step)

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

    def configure_callbacks(self) -> list[L.Callback]:
        return [TeacherUpdate()]

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
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.lr,
            betas=self.betas,
            eps=self.eps,
            fused=True if self.device.type in ("cuda", "cpu") and not clipping else None,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.warmup_steps, total)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
