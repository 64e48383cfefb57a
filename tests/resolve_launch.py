"""Resolve launch command lines the way ``python -m sglang.launch_server`` does, in one process.

Usage: python resolve_launch.py CASES.json OUT.json, where CASES maps a name to the arguments
after ``launch_server``; OUT maps each name to the error its resolution raised (type: message),
or null where it resolved. One process instead of one server start per case: every start pays
15-20 s of imports per process, and a bad launch fails during argument resolution, which this runs in full
(SGLang's plugins loaded, then the same two calls as launch_server).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sglang.srt.plugins import load_plugins
from sglang.srt.server_args import prepare_server_args


def resolve(argv: list[str]) -> str | None:
    try:
        prepare_server_args(argv).resolve_once()
    except Exception as e:  # noqa: BLE001 - the error is the result
        return f"{type(e).__name__}: {e}"
    return None


if __name__ == "__main__":
    cases_path, out_path = sys.argv[1:]
    load_plugins()
    cases = json.loads(Path(cases_path).read_text())
    Path(out_path).write_text(json.dumps({name: resolve(argv) for name, argv in cases.items()}))
