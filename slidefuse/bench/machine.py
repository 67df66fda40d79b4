"""What a benchmark ran on (CPU, RAM, GPU, software versions, load) and the peak arithmetic rate it is set
against.

GPU peaks come from a small table of vendor datasheet figures (dense, no sparsity). The CPU peak is an
estimate: cores x FLOPs per cycle (from the widest vector FMA the CPU advertises, assuming two FMA pipes)
x the clock read from /proc/cpuinfo; boost clocks, AVX frequency offsets and SMT make the true figure
differ, so reports call it an estimate. Nothing here imports torch: the GPU is named by torch only when the
caller has already imported it, else by `nvidia-smi` when that exists.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from slidefuse.runtime.cores import usable_cores

log = logging.getLogger(__name__)

PACKAGES = ("slidefuse", "numpy", "torch", "onnxruntime", "openvino", "onnx", "timm", "pyvips")


@dataclass(frozen=True)
class GpuPeak:
    """Dense peak TFLOP/s of one GPU model, per precision (vendor datasheet, no structured sparsity)."""

    match: str  # substring of the device name (upper case) that selects this row
    name: str  # the datasheet's name of the part
    fp32: float  # FP32 on CUDA cores
    tf32: float  # TF32 on tensor cores (dense)
    fp16: float  # FP16 on tensor cores (dense)
    bf16: float  # BF16 on tensor cores (dense)
    source: str  # where the figures come from


# Order matters: the first row whose `match` is in the device name wins (more specific rows first).
GPU_PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak("H100 PCIE", "H100 PCIe", 51.2, 378.0, 756.0, 756.0, "NVIDIA H100 datasheet (dense)"),
    GpuPeak("H100 NVL", "H100 NVL", 60.0, 418.0, 835.0, 835.0, "NVIDIA H100 datasheet (dense)"),
    GpuPeak("H100", "H100 SXM", 67.0, 494.0, 989.0, 989.0, "NVIDIA H100 datasheet (dense)"),
    GpuPeak("H200", "H200 SXM (H100 compute, HBM3e)", 67.0, 494.0, 989.0, 989.0, "NVIDIA H200 datasheet (dense)"),
    GpuPeak("GH200", "GH200", 67.0, 494.0, 989.0, 989.0, "NVIDIA GH200 datasheet (dense)"),
    GpuPeak("A100", "A100", 19.5, 156.0, 312.0, 312.0, "NVIDIA A100 datasheet (dense)"),
    GpuPeak("L40S", "L40S", 91.6, 183.0, 362.0, 362.0, "NVIDIA L40S datasheet (dense)"),
    GpuPeak("L4", "L4", 30.3, 60.0, 121.0, 121.0, "NVIDIA L4 datasheet (dense)"),
)


@dataclass(frozen=True)
class Peak:
    """The peak a measurement is set against."""

    tflops: float | None  # peak TFLOP/s for the precision that ran; None when unknown
    device: str  # device it applies to
    precision: str  # "fp32", "tf32", "fp16", "bf16"
    source: str  # datasheet row or how the estimate was made
    estimate: bool  # True for the CPU (derived, not a datasheet figure)
    alt_tflops: dict[str, float] | None = None  # other peaks worth comparing (fp32 on a GPU: the TF32 one)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model(cpuinfo: str | None = None) -> str:
    """CPU model name from /proc/cpuinfo (Linux; or the `cpuinfo` text given), else platform.processor()."""
    text = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else (platform.processor() or platform.machine())


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The x86 feature flags of the first CPU in /proc/cpuinfo (or the `cpuinfo` text given); empty when there
    is no `flags` line (not Linux, or not x86)."""
    text = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    return set(m.group(1).split()) if m else set()


# /proc/cpuinfo flags that decide which CPU inference kernels can run (oneDNN / MLAS / OpenVINO pick by them)
ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c",  # AVX2 + FMA: the fp32 baseline of x86-64-v3
    "avx512f", "avx512bw", "avx512vl", "avx512dq",  # AVX-512 (int8 kernels need bw / vl)
    "avx512_vnni", "avx_vnni",  # int8 dot products (VNNI on 512 / 256-bit vectors)
    "avx512_bf16", "avx512_fp16", "avx_ne_convert",  # bf16 / fp16 arithmetic and conversion
    "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",  # AMX tile matrix units (Sapphire Rapids and later)
)


def cpu_isa(cpuinfo: str | None = None) -> dict[str, bool]:
    """ISA_FLAGS -> whether the CPU advertises it, from /proc/cpuinfo (or the `cpuinfo` text given); an empty
    dict where there are no x86 flags to read (not Linux, or another architecture)."""
    flags = cpu_flags(cpuinfo)
    return {f: f in flags for f in ISA_FLAGS} if flags else {}


