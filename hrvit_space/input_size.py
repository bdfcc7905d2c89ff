"""Input sizes as users give them, and the built-in space or a preset fitted to one.

One parser for every ``--input``-like option (profile, search, train, demo); the fitting says on
stderr what it clipped, so a small input just works and the user still sees what changed.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from hrvit_nas import UserError
from hrvit_space.config import ArchConfig, preset
from hrvit_space.space import SearchSpace


def parse_input_size(text: str, flag: str = "--input") -> tuple[int, int]:
    """``512x512`` (or ``512,512``) or ``512`` -> (512, 512); ``flag`` names the option in the error."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", text)
    if not match or int(match.group(1)) <= 0 or (match.group(2) is not None and int(match.group(2)) <= 0):
        raise UserError(f"{flag} {text!r} is malformed; give HEIGHTxWIDTH with positive integers, e.g. 512x512")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def load_space(path: str | None, input_size: tuple[int, int] | None = None) -> SearchSpace:
    """``--space FILE`` at ``input_size`` (its windows must fit), or the built-in space with its window
    choices clipped to the feature maps (said in one line on stderr), so small inputs just work."""
    if path:
        space = SearchSpace.load(path)
        return space if input_size is None else space.with_input_size(input_size)
    if input_size is None:
        return SearchSpace.default()
    return _noted(SearchSpace.default().fit_to_input(input_size))


def load_preset(name: str, input_size: tuple[int, int] | None = None) -> ArchConfig:
    """Preset ``name`` at ``input_size``, its windows clipped to the feature maps (said on stderr)."""
    config = preset(name)
    return config if input_size is None else _noted(config.fit_to_input(input_size))


def _noted(fitted: tuple[Any, str | None]) -> Any:
    value, note = fitted
    if note:
        print(f"note: {note}", file=sys.stderr)
    return value
