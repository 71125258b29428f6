"""What every benchmark report shares: the machine it ran on, and the file written whole or not at all."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_line() -> str:
    """The CPU model and the flags that decide which kernels are fast (AVX2, AVX-512, VNNI, AMX, dot
    product), for the header of every benchmark table."""
    from graphopt.passes.quantize.cpu_format import cpu_flags, describe_cpu
    return f"{cpu_model()}; {describe_cpu(cpu_flags())}"


def write_report(text: str, path) -> None:
    """`text` into `path` (its folder made if needed) through a temporary file renamed over it, so
    an interrupted run never leaves a half-written table or JSON under the real name."""
    path = str(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
