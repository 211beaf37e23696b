"""What `emotion-ssl pretrain` and `finetune` add to LightningCLI: one-line option errors,
usage lines that name the real command, preflight checks, a progress bar that makes sense
for a run counted in updates, and the run folder printed at start and end."""

from __future__ import annotations

import difflib
import re
import sys
from typing import Any, ClassVar, NoReturn

from jsonargparse import set_parsing_settings
from jsonargparse._common import debug_mode_active  # the switch jsonargparse itself reads
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from emotion_ssl.models.config import SettingsError
from emotion_ssl.train.preflight import Preflight, check_manifest_options

# the settings dataclasses document each field in a docstring under it: that is their --help
set_parsing_settings(docstring_parse_attribute_docstrings=True)


class CommandArgumentParser(LightningArgumentParser):
    """A parser whose errors are one line: `error: emotion-ssl pretrain: <problem> (see
    emotion-ssl pretrain --help)`, with the nearest option for a misspelt one. The full
    usage stays in `--help`; JSONARGPARSE_DEBUG=1 gives jsonargparse's own report."""

    command_prog = "emotion-ssl"

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if debug_mode_active() or not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
        text += _suggestion(text, parser)
        sys.stderr.write(f"error: {self.command_prog}: {text} (see {self.command_prog} --help)\n")
        self.exit(2)


def _suggestion(message: str, parser: Any) -> str:
    """`; did you mean --data.train_manifest?` for an unrecognised option."""
    match = re.search(r"unrecognized arguments: (--?[\w.\-]+)", message)
    if match is None:
        return ""
    wrong = match[1].split("=")[0]
    known = [o for action in getattr(parser, "_actions", []) for o in action.option_strings]
    # a name that moved into a settings group: --model.lr -> --model.optim.lr
    section, _, leaf = wrong.rpartition(".")
    moved = [o for o in known if o.startswith(section + ".") and o.endswith("." + leaf)]
    close = moved if len(moved) == 1 else difflib.get_close_matches(wrong, known, n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def update_progress_bar() -> ProgressBar | None:
    """Lightning's rich progress bar with a description that fits runs limited by
    `max_steps` ("Epoch 3, update 30/1000" rather than "Epoch 3/-2"); None without rich."""
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    if not _RICH_AVAILABLE:
        return None  # Lightning's tqdm bar says "Epoch N", which is right
    from lightning.pytorch.callbacks import RichProgressBar

    class UpdateProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            trainer = self.trainer
            text = f"Epoch {current_epoch}"
            if trainer.max_epochs is not None and trainer.max_epochs > 0:
                text += f"/{trainer.max_epochs - 1}"
            if trainer.max_steps is not None and trainer.max_steps > 0:
                text += f", update {trainer.global_step}/{trainer.max_steps}"
            return text

    return UpdateProgressBar()


class EmotionSSLCLI(LightningCLI):
    """LightningCLI for an `emotion-ssl <command>` (set `command` in the subclass)."""

    command: ClassVar[str] = "pretrain"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", CommandArgumentParser)
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        parser.command_prog = f"emotion-ssl {self.command}"  # type: ignore[attr-defined]
        parser.prog = f"emotion-ssl {self.command}"  # usage lines one can paste
        return parser

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        for subcommand_parser in self._subcommand_parsers.values():
            subcommand_parser.prog = f"emotion-ssl {self.command}"  # not "emotion-ssl fit"

    def instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        data = config.get("data")
        if data is not None:  # a missing manifest: one line now, not a traceback later
            check_manifest_options(dict(data.items()))
        try:
            super().instantiate_classes()
        except SettingsError as err:  # e.g. an unknown field in --model.encoder.overrides
            self.parser.error(str(err))

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        callbacks = [*callbacks, Preflight(self.command)]
        listed = config.get("callbacks") or []
        has_bar = any(isinstance(c, ProgressBar) for c in [*callbacks, *listed])
        if config.get("enable_progress_bar", True) is not False and not has_bar:
            bar = update_progress_bar()
            if bar is not None:
                callbacks.append(bar)
        return super()._instantiate_trainer(config, callbacks)
