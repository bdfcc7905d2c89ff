"""``hrvit-nas space``: inspect the search space, sample members, validate config files."""

from __future__ import annotations

import argparse

from hrvit_space.config import ArchConfig, read_yaml_file
from hrvit_space.input_size import load_space
from hrvit_space.space import SearchSpace


def register(subparsers: argparse._SubParsersAction) -> None:
    space = subparsers.add_parser("space", help="inspect the search space, sample and validate configs")
    actions = space.add_subparsers(dest="space_command", metavar="ACTION", required=True)

    show = actions.add_parser("show", help="list the knobs, their choices and the space size")
    show.add_argument("--space", help="search-space YAML (default: the built-in space around b1)")
    show.add_argument("--yaml", action="store_true", help="print the space as YAML (a starting point for --space files)")
    show.set_defaults(func=_show)

    sample = actions.add_parser("sample", help="print a random valid member as a YAML config")
    sample.add_argument("--space", help="search-space YAML (default: the built-in space)")
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=_sample)

    validate = actions.add_parser("validate", help="check an architecture config (or search-space) file")
    validate.add_argument("file")
    validate.set_defaults(func=_validate)


def _show(args: argparse.Namespace) -> int:
    space = load_space(args.space)
    if args.yaml:
        print(space.to_yaml(), end="")
        return 0
    base = space.base
    print(f"base: channels {list(base.channels)}, dim_head {base.dim_head}, head {base.head.kind} "
          f"(width {base.head.width}), input {base.input_size[0]}x{base.input_size[1]}")
    width = max(len(knob.name) for knob in space.knobs())
    for knob in space.knobs():
        print(f"  {knob.name:<{width}}  {list(knob.choices)}")
    print(f"{len(space.knobs())} knobs, {space.size():,} members")
    return 0


def _sample(args: argparse.Namespace) -> int:
    config = load_space(args.space).sample(args.seed).replace(name=f"sample-{args.seed}")
    print(config.to_yaml(), end="")
    return 0


def _validate(args: argparse.Namespace) -> int:
    data = read_yaml_file(args.file, "file", "pass the path of a YAML/JSON config or search-space file")
    if isinstance(data, dict) and "windows" in data:
        space = SearchSpace.from_dict(data)
        print(f"ok: search space with {len(space.knobs())} knobs, {space.size():,} members")
    else:
        config = ArchConfig.from_dict(data)
        print(f"ok: {config.name or 'config'} {config.content_hash()} "
              f"({config.num_modules} modules, {config.num_branches} branches)")
    return 0
