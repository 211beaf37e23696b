"""Fine-tuning: what trains under each freezing mode, layer-wise lr, overfitting, CLI + export."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from emotion_ssl.cli import main
from emotion_ssl.data.batch import AudioBatch
from emotion_ssl.data.manifest import entry_from_audio_file, write_manifest
from emotion_ssl.export import load_classifier, save_encoder_dir
from emotion_ssl.export.weights import PretrainedWeights
from emotion_ssl.models import EmotionEncoder, EncoderConfig
from emotion_ssl.train.finetune import FinetuneOptimSettings as Optim
from emotion_ssl.train.finetune import FinetuneSystem, FreezeSettings

LABELS = ["low", "high"]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = EncoderConfig.tiny()
    encoder = EmotionEncoder(config)
    weights = PretrainedWeights(
        path="random tiny", config=config, encoder_state=encoder.state_dict()
    )
    return save_encoder_dir(tmp_path_factory.mktemp("encoder"), weights)


def tone(label: int, i: int, seconds: float = 0.6) -> np.ndarray:
    """Class 0: a low harmonic tone; class 1: a high one (each clip a different pitch)."""
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = (110.0 if label == 0 else 330.0) * (1 + 0.03 * i)
    wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))
    return (0.1 * wave).astype(np.float32)


def tone_batches(n: int = 8, batch_size: int = 4) -> DataLoader:
    items = [(tone(i % 2, i), i % 2) for i in range(n)]

    def collate(rows: list[tuple[np.ndarray, int]]) -> AudioBatch:
        waves = torch.stack([torch.from_numpy(w) for w, _ in rows])
        return AudioBatch(
            waves,
            torch.full((len(rows),), waves.size(1)),
            torch.tensor([y for _, y in rows]),
            [str(i) for i in range(len(rows))],
        )

    return DataLoader(
        items,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),
    )


def fit(system: FinetuneSystem, tmp_path: Path, steps: int) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(system, tone_batches())
    return trainer


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.named_parameters() if not torch.equal(v, before[k])}


def test_frozen_encoder_only_the_head_changes(encoder_dir: Path, tmp_path: Path) -> None:
    system = FinetuneSystem(
        str(encoder_dir), LABELS, freeze=FreezeSettings("all"), optim=Optim(warmup_steps=0)
    )
    encoder_before, head_before = snapshot(system.encoder), snapshot(system.head)
    modes: list[bool] = []
    dropout = system.encoder.context.blocks[-1].post_mlp_dropout
    dropout.register_forward_pre_hook(lambda m, i: modes.append(m.training))
    fit(system, tmp_path, 3)
    assert changed(encoder_before, system.encoder) == set()
    assert changed(head_before, system.head) == set(head_before)
    assert modes == [False, False, False]  # frozen: no dropout while the head trains


def test_partial_freezing_trains_exactly_the_top_blocks(encoder_dir: Path, tmp_path: Path) -> None:
    system = FinetuneSystem(
        str(encoder_dir),
        LABELS,
        freeze=FreezeSettings("top", trainable_blocks=2),
        optim=Optim(warmup_steps=0, encoder_lr=1e-3),
    )
    before = snapshot(system.encoder)
    fit(system, tmp_path, 3)
    top = {
        k for k in before if k.startswith(("context.blocks.0.", "context.blocks.1."))
    }  # tiny: 1 prenet + 2 shared
    assert top and changed(before, system.encoder) == top


def test_full_finetuning_keeps_the_cnn_frozen(encoder_dir: Path, tmp_path: Path) -> None:
    system = FinetuneSystem(
        str(encoder_dir),
        LABELS,
        freeze=FreezeSettings("none"),
        optim=Optim(warmup_steps=0, encoder_lr=1e-3),
    )
    before = snapshot(system.encoder)
    fit(system, tmp_path, 3)
    moved = changed(before, system.encoder)
    assert not any(k.startswith("feature_extractor.") for k in moved)
    assert {
        "feature_proj.weight",
        "context.prenet.0.attn.qkv.weight",
        "context.blocks.1.mlp.fc2.weight",
    } <= moved


def test_layer_wise_learning_rates(encoder_dir: Path) -> None:
    system = FinetuneSystem(
        str(encoder_dir),
        LABELS,
        freeze=FreezeSettings("none"),
        optim=Optim(lr=1e-3, encoder_lr=1e-4, layer_decay=0.5),
    )
    lrs = {g["name"]: g["lr"] for g in system.parameter_groups()}
    # tiny: blocks 0 (prenet), 1, 2 (shared); the top block gets encoder_lr
    assert lrs == pytest.approx(
        {"head": 1e-3, "block_2": 1e-4, "block_1": 5e-5, "block_0": 2.5e-5, "encoder_rest": 1.25e-5}
    )


def test_a_small_set_is_overfitted(encoder_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    system = FinetuneSystem(
        str(encoder_dir),
        LABELS,
        freeze=FreezeSettings("none"),
        optim=Optim(lr=3e-3, encoder_lr=1e-3, warmup_steps=0),
        head_dropout=0.0,
    )
    fit(system, tmp_path, 60)
    system.eval()
    correct = 0
    with torch.no_grad():
        for batch in tone_batches():
            correct += int(
                (system(batch.waveforms, batch.lengths).argmax(-1) == batch.labels).sum()
            )
    assert correct == 8


def test_bad_arguments_are_clear_errors(encoder_dir: Path) -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        FinetuneSystem(str(encoder_dir), ["only"])
    with pytest.raises(ValueError, match=r"freeze.trainable_blocks=9 not in \[1, 3\]"):
        FinetuneSystem(str(encoder_dir), LABELS, freeze=FreezeSettings("top", 9))
    with pytest.raises(ValueError, match="freeze.mode must be 'all', 'top' or 'none', got 'some'"):
        FreezeSettings("some")  # type: ignore[arg-type]


def test_cli_finetune_tests_the_best_checkpoint_and_exports(
    encoder_dir: Path, tmp_path: Path
) -> None:
    entries = []
    for i in range(16):
        path = tmp_path / "wav" / f"clip{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, tone(i % 2, i), 16000)
        entries.append(
            entry_from_audio_file(
                path,
                key=f"clip{i}",
                corpus="tones",
                speaker=f"s{i % 4}",
                label=LABELS[i % 2],
                extra={"fold": i % 4 // 2 + 1},
            )
        )
    manifest = write_manifest(tmp_path / "manifest.jsonl", entries)
    run = tmp_path / "runs"
    args = [
        "finetune",
        "--model.encoder",
        str(encoder_dir),
        "--model.freeze.mode",
        "all",
        "--data.manifest",
        str(manifest),
        "--data.fold",
        "1",
        "--data.batch_size",
        "4",
        "--trainer.max_epochs",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(run),
    ]
    assert main(args) == 0
    log_dir = run / "finetune" / "version_0"
    results = json.loads((log_dir / "test_results.json").read_text())
    assert results["labels"] == ["high", "low"]  # sorted label names from the data module
    assert np.asarray(results["confusion"]).sum() == 8  # fold 1 holds 8 clips
    assert (log_dir / "test_confusion.png").exists()
    best = next((log_dir / "checkpoints").glob("best-*.ckpt"))
    assert main(["export", str(best), str(tmp_path / "exported")]) == 0
    encoder, head, labels = load_classifier(tmp_path / "exported")
    assert labels == ["high", "low"]
    system = FinetuneSystem.load_from_checkpoint(best).eval()
    wave = torch.from_numpy(tone(0, 3)).unsqueeze(0)
    with torch.no_grad():
        out = encoder(wave)
        assert torch.allclose(
            head(out.frames, out.padding_mask),
            system(wave, torch.tensor([wave.size(1)])),
            atol=1e-5,
        )
