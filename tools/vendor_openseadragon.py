"""Vendor OpenSeadragon into slidefuse/view/static/openseadragon/ from the npm registry, at a pinned version.

    python tools/vendor_openseadragon.py           # npm pack, check the tarball's sha256, unpack what the viewer uses
    python tools/vendor_openseadragon.py --check   # check the vendored files against VENDORED.json (no network)

The viewer uses `build/openseadragon/openseadragon.min.js`, its button images and LICENSE.txt; VENDORED.json
records the version, the tarball's sha256 and each vendored file's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "6.1.1"
TARBALL_SHA256 = "b4ab2942f33b90e0448e4d20fc5ed14cee049f1f3ae49d70afd4b05e9a2f92d0"  # openseadragon-6.1.1.tgz
DEST = Path(__file__).resolve().parents[1] / "slidefuse" / "view" / "static" / "openseadragon"
RECORD = "VENDORED.json"
KEEP = ("package/LICENSE.txt", "package/build/openseadragon/openseadragon.min.js")
KEEP_DIR = "package/build/openseadragon/images/"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def vendor() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", f"openseadragon@{VERSION}", "--silent"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        tgz = Path(tmp) / f"openseadragon-{VERSION}.tgz"
        digest = _sha256(tgz.read_bytes())
        if digest != TARBALL_SHA256:
            sys.exit(f"openseadragon-{VERSION}.tgz has sha256 {digest}, expected {TARBALL_SHA256}: not vendored")
        if DEST.exists():
            shutil.rmtree(DEST)
        files: dict[str, str] = {}
        with tarfile.open(tgz) as tar:
            for m in tar.getmembers():
                if not m.isfile() or not (m.name in KEEP or (m.name.startswith(KEEP_DIR) and "/" not in
                                                             m.name[len(KEEP_DIR):])):
                    continue
                rel = Path(m.name).name if m.name in KEEP else "images/" + Path(m.name).name
                data = tar.extractfile(m).read()  # type: ignore[union-attr]
                (DEST / rel).parent.mkdir(parents=True, exist_ok=True)
                (DEST / rel).write_bytes(data)
                files[rel] = _sha256(data)
    record = {"package": "openseadragon", "version": VERSION, "source": "npm registry (npm pack)",
              "tarball_sha256": TARBALL_SHA256, "files": dict(sorted(files.items()))}
    (DEST / RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"vendored openseadragon {VERSION}: {len(files)} files into {DEST}")


def check() -> int:
    record = json.loads((DEST / RECORD).read_text(encoding="utf-8"))
    bad = [rel for rel, digest in record["files"].items()
           if not (DEST / rel).is_file() or _sha256((DEST / rel).read_bytes()) != digest]
    if record["version"] != VERSION:
        bad.append(f"version {record['version']} (expected {VERSION})")
    if bad:
        print(f"vendored openseadragon differs from {RECORD}: {', '.join(bad)}; re-run {Path(__file__).name}")
        return 1
    print(f"openseadragon {VERSION}: {len(record['files'])} files match {RECORD}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="check the vendored files, fetch nothing")
    sys.exit(check() if ap.parse_args().check else vendor())
