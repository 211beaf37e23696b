"""The category term in a real 2-rank Lightning DDP run (gloo, CPU) with every option on:
m-per-class labelled batches of uneven sizes, memory, teacher prototypes, own clones left out.
The ranks must agree on every global quantity and stay identical. As in
tests/data/test_ddp_pretrain.py, the run is a standalone script in a subprocess."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from two_ranks import run_script

from emotion_ssl.demo.corpus import write_synthetic_corpus

SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import lightning as L
    import torch
    from lightning.pytorch.strategies import DDPStrategy

    from emotion_ssl.data.pretrain import PretrainDataModule
    from emotion_ssl.losses import ObjectiveSettings
    from emotion_ssl.models.config import EncoderSettings
    from emotion_ssl.models.masking import MaskingSettings
    from emotion_ssl.train.optim import OptimSettings
    from emotion_ssl.train.pretrain import PretrainSystem

    KEYS = ("train/category_loss", "train/num_anchors", "train/cross_utterance_positives",
            "train/category_skipped")


    class Record(L.Callback):
        def __init__(self, out: Path) -> None:
            self.out = out
            self.steps: list[dict] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.steps.append({"size": batch.batch_size, "labels": batch.labels.tolist()})

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            metrics = trainer.callback_metrics
            self.steps[-1].update({k: float(metrics[k]) for k in KEYS})

        def on_train_end(self, trainer, pl_module) -> None:
            objective = pl_module.objective
            record = {
                "steps": self.steps,
                "student": sum(float(p.detach().double().sum()) for p in pl_module.student.parameters()),
                "head": sum(float(p.detach().double().sum()) for p in objective.head.parameters()),
                "memory": objective.memory.keys.double().sum().item(),
                "memory_valid": int(objective.memory.valid.sum()),
                "prototypes": objective.prototypes.prototypes.double().sum().item(),
            }
            (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


    if __name__ == "__main__":
        unlabelled, labelled, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
        torch.set_num_threads(1)
        model = PretrainSystem(
            encoder=EncoderSettings("tiny"),
            masking=MaskingSettings(num_clones=2),
            objective=ObjectiveSettings(
                top_k=2, category_weight=1.0, category_ramp_steps=0, num_classes=4,
                category_clone_positives=False, category_memory_size=32,
                pseudo_labels=True, pseudo_label_warmup_steps=0, pseudo_label_threshold=0.5,
            ),
            optim=OptimSettings(lr=5e-4, warmup_steps=1),
        )
        data = PretrainDataModule(
            unlabelled, labelled_manifest=labelled, labelled_per_class=1,
            max_tokens=120_000, max_sample_size=24_000, backend="torch", decoder="soundfile",
        )
        trainer = L.Trainer(
            accelerator="cpu",
            devices=2,
            strategy=DDPStrategy(
                process_group_backend="gloo", find_unused_parameters=True, start_method="fork"
            ),
            max_steps=4,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[Record(out)],
        )
        trainer.fit(model, datamodule=data)
    """
)


def test_two_uneven_ranks_agree_on_the_category_term(tmp_path: Path) -> None:
    unlabelled = write_synthetic_corpus(
        tmp_path / "unlabelled", num_files=24, seed=5, min_seconds=0.6, max_seconds=1.4
    )
    labelled = write_synthetic_corpus(
        tmp_path / "labelled",
        num_files=16,
        seed=6,
        min_seconds=0.6,
        max_seconds=1.4,
        labels=["ang", "hap", "neu", "sad"],
    )
    run_script(SCRIPT, "ddp_category.py", [str(unlabelled), str(labelled), str(tmp_path)], tmp_path)

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    steps = list(zip(ranks[0]["steps"], ranks[1]["steps"], strict=True))
    assert len(steps) == 4
    assert any(a["size"] != b["size"] for a, b in steps)  # uneven batches happened
    for a, b in steps:
        # one labelled clip of each of the 4 classes per global batch, 2 on each rank
        labels = sorted(x for x in a["labels"] + b["labels"] if x >= 0)
        assert labels == [0, 1, 2, 3]
        for key in ("train/category_loss", "train/num_anchors"):
            assert a[key] == b[key], key  # every rank computed the same global loss
        assert a["train/cross_utterance_positives"] == b["train/cross_utterance_positives"]
        assert a["train/category_skipped"] == b["train/category_skipped"]
    # from step 2 on the memory holds earlier clips of every class: positives across steps
    assert all(a["train/cross_utterance_positives"] > 0 for a, _ in steps[1:])
    for key in ("student", "head", "memory", "memory_valid", "prototypes"):
        assert ranks[0][key] == ranks[1][key], key  # the replicas stayed identical
