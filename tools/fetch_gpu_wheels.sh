#!/usr/bin/env bash
# Download, here, the wheels the borrowed GPU machine lacks (Python 3.12, x86_64, no network there) into .whl/,
# which `make gpu-check` installs there first. Pass `.whl` in the device call's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
py=${PYTHON:-.venv/bin/python}
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for pkg in pyvips pyvips-binary cffi pycparser shapely h5py; do
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${plat[@]}" -d .whl "$pkg"
done
ls -la .whl
