"""The user cache folder (`slidefuse.runtime.cache`) and ov-cpu's model cache (OpenVINO's CACHE_DIR) in it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from slidefuse.runtime import cache
from slidefuse.runtime.backends.registry import available_backends
from slidefuse.runtime.bundle import Bundle, load_bundle

OV = available_backends()["ov-cpu"] is None


def test_cache_root_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "slidefuse"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "slidefuse"
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "env"))
    assert cache.cache_root() == tmp_path / "env"
    assert cache.cache_root(str(tmp_path / "opt")) == tmp_path / "opt"


def test_model_cache_folder_per_digest_and_version(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    digest = "ab" * 32
    got = cache.model_cache("openvino", digest, "2026.4.1-22982/releases", str(tmp_path))
    assert got == tmp_path / "openvino" / f"{'ab' * 8}-2026.4.1-22982_releases" and got.is_dir()
    assert cache.model_cache("openvino", "staged", "1", str(tmp_path)) is None  # an export's staging folder
    if os.geteuid() == 0:
        return  # root writes anywhere
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with caplog.at_level(logging.WARNING, logger="slidefuse.runtime.cache"):
        assert cache.model_cache("openvino", digest, "1", str(locked / "sub")) is None
    assert "cannot create the model cache folder" in caplog.text and cache.ENV_VAR in caplog.text


@pytest.mark.skipif(not OV, reason="needs openvino: pip install 'slidefuse[openvino]'")
def test_ov_cpu_stores_and_reuses_its_compiled_model(bundle_dir: Path, tmp_path: Path) -> None:
    from slidefuse.runtime.backends import open_backend

    bundle: Bundle = load_bundle(bundle_dir)
    tiles = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    outs, folders = [], []
    for _ in range(2):
        with open_backend("ov-cpu", bundle, threads=1, cache=True, cache_dir=str(tmp_path)) as be:
            outs.append(be.run(tiles))
            info = be.info().to_dict()
            assert be.compile_config()["CACHE_DIR"] == info["model_cache"]
        folders.append(Path(info["model_cache"]))
        assert info["compile_s"] is not None
    assert folders[0] == folders[1] and folders[0].parent == tmp_path / "openvino"
    assert folders[0].name.startswith(bundle.digest[:16])
    blobs = [p for p in folders[0].iterdir() if p.suffix == ".blob"]
    assert len(blobs) == 1  # written by the first start, imported (not written again) by the second
    np.testing.assert_array_equal(outs[0], outs[1])
    with open_backend("ov-cpu", bundle, threads=1, cache=False) as be:  # off: compiled, nothing written
        assert "CACHE_DIR" not in be.compile_config() and be.info().to_dict()["model_cache"] is None
        np.testing.assert_array_equal(be.run(tiles), outs[0])
    with open_backend("ov-cpu", bundle, threads=1) as be:  # on by default, in $SLIDEFUSE_CACHE_DIR (the tests')
        assert Path(be.info().to_dict()["model_cache"]).parent == cache.cache_root() / "openvino"
