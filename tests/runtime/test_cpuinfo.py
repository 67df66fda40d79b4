"""The CPU's ISA class (`slidefuse.runtime.cpuinfo`) from /proc/cpuinfo text, with fake texts of each class."""

from __future__ import annotations

import pytest

from slidefuse.bench.machine import cpu_model
from slidefuse.runtime import cpuinfo
from slidefuse.runtime.cpuinfo import CpuInfo, isa_class, parse_cpuinfo, this_cpu

BASE = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx"


def _text(model: str, flags: str, processors: int = 2) -> str:
    block = f"processor\t: {{i}}\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
    return "".join(block.format(i=i) for i in range(processors))


@pytest.mark.parametrize(("flags", "expected"), [
    (f"{BASE} avx2 fma avx512f avx512_bf16 avx512_vnni amx_tile amx_bf16 amx_int8", "amx"),
    (f"{BASE} avx2 fma avx512f avx512_bf16 avx512_vnni", "avx512-bf16"),
    (f"{BASE} avx2 fma avx512f avx512_vnni", "avx512"),
    (f"{BASE} avx2 fma avx_vnni", "avx2"),
    (BASE, "other"),
    (f"{BASE} avx2 amx_tile", "avx2"),  # AMX tiles without bf16 units are not the amx class
])
def test_isa_class_from_flags(flags: str, expected: str) -> None:
    info = parse_cpuinfo(_text("Intel(R) Xeon(R) Platinum  8480+", flags))
    assert info.isa == expected
    assert info.model == "Intel(R) Xeon(R) Platinum 8480+"  # blanks collapsed
    assert set(info.flags) <= set(flags.split()) and list(info.flags) == sorted(info.flags)
    assert info.record() == {"isa": expected, "cpu_model": info.model, "cpu_flags": " ".join(info.flags)}


def test_arm_features_never_make_an_x86_class() -> None:
    text = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 bf16 sve\n"
    info = parse_cpuinfo(text)
    assert (info.isa, info.model, info.flags) == ("other", "", ())


def test_the_first_processor_counts_and_empty_text_is_other() -> None:
    text = _text("First", f"{BASE} avx2", 1) + _text("Second", f"{BASE} avx2 avx512f", 1)
    assert (parse_cpuinfo(text).model, parse_cpuinfo(text).isa) == ("First", "avx2")
    assert parse_cpuinfo("") == CpuInfo("", "other", (), "/proc/cpuinfo")
    assert isa_class(set()) == "other"


def test_this_cpu_reads_proc_cpuinfo_or_says_it_could_not(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    here = this_cpu()
    assert here.isa in cpuinfo.ISA_CLASSES
    if cpuinfo.PROC_CPUINFO.is_file():
        assert here.model == cpu_model()  # the benchmarks' own reader of the same file agrees
    this_cpu.cache_clear()
    monkeypatch.setattr(cpuinfo, "PROC_CPUINFO", tmp_path / "absent")
    try:
        missing = this_cpu()
        assert (missing.isa, missing.flags, missing.source) == ("other", (), "platform")
    finally:
        this_cpu.cache_clear()
