"""The category term across 2 processes (gloo): gathered with gradients, equal to one process
seeing the whole batch. Run as a subprocess script, never inside pytest's own process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from emotion_ssl.losses.contrastive import gather_no_grad, gather_with_grad
    from emotion_ssl.losses import supervised_contrastive_loss

    def data():
        g = torch.Generator().manual_seed(0)
        z = torch.nn.functional.normalize(torch.randn(8, 5, generator=g), dim=-1)
        labels = torch.tensor([0, 1, -1, 0, 1, 2, -1, 2])
        return z, labels

    def worker(rank, world, port, out):
        torch.set_num_threads(1)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        z, labels = data()
        local = z[rank * 4:(rank + 1) * 4].clone().requires_grad_(True)
        gathered = gather_with_grad(local)
        loss, anchors = supervised_contrastive_loss(gathered, gather_no_grad(labels[rank * 4:(rank + 1) * 4]), 0.1)
        loss.backward()
        torch.save({"loss": loss.detach(), "anchors": anchors, "grad": local.grad}, f"{out}/rank{rank}.pt")
        dist.destroy_process_group()

    if __name__ == "__main__":
        out, port = sys.argv[1], int(sys.argv[2])
        mp.spawn(worker, args=(2, port, out), nprocs=2, join=True)
    """
)


def test_gathered_supcon_equals_the_full_batch(tmp_path: Path) -> None:
    import socket

    import torch

    from emotion_ssl.losses import supervised_contrastive_loss

    script = tmp_path / "ddp_supcon.py"
    script.write_text(SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(port)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(8, 5, generator=g), dim=-1).requires_grad_(True)
    labels = torch.tensor([0, 1, -1, 0, 1, 2, -1, 2])
    full, anchors = supervised_contrastive_loss(z, labels, 0.1)
    full.backward()
    assert z.grad is not None
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(got["loss"], full.detach(), atol=1e-6)
        assert int(got["anchors"]) == int(anchors) == 6
        # every rank backpropagates the same loss; all_gather's backward sums them, and DDP's
        # gradient averaging then divides by the world size: the net gradient is the full one
        assert torch.allclose(got["grad"] / 2, z.grad[rank * 4 : (rank + 1) * 4], atol=1e-6)
