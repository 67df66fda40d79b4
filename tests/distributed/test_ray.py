"""`segment_on_ray` on a real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`, CPU workers,
the pure-ONNX colour bundle): outputs identical to one process, a worker killed mid-slide has its slide retried
and written once, and a node that does not share OUT is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import pyvips
from runtime.onnx_models import make_bundle

from distributed.helpers import make_slides
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.segment import SegmentOptions, segment_many
from slidefuse.runtime.segment.claims import CLAIM_NAME, ClaimInfo
from slidefuse.runtime.segment.runlog import read_run_log
from slidefuse.runtime.tissue import TissueParams

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from slidefuse.distributed import ClusterStatus, RayConfig, SharedStorageError, segment_on_ray  # noqa: E402

pytestmark = pytest.mark.slow  # a cluster takes ~10 s to start on 2 cores; run by `make test-slow`

OPTIONS = SegmentOptions(backend_options={"threads": 1}, workers=1, tissue=TissueParams(thumb_max_side=512))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Three nodes of one CPU each (the head and two more), the driver connected."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "colour", tile_size=64, mpp=1.0, overlap=16, depth=2)


def _mask(folder: Path) -> np.ndarray:
    return np.asarray(pyvips.Image.new_from_file(str(folder / "mask.tif")).numpy())


def test_a_batch_on_three_nodes_matches_one_process(cluster: Cluster, bundle: Bundle, tmp_path: Path) -> None:
    slides = make_slides(tmp_path / "slides", 7)
    broken = tmp_path / "slides" / "broken.tif"
    broken.write_bytes(b"II*\x00 this is not a slide")
    seen: list[ClusterStatus] = []
    results = segment_on_ray([*slides, broken], bundle, tmp_path / "ray", OPTIONS, RayConfig(status_interval=0.5),
                             on_status=seen.append)
    assert [r.status for r in results] == ["ok"] * 7 + ["failed"], [r.error for r in results]
    assert results[-1].error is not None and str(broken) in results[-1].error and "\n" not in results[-1].error
    local = segment_many(slides, bundle, tmp_path / "one", OPTIONS)
    assert [r.status for r in local] == ["ok"] * 7
    workers = set()
    for s in slides:
        ray_dir, one_dir = tmp_path / "ray" / s.stem, tmp_path / "one" / s.stem
        assert np.array_equal(_mask(ray_dir), _mask(one_dir)), s
        a, b = (json.loads((d / "report.json").read_text()) for d in (ray_dir, one_dir))
        assert a["areas"] == b["areas"] and a["tile_counts"] == b["tile_counts"]
        assert a["run"]["attempt"] == 1
        workers.add(a["run"]["worker"])
    assert len(workers) == 3  # every node's worker took slides
    entries = read_run_log(tmp_path / "ray")
    assert sorted(Path(e["slide"]).name for e in entries if e["status"] == "ok") == sorted(s.name for s in slides)
    assert [Path(e["slide"]).name for e in entries if e["status"] == "failed"] == ["broken.tif"]
    last = seen[-1]
    assert last.done == 7 and last.failed == 1 and last.in_flight == 0 and last.tiles > 0
    assert "8/8 slides: 7 done, 0 skipped, 1 failed, 0 in flight on 3 worker(s)" in last.line()
    assert not list((tmp_path / "ray").glob(".slidefuse-shared-*"))


def test_a_worker_killed_mid_slide_has_its_slide_retried_once(cluster: Cluster, tmp_path: Path) -> None:
    big_bundle = make_bundle(tmp_path / "b", tile_size=64, mpp=0.5, overlap=16, depth=2)  # a slide takes seconds
    slides = [*make_slides(tmp_path / "big", 1, size=(3072, 2048), prefix="big"), *make_slides(tmp_path / "s", 5)]
    out = tmp_path / "out"
    lock = out / "big0" / CLAIM_NAME  # the raw mask is named with its writer's tag: mask.raw.<tag>.tmp
    killed: list[int] = []

    def kill_when_inside() -> None:  # SIGKILL the worker process that is inside big0's tiles
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            info = ClaimInfo.read(lock) if list((out / "big0").glob("mask.raw*.tmp")) else None
            if info is not None:
                os.kill(info.pid, signal.SIGKILL)
                killed.append(info.pid)
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_inside)
    killer.start()
    options = SegmentOptions(backend_options={"threads": 1}, workers=1, batch_size=1,
                             tissue=TissueParams(thumb_max_side=512))
    results = segment_on_ray(slides, big_bundle, out, options, RayConfig(retries=1))
    killer.join()
    assert killed, "the worker was never seen inside slide big0"
    assert [r.status for r in results] == ["ok"] * 6, [r.error for r in results]
    report = json.loads((out / "big0" / "report.json").read_text())
    assert report["run"]["attempt"] == 2 and not report["run"]["worker"].endswith(f":{killed[0]}")
    entries = {Path(e["slide"]).name: e for e in read_run_log(out)}
    assert entries["big0.tif"]["attempt"] == 2 and entries["big0.tif"]["run_id"] == report["run"]["run_id"]
    records = [json.loads(line) for f in (out / ".run").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(Path(e["slide"]).name for e in records) == sorted(s.name for s in slides)  # each written once
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.tmp")) and not list(out.rglob(CLAIM_NAME))
    assert _mask(out / "big0").shape == (report["mask"]["height"], report["mask"]["width"])


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs root and unshare(1) to give a node its own file system view")
def test_a_node_that_does_not_share_out_is_refused(cluster: Cluster, bundle: Bundle, tmp_path: Path) -> None:
    """A fourth node whose processes see a private, empty folder over OUT's parent (its own mount namespace,
    as a node with a local disk would) makes the run stop before any slide, naming that node's worker."""
    private = tmp_path / "data"
    private.mkdir()
    ray_bin = Path(sys.executable).parent / "ray"
    script = (f"mount -t tmpfs none {private} && exec {ray_bin} start --address={cluster.address} "
              "--num-cpus=1 --resources='{\"private\": 1}' --block")
    node = subprocess.Popen(["unshare", "-m", "sh", "-c", script], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while sum(n["Alive"] for n in ray.nodes()) < 4:
            assert time.monotonic() < deadline and node.poll() is None, "the private node did not join"
            time.sleep(0.2)
        slides = make_slides(tmp_path / "slides", 4)
        with pytest.raises(SharedStorageError, match="not shared with host") as err:
            segment_on_ray(slides, bundle, private / "out", OPTIONS, RayConfig(workers=4))
        assert "out=" in str(err.value) and "storage every node mounts" in str(err.value)
        assert not list((private / "out").glob("*/report.json"))
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=30)
        deadline = time.monotonic() + 30
        while sum(n["Alive"] for n in ray.nodes()) > 3 and time.monotonic() < deadline:
            time.sleep(0.5)
