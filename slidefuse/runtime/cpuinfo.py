"""The CPU's ISA class: which matrix arithmetic this CPU has, as far as the accuracy gates care.

An accelerated CPU path (bf16, int8) computes differently on different instruction sets: bf16 on a CPU with AMX
runs on native bf16 matrix units, on an AVX-512-BF16 CPU on bf16 dot-product instructions, and is emulated (or
refused) elsewhere. So a gate's result holds for the ISA class of the CPU that measured it, and every gate record
names it. The classes, from the most capable (Linux /proc/cpuinfo flag names):

| class       | flags                                  |
|-------------|----------------------------------------|
| amx         | amx_tile and amx_bf16 (Intel Sapphire Rapids and later) |
| avx512-bf16 | avx512_bf16 (Intel Cooper Lake, AMD Zen 4 and later)    |
| avx512      | avx512f                                |
| avx2        | avx2                                   |
| other       | none of these (older x86, ARM, ...)    |

`this_cpu()` reads /proc/cpuinfo once; where it cannot be read (macOS, Windows) the class is "other" and the model
the platform's processor string, which is said in `source`.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

IsaClass = Literal["amx", "avx512-bf16", "avx512", "avx2", "other"]
ISA_CLASSES: tuple[IsaClass, ...] = ("amx", "avx512-bf16", "avx512", "avx2", "other")  # most capable first
PROC_CPUINFO = Path("/proc/cpuinfo")
# the flags that decide the class, and the ones worth recording beside it
_NOTED = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
          "avx_vnni")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU this process runs on, as the gates record it."""

    model: str  # e.g. "Intel(R) Xeon(R) Platinum 8480+"; "" when not known
    isa: IsaClass  # see the module docstring
    flags: tuple[str, ...]  # the deciding flags present (of `_NOTED`), sorted
    source: str  # where it was read: "/proc/cpuinfo" or "platform" (no flags: class "other")

    def record(self) -> dict[str, str]:
        """The JSON form stored in gate records: {"isa": ..., "cpu_model": ..., "cpu_flags": ...}."""
        return {"isa": self.isa, "cpu_model": self.model, "cpu_flags": " ".join(self.flags)}


def isa_class(flags: frozenset[str] | set[str]) -> IsaClass:
    """The ISA class of a CPU with these /proc/cpuinfo flags (see the module docstring)."""
    if {"amx_tile", "amx_bf16"} <= flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "other"


def parse_cpuinfo(text: str) -> CpuInfo:
    """The CPU described by /proc/cpuinfo's `text`: the first processor's model name and flags (x86: "flags";
    ARM: "Features", whose names never make an x86 class)."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "model name" and not model:
            model = " ".join(value.split())
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model, isa_class(flags), tuple(sorted(f for f in _NOTED if f in flags)), str(PROC_CPUINFO))


@functools.lru_cache(maxsize=1)
def this_cpu() -> CpuInfo:
    """The CPU this process runs on (read once)."""
    try:
        return parse_cpuinfo(PROC_CPUINFO.read_text(errors="replace"))
    except OSError:
        return CpuInfo(platform.processor() or platform.machine(), "other", (), "platform")
