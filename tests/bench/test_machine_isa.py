"""The CPU's ISA in machine_info: flags parsed from /proc/cpuinfo text (fake texts of real CPUs), the one-line
summary, harmless results without x86 flags, and the real machine's flags against numpy's own CPU detection."""

from __future__ import annotations

import platform

import pytest

from slidefuse.bench import machine

# the first lines of /proc/cpuinfo on a Sapphire Rapids Xeon (flags shortened to the ones that matter + neighbours)
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2 avx512f avx512dq avx512cd avx512bw \
avx512vl avx_vnni avx512_bf16 avx512vbmi avx512_vnni avx512_bitalg avx512_fp16 amx_bf16 amx_tile amx_int8 arch_lbr
bogomips\t: 4000.00

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse
"""
HASWELL = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 popcnt avx f16c rdrand avx2 bmi1 bmi2
"""
ALDER_LAKE = """model name\t: 12th Gen Intel(R) Core(TM) i7-12700
flags\t\t: sse4_2 avx f16c fma avx2 avx_vnni
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""


def test_isa_of_a_sapphire_rapids_cpuinfo() -> None:
    isa = machine.cpu_isa(SAPPHIRE_RAPIDS)
    assert set(isa) == set(machine.ISA_FLAGS)
    on = {f for f, v in isa.items() if v}
    assert on == {"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                  "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"}
    assert machine.isa_summary(isa) == "AVX2 FMA AVX-512 VNNI BF16 FP16, AMX INT8 BF16"
    assert machine.cpu_model(SAPPHIRE_RAPIDS) == "Intel(R) Xeon(R) Platinum 8480+"


def test_isa_of_older_and_client_cpus() -> None:
    haswell = machine.cpu_isa(HASWELL)
    assert haswell["avx2"] and haswell["fma"] and not haswell["avx512f"] and not haswell["avx512_vnni"]
    assert machine.isa_summary(haswell) == "AVX2 FMA, no AMX"
    # 256-bit VNNI only: named apart from AVX-512 VNNI
    assert machine.isa_summary(machine.cpu_isa(ALDER_LAKE)) == "AVX2 FMA AVX-VNNI, no AMX"
    assert machine.isa_summary(machine.cpu_isa("flags\t: fpu sse sse2\n")) == "no AVX2, no AMX"


@pytest.mark.parametrize("text", [ARM, ""])
def test_no_x86_flags_is_harmless(text: str) -> None:
    assert machine.cpu_flags(text) == set()
    assert machine.cpu_isa(text) == {}
    assert machine.isa_summary({}) is None


def test_machine_info_records_model_and_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    real_read = machine._read
    monkeypatch.setattr(machine, "_read", lambda path: SAPPHIRE_RAPIDS if path == "/proc/cpuinfo"
                        else real_read(path))
    monkeypatch.setattr(machine, "gpu_name", lambda: None)
    info = machine.machine_info()
    assert info["cpu"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["cpu_isa"]["amx_int8"] is True and info["cpu_isa"]["avx512_fp16"] is True
    assert info["cpu_isa_summary"] == "AVX2 FMA AVX-512 VNNI BF16 FP16, AMX INT8 BF16"
    monkeypatch.setattr(machine, "_read", lambda path: ARM if path == "/proc/cpuinfo" else real_read(path))
    info = machine.machine_info()
    assert info["cpu_isa"] == {} and info["cpu_isa_summary"] is None


def test_real_flags_agree_with_numpy_cpu_detection() -> None:
    """numpy detects the CPU's features itself (cpuid + OS support); where both see x86 flags they must agree."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86 Linux only: /proc/cpuinfo flags")
    features = pytest.importorskip("numpy._core._multiarray_umath").__cpu_features__
    isa = machine.cpu_isa()
    assert isa, "an x86 Linux /proc/cpuinfo has a flags line"
    pairs = {"avx": "AVX", "avx2": "AVX2", "fma": "FMA3", "f16c": "F16C", "avx512f": "AVX512F",
             "avx512bw": "AVX512BW", "avx512vl": "AVX512VL", "avx512dq": "AVX512DQ", "avx512_vnni": "AVX512VNNI",
             "avx512_bf16": "AVX512BF16", "avx512_fp16": "AVX512FP16"}
    pairs = {f: k for f, k in pairs.items() if k in features}  # names this numpy knows
    assert {f: isa[f] for f in pairs} == {f: bool(features[k]) for f, k in pairs.items()}
