"""The representation monitor: its metrics on hand-built embeddings with known answers, the
clip choice, and a tiny pretraining run that writes monitor.csv / monitor.png and logs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from two_ranks import run_script

from emotion_ssl.data.manifest import ManifestEntry, read_manifest, write_manifest
from emotion_ssl.data.pretrain import PretrainDataModule
from emotion_ssl.demo.corpus import write_synthetic_corpus
from emotion_ssl.losses import ObjectiveSettings
from emotion_ssl.models.config import EncoderSettings
from emotion_ssl.models.masking import MaskingSettings
from emotion_ssl.train.monitor import (
    RepresentationMonitor,
    clip_statistics,
    knn_accuracy,
    rankme,
    resolve_layers,
    ridge_probe_ua,
    select_entries,
    variance_ratio,
)
from emotion_ssl.train.optim import OptimSettings
from emotion_ssl.train.pretrain import PretrainSystem


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def clusters(num_speakers: int, per_class: int, num_classes: int, noise: float = 0.05):
    """Clip embeddings around one axis per class, every speaker with every class."""
    g = torch.Generator().manual_seed(0)
    rows, labels, groups = [], [], []
    for speaker in range(num_speakers):
        for c in range(num_classes):
            for _ in range(per_class):
                centre = torch.zeros(8)
                centre[c] = 1.0
                rows.append(centre + noise * torch.randn(8, generator=g))
                labels.append(c)
                groups.append(speaker)
    return torch.stack(rows), torch.tensor(labels), torch.tensor(groups)


# ------------------------------------------------------------------------------ kNN
def test_knn_on_separable_clusters_is_exact() -> None:
    x, y, g = clusters(num_speakers=4, per_class=3, num_classes=3)
    assert knn_accuracy(x, y, g, k=5) == 1.0


def test_knn_on_shuffled_labels_is_near_chance() -> None:
    x, y, g = clusters(num_speakers=6, per_class=10, num_classes=4)
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    accuracy = knn_accuracy(x, shuffled, g, k=5)
    assert 0.1 < accuracy < 0.45  # chance 0.25 with 240 clips


def test_knn_takes_neighbours_from_other_speakers_only() -> None:
    # a strong speaker direction (3 e1 or 3 e2) and a weak label direction (+-e3): each clip's
    # nearest clip is its own speaker's other clip, of the other label
    x = torch.tensor([[3.0, 0, 1], [3.0, 0, -1], [0, 3.0, 1], [0, 3.0, -1]])
    labels = torch.tensor([0, 1, 0, 1])
    speakers = torch.tensor([0, 0, 1, 1])
    assert knn_accuracy(x, labels, speakers, k=1) == 1.0  # neighbour: the other speaker's
    assert knn_accuracy(x, labels, torch.arange(4), k=1) == 0.0  # ungrouped: same speaker
    assert math.isnan(knn_accuracy(x, labels, torch.zeros(4, dtype=torch.long), k=1))


def test_knn_tie_goes_to_the_more_similar_class() -> None:
    # query (speaker 0) has two neighbours of other speakers, one per class: k=2 ties
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.1, 0.9], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    groups = torch.tensor([0, 1, 2, 3])
    # clip 0's neighbours: clip 1 (class 0, cos 0.99) and clip 2 (class 1, cos 0.11) -> 0
    assert knn_accuracy(x[[0, 1, 2]], labels[[0, 1, 2]], groups[[0, 1, 2]], k=2) == 2 / 3


# ---------------------------------------------------------------------------- probe
def test_ridge_probe_on_separable_and_constant_features() -> None:
    x, y, g = clusters(num_speakers=4, per_class=3, num_classes=3)
    assert ridge_probe_ua(x, y, g, num_classes=3) == 1.0
    constant = torch.full_like(x, 0.7)
    # no information: every held-out clip gets the same class, so UA is exactly chance
    assert ridge_probe_ua(constant, y, g, num_classes=3) == pytest.approx(1 / 3)
    assert math.isnan(ridge_probe_ua(x, y, torch.zeros_like(g), num_classes=3))


def test_ridge_probe_primal_and_dual_forms_agree() -> None:
    x, y, g = clusters(num_speakers=3, per_class=2, num_classes=3, noise=0.6)
    wide = torch.cat([x, torch.zeros(len(x), 40)], dim=1)  # D > n: the dual form
    assert ridge_probe_ua(wide, y, g, 3) == ridge_probe_ua(x, y, g, 3)


# ---------------------------------------------------------------------------- RankMe
def test_rankme_of_identity_is_the_dimension_and_of_rank_one_is_one() -> None:
    assert rankme(torch.eye(16)) == pytest.approx(16.0, rel=1e-4)
    assert rankme(3.0 * torch.eye(5)) == pytest.approx(5.0, rel=1e-4)
    u = torch.randn(50, 1, generator=torch.Generator().manual_seed(0))
    v = torch.randn(1, 12, generator=torch.Generator().manual_seed(1))
    assert rankme(u @ v) == pytest.approx(1.0, abs=1e-3)
    # two equal singular values, the rest zero: 2
    two = torch.zeros(30, 10)
    two[:15, 0] = 1.0
    two[15:, 1] = 1.0
    assert rankme(two) == pytest.approx(2.0, abs=1e-3)


# ------------------------------------------------------------------ variance ratio
def test_variance_ratio_by_hand_on_two_clips() -> None:
    frames = torch.tensor(
        [
            [[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]],  # clip A: 2 valid frames + padding
            [[4.0, 1.0], [6.0, 1.0], [99.0, 99.0]],  # clip B: the last frame is padding
        ]
    )
    padding = torch.tensor([[False, False, True], [False, False, True]])
    means, within = clip_statistics(frames, padding)
    assert means.tolist() == [[1.0, 0.0], [5.0, 1.0]]
    assert within.tolist() == [1.0, 1.0]  # (1 + 1) / 2 in dim 0, 0 in dim 1
    # between: var(1, 5) + var(0, 1) = 4 + 0.25; within: mean(1, 1) = 1
    assert variance_ratio(means, within) == pytest.approx(4.25)
    assert variance_ratio(torch.ones(3, 2), torch.ones(3)) == 0.0  # all clips alike


# --------------------------------------------------------------- choice and layers
def entry(key: str, speaker: str, label: str | None) -> ManifestEntry:
    return ManifestEntry(key, f"/x/{key}.wav", 16000, 16000, 1.0, "c", speaker, label)


def test_select_entries_is_deterministic_and_spread_over_speakers_and_labels() -> None:
    entries = [entry(f"{s}_{lab}_{i}", s, lab) for s in "ab" for lab in "xy" for i in range(5)]
    chosen = select_entries(list(reversed(entries)), 4)
    assert [e.key for e in chosen] == ["a_x_0", "a_y_0", "b_x_0", "b_y_0"]
    assert select_entries(entries, 100) == select_entries(list(reversed(entries)), 100)
    assert len(select_entries(entries, 100)) == 20


def test_resolve_layers() -> None:
    assert resolve_layers(["last", "middle"], 3) == {"last": 2, "middle": 1}
    assert resolve_layers(["middle", "0", "-1"], 12) == {"middle": 5, "block0": 0, "block11": 11}
    with pytest.raises(ValueError, match="'first'"):
        resolve_layers(["first"], 3)
    with pytest.raises(ValueError, match="not a block"):
        resolve_layers(["3"], 3)


def test_clip_sets_from_labelled_unlabelled_and_mixed_manifests(tmp_path: Path) -> None:
    labelled = write_synthetic_corpus(
        tmp_path / "l", num_files=6, seed=2, max_seconds=2.0, labels=["a", "b"], num_speakers=3
    )
    entries = read_manifest(labelled)
    mixed = [*entries[:4], *(dataclasses.replace(e, label=None) for e in entries[4:])]
    mixed_path = write_manifest(tmp_path / "l" / "mixed.jsonl", mixed)
    unlabelled_path = write_manifest(
        tmp_path / "l" / "none.jsonl", [dataclasses.replace(e, label=None) for e in entries]
    )
    no_data = SimpleNamespace(datamodule=None)

    def read(path: Path, max_seconds: float = 1.0):  # type: ignore[no-untyped-def]
        monitor = RepresentationMonitor(str(path), max_clips=10, max_seconds=max_seconds)
        return monitor._read_clips(no_data, min_samples=400)  # type: ignore[arg-type]

    full = read(labelled)
    assert full.num_clips == 6 and full.label_names == ["a", "b"]
    assert full.labels is not None and sorted(full.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert full.groups.unique().tolist() == [0, 1, 2]
    assert max(int(lengths.max()) for _, lengths in full.batches) == 16000  # 1 s crops
    part = read(mixed_path)
    assert part.num_clips == 4 and part.labels is not None  # the unlabelled 2 are left out
    none = read(unlabelled_path)
    assert none.num_clips == 6 and none.labels is None  # label-free metrics only
    datamodule = SimpleNamespace(
        datamodule=SimpleNamespace(valid_manifest=None, train_manifest=str(labelled))
    )
    from_training = RepresentationMonitor(max_clips=3)._read_clips(datamodule, 400)  # type: ignore[arg-type]
    assert from_training.num_clips == 3 and from_training.labels is None


def test_other_ranks_do_nothing() -> None:
    monitor = RepresentationMonitor(manifest="/does/not/exist.jsonl", every_n_steps=1)
    trainer = SimpleNamespace(is_global_zero=False, global_step=0, loggers=[])
    monitor.setup(trainer, None, "fit")  # type: ignore[arg-type]  # reads nothing
    monitor.on_train_start(trainer, None)  # type: ignore[arg-type]
    assert monitor.clips is None and monitor.rows == []


# ------------------------------------------------------------------------- end to end
def tiny_run(tmp_path: Path, callbacks: list[L.Callback], steps: int = 4):
    """A 4-update tiny pretraining on 8 synthetic clips -> (system, run folder)."""
    train = write_synthetic_corpus(
        tmp_path / "train", num_files=8, seed=5, min_seconds=0.6, max_seconds=1.4
    )
    torch.manual_seed(0)
    system = PretrainSystem(
        encoder=EncoderSettings(preset="tiny"),
        masking=MaskingSettings(num_clones=2),
        objective=ObjectiveSettings(top_k=2),
        optim=OptimSettings(warmup_steps=1, lr=5e-4),
    )
    data = PretrainDataModule(
        str(train), max_tokens=48_000, max_sample_size=24_000, backend="torch", decoder="soundfile"
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=CSVLogger(tmp_path / "runs", name="pretrain", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(system, datamodule=data)
    return system, tmp_path / "runs" / "pretrain" / "version_0"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiny_pretraining_run_writes_and_logs_the_monitor(tmp_path: Path) -> None:
    labelled = write_synthetic_corpus(
        tmp_path / "monitor",
        num_files=12,
        seed=11,
        min_seconds=0.5,
        max_seconds=1.5,
        labels=["ang", "hap", "sad"],
        num_speakers=4,
    )
    monitor = RepresentationMonitor(str(labelled), every_n_steps=2, max_clips=10, max_seconds=1.0)
    seen_modes: list[bool] = []

    class StudentMode(L.Callback):  # runs after the monitor at every step
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:  # type: ignore[no-untyped-def]
            seen_modes.append(pl_module.student.training)

    _, run_dir = tiny_run(tmp_path, [monitor, StudentMode()], steps=5)

    assert monitor.clips is not None and monitor.clips.num_clips == 10
    assert monitor.clips.label_names == ["ang", "hap", "sad"]
    rows = read_csv(run_dir / "monitor.csv")
    # update 0 (random init), every 2 updates, and the end (update 5)
    assert [float(r["step"]) for r in rows] == [0.0, 2.0, 4.0, 5.0]
    expected = {
        f"monitor/{layer}/{metric}"
        for layer in ("last", "middle")
        for metric in ("knn_acc", "probe_ua", "rankme_utt", "rankme_frame", "var_ratio")
    }
    assert set(rows[0]) == {"step", "seconds", *expected}
    for row in rows:
        assert 0.0 <= float(row["monitor/last/probe_ua"]) <= 1.0
        assert 1.0 <= float(row["monitor/middle/rankme_utt"]) <= 10.0  # at most the clip count
        assert float(row["monitor/last/var_ratio"]) > 0.0
    assert (run_dir / "monitor.png").stat().st_size > 0
    logged = read_csv(run_dir / "metrics.csv")  # through the run's logger, at each update
    at = {float(r["step"]): r for r in logged if r.get("monitor/last/knn_acc")}
    assert sorted(at) == [0.0, 2.0, 4.0, 5.0]
    assert float(at[2.0]["monitor/last/rankme_frame"]) == pytest.approx(
        float(rows[1]["monitor/last/rankme_frame"])
    )
    assert seen_modes and all(seen_modes)  # train mode restored after every evaluation
    assert monitor.state_dict()["rows"][-1]["step"] == 5.0
    # the update-0 row is the untrained student: the same numbers from a fresh one
    torch.manual_seed(0)
    fresh = PretrainSystem(
        encoder=EncoderSettings(preset="tiny"),
        masking=MaskingSettings(num_clones=2),
        objective=ObjectiveSettings(top_k=2),
        optim=OptimSettings(warmup_steps=1, lr=5e-4),
    )
    for key, value in monitor.evaluate(fresh).items():
        assert float(rows[0][key]) == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_a_resumed_run_does_not_repeat_an_evaluation() -> None:
    monitor = RepresentationMonitor(every_n_steps=10)
    calls: list[int] = []
    monitor._evaluate = lambda trainer, pl_module: calls.append(trainer.global_step)  # type: ignore[method-assign]
    monitor.load_state_dict({"rows": [{"step": 0.0}, {"step": 10.0}]})
    monitor.on_train_start(SimpleNamespace(global_step=10), None)  # type: ignore[arg-type]
    monitor.on_train_batch_end(SimpleNamespace(global_step=10), None)  # type: ignore[arg-type]
    monitor.on_train_batch_end(SimpleNamespace(global_step=15), None)  # type: ignore[arg-type]
    monitor.on_train_batch_end(SimpleNamespace(global_step=20), None)  # type: ignore[arg-type]
    monitor.on_train_batch_end(SimpleNamespace(global_step=20), None)  # type: ignore[arg-type]
    assert calls == [20]  # once per update, none at the restored step


def test_label_free_from_the_training_manifest_and_training_unchanged(tmp_path: Path) -> None:
    monitor = RepresentationMonitor(every_n_steps=2, max_clips=6, max_seconds=1.0)
    watched, run_dir = tiny_run(tmp_path / "a", [monitor])
    rows = read_csv(run_dir / "monitor.csv")
    assert [float(r["step"]) for r in rows] == [0.0, 2.0, 4.0]
    assert set(rows[0]) == {
        "step",
        "seconds",
        *(
            f"monitor/{layer}/{m}"
            for layer in ("last", "middle")
            for m in ("rankme_utt", "rankme_frame", "var_ratio")
        ),
    }
    assert monitor.clips is not None and monitor.clips.labels is None
    assert monitor.clips.source.endswith("manifest.jsonl")
    # the monitor draws no random numbers and leaves the student as it found it
    plain, _ = tiny_run(tmp_path / "b", [])
    for (name, a), b in zip(
        watched.student.state_dict().items(), plain.student.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_through_the_pretrain_cli_and_a_resume(tmp_path: Path) -> None:
    """`--monitor.*` options of `emotion-ssl pretrain`; a resumed run continues monitor.csv."""
    from emotion_ssl.cli import pretrain

    train = write_synthetic_corpus(tmp_path / "train", num_files=8, seed=5, max_seconds=1.4)
    labelled = write_synthetic_corpus(
        tmp_path / "monitor", num_files=8, seed=11, labels=["ang", "sad"], num_speakers=2
    )
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "pretrain" / "tiny.yaml"

    def run(steps: int, extra: list[str]) -> RepresentationMonitor:
        cli = pretrain(
            [
                "-c", str(recipe), "--data.train_manifest", str(train),
                "--data.max_tokens", "48000", "--trainer.max_steps", str(steps),
                "--checkpoint.every_n_train_steps", "2", "--trainer.enable_progress_bar", "false",
                "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                "--monitor.manifest", str(labelled), "--monitor.every_n_steps", "2",
                "--monitor.max_clips", "6", "--monitor.layers", "[middle]", *extra,
            ]
        )  # fmt: skip
        return next(c for c in cli.trainer.callbacks if isinstance(c, RepresentationMonitor))

    monitor = run(4, [])
    assert monitor.clips is not None and monitor.clips.num_clips == 6
    first = read_csv(tmp_path / "runs" / "pretrain" / "version_0" / "monitor.csv")
    assert [float(r["step"]) for r in first] == [0.0, 2.0, 4.0]
    assert "monitor/middle/knn_acc" in first[0] and "monitor/last/knn_acc" not in first[0]
    checkpoint = next((tmp_path / "runs").rglob("*step=2.ckpt"))
    run(6, ["--ckpt_path", str(checkpoint)])
    resumed = read_csv(tmp_path / "runs" / "pretrain" / "version_1" / "monitor.csv")
    assert [float(r["step"]) for r in resumed] == [0.0, 2.0, 4.0, 6.0]  # 2 not repeated
    assert resumed[1] == first[1]


DDP_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.strategies import DDPStrategy

    from emotion_ssl.data.pretrain import PretrainDataModule
    from emotion_ssl.losses import ObjectiveSettings
    from emotion_ssl.models.config import EncoderSettings
    from emotion_ssl.models.masking import MaskingSettings
    from emotion_ssl.train.monitor import RepresentationMonitor
    from emotion_ssl.train.optim import OptimSettings
    from emotion_ssl.train.pretrain import PretrainSystem


    class Record(L.Callback):
        def on_train_end(self, trainer, pl_module) -> None:
            monitor = next(c for c in trainer.callbacks if isinstance(c, RepresentationMonitor))
            checksum = sum(float(p.detach().double().sum()) for p in pl_module.student.parameters())
            record = {"rows": len(monitor.rows), "checksum": checksum, "step": trainer.global_step}
            (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


    if __name__ == "__main__":
        train, labelled, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = PretrainSystem(
            encoder=EncoderSettings("tiny"),
            masking=MaskingSettings(num_clones=2),
            objective=ObjectiveSettings(top_k=2),
            optim=OptimSettings(lr=5e-4, warmup_steps=1),
        )
        data = PretrainDataModule(train, max_tokens=48_000, max_sample_size=24_000)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=2,
            strategy=DDPStrategy(
                process_group_backend="gloo", find_unused_parameters=True, start_method="fork"
            ),
            max_steps=3,
            logger=CSVLogger(out / "runs", name="pretrain", version=0),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[RepresentationMonitor(labelled, every_n_steps=1, max_clips=6), Record()],
        )
        trainer.fit(model, datamodule=data)
    """
)


@pytest.mark.slow
def test_two_ddp_ranks_stay_in_step_with_the_monitor_on_rank_zero(tmp_path: Path) -> None:
    """Rank 0 evaluates (seconds) at every update and the other rank does not: no collective
    inside the monitor, so neither waits forever, and the replicas stay identical."""
    train = write_synthetic_corpus(
        tmp_path / "train", num_files=16, seed=5, min_seconds=0.6, max_seconds=1.4
    )
    labelled = write_synthetic_corpus(
        tmp_path / "monitor", num_files=8, seed=11, labels=["ang", "sad"], num_speakers=2
    )
    run_script(DDP_SCRIPT, "ddp_monitor.py", [str(train), str(labelled), str(tmp_path)], tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["step"] for r in ranks] == [3, 3]
    assert [r["rows"] for r in ranks] == [4, 0]  # updates 0-3 on rank 0 only
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    rows = read_csv(tmp_path / "runs" / "pretrain" / "version_0" / "monitor.csv")
    assert [float(r["step"]) for r in rows] == [0.0, 1.0, 2.0, 3.0]
    assert "monitor/last/probe_ua" in rows[0]
