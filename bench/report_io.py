"""Writing a benchmark's report file: whole or not at all."""
from __future__ import annotations

import os
from pathlib import Path


def write_report(text: str, path) -> None:
    """`text` into `path` (its folder made if needed) through a temporary file renamed over it, so
    an interrupted run never leaves a half-written table or JSON under the real name."""
    path = str(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
