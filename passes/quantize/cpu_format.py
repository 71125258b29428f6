"""`--int8-activations auto`: pick the int8 format ONNX Runtime runs fastest on this CPU.

ORT's integer kernels differ by instruction set, and the format of a QDQ model decides which ones run:
- S8S8 (int8 activations): on x86 ORT rewrites int8 Q/DQ pairs to uint8 only where a Q has a single
  reader, so part of the graph stays in float islands (DQ -> float op -> Q) -- slower than float;
- U8S8 (uint8 activations, int8 weights): every island fuses on x86. Without VNNI the u8*s8 kernels
  (vpmaddubsw) add pairs of products in int16 with saturation, so 8-bit weights overflow
  (255*127*2 > 32767) and 7-bit weights (|w| <= 63) are exact; VNNI (vpdpbusd) accumulates in int32.

DECISION_TABLE is the one place that maps CPU features to a format; each row keeps the measurement
behind it (bench/int8_format_bench.py prints the same flags it reads here).
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FormatRow:
    name: str
    arch: str                  # "x86", "arm" or "any"
    needs_any: tuple           # the row applies when the CPU has any of these flags (empty: always)
    activations: str           # "int8" (S8S8) or "uint8" (U8S8)
    weight_bits: int           # 8, or 7 where u8*s8 pair sums saturate
    why: str
    evidence: str              # the measurement (or its absence) behind the row


# First matching row wins. Latencies: ORT 1.32, 1 thread, median of per-round ratios to the float
# model, graphopt static int8 (min/max) of the PP-OCR models from the rapidocr wheel.
DECISION_TABLE = (
    FormatRow("x86 AMX", "x86", ("amx_int8",), "uint8", 8,
              "AMX / VNNI kernels accumulate u8*s8 in int32 (no saturation); U8S8 fuses every island",
              "not measured on an AMX CPU: AMX CPUs also have AVX-512 VNNI, so the VNNI row's measurement applies"),
    FormatRow("x86 VNNI", "x86", ("avx512_vnni", "avx_vnni"), "uint8", 8,
              "VNNI accumulates u8*s8 in int32, so 8-bit weights are exact; U8S8 fuses every island, S8S8 does not",
              "AMD EPYC, AVX-512 VNNI, 2026-12-07 22:29 UTC, shared and busy machine "
              "(bench/results/int8_format_bench.md; mse ranges, HardSigmoid rewrite and scalar folds), latency / "
              "float (median of 20 interleaved rounds): det S8S8 1.59x, U8S8 8-bit 0.58x, 7-bit 0.61x; cls S8S8 "
              "4.13x (best-of 2.7x), U8S8 8-bit 1.49x, 7-bit 1.59x; rec S8S8 1.96x, U8S8 8-bit 0.55x, 7-bit 0.54x. "
              "7 vs 8 bits: same speed within noise; cosine vs float 7/8-bit: det 0.983/0.980, cls 0.978/0.994, "
              "rec 0.925/0.950, so 8 bits (exact in int32 on VNNI)"),
    FormatRow("x86 AVX2 / AVX-512 without VNNI", "x86", (), "uint8", 7,
              "u8*s8 pair sums saturate in int16 (vpmaddubsw): 7-bit weights stay exact; U8S8 fuses every island",
              "AMD EPYC, AVX2 without VNNI, 2026-11-23 (README int8 table), latency / float (best of 15): "
              "det S8S8 1.78x, U8S8 7-bit 0.92x; cls S8S8 2.43x, U8S8 7-bit 1.34x; rec S8S8 1.85x, U8S8 7-bit "
              "0.83x; 7-bit weights took U8S8 cosine vs float from 0.830/0.805/0.976 to 0.965/0.897/0.978 (cls/rec/det)"),
    FormatRow("ARM with dot product", "arm", ("asimddp", "i8mm"), "int8", 8,
              "ARM's sdot/smmla kernels take signed int8 on both sides; S8S8 is ORT's default format",
              "not measured (no ARM machine here)"),
    FormatRow("fallback", "any", (), "int8", 8,
              "CPU features unknown: S8S8, the ONNX/ORT default, exact on every kernel",
              "no measurement: the safe default"),
)


@dataclass(frozen=True)
class FormatChoice:
    activations: str
    weight_bits: int
    row: FormatRow
    cpu: str

    def to_text(self) -> str:
        form = "U8S8" if self.activations == "uint8" else "S8S8"
        return (f"--int8-activations auto: {form} ({self.activations} activations, {self.weight_bits}-bit weights) "
                f"for '{self.row.name}' ({self.cpu}): {self.row.why}")


def architecture(machine: str | None = None) -> str:
    m = (machine if machine is not None else platform.machine()).lower()
    if m in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "x86"
    if m.startswith(("aarch64", "arm")):
        return "arm"
    return "other"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU feature flags (x86 'flags', ARM 'Features') of the first processor, or None when they
    cannot be read (not Linux, no permission)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return None


def describe_cpu(flags: set[str] | None = None, machine: str | None = None) -> str:
    """One line for reports: architecture and the int8-relevant flags found."""
    arch = architecture(machine)
    if flags is None:
        return f"{platform.machine() or 'unknown'} ({arch}), CPU flags unreadable"
    relevant = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
    have = [f for f in relevant if f in flags]
    return f"{machine or platform.machine()} ({arch}), int8 flags: {' '.join(have) or 'none'}"


def choose_format(flags: set[str] | None, machine: str | None = None) -> FormatChoice:
    """The first DECISION_TABLE row that matches the architecture and flags (the fallback when the
    flags are unknown). x86 rows with no flags listed match any x86 CPU: without VNNI, even SSE-only
    CPUs run ORT's u8*s8 kernels with int16 pair sums, so the 7-bit rule holds there too."""
    arch = architecture(machine)
    for row in DECISION_TABLE:
        if row.arch == "any":
            return FormatChoice(row.activations, row.weight_bits, row, describe_cpu(flags, machine))
        if flags is None or row.arch != arch:
            continue
        if not row.needs_any or any(f in flags for f in row.needs_any):
            return FormatChoice(row.activations, row.weight_bits, row, describe_cpu(flags, machine))
    raise AssertionError("DECISION_TABLE ends with a fallback row")


def resolve(activations: str, weight_bits: int | None = None) -> tuple[str, int | None, FormatChoice | None]:
    """(activations, weight_bits, choice) for an --int8-activations value: 'auto' reads this CPU;
    'int8'/'uint8' are forced (weight bits then follow apply_static's rule unless given)."""
    if activations != "auto":
        return activations, weight_bits, None
    choice = choose_format(cpu_flags())
    return choice.activations, weight_bits if weight_bits is not None else choice.weight_bits, choice
