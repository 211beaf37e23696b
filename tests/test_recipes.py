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


def test_category_term_options_of_the_docs_parse(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/pretraining.md's category-term options exist with these names."""
    args = [
        "-c", "recipes/pretrain/tiny.yaml", "--data.train_manifest", "train.jsonl",
        "--data.labelled_manifest", "labelled.jsonl", "--data.labelled_fraction", "0.5",
        "--data.label_names", '["neu", "ang"]', "--model.objective.num_classes", "2",
        "--model.objective.category_weight", "5", "--model.objective.category_ramp_steps", "80",
        "--model.objective.category_batch_centring", "false", "--print_config",
    ]  # fmt: skip
    docs = (RECIPES[0].parents[2] / "docs" / "pretraining.md").read_text()
    for option in args[4::2][:-1]:
        assert option.startswith("--") and option in docs, option
    with pytest.raises(SystemExit) as exit_info:
        pretrain([a.replace("recipes/", str(RECIPES[0].parents[1]) + "/") for a in args])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["objective"]["category_batch_centring"] is False
    assert printed["model"]["objective"]["category_weight"] == 5.0
    assert printed["data"]["labelled_fraction"] == 0.5
