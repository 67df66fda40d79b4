"""The image's build files agree with the package: requirement sets per target against setup.cfg, and the
Dockerfile's promises (base, targets, non-root user, healthcheck, no onnxruntime next to onnxruntime-gpu).
The images themselves are built and run by `make image-test` (tools/image/image.sh)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _names(lines: list[str]) -> dict[str, str]:
    """requirement name (lower case, without extras) -> the full requirement line."""
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            out[re.split(r"[\[<>=!;~ ]", line, maxsplit=1)[0].lower()] = line
    return out


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _requirements(target: str) -> dict[str, str]:
    return _names((ROOT / "tools" / "image" / f"requirements-{target}.txt").read_text().splitlines())


def test_cpu_requirements_are_setup_cfg_install_requires_and_openvino() -> None:
    cfg = _setup_cfg()
    base = _names(cfg["options"]["install_requires"].splitlines())
    openvino = _names(cfg["options.extras_require"]["openvino"].splitlines())
    view = _names(cfg["options.extras_require"]["view"].splitlines())
    embed = _names(cfg["options.extras_require"]["embed"].splitlines())
    assert _requirements("cpu") == {**base, **openvino, **view, **embed}


def test_gpu_requirements_swap_onnxruntime_for_onnxruntime_gpu_and_pin_tensorrt_10() -> None:
    cfg = _setup_cfg()
    base = _names(cfg["options"]["install_requires"].splitlines())
    gpu = _requirements("gpu")
    assert "onnxruntime" not in gpu and gpu["onnxruntime-gpu"].startswith("onnxruntime-gpu[cuda,cudnn]")
    assert {k: v for k, v in gpu.items() if k in base} == {k: v for k, v in base.items() if k != "onnxruntime"}
    view = _names(cfg["options.extras_require"]["view"].splitlines())
    embed = _names(cfg["options.extras_require"]["embed"].splitlines())
    assert {k: v for k, v in gpu.items() if k in {**view, **embed}} == {**view, **embed}
    assert _requirements("tensorrt") == {"tensorrt-cu12": "tensorrt-cu12>=10,<11"}
    trt = _names(cfg["options.extras_require"]["trt"].splitlines())
    assert trt["tensorrt"] == "tensorrt>=10,<11" and gpu["cuda-python"] == trt["cuda-python"]


def test_dockerfile_targets_user_and_checks() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim-bookworm$", text, re.M)
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, re.M)
    assert {"cpu", "gpu"} <= set(stages) and stages[-1] == "gpu"  # gpu is the default target
    assert re.search(r"^USER slidefuse$", text, re.M) and "useradd --uid 1000" in text
    assert "HEALTHCHECK" in text and text.count("RUN slidefuse-smoke") == 2
    assert "pip install -q --no-deps /src" in text and "org.opencontainers.image.title" in text


def test_dockerignore_keeps_big_folders_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*") + 1:].count("!slidefuse") == 1 and "!.venv" not in lines and "!.cache" not in lines
