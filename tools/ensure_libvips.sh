#!/usr/bin/env bash
# Make sure pyvips finds a libvips that has the OpenSlide loader; install Debian's libvips42 if not.
# Usage: tools/ensure_libvips.sh PYTHON
set -euo pipefail
PY="${1:-python3}"
check() {
    "$PY" - <<'PYEOF' 2>/dev/null
import pyvips
raise SystemExit(0 if pyvips.type_find("VipsOperation", "openslideload") != 0 else 1)
PYEOF
}
if check; then
    exit 0
fi
echo "slidefuse: pyvips cannot find libvips with OpenSlide; installing Debian's libvips42 ..." >&2
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null; then SUDO="sudo"; else
        echo "slidefuse: not root and no sudo: install libvips42 (Debian/Ubuntu: apt-get install libvips42) and rerun" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends libvips42
if ! check; then
    echo "slidefuse: libvips42 installed but pyvips still cannot load OpenSlide slides" >&2
    exit 1
fi
