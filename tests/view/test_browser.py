"""The viewer in a real headless Chromium (Debian's chromium and chromedriver, driven by Selenium; nothing is
downloaded): the cohort page, tiles and overlays on screen, per-class toggles, the probability and QC layers, and
404s for paths outside what the run log records. Screenshots go to docs/img/view/ (shown in docs/review.md)."""

from __future__ import annotations

import http.client
import io
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slidefuse.runtime.palette import REVIEW_PALETTE

from .conftest import PROBS_SLIDE, QC_FLAGS

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "img" / "view"
VIEWPORT = (1280, 800)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM.exists() or shutil.which("chromium")),
                       reason="needs Chromium (apt install chromium)"),
    pytest.mark.skipif(not (CHROMEDRIVER.exists() or shutil.which("chromedriver")),
                       reason="needs chromedriver (apt install chromium-driver)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(batch: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    uvicorn = pytest.importorskip("uvicorn")
    from slidefuse.view.app import create_app
    from slidefuse.view.cache import TileCache

    app = create_app(batch, TileCache(tmp_path_factory.mktemp("viewcache"), 256 << 20))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "the viewer did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium"))
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "--force-device-scale-factor=1", "--hide-scrollbars"):
        opts.add_argument(a)
    # The system driver, named explicitly: Selenium Manager (which downloads drivers) never runs.
    service = Service(executable_path=str(CHROMEDRIVER if CHROMEDRIVER.exists() else shutil.which("chromedriver")))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_window_size(*VIEWPORT)
    yield driver
    driver.quit()


def _wait(driver: Any, script: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = driver.execute_script(script)
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


LOADED = """const v = window.slidefuseViewer; if (!v) return false;
const n = v.world.getItemCount(); if (n < arguments[0]) return false;
for (let i = 0; i < n; i++) { if (!v.world.getItemAt(i).getFullyLoaded()) return false; }
return n;"""


def _settle(driver: Any, layers: int) -> None:
    """Wait until `layers` tiled images are drawn completely (every needed tile loaded) and the view is still."""
    _wait(driver, f"return (function() {{ {LOADED} }}).apply(null, [{layers}]);".replace("arguments[0]", str(layers)))
    time.sleep(0.6)  # OpenSeadragon's blending of freshly loaded tiles
    _wait(driver, f"return (function() {{ {LOADED} }})();".replace("arguments[0]", str(layers)))


def _screen(driver: Any, name: str | None = None) -> np.ndarray:
    from PIL import Image

    png = driver.find_element("id", "osd").screenshot_as_png
    if name:
        SHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SHOTS / name))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _inner_pixel(mask: np.ndarray, cls: int, lower_right: bool = False) -> tuple[int, int]:
    """(x, y) in the mask's frame of a pixel of class `cls` whose 7 x 7 neighbourhood is all `cls` (in the lower
    right quarter when `lower_right`)."""
    from scipy import ndimage

    core = ndimage.binary_erosion(mask == cls, np.ones((7, 7), bool))
    if lower_right:
        core[: mask.shape[0] // 2] = False
        core[:, : mask.shape[1] // 2] = False
    ys, xs = np.nonzero(core)
    k = len(ys) // 2
    return int(xs[k]), int(ys[k])


def _on_screen(driver: Any, l0_x: float, l0_y: float) -> tuple[int, int]:
    x, y = driver.execute_script(
        "const it = window.slidefuseViewer.world.getItemAt(0);"
        "const p = it.imageToViewerElementCoordinates(new OpenSeadragon.Point(arguments[0], arguments[1]));"
        "return [p.x, p.y];", l0_x, l0_y)
    return round(x), round(y)


def test_cohort_page_lists_the_batch(browser: Any, server: str, batch: Path) -> None:
    browser.get(server + "/")
    rows = browser.find_elements("css selector", "#cohort tbody tr")
    assert len(rows) == 3
    for i, row in enumerate(rows):
        rep = json.loads((batch / f"s{i}" / "report.json").read_text())
        text = row.text
        assert f"s{i}.tif" in text and "ok" in text
        assert f"{rep['areas']['eosin']['area_mm2']:.4g}" in text
    assert ", ".join(QC_FLAGS) in rows[PROBS_SLIDE].text
    _wait(browser, "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0);")
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "cohort.png"))
    # Sort by eosin area, descending (two clicks), and filter.
    header = [h for h in browser.find_elements("css selector", "#cohort th") if h.text == "eosin mm²"][0]
    header.click()
    header.click()
    areas = [float(r.find_elements("tag name", "td")[6].get_attribute("data-v"))
             for r in browser.find_elements("css selector", "#cohort tbody tr")]
    assert areas == sorted(areas, reverse=True)
    browser.find_element("id", "filter").send_keys("s2.tif")
    shown = [r for r in browser.find_elements("css selector", "#cohort tbody tr") if r.is_displayed()]
    assert len(shown) == 1 and "s2.tif" in shown[0].text


