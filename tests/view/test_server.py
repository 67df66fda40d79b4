"""The viewer's server through starlette's TestClient: pages, tiles of every layer, and that nothing but the
recorded files is served."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from slidefuse.runtime.palette import REVIEW_PALETTE
from slidefuse.view.tiles import TILE, DeepZoom

from .conftest import PROBS_SLIDE, QC_FLAGS

pytest.importorskip("starlette")


def _image(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def _report(batch: Path, i: int) -> dict:
    return json.loads((batch / f"s{i}" / "report.json").read_text())


def test_cohort_lists_every_slide_with_status_and_areas(client, batch: Path) -> None:
    r = client.get("/")
    assert r.status_code == 200
    for i in range(3):
        rep = _report(batch, i)
        assert f'href="/slide/{i}">s{i}.tif<' in r.text
        eosin = rep["areas"]["eosin"]["area_mm2"]
        assert f'data-v="{eosin}"' in r.text
    assert r.text.count('<tr data-status="ok">') == 3
    assert ", ".join(QC_FLAGS) in r.text


def test_slide_page_describes_its_layers(client, batch: Path) -> None:
    page = client.get(f"/slide/{PROBS_SLIDE}").text
    cfg = json.loads(page.split('<script id="config" type="application/json">')[1].split("</script>")[0])
    assert (cfg["width"], cfg["height"], cfg["mpp"]) == (2048, 1536, 0.5)
    assert cfg["mask"] and cfg["probs"] and cfg["qc"]
    assert [tuple(c["colour"]) for c in cfg["classes"][1:]] == list(REVIEW_PALETTE[:2])
    assert "test-colour" in page and "pen marks" in page
    other = client.get("/slide/0").text
    assert '"probs": false' in other and '"qc": false' in other and 'id="probs-on"' not in other


def test_slide_tiles_are_the_readers_pixels(client, batch: Path) -> None:
    from slidefuse.runtime.slide import open_slide

    dz = DeepZoom(2048, 1536)
    r = client.get(f"/slide/0/tiles/slide/{dz.max_level}/2_1.jpeg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    got = _image(r.content).astype(float)
    with open_slide(batch.parent / "s0.tif") as s:
        want = s.scaled(0.5).read(2 * TILE, TILE, TILE, TILE).astype(float)
    assert got.shape == want.shape
    blocks = (16, 16, 16, 16, 3)  # 16 x 16 px means: the synthetic texture is per-pixel noise, which JPEG smooths
    g, w = (a.reshape(blocks[0], 16, blocks[2], 16, 3).mean(axis=(1, 3)) for a in (got, want))
    assert np.abs(g - w).max() < 4 and np.abs(got - want).mean() < 8
    top = _image(client.get("/slide/0/tiles/slide/0/0_0.jpeg").content)
    assert top.shape[:2] == (1, 1)
    assert client.get(f"/slide/0/tiles/slide/{dz.max_level + 1}/0_0.jpeg").status_code == 404
    assert client.get(f"/slide/0/tiles/slide/{dz.max_level}/8_0.jpeg").status_code == 404
    assert client.get(f"/slide/0/slide_files/{dz.max_level}/2_1.jpeg").content == r.content
    assert 'Width="2048" Height="1536"' in client.get("/slide/0/slide.dzi").text


def test_mask_tiles_colour_the_classes(client, batch: Path) -> None:
    import pyvips

    mask = pyvips.Image.new_from_file(str(batch / "s0" / "mask.tif"), page=0).numpy()  # 4 level-0 px per px
    dz = DeepZoom(2048, 1536)
    level = dz.max_level - 2  # 4 level-0 px per tile px: the mask's own grid
    tile = _image(client.get(f"/slide/0/tiles/mask/{level}/0_0.png?classes=1,2&mode=fill").content)
    want = mask[:256, :256]
    assert tile.shape == (256, 256, 4)
    assert np.array_equal(tile[..., 3] > 0, want > 0)
    assert np.all(tile[want == 2][:, :3] == REVIEW_PALETTE[1])
    only1 = _image(client.get(f"/slide/0/tiles/mask/{level}/0_0.png?classes=1&mode=fill").content)
    assert not only1[want == 2][:, 3].any()
    outline = _image(client.get(f"/slide/0/tiles/mask/{level}/0_0.png?classes=1,2&mode=outline").content)
    assert 0 < (outline[..., 3] > 0).sum() < (tile[..., 3] > 0).sum()
    assert client.get(f"/slide/0/tiles/mask/{level}/0_0.png?classes=x").status_code == 404
    assert client.get(f"/slide/0/tiles/mask/{level}/0_0.png?classes=1&mode=bad").status_code == 404


def test_probability_and_qc_layers_when_present(client, batch: Path) -> None:
    import pyvips

    mask = pyvips.Image.new_from_file(str(batch / f"s{PROBS_SLIDE}" / "mask.tif"), page=0).numpy()
    level = DeepZoom(2048, 1536).max_level - 2
    heat = _image(client.get(f"/slide/{PROBS_SLIDE}/tiles/probs2/{level}/0_0.png").content)
    assert np.array_equal(heat[..., 3] > 0, mask[:256, :256] == 2)
    assert client.get(f"/slide/0/tiles/probs2/{level}/0_0.png").status_code == 404
    qc = _image(client.get(f"/slide/{PROBS_SLIDE}/qc.png").content)
    h, w = qc.shape[:2]
    assert qc[h // 4, w // 4, 3] > 0 and qc[3 * h // 4, 3 * w // 4, 3] == 0
    assert client.get("/slide/0/qc.png").status_code == 404


def test_recorded_files_only(client, batch: Path, tmp_path: Path) -> None:
    assert client.get("/slide/0/file/report.json").json()["slide"]["name"] == "s0.tif"
    assert client.get("/slide/0/file/mask.geojson").status_code == 200
    (batch / "s0" / "notes.txt").write_text("not recorded")
    (batch / "s0" / "link.json").symlink_to(tmp_path / "outside.json")
    (tmp_path / "outside.json").write_text("{}")
    for url in ["/slide/0/file/notes.txt", "/slide/0/file/link.json", "/slide/0/file/..%2F..%2Fs0.tif",
                "/slide/0/file/..%2Frun.json", "/slide/0/file/%2Fetc%2Fpasswd", "/slide/0/file/.run",
                "/slide/0/../../s0.tif", "/static/..%2Fapp.py", "/static/%2Fetc%2Fpasswd", "/etc/passwd",
                "/slide/3", "/slide/-1", "/slide/0/tiles/..%2F..%2Fx/1/0_0.png"]:
        assert client.get(url).status_code == 404, url
    # the batch's cohort table (written by every segment run) is served as the file on disk
    assert client.get("/summary.csv").content == (batch / "summary.csv").read_bytes()


def test_cache_serves_repeats(client) -> None:
    cache = client.app.state.viewer.cache
    url = "/slide/2/tiles/slide/9/1_1.jpeg"
    first = client.get(url).content
    hits = cache.hits
    assert client.get(url).content == first and cache.hits == hits + 1


def test_failed_and_unplaced_slides_are_listed_without_layers(tmp_path: Path) -> None:
    """A failed slide (no outputs) and an entry whose out_dir points out of OUT: listed, nothing served for them;
    a slide recorded after the server started appears on the next cohort request."""
    from starlette.testclient import TestClient

    from slidefuse.runtime.segment.runlog import RunLog
    from slidefuse.view.app import create_app
    from slidefuse.view.cache import TileCache

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "report.json").write_text("{}")
    log = RunLog(out)
    log.record(tmp_path / "bad.svs", "failed", error="bad.svs: not a slide; re-copy it", out_dir=out / "bad")
    log.record(tmp_path / "x.svs", "failed", error="x", out_dir=tmp_path / "secret",
               outputs={"report": tmp_path / "secret" / "report.json"})
    with TestClient(create_app(out, TileCache(tmp_path / "cache", 1 << 20))) as c:
        page = c.get("/").text
        assert "bad.svs: not a slide; re-copy it" in page and page.count('data-status="failed"') == 2
        assert c.get("/slide/0").status_code == 200
        for url in ["/slide/0/thumb.jpg", "/slide/0/tiles/slide/0/0_0.jpeg", "/slide/0/slide.dzi",
                    "/slide/1/file/report.json", "/slide/1/tiles/mask/0/0_0.png?classes=1"]:
            assert c.get(url).status_code == 404, url
        log.record(tmp_path / "late.svs", "failed", error="late", out_dir=out / "late")
        assert "late.svs" in c.get("/").text and c.get("/slide/2").status_code == 200
