"""Settings dataclasses in a LightningModule's hyper-parameters: stored as plain dicts (a
checkpoint then loads with `torch.load(weights_only=True)`), rebuilt from them by
`load_from_checkpoint`."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

S = TypeVar("S")


def settings_copy(kind: type[S], value: S | dict[str, Any]) -> S:
    """A copy of a settings dataclass (a signature's default is one shared instance), or one
    built from the plain dict a checkpoint's hyper-parameters hold."""
    if isinstance(value, dict):
        return kind(**value)
    return dataclasses.replace(value)  # type: ignore[type-var]


def settings_dict(settings: Any) -> dict[str, Any]:
    """A settings dataclass's constructor arguments as a plain dict (any state left out)."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.init}
