"""mmseg-style ``--cfg-options key=value`` overrides of any recipe field.

Values are YAML (``lr=1e-4``, ``crop_size=[256,256]``, ``grad_clip=null``, ``amp=bf16``); a dotted key
reaches into a mapping field (``dataset.root=/data/ade``). The changed recipe is validated like a
recipe file, so a bad value gets the same one-line error.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import yaml

from training.recipe import RecipeError, TrainRecipe


def parse_value(text: str) -> Any:
    """YAML scalar/list/mapping; also numbers YAML 1.1 leaves as strings (``1e-4``)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RecipeError(f"--cfg-options value {text!r} is not valid YAML ({error}); quote it or fix the syntax") from None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_cfg_options(recipe: TrainRecipe, items: Sequence[str]) -> TrainRecipe:
    """``recipe`` with each ``key=value`` of ``items`` applied in order."""
    data = recipe.to_dict()
    fields = [field.name for field in dataclasses.fields(TrainRecipe)]
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"--cfg-options {item!r}: expected KEY=VALUE, e.g. lr=1e-4 or dataset.root=/data/ade")
        name, *path = key.split(".")
        if name not in fields:
            raise RecipeError(f"--cfg-options {key!r}: no recipe field {name!r}; allowed: {', '.join(fields)}")
        if not path:
            data[name] = parse_value(text)
            continue
        target = data[name]
        for part in path[:-1]:
            if not isinstance(target, dict):
                break
            target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise RecipeError(f"--cfg-options {key!r}: recipe field {name} is not a mapping; set it whole ({name}=VALUE)")
        target[path[-1]] = parse_value(text)
    return TrainRecipe.from_dict(data)
