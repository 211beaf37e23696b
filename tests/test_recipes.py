"""Every recipe parses with the real CLI (an option the code lacks fails here) and starts with
the command that runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emotion_ssl.cli import finetune, pretrain

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


def test_there_are_recipes() -> None:
    names = {str(p.relative_to(p.parents[1])) for p in RECIPES}
    assert {
        "pretrain/tiny.yaml",
        "pretrain/base.yaml",
        "pretrain/scratch.yaml",
        "iemocap/finetune.yaml",
        "crema_d/finetune.yaml",
    } <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses_and_documents_its_command(
    recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = recipe.read_text().splitlines()[0]
    command = "pretrain" if recipe.parent.name == "pretrain" else "finetune"
    assert first.startswith(
        f"# emotion-ssl {command} -c recipes/{recipe.parent.name}/{recipe.name}"
    )
    assert isinstance(yaml.safe_load(recipe.read_text()), dict)
    if command == "pretrain":
        run, extra = pretrain, ["--data.train_manifest", "train.jsonl"]
    else:
        run, extra = finetune, ["--model.encoder", "enc", "--data.manifest", "m.jsonl"]
    with pytest.raises(SystemExit) as exit_info:
        run(["-c", str(recipe), *extra, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"] and printed["data"] and printed["trainer"]
