"""The wheel a user installs: it holds the recipes and the demo's settings, and its
`emotion-ssl demo` runs from outside the repository (issue 15, deliverable 5).

Builds the wheel from a copy of the sources (no build/ left in the checkout) without build
isolation (no downloads: setuptools and wheel come from the dev extra), installs it with
--no-deps --no-index into a throwaway venv that borrows this venv's dependencies through a .pth
file, and runs the installed console script in tmp_path. About 10 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "emotion_ssl/recipes/pretrain/tiny.yaml",
    "emotion_ssl/recipes/pretrain/base.yaml",
    "emotion_ssl/recipes/pretrain/scratch.yaml",
    "emotion_ssl/recipes/iemocap/finetune.yaml",
    "emotion_ssl/recipes/crema_d/finetune.yaml",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for folder in ("emotion_ssl", "data_prep"):
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(out), str(source)], check=True, cwd=source)
    (path,) = out.glob("emotion_ssl-*.whl")
    return path


def test_the_wheel_holds_the_recipes_and_the_demo(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert names >= RECIPES | {"emotion_ssl/demo/run.py", "emotion_ssl/demo/corpus.py"}
        for recipe in RECIPES:
            assert isinstance(yaml.safe_load(archive.read(recipe)), dict), recipe
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_the_installed_wheel_runs_the_demo_command(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # torch, lightning, ... from this venv; emotion_ssl itself only from the wheel
    (Path(site) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    subprocess.run([*install, "--no-deps", "--no-index", str(wheel)], check=True)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [
            python,
            "-c",
            "import emotion_ssl.demo as d; print(d.__file__); print(d.RECIPE.is_file())",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,  # outside the repository
        env=env,
    ).stdout.split()
    assert where[0].startswith(site), where  # the installed copy, not the checkout
    assert where[1] == "True"  # the demo's recipe is inside the package
    run = subprocess.run(
        [venv / "bin" / "emotion-ssl", "demo", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert "usage: emotion-ssl demo" in run.stdout
