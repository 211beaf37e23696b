"""Two-process DDP on CPU (gloo): a few steps of tiny pretraining, each rank on its own data.

A DDP launch inside pytest would start its ranks from pytest itself (the `ddp` strategy
re-runs the launching command), so the run is a standalone script in a subprocess; there
the second rank is forked from the first, saving a second import of Lightning.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from two_ranks import run_script

from emotion_ssl.data import read_manifest, resampled_length
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


    class RecordBatches(L.Callback):
        def __init__(self, out: Path) -> None:
            self.out = out
            self.keys: list[list[str]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.keys.append(list(batch.keys))

        def on_train_end(self, trainer, pl_module) -> None:
            checksum = sum(float(p.detach().double().sum()) for p in pl_module.student.parameters())
            record = {
                "keys": self.keys,
                "global_step": trainer.global_step,
                "world_size": trainer.world_size,
                "student_checksum": checksum,
            }
            (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


    if __name__ == "__main__":
        manifest, out, backend = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
        torch.set_num_threads(1)
        model = PretrainSystem(
            encoder=EncoderSettings("tiny"),
            masking=MaskingSettings(num_clones=2),
            objective=ObjectiveSettings(top_k=2),
            optim=OptimSettings(lr=5e-4, warmup_steps=1),
        )
        data = PretrainDataModule(
            manifest, max_tokens=48_000, max_sample_size=24_000, backend=backend
        )
        trainer = L.Trainer(
            accelerator="cpu",
            devices=2,
            # fork: rank 1 starts from this process instead of re-importing Lightning (seconds)
            strategy=DDPStrategy(
                process_group_backend="gloo", find_unused_parameters=True, start_method="fork"
            ),
            max_steps=3,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[RecordBatches(out)],
        )
        trainer.fit(model, datamodule=data)
    """
)


def test_two_ranks_train_on_disjoint_batches(tmp_path: Path) -> None:
    manifest = write_synthetic_corpus(
        tmp_path / "corpus", num_files=24, seed=5, min_seconds=0.6, max_seconds=1.4
    )
    run_script(SCRIPT, "ddp_pretrain.py", [str(manifest), str(tmp_path), "fairseq2"], tmp_path)

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for record in ranks:
        assert record["global_step"] == 3 and record["world_size"] == 2
        assert len(record["keys"]) == 3  # three steps, one batch each
    seen = [{k for batch in record["keys"] for k in batch} for record in ranks]
    assert seen[0] and seen[1] and not seen[0] & seen[1]  # the ranks never share an utterance
    every_key = {
        e.key
        for e in read_manifest(manifest)
        if resampled_length(e.num_samples, e.sample_rate) >= 8_000
    }
    assert seen[0] | seen[1] <= every_key
    # DDP kept the replicas identical (gradients were averaged over both ranks' data)
    assert ranks[0]["student_checksum"] == ranks[1]["student_checksum"]
