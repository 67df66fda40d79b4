#!/usr/bin/env bash
# TIAToolbox's own environment for benchmarks/anchors (slidefuse never imports it).
#   benchmarks/anchors/install_tiatoolbox.sh VENV_DIR
# TIAToolbox 2.1.3 (the version of the measurement) needs torch < 2.13, so this environment gets torch
# 2.12.x rather than the torch of slidefuse's own environment; wheels only (no source builds).
set -euo pipefail
venv="${1:?usage: $0 VENV_DIR}"
python3 -m venv "$venv"
"$venv/bin/pip" install --upgrade pip
"$venv/bin/pip" install --only-binary=:all: "tiatoolbox==2.1.3" "torch<2.13" torchvision opencv-python-headless
"$venv/bin/python" -c "import tiatoolbox, torch; print('tiatoolbox', tiatoolbox.__version__, 'torch', torch.__version__)"
