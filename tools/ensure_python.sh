#!/usr/bin/env bash
# Create the virtualenv at $2 with interpreter $1; install Debian's python3-venv first if venv is missing.
set -euo pipefail
PY="$1"; VENV="$2"
if [ -z "$PY" ]; then
    echo "slidefuse: no python3 found; install Python 3.11 (Debian/Ubuntu: apt-get install python3 python3-venv)" >&2
    exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    echo "slidefuse: $PY is $("$PY" --version 2>&1); Python >= 3.10 is needed (3.11 recommended)" >&2
    exit 1
fi
if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    echo "slidefuse: '$PY -m venv' failed; installing Debian's python3-venv ..." >&2
    SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    $SUDO apt-get install -y -q --no-install-recommends "python${ver}-venv" || $SUDO apt-get install -y -q python3-venv
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
