"""Speed and memory of `slidefuse view` on a large slide: first view, tiles from the cache, RSS while browsing.

    python benchmarks/make_slides.py --size 36000 --tissue-fraction 0.3 --out /tmp/bview/slide36k.tif
    python benchmarks/bench_view.py --slide /tmp/bview/slide36k.tif --out /tmp/bview/out

The slide is segmented with the default model into ``--out`` first (skipped when ``--out`` already holds its
run). The viewer then runs as its own process (``slidefuse view OUT``, a fresh tile cache) and this program:

1. first view: headless Chromium (Debian's chromium and chromedriver, when present) opens the slide page with a
   cold cache; the time from the request to the moment every tile of the first view (slide and mask layers)
   is drawn;
2. tiles from the cache: ``--cached`` tile requests (slide and mask layers, several levels) made once to fill
   the cache, then again over one keep-alive connection; the median and 95th percentile of the second pass;
3. memory: a first path of ``--warm`` distinct tiles (a zoom-in-and-pan path over the slide, both layers), then
   a second path of ``--tiles`` other tiles over the same levels; the server's RSS (/proc/PID/status) sampled
   every 25 tiles. libvips keeps a working set for each pyramid level it reads, which fills up over the first
   thousand or so tiles and then stays (a bounded, one-time cost); the second path shows whether browsing on
   makes memory grow.

Prints each figure and saves ``benchmarks/results/view.json`` with the command, the CPU and its ISA.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slidefuse.bench.machine import machine_info  # noqa: E402
from slidefuse.view.tiles import DeepZoom  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(text.split("VmRSS:")[1].split()[0]) / 1024


def segment(slide: Path, out: Path) -> float:
    """Run `slidefuse segment` with the default model unless `out` holds the run; returns its seconds (0: kept)."""
    if (out / "run.json").exists():
        return 0.0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "slidefuse", "-q", "segment", str(slide), "--out", str(out)], check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - t0


def start_viewer(out: Path, cache: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "slidefuse", "-q", "view", str(out), "--port", str(port),
                             "--cache", str(cache)], env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the viewer did not start within 60 s")


def first_view(port: int) -> dict[str, Any] | None:
    """Seconds from opening the slide page to every tile of the first view drawn (headless Chromium)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        print("first view: skipped (no chromium / chromedriver)")
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        t0 = time.perf_counter()
        driver.get(f"http://127.0.0.1:{port}/slide/0")
        script = ("const v = window.slidefuseViewer; if (!v || v.world.getItemCount() < 2) return false;"
                  "for (let i = 0; i < v.world.getItemCount(); i++) if (!v.world.getItemAt(i).getFullyLoaded())"
                  " return false; return true;")
        while not driver.execute_script(script):
            if time.perf_counter() - t0 > 120:
                raise SystemExit("first view: tiles not drawn within 120 s")
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
        tiles = driver.execute_script("return performance.getEntriesByType('resource')"
                                      ".filter(e => e.name.includes('/tiles/')).length;")
    finally:
        driver.quit()
    return {"seconds": round(seconds, 3), "tile_requests": int(tiles)}


