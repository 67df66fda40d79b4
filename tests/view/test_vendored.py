"""OpenSeadragon is vendored at its pinned version with its licence, and the vendored files are the ones the
registry's tarball held (their sha256 in VENDORED.json, written by tools/vendor_openseadragon.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OSD = REPO / "slidefuse" / "view" / "static" / "openseadragon"


def test_vendored_files_match_their_record() -> None:
    r = subprocess.run([sys.executable, str(REPO / "tools" / "vendor_openseadragon.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    record = json.loads((OSD / "VENDORED.json").read_text())
    assert record["version"] == "6.1.1" and "LICENSE.txt" in record["files"]
    assert "OpenSeadragon contributors" in (OSD / "LICENSE.txt").read_text()
    assert "openseadragon.min.js" in record["files"]


def test_check_notices_a_changed_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("vendor_osd", REPO / "tools" / "vendor_openseadragon.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    copy = tmp_path / "osd"
    shutil.copytree(OSD, copy)
    monkeypatch.setattr(mod, "DEST", copy)
    assert mod.check() == 0
    (copy / "openseadragon.min.js").write_text("// changed\n")
    assert mod.check() == 1
