"""FSDP on two CPU processes (gloo): tiny pretraining from a data2vec 2.0-layout file, with the
EMA teacher updated on whole parameters (`full_parameters`) although FSDP shards them.

Lightning refuses FSDP without a GPU (`Trainer(strategy="fsdp", accelerator="cpu")` raises
"The strategy `fsdp` requires a GPU accelerator"), and torch's FullyShardedDataParallel refuses a
CPU module unless `device_id` names the CPU. The script below gets past both with a subclass of
FSDPStrategy (Lightning's check is `type(strategy) is FSDPStrategy`) that wraps with
`device_id=cpu`; everything else (flat-parameter sharding, `use_orig_params=True`, the
forward/backward all-gathers, reduce-scatter, optimizer on shards) is the GPU code path.
As in tests/data/test_ddp_pretrain.py, the run is a standalone script in a subprocess.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from fairseq_files import tiny_data2vec2_file
from two_ranks import run_script

from emotion_ssl.demo.corpus import write_synthetic_corpus
from emotion_ssl.export.fairseq import AUDIO_PREFIX
from emotion_ssl.models.teacher import ema_decay_at

DECAY = (0.9, 0.99, 4)  # start, end, anneal steps: a different tau at every update

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import lightning as L
    import torch
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel

    from emotion_ssl.data.pretrain import PretrainDataModule
    from emotion_ssl.losses import ObjectiveSettings
    from emotion_ssl.models.config import EncoderSettings
    from emotion_ssl.models.masking import MaskingSettings
    from emotion_ssl.models.teacher import TeacherSettings
    from emotion_ssl.train.optim import OptimSettings
    from emotion_ssl.train.pretrain import PretrainSystem


    class CPUFSDPStrategy(FSDPStrategy):
        # Lightning passes device_id=root_device.index, None on the CPU, and torch then looks
        # for an accelerator; naming the CPU device is the only change
        def _setup_model(self, model):
            return FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=torch.device("cpu"),
                **self.kwargs,
            )


    def whole(trainer, pl_module):
        with FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False):
            return (
                {k: v.clone() for k, v in pl_module.student.state_dict().items()},
                {k: v.clone() for k, v in pl_module.teacher.encoder.state_dict().items()},
            )


    class Record(L.Callback):
        # at every batch end: the update's EMA step (PretrainSystem.optimizer_step) is done
        def __init__(self, out):
            self.out, self.steps = out, []

        def on_train_start(self, trainer, pl_module):
            self.start = whole(trainer, pl_module)

        def on_train_batch_end(self, trainer, pl_module, *args):
            # the teacher between steps: this rank's pieces of FSDP's flat parameter
            self.local = [tuple(p.shape) for p in pl_module.teacher.encoder.parameters()]
            student, teacher = whole(trainer, pl_module)
            self.steps.append((trainer.global_step, student, teacher))

        def on_train_end(self, trainer, pl_module):
            _, teacher = whole(trainer, pl_module)
            record = {
                "world_size": trainer.world_size,
                "sharded": type(trainer.strategy.model).__name__,
                "local_shapes": self.local,
                "full_shapes": [tuple(p.shape) for p in teacher.values()],
                "start": self.start,
                "steps": self.steps,
                "final_teacher": teacher,
            }
            torch.save(record, self.out / f"rank{trainer.global_rank}.pt")


    if __name__ == "__main__":
        manifest, init_from, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
        decay_start, decay_end, anneal = (float(v) for v in sys.argv[4:7])
        torch.set_num_threads(1)
        torch.manual_seed(0)  # every rank builds the same model (fresh utterance tokens)
        model = PretrainSystem(
            encoder=EncoderSettings("tiny"),
            masking=MaskingSettings(num_clones=2),
            teacher=TeacherSettings(decay_start, decay_end, int(anneal)),
            objective=ObjectiveSettings(top_k=2),
            optim=OptimSettings(lr=5e-4, warmup_steps=1),
            init_from=init_from,
        )
        data = PretrainDataModule(manifest, max_tokens=48_000, max_sample_size=24_000)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=2,
            strategy=CPUFSDPStrategy(process_group_backend="gloo"),
            max_steps=3,
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


def test_fsdp_two_ranks_move_the_teacher_by_exact_ema_steps(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    manifest = write_synthetic_corpus(
        tmp_path / "corpus", num_files=24, seed=5, min_seconds=0.6, max_seconds=1.4
    )
    d2v, file = tiny_data2vec2_file(tmp_path / "d2v.pt", teacher_shift=0.25)
    args = [str(manifest), str(d2v), str(tmp_path), *(str(v) for v in DECAY)]
    run_script(SCRIPT, "fsdp_pretrain.py", args, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    for record in ranks:
        assert record["world_size"] == 2 and record["sharded"] == "FullyShardedDataParallel"
        # between steps each rank holds pieces of the teacher (flattened, or empty): the EMA
        # step could not pair them with the student's without gathering
        assert record["local_shapes"] != record["full_shapes"]
        # init_from under FSDP: data2vec 2.0 blocks.0 -> prenet 0, 1..2 -> shared 0..1;
        # the teacher from `_ema`, fresh utterance tokens shared by student and teacher
        student, teacher = record["start"]
        for source, ours in [(0, "prenet.0"), (1, "blocks.0"), (2, "blocks.1")]:
            for key in ("attn.qkv.weight", "mlp.fc2.bias", "norm2.weight"):
                fairseq_key = f"blocks.{source}.{key}"
                assert torch.equal(student[f"context.{ours}.{key}"], file[fairseq_key])
                assert torch.equal(teacher[f"{ours}.{key}"], file["_ema"][fairseq_key])
        norm = file["_ema"][f"{AUDIO_PREFIX}context_encoder.norm.weight"]
        assert torch.equal(teacher["prenet_norm.weight"], norm)
        assert torch.equal(teacher["utterance_tokens"], student["context.utterance_tokens"])

        # every update: teacher = lerp(teacher, student after the optimizer step, 1 - tau)
        steps = record["steps"]
        assert [s[0] for s in steps] == [1, 2, 3]
        befores = [teacher] + [s[2] for s in steps[:-1]]
        for (step, student, after), before in zip(steps, befores, strict=True):
            tau = ema_decay_at(step, *DECAY)
            for key, value in after.items():
                expected = before[key].lerp(student[f"context.{key}"], 1.0 - tau)
                torch.testing.assert_close(value, expected, rtol=0, atol=1e-7)
        # a checkpoint of update N would hold the teacher after its N-th EMA step
        assert all(torch.equal(record["final_teacher"][k], v) for k, v in steps[-1][2].items())
        moved = record["final_teacher"]["blocks.1.attn.qkv.weight"]
        assert not torch.allclose(moved, teacher["blocks.1.attn.qkv.weight"])

    # the two ranks hold different pieces, and together every element once
    numel = [sum(torch.Size(s).numel() for s in r["local_shapes"]) for r in ranks]
    assert numel[0] != numel[1]
    assert sum(numel) == sum(torch.Size(s).numel() for s in ranks[0]["full_shapes"])
    # the ranks agree: the same whole-parameter step on every rank
    for key, value in ranks[0]["final_teacher"].items():
        assert torch.equal(value, ranks[1]["final_teacher"][key]), key


def test_sharded_looking_parameters_are_refused_outside_full_parameters() -> None:
    """What FSDP leaves between steps (flattened or empty pieces) is never paired silently."""
    from emotion_ssl.models import EncoderConfig
    from emotion_ssl.models.encoder import ContextEncoder
    from emotion_ssl.models.teacher import EMATeacher, full_parameters

    torch.set_num_threads(1)
    student = ContextEncoder(EncoderConfig.tiny())
    teacher = EMATeacher(student)
    with full_parameters(student):  # no FSDP inside: nothing to gather, the step runs as is
        teacher.update(student, 0)
    qkv = student.blocks[0].attn.qkv.weight
    qkv.data = qkv.data.flatten()  # a piece of a flat parameter
    try:
        teacher.update(student, 1)
    except RuntimeError as err:
        assert "differ in shape" in str(err) and "full_parameters" in str(err)
    else:
        raise AssertionError("a flattened student parameter was paired with the teacher's")
