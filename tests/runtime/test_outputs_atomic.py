"""Atomic writes: a writer that fails or is killed with SIGKILL never leaves a truncated file under a final
name; report.json (the completion record) only exists when every output it lists is complete; a rerun
completes and leaves no temporary files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from slidefuse.atomic import atomic_path, find_temporaries, write_json_atomic
from slidefuse.runtime.outputs import clean_temporaries, write_outputs

from .test_outputs_common import blobby_mask, current, make_bundle, make_result, make_slide


def test_atomic_path_renames_on_success_and_keeps_the_old_file_on_error(tmp_path) -> None:
    final = tmp_path / "a.json"
    write_json_atomic(final, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text('{"v": 2, "trunc')
        raise RuntimeError("writer died")
    assert json.loads(final.read_text()) == {"v": 1}
    assert find_temporaries(tmp_path) == []


def test_clean_temporaries_removes_only_partials(tmp_path) -> None:
    (tmp_path / "mask.tif.partial").write_bytes(b"II*\0")
    (tmp_path / "mask.geojson").write_text("{}")
    removed = clean_temporaries(tmp_path)
    assert [p.name for p in removed] == ["mask.tif.partial"]
    assert [p.name for p in tmp_path.iterdir()] == ["mask.geojson"]
    assert clean_temporaries(tmp_path / "absent") == []


def test_a_failing_writer_leaves_no_final_file_and_no_report(tmp_path, monkeypatch) -> None:
    import slidefuse.runtime.outputs.geojson as geojson

    result = make_result(blobby_mask(200, 300), tmp_path / "m.raw", mpp=1.0)
    slide, bundle, out = make_slide(600, 400, 0.5), make_bundle(tmp_path), tmp_path / "o"
    write_outputs(result, slide, bundle, out)
    assert current(out)

    def boom(*args, **kwargs):
        with atomic_path(out / "mask.geojson") as tmp:
            tmp.write_text('{"type": "FeatureCollection", "features": [')
            raise MemoryError("killed half-way")

    monkeypatch.setattr(geojson, "write_geojson", boom)
    with pytest.raises(MemoryError):
        write_outputs(result, slide, bundle, out)
    assert not (out / "report.json").exists()  # the old report was withdrawn before rewriting
    assert not current(out)
    json.loads((out / "mask.geojson").read_text())  # the previous, complete file
    assert find_temporaries(out) == []


CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from pathlib import Path
    import numpy as np
    from slidefuse.runtime.bundle import Bundle, ClassInfo, Manifest
    from slidefuse.runtime.types import LevelInfo, MaskResult, SlideInfo
    from slidefuse.runtime.outputs import write_outputs

    raw, w, h = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    out, target = Path(sys.argv[4]), sys.argv[5]

    def kill_when_started() -> None:
        # SIGKILL this process as soon as `target` is being written (its .partial holds some bytes).
        partial = out / (target + ".partial")
        while True:
            try:
                if partial.stat().st_size > 0:
                    os.kill(os.getpid(), signal.SIGKILL)
            except FileNotFoundError:
                pass
            time.sleep(0.0005)

    threading.Thread(target=kill_when_started, daemon=True).start()
    classes = (ClassInfo("background", (0, 0, 0)), ClassInfo("tumour", (220, 40, 40)),
               ClassInfo("stroma", (40, 110, 220)))
    manifest = Manifest(encoder="tiny-vit", patch_size=16, tile_size=512, mpp=1.0, classes=classes,
                        mean=(0.5,) * 3, std=(0.5,) * 3)
    bundle = Bundle(path=Path("bundle"), manifest=manifest, digest="d" * 64)
    slide = SlideInfo(path=Path("/data/big.svs"), width=2 * w, height=2 * h, mpp=0.5, mpp_source="user",
                      vendor="aperio", loader="openslideload", levels=(LevelInfo(2 * w, 2 * h, 1.0),))
    counts = np.bincount(np.fromfile(raw, np.uint8), minlength=3)
    result = MaskResult(raw_path=raw, mask_width=w, mask_height=h, mpp=1.0, class_pixels=counts,
                        tissue=np.ones((h // 16, w // 16), bool),
                        thumbnail=np.full((h // 16, w // 16, 3), 230, np.uint8),
                        tile_counts={"grid": 1, "tissue": 1, "run": 1}, timings={"total": 1.0}, backend={})
    print("start", flush=True)
    write_outputs(result, slide, bundle, out)
    print("done", flush=True)
    """
)


def _check_finals(out: Path, mask: np.ndarray) -> None:
    """Every file under a final name is complete; report.json only when all outputs are complete."""
    import pyvips
    from PIL import Image

    if (out / "mask.tif").exists():
        img = pyvips.Image.new_from_file(str(out / "mask.tif"))
        assert (img.width, img.height) == (mask.shape[1], mask.shape[0])
        np.testing.assert_array_equal(img.numpy()[::97, ::89], mask[::97, ::89])
        img.avg()  # decodes every tile: raises on a truncated file
    if (out / "mask.geojson").exists():
        assert json.loads((out / "mask.geojson").read_text())["features"]
    for name in ("preview.png", "tissue.png"):
        if (out / name).exists():
            with Image.open(out / name) as im:
                im.load()
    if (out / "report.json").exists():
        json.loads((out / "report.json").read_text())
        assert current(out)


def test_sigkill_mid_write_leaves_nothing_truncated_and_a_rerun_completes(tmp_path) -> None:
    h, w = 1600, 2400
    mask = blobby_mask(h, w, seed=7)
    raw = tmp_path / "m.raw"
    mask.tofile(raw)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    killed = []
    out = tmp_path / "out"
    # Kill in the middle of writing each output in turn; the folder keeps whatever each killed run left,
    # as it would between real reruns.
    for target in ("mask.tif", "mask.geojson", "preview.png", "report.json"):
        for _attempt in range(6):  # a loaded machine can let a small, fast write finish before the watcher looks
            proc = subprocess.run(
                [sys.executable, str(script), str(raw), str(w), str(h), str(out), target],
                capture_output=True, text=True, env=env, timeout=120,
            )
            assert proc.stdout.startswith("start"), proc.stderr
            if proc.returncode == -signal.SIGKILL:
                killed.append(target)
                assert not (out / "report.json").exists()  # killed before the completion record
            else:  # the watcher missed it: the run completed, and every file is whole
                assert proc.returncode == 0, proc.stderr
            _check_finals(out, mask)
            if killed and killed[-1] == target:
                break
    assert {"mask.tif", "mask.geojson", "preview.png"} <= set(killed), killed
    # The rerun cleans up, completes, and leaves no temporary file.
    result = make_result(mask, raw, mpp=1.0)
    result.tissue = np.ones((h // 16, w // 16), bool)
    write_outputs(result, make_slide(2 * w, 2 * h, 0.5), make_bundle(tmp_path), out)
    assert current(out)
    assert find_temporaries(out) == []
    _check_finals(out, mask)
