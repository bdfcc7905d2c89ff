"""Entry point of an isolated profile: request JSON on stdin, result JSON written to ``argv[1]``."""

from __future__ import annotations

import json
import sys

import torch

from hrvit_nas import atomic_write_text
from hrvit_space import ArchConfig
from profiling.profiler import _profile_here


def main() -> None:
    request = json.loads(sys.stdin.read())
    request["config"] = ArchConfig.from_dict(request["config"])
    request["device"] = torch.device(request["device"])
    request["input_size"] = tuple(request["input_size"])
    result = _profile_here(**request)
    atomic_write_text(sys.argv[1], json.dumps(result.to_dict()))


if __name__ == "__main__":
    main()