def test_overlay_colour_then_slide_colour_after_toggle(browser: Any, server: str, batch: Path) -> None:
    import pyvips

    from slidefuse.runtime.slide import open_slide

    browser.get(server + "/slide/0")
    _settle(browser, 2)
    assert _layer_names(browser) == ["slide", "mask"]  # bottom to top
    browser.execute_script("const o = document.getElementById('opacity'); o.value = 100;"
                           "o.dispatchEvent(new Event('input'));")
    mask = pyvips.Image.new_from_file(str(batch / "s0" / "mask.tif"), page=0).numpy()
    mx, my = _inner_pixel(mask, 2)  # eosin
    l0 = (mx * 4 + 2, my * 4 + 2)  # 4 level-0 px per mask px
    sx, sy = _on_screen(browser, *l0)
    shot = _screen(browser, "slide-overlay.png")
    assert 0 <= sx < shot.shape[1] and 0 <= sy < shot.shape[0]
    got = shot[sy - 1:sy + 2, sx - 1:sx + 2].reshape(-1, 3).mean(0)
    assert np.abs(got - REVIEW_PALETTE[1]).max() < 12, got
    # Eosin off: the slide's own colour shows there (the reader's pixels around that point, at the screen's scale).
    browser.find_element("css selector", ".cls-toggle[data-class='2']").click()
    _settle(browser, 2)
    shot = _screen(browser, "slide-eosin-off.png")
    got = shot[sy - 1:sy + 2, sx - 1:sx + 2].reshape(-1, 3).mean(0)
    zoom = browser.execute_script("const v = window.slidefuseViewer;"
                                  "return v.world.getItemAt(0).viewportToImageZoom(v.viewport.getZoom(true));")
    with open_slide(batch.parent / "s0.tif") as s:
        half = max(2, int(round(1.5 / zoom)))  # slide px under the 3 x 3 screen px
        want = s.scaled(0.5).read(l0[0] - half, l0[1] - half, 2 * half + 1, 2 * half + 1).reshape(-1, 3).mean(0)
    assert np.abs(got - want).max() < 25, (got, want)
    assert np.abs(got - REVIEW_PALETTE[1]).max() > 60


def _layer_names(driver: Any) -> list[str]:
    return list(driver.execute_script(
        "const w = window.slidefuseViewer.world; const out = [];"
        "for (let i = 0; i < w.getItemCount(); i++) out.push(w.getItemAt(i).slidefuseLayer); return out;"))


def test_probability_and_qc_layers_appear(browser: Any, server: str, batch: Path) -> None:
    import pyvips

    browser.get(server + f"/slide/{PROBS_SLIDE}")
    _settle(browser, 3)  # slide, mask, QC
    assert sorted(_layer_names(browser)) == ["mask", "qc", "slide"]
    browser.find_element("id", "mask-on").click()
    assert browser.find_element("id", "probs-class").get_attribute("value") == "2"  # the largest class first
    browser.find_element("id", "probs-on").click()
    _settle(browser, 3)  # slide, QC, probabilities
    assert sorted(_layer_names(browser)) == ["probs", "qc", "slide"]
    shot = _screen(browser, "slide-probs-qc.png")
    mask = pyvips.Image.new_from_file(str(batch / f"s{PROBS_SLIDE}" / "mask.tif"), page=0).numpy()
    mx, my = _inner_pixel(mask, 2, lower_right=True)  # eosin, outside the QC quarter: probability 1 there
    sx, sy = _on_screen(browser, mx * 4 + 2, my * 4 + 2)
    r, g, b = shot[sy - 1:sy + 2, sx - 1:sx + 2].reshape(-1, 3).mean(0)
    assert r > 200 and g < 90 and b < 110, (r, g, b)  # the heatmap's red over pink tissue
    qx, qy = _on_screen(browser, 30, 30)  # glass in the QC quarter: magenta over white
    r, g, b = shot[qy, qx]
    assert r > 240 and b > 240 and g < 180, (r, g, b)  # 0.6 x 160/255 magenta over white: g about 155
    gx, gy = _on_screen(browser, 2000, 30)  # glass outside it: white-ish
    assert shot[gy, gx].min() > 200, shot[gy, gx]
    flags = browser.find_element("css selector", "ul.flags").text
    assert all(f in flags for f in QC_FLAGS)


@pytest.mark.parametrize("path", ["/slide/0/file/../../s0.tif", "/../../etc/passwd", "/slide/0/file//etc/passwd",
                                  "/static/../../../../etc/passwd", "/slide/0/file/%2e%2e/run.json",
                                  "//etc/passwd", "/slide/0/file/%2Fetc%2Fpasswd"])
def test_traversal_is_404(server: str, path: str) -> None:
    """Raw requests (no client-side normalisation of `..`)."""
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path)
    assert conn.getresponse().status == 404
    conn.close()