def isa_summary(isa: dict[str, bool]) -> str | None:
    """One line for a report, e.g. "AVX2 FMA AVX-512 VNNI BF16, no AMX" (None for an empty `isa`): the widest
    vectors, int8 dot products (VNNI; AVX-VNNI when only the 256-bit form exists), bf16 / fp16 arithmetic and
    the AMX units."""
    if not isa:
        return None
    parts = [name for flag, name in (("avx2", "AVX2"), ("fma", "FMA"), ("avx512f", "AVX-512")) if isa.get(flag)]
    if isa.get("avx512_vnni"):
        parts.append("VNNI")
    elif isa.get("avx_vnni"):
        parts.append("AVX-VNNI")
    parts += [name for flag, name in (("avx512_bf16", "BF16"), ("avx512_fp16", "FP16")) if isa.get(flag)]
    amx = [name for flag, name in (("amx_int8", "INT8"), ("amx_bf16", "BF16"), ("amx_fp16", "FP16"))
           if isa.get(flag)]
    vectors = " ".join(parts) or "no AVX2"
    if not isa.get("amx_tile"):
        return f"{vectors}, no AMX"
    return f"{vectors}, AMX" + (f" {' '.join(amx)}" if amx else "")


def cpu_mhz() -> float | None:
    """The highest clock the OS reports: lscpu's 'CPU max MHz' if present, else the largest 'cpu MHz'."""
    if shutil.which("lscpu"):
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, check=False).stdout
            m = re.search(r"^CPU max MHz:\s*([\d.]+)", out, re.M)
            if m and float(m.group(1)) > 0:
                return float(m.group(1))
        except (OSError, subprocess.SubprocessError):
            pass
    found = [float(x) for x in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", _read("/proc/cpuinfo"), re.M)]
    return max(found) if found else None


def cpu_peak() -> Peak:
    """Estimated fp32 peak of the CPUs this process may use: cores x FLOP/cycle x clock.

    FLOP/cycle per core assumes two FMA pipes of the widest vector the CPU advertises (AVX-512: 2 x 16 lanes
    x 2 = 64; AVX2+FMA: 2 x 8 x 2 = 32; AVX: 16; SSE: 8). Many CPUs run AVX-512 on one pipe or at a lower
    clock, so this is an upper estimate."""
    flags = cpu_flags()
    if "avx512f" in flags:
        isa, per_cycle = "AVX-512 (2 FMA pipes x 16 fp32 lanes x 2)", 64
    elif "avx2" in flags and "fma" in flags:
        isa, per_cycle = "AVX2+FMA (2 FMA pipes x 8 fp32 lanes x 2)", 32
    elif "avx" in flags:
        isa, per_cycle = "AVX (8 fp32 lanes, mul + add)", 16
    else:
        isa, per_cycle = "SSE (4 fp32 lanes, mul + add)", 8
    mhz = cpu_mhz()
    cores = usable_cores()
    device = f"{cpu_model()} ({cores} cores)"
    if mhz is None:
        return Peak(None, device, "fp32", f"{isa}; clock unknown", True)
    tflops = cores * per_cycle * mhz * 1e6 / 1e12
    return Peak(tflops, device, "fp32", f"estimate: {cores} cores x {per_cycle} FLOP/cycle [{isa}] x {mhz:.0f} MHz",
                True)


def gpu_peak(device_name: str, precision: str) -> Peak:
    """Datasheet peak of a GPU by name for `precision` ("fp32", "tf32", "fp16", "bf16"); tflops None when the
    GPU is not in GPU_PEAKS. For fp32, `alt_tflops` carries the TF32 tensor-core peak: PyTorch lets cuDNN
    convolutions use TF32 by default, so an fp32 run can exceed the plain fp32 figure."""
    upper = device_name.upper()
    row = next((r for r in GPU_PEAKS if r.match in upper), None)
    if row is None:
        return Peak(None, device_name, precision, f"'{device_name}' is not in the peak table", False)
    value = {"fp32": row.fp32, "tf32": row.tf32, "fp16": row.fp16, "bf16": row.bf16}.get(precision)
    alt = {"tf32": row.tf32} if precision == "fp32" else None
    return Peak(value, f"{row.name} ({device_name})", precision, row.source, False, alt)


def gpu_name() -> str | None:
    """Name of CUDA device 0: from torch if the caller imported it, else nvidia-smi; None when there is none."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return str(torch.cuda.get_device_name(0))
        except Exception:  # a broken CUDA install must not break a CPU benchmark
            log.debug("torch.cuda query failed", exc_info=True)
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=False).stdout.strip()
            return out.splitlines()[0].strip() if out else None
        except (OSError, subprocess.SubprocessError):
            return None
    return None


def ram_gib() -> float | None:
    m = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    return int(m.group(1)) / 2**20 if m else None


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that matter to a benchmark (None: not installed); read from the
    package metadata, so nothing is imported."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model and ISA (`cpu_isa`, `isa_summary`; empty / None off x86 Linux), cores, RAM, GPU, OS, package
    versions, load average and UTC time, for a benchmark's JSON."""
    isa = cpu_isa()
    return {
        "cpu": cpu_model(),
        "cpu_isa": isa,
        "cpu_isa_summary": isa_summary(isa),
        "cores": usable_cores(),
        "cpu_mhz": cpu_mhz(),
        "ram_gib": round(ram_gib() or 0.0, 1) or None,
        "gpu": gpu_name(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions(),
        "load_average": load_average(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def rss_mib() -> float | None:
    """Current resident set size of this process in MiB (Linux /proc), None elsewhere."""
    m = re.search(r"^VmRSS:\s*(\d+) kB", _read("/proc/self/status"), re.M)
    return int(m.group(1)) / 1024 if m else None


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (it only grows)."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20