def tile_urls(dz: DeepZoom, n: int, seed: int = 0) -> list[str]:
    """`n` distinct tile URLs of both layers along a zoom-in-and-pan path: the 8 finest levels, coarse first, an
    equal share each (what a coarse level cannot fill passes to the next), random tiles within a level."""
    rng = np.random.default_rng(seed)
    levels = list(range(max(0, dz.max_level - 7), dz.max_level + 1))
    urls: list[str] = []
    for k, level in enumerate(levels):
        lw, lh = dz.level_size(level)
        cols, rows = -(-lw // 256), -(-lh // 256)
        want = (n - len(urls)) // (len(levels) - k) if k < len(levels) - 1 else n - len(urls)
        picks = rng.permutation(cols * rows)[: max(0, want // 2 + want % 2)]
        for p in picks:
            c, r = int(p % cols), int(p // cols)
            urls += [f"/slide/0/tiles/slide/{level}/{c}_{r}.jpeg",
                     f"/slide/0/tiles/mask/{level}/{c}_{r}.png?classes=1,2&mode=fill"]
    return urls[:n]


def fetch(conn: http.client.HTTPConnection, url: str) -> float:
    t0 = time.perf_counter()
    conn.request("GET", url)
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        raise SystemExit(f"{url}: HTTP {r.status}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slide", type=Path, required=True, help="a large slide (benchmarks/make_slides.py)")
    ap.add_argument("--out", type=Path, required=True, help="segmentation output folder (made when absent)")
    ap.add_argument("--tiles", type=int, default=500, help="distinct tiles browsed for the memory figure")
    ap.add_argument("--warm", type=int, default=1500, help="distinct tiles browsed before them")
    ap.add_argument("--cached", type=int, default=200, help="tile requests timed from the cache")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "view.json")
    a = ap.parse_args(argv)
    seg_s = segment(a.slide, a.out)
    report = json.loads(next(a.out.glob("*/report.json")).read_text())
    dz = DeepZoom(report["slide"]["width"], report["slide"]["height"])
    cache = Path(tempfile.mkdtemp(prefix="slidefuse-view-cache-"))
    port = _free_port()
    proc = start_viewer(a.out, cache, port)
    try:
        rss_start = _rss_mib(proc.pid)
        first = first_view(port)
        print(f"first view: {first}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        urls = tile_urls(dz, a.warm, seed=1)
        rss, browse_s = [], []
        for k, u in enumerate(urls):
            browse_s.append(fetch(conn, u))
            if k % 25 == 24:
                rss.append(round(_rss_mib(proc.pid), 1))
        print(f"browsed {len(urls)} tiles (cold cache): median {np.median(browse_s) * 1000:.1f} ms; RSS MiB every 25: "
              f"{rss}")
        seen = set(urls)
        second = [u for u in tile_urls(dz, 2 * a.tiles, seed=2) if u not in seen][-a.tiles:]  # the finer levels
        rss2 = []
        for k, u in enumerate(second):
            fetch(conn, u)
            if k % 25 == 24:
                rss2.append(round(_rss_mib(proc.pid), 1))
        print(f"browsed {len(second)} other tiles over the same levels: RSS MiB every 25: {rss2}")
        cached = urls[: a.cached]
        warm = [fetch(conn, u) for u in cached]
        conn.close()
        print(f"from the cache: median {np.median(warm) * 1000:.2f} ms, p95 {np.percentile(warm, 95) * 1000:.2f} ms "
              f"over {len(warm)} requests")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(cache, ignore_errors=True)
    doc = {"kind": "view", "command": "benchmarks/bench_view.py " + " ".join(argv or sys.argv[1:]),
           "slide": {"path": str(a.slide), "width": dz.width, "height": dz.height, "max_level": dz.max_level},
           "segment_seconds": round(seg_s, 1), "first_view": first,
           "cold_tiles": {"n": len(browse_s), "median_ms": round(float(np.median(browse_s)) * 1000, 2),
                          "p95_ms": round(float(np.percentile(browse_s, 95)) * 1000, 2)},
           "cached_tiles": {"n": len(warm), "median_ms": round(float(np.median(warm)) * 1000, 2),
                            "p95_ms": round(float(np.percentile(warm, 95)) * 1000, 2)},
           "rss_mib": {"start": round(rss_start, 1), "first_path_every_25_tiles": rss, "first_path_end": rss[-1],
                       "second_path_tiles": len(second), "second_path_every_25_tiles": rss2,
                       "second_path_growth": round(rss2[-1] - rss[-1], 1) if rss2 else None},
           "machine": machine_info()}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(doc, indent=2) + "\n")
    m = doc["machine"]
    print(f"CPU {m['cpu']} ({m['cpu_isa_summary']}); saved {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
