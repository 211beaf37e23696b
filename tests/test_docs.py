"""The README's Python example runs as written and its shape comments are true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README example, run where `encoders/mine` is a real exported (tiny) encoder."""
    import torch

    from emotion_ssl import EmotionEncoder, EncoderConfig
    from emotion_ssl.export import save_encoder_dir
    from emotion_ssl.export.weights import PretrainedWeights

    torch.manual_seed(0)
    config = EncoderConfig.tiny()
    weights = PretrainedWeights("readme", config, EmotionEncoder(config).state_dict())
    save_encoder_dir(tmp_path / "encoders" / "mine", weights)
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(README.read_text())
    assert blocks, "README has no python example"
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    out = namespace["out"]
    D = config.embed_dim
    assert tuple(out.frames.shape) == (2, 149, D)  # type: ignore[attr-defined]
    assert tuple(out.padding_mask.shape) == (2, 149)  # type: ignore[attr-defined]
    assert int((~out.padding_mask[1]).sum()) == 93  # type: ignore[attr-defined]
    assert tuple(out.utterance.shape) == (2, D)  # type: ignore[attr-defined]
    assert tuple(out.tokens.shape) == (2, 10, D)  # type: ignore[attr-defined]
    assert len(out.layers) == config.num_layers  # type: ignore[attr-defined]
    features = namespace["features"]
    assert [f["frames"].shape for f in features] == [(149, D), (93, D)]  # type: ignore[attr-defined]


def test_architecture_reproduce_step_example(golden_dir) -> None:  # type: ignore[no-untyped-def]
    """docs/architecture.md's golden-step example prints the reference's losses."""
    import os

    text = (README.parent / "docs" / "architecture.md").read_text()
    block = next(b for b in python_blocks(text) if "forward_step" in b)
    namespace: dict[str, object] = {}
    cwd = os.getcwd()
    os.chdir(README.parent)  # the example's ../shared paths are relative to the repository
    try:
        exec(compile(block, "docs/architecture.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    losses = namespace["out"].losses  # type: ignore[attr-defined]
    assert abs(losses.frame.item() - 13.374698) < 1e-4
    assert abs(losses.utterance.item() - 13.237554) < 1e-4


def test_alm_projector_example_runs() -> None:
    text = (README.parent / "docs" / "alm.md").read_text()
    (block,) = python_blocks(text)
    namespace: dict[str, object] = {}
    exec(compile(block, "docs/alm.md", "exec"), namespace)
    assert tuple(namespace["soft_prompt"].shape) == (2, 10 + 19, 256)  # type: ignore[attr-defined]
    assert tuple(namespace["llm_input"].shape) == (2, 10 + 19 + 12, 256)  # type: ignore[attr-defined]
