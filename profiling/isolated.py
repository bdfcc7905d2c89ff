"""Entry point of an isolated profile: request JSON on stdin, result JSON written to ``argv[1]``;
``--progress`` shows the progress line on the (inherited) stderr."""

from __future__ import annotations

import json
import sys

from hrvit_nas import atomic_write_text
from profiling.profiler import ProfileRequest, _profile_here


def main() -> None:
    request = ProfileRequest.from_dict(json.loads(sys.stdin.read()))
    result = _profile_here(request, progress="--progress" in sys.argv[2:])
    atomic_write_text(sys.argv[1], json.dumps(result.to_dict()))


if __name__ == "__main__":
    main()
