"""PretrainSystem's typed settings: the CLI shows and checks every field, a checkpoint carries
the resolved encoder config, and `export` reads it without any training code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from emotion_ssl.cli import pretrain
from emotion_ssl.data.batch import AudioBatch
from emotion_ssl.losses import ObjectiveSettings
from emotion_ssl.models.config import EncoderConfig, EncoderSettings, SettingsError
from emotion_ssl.models.masking import MaskingSettings
from emotion_ssl.train.optim import OptimSettings
from emotion_ssl.train.pretrain import PretrainSystem

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "emotion_ssl" / "recipes" / "pretrain" / "tiny.yaml"

torch.set_num_threads(2)


def test_from_preset_changes_fields_and_names_unknown_ones() -> None:
    config = EncoderConfig.from_preset("tiny", depth=3, dropout=0.0)
    assert (config.embed_dim, config.depth, config.dropout) == (64, 3, 0.0)
    with pytest.raises(SettingsError, match=r"unknown EncoderConfig fields: \['dpth'\]"):
        EncoderConfig.from_preset("tiny", dpth=3)
    with pytest.raises(SettingsError, match="unknown encoder preset 'large'"):
        EncoderConfig.from_preset("large")
    with pytest.raises(SettingsError, match="dpth"):  # when the settings are made, not later
        EncoderSettings("tiny", {"dpth": 3})


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> str:
    from emotion_ssl.demo.corpus import write_synthetic_corpus

    root = tmp_path_factory.mktemp("corpus")
    return str(write_synthetic_corpus(root, num_files=2, seed=0))


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--model.objective.varince_weight", "1"], "did you mean --model.objective.variance_weight"),
        (["--model.encoder.overrides.dpth", "3"], "unknown EncoderConfig fields: ['dpth']"),
        (["--model.encoder.overrides", '{"dropuot": 0}'], "unknown EncoderConfig fields: ['dropuot']"),
        (["--model.masking.mask_prob", "1.5"], "masking.mask_prob=1.5 must be in [0, 1)"),
        (["--model.lr", "1e-3"], "did you mean --model.optim.lr"),  # a flat name of before
    ],
)  # fmt: skip
def test_a_misspelt_or_impossible_setting_is_a_one_line_error_naming_it(
    args: list[str], named: str, manifest: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        pretrain(["-c", str(TINY), "--data.train_manifest", manifest, *args])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: emotion-ssl pretrain: ") and "\n" not in error, error
    assert named in error


def test_a_misspelt_field_in_a_config_file_is_named(
    tmp_path: Path, manifest: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  objective:\n    varince_weight: 1.0\n")
    with pytest.raises(SystemExit):
        pretrain(["-c", str(TINY), "-c", str(config), "--data.train_manifest", manifest])
    error = capsys.readouterr().err.strip()
    assert "model.objective.varince_weight" in error and "\n" not in error


def _batches(n: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    waves = torch.randn(n, 2, 8000, generator=g) * 0.1
    batches = [
        AudioBatch(w, torch.tensor([8000, 6400]), torch.tensor([-1, -1]), ["a", "b"]) for w in waves
    ]
    return DataLoader(batches, batch_size=None)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One update of a tiny system with a 3-block shared stack (not the preset's 2)."""
    torch.manual_seed(0)
    system = PretrainSystem(
        encoder=EncoderSettings("tiny", {"depth": 3}),
        masking=MaskingSettings(num_clones=2),
        objective=ObjectiveSettings(top_k=2),
        optim=OptimSettings(warmup_steps=1),
    )
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(system, _batches(1))
    path = tmp_path_factory.mktemp("ckpt") / "one.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_a_checkpoint_carries_the_resolved_encoder_config(checkpoint: Path) -> None:
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)  # plain data only
    assert ckpt["encoder_config"] == EncoderConfig.from_preset("tiny", depth=3).to_dict()
    assert ckpt["hyper_parameters"]["encoder"] == {"preset": "tiny", "overrides": {"depth": 3}}
    assert ckpt["hyper_parameters"]["masking"]["num_clones"] == 2
    restored = PretrainSystem.load_from_checkpoint(checkpoint)  # settings back from dicts
    assert restored.masking == MaskingSettings(num_clones=2)
    assert restored.config.depth == 3


EXPORT = """
import sys
from emotion_ssl.export.frozen import load_encoder, read_weights, save_encoder_dir
weights = read_weights(sys.argv[1])
save_encoder_dir(sys.argv[2], weights, include_pretraining_state=False)
encoder = load_encoder(sys.argv[2])
training = sorted(m for m in sys.modules if m.startswith(("emotion_ssl.train", "lightning")))
print(weights.config.depth, len(encoder.context.blocks), training)
"""


def test_export_reads_the_checkpoint_without_training_code(
    checkpoint: Path, tmp_path: Path
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", EXPORT, str(checkpoint), str(tmp_path / "encoder")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout.split("\n")[-2]
    assert out == "3 3 []"


def test_a_checkpoint_from_before_the_saved_config_still_exports(
    checkpoint: Path, tmp_path: Path
) -> None:
    """Checkpoints written before `encoder_config` existed: the architecture comes from the
    flat hyper-parameters (`preset`, `encoder_overrides`) they held then."""
    from emotion_ssl.export.frozen import build_encoder, read_weights

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    del ckpt["encoder_config"]
    ckpt["hyper_parameters"] = {"preset": "tiny", "encoder_overrides": {"depth": 3}, "lr": 5e-4}
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    weights = read_weights(old)
    assert weights.config == EncoderConfig.from_preset("tiny", depth=3)
    encoder = build_encoder(weights)  # every tensor fits the rebuilt architecture
    assert len(encoder.context.blocks) == 3
