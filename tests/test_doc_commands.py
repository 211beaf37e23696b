"""Every shell command in the README and docs/ names options that exist: `emotion-ssl ...`
(Lightning's parser with --print_config for pretrain/finetune, argparse for the rest; shell
variables read as 1),
`python -m data_prep.*` and `python benchmarks/*.py` are parsed for real (their parsers stop
before doing any work). What they do is tested elsewhere (tests/test_cli.py, tests/export,
tests/data_prep, tests/test_benchmarks.py, the demo test)."""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shell_lines(text: str) -> list[str]:
    """Commands of ```bash blocks and of 4-space indented blocks (continuations joined; usage
    brackets like `[--opt X]` dropped)."""
    lines = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
        lines += re.sub(r"\\\n\s*", " ", block).splitlines()
    indented = re.sub(r"\\\n\s*", " ", text)
    starts = (".venv/bin/", "python ", "emotion-ssl ")
    lines += [
        ln
        for ln in indented.splitlines()
        if ln.startswith("    ") and ln.strip().startswith(starts)
    ]
    cleaned = [re.sub(r"\[--[^\]]*\]", "", ln.split("  #")[0]).strip() for ln in lines]
    return [ln for ln in cleaned if ln and not ln.startswith("#")]


def inline_options() -> list[tuple[str, str, str]]:
    """(doc, subcommand, --option) of inline `emotion-ssl SUB ... --option` fragments."""
    found = []
    for doc in DOCS:
        for span in re.findall(r"`(?:\.venv/bin/)?emotion-ssl ([a-z-]+)([^`]*)`", doc.read_text()):
            options = re.findall(r"--[a-z_.-]+", span[1])
            found += [(doc.name, span[0], o) for o in options if o != "--help"]
    return found


def commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for line in shell_lines(doc.read_text()):
            for piece in line.split("&&"):
                try:
                    tokens = shlex.split(re.sub(r"\$[A-Za-z_]+", "1", piece.strip()))
                except ValueError:  # `python -c "` opening a multi-line program
                    continue
                for i, token in enumerate(tokens):
                    if token.endswith("emotion-ssl") or token == "emotion_ssl.cli":
                        found.append((doc.name, ["emotion-ssl", *tokens[i + 1 :]]))
                        break
                    if token.startswith("data_prep.") and tokens[i - 1] == "-m":
                        found.append((doc.name, [token, *tokens[i + 1 :]]))
                        break
                    if token.startswith("benchmarks/") and token.endswith(".py"):
                        found.append((doc.name, [token, *tokens[i + 1 :]]))
                        break
    return found


COMMANDS = commands()
INLINE = inline_options()


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("doc,command,option", INLINE, ids=[" ".join(i) for i in INLINE])
def test_inline_option_exists(
    doc: str, command: str, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from emotion_ssl.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert option in capsys.readouterr().out, f"{doc}: emotion-ssl {command} has no {option}"


def test_the_docs_have_commands() -> None:
    names = {c[1][0] for c in COMMANDS}
    assert {"emotion-ssl", "benchmarks/extract_speed.py", "data_prep.ravdess"} <= names
    subcommands = {c[1][1] for c in COMMANDS if c[1][0] == "emotion-ssl" and len(c[1]) > 1}
    assert {
        "pretrain",
        "export",
        "extract",
        "evaluate",
        "finetune",
        "import-fairseq",
    } <= subcommands
    assert {c for _, c, _ in INLINE} >= {"demo", "export"}


@pytest.mark.parametrize("doc,argv", COMMANDS, ids=[f"{d}:{' '.join(a)[:70]}" for d, a in COMMANDS])
def test_doc_command_parses(
    doc: str, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        original(self, args, namespace)  # exits with 2 on an unknown option
        raise _Parsed

    name, rest = argv[0], argv[1:]
    if name == "emotion-ssl" and rest and rest[0] in ("pretrain", "finetune"):
        from emotion_ssl.cli import main

        with pytest.raises(SystemExit) as exit_info:
            main([*rest, "--print_config"])
        assert exit_info.value.code in (0, None), capsys.readouterr().err[-2000:]
        return
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    try:
        if name == "emotion-ssl":
            from emotion_ssl.cli import main

            main(rest)
        elif name.startswith("data_prep."):
            module = __import__(name, fromlist=["main"])
            module.main(rest)
        else:
            monkeypatch.setattr(sys, "argv", [name, *rest])
            monkeypatch.syspath_prepend(str(REPO))
            runpy.run_path(str(REPO / name), run_name="__main__")
    except _Parsed:
        return
    except SystemExit as err:
        pytest.fail(
            f"{doc}: `{' '.join(argv)}` does not parse (exit {err.code}): "
            f"{capsys.readouterr().err[-1500:]}"
        )
    pytest.fail(f"{doc}: `{' '.join(argv)}` never reached its argument parser")
