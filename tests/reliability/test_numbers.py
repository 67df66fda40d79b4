"""Numbers and exit codes: every float option refuses nan and inf with one line; every usage error exits 2 before
the model loads, with "did you mean" for names; internal backends are listed only when asked for."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from slidefuse.cli import cli
from slidefuse.distributed.ray_runner import RayConfig
from slidefuse.errors import UnknownName, UsageError
from slidefuse.model.registry import get_spec
from slidefuse.numbers import finite_float, integer
from slidefuse.runtime.backends.null import NullOptions
from slidefuse.runtime.backends.ort import OrtOptions
from slidefuse.runtime.backends.registry import backend_names, check_backend_choice
from slidefuse.runtime.outputs.base import OutputOptions
from slidefuse.runtime.outputs.registry import get_writer, parse_formats
from slidefuse.runtime.segment import SegmentOptions
from slidefuse.runtime.tissue import TissueParams

from .conftest import one_error_line, segment

NOT_FINITE = ["nan", "inf", "-inf"]


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize("flags", [["--max-memory"], ["--option", "max_memory_gb="], ["--claim-timeout"],
                                   ["--mpp"], ["--mask-mpp"], ["--tissue-threshold"], ["--min-tile-tissue"],
                                   ["--backend", "ort-cpu", "--max-memory"]])
def test_float_flags_refuse_nan_and_inf(flags: list[str], value: str, slide: Path, bundle_dir: Path,
                                        tmp_path: Path) -> None:
    args = [*flags[:-1], flags[-1] + value] if flags[-1].endswith("=") else [*flags, value]
    out = tmp_path / "out"
    result = segment(slide, "--model", bundle_dir, "--out", out, *args)
    if result.exit_code == 2 and "Usage:" in result.output:  # click refused it (e.g. a negative --max-memory)
        return
    one_error_line(result, value.lstrip("-"), code=2)
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float32("nan")])
def test_option_records_refuse_nan_and_inf(value: float) -> None:
    records = [
        lambda: SegmentOptions(mpp=value), lambda: SegmentOptions(mask_mpp=value),
        lambda: SegmentOptions(claim_timeout=value), lambda: SegmentOptions(backend_options={"max_memory_gb": value}),
        lambda: OrtOptions(max_memory_gb=value), lambda: NullOptions(rate=value),
        lambda: OutputOptions(mask_mpp=value), lambda: OutputOptions(geojson_mpp=value),
        lambda: TissueParams(min_saturation=value), lambda: TissueParams(detect_mpp=value),
        lambda: TissueParams(opening_radius_um=value), lambda: RayConfig(status_interval=value),
        lambda: RayConfig(ready_timeout=value), lambda: RayConfig(gpus_per_worker=value),
    ]
    for make in records:
        with pytest.raises(UsageError) as err:
            make()
        assert "\n" not in str(err.value)


def test_numpy_scalars_count_and_bools_do_not() -> None:
    assert SegmentOptions(mpp=np.float32(2.0), batch_size=np.int64(4)).mpp == 2.0
    assert type(SegmentOptions(mpp=np.float32(2.0)).mpp) is float
    assert type(SegmentOptions(batch_size=np.int64(4)).batch_size) is int
    assert OrtOptions(max_memory_gb=np.float64(1.5), threads=np.int32(2)).threads == 2
    assert TissueParams(min_saturation=np.float32(0.1)).min_saturation == pytest.approx(0.1)
    for bad in (True, np.bool_(True)):
        with pytest.raises(UsageError, match="mpp"):
            SegmentOptions(mpp=bad)
        with pytest.raises(UsageError, match="batch_size"):
            SegmentOptions(batch_size=bad)
    assert finite_float(2, field="x") == 2 and type(finite_float(2, field="x")) is int  # plain numbers as given
    assert integer(np.uint8(3), field="n") == 3
    with pytest.raises(UsageError, match=r"x must be a finite number in 0\.\.1, got 2"):
        finite_float(2, field="x", minimum=0, maximum=1)


def test_an_unknown_backend_exits_2_before_the_model_loads(slide: Path, tmp_path: Path) -> None:
    # the model does not even exist: the backend's name is checked first
    result = segment(slide, "--model", tmp_path / "no.bundle", "--out", tmp_path / "out", "--backend", "ort-cup")
    line = one_error_line(result, "unknown backend 'ort-cup'", "did you mean 'ort-cpu'", code=2)
    assert "null" not in line  # internal: not listed
    assert not (tmp_path / "out").exists()


def test_an_unknown_backend_option_exits_2_before_the_model_loads(slide: Path, tmp_path: Path) -> None:
    result = segment(slide, "--model", tmp_path / "no.bundle", "--out", tmp_path / "out", "--backend", "ort-cpu",
                     "--option", "thraeds=2")
    one_error_line(result, "unknown option 'thraeds'", code=2)


@pytest.mark.parametrize("args", [["--batch", "0"], ["--claim-timeout", "inf"], ["--claim-timeout", "1e300"],
                                  ["--formats", "tif"], ["--mpp", "nan"], ["--max-memory", "nan"]])
def test_usage_errors_exit_2_before_the_model_loads(args: list[str], slide: Path, tmp_path: Path) -> None:
    # the model does not exist: an option's error comes first
    result = segment(slide, "--model", tmp_path / "no.bundle", "--out", tmp_path / "out", *args)
    line = one_error_line(result, code=2)
    assert "no.bundle" not in line


def test_the_null_backend_is_internal_but_runs_when_named(slide: Path, bundle_dir: Path, tmp_path: Path) -> None:
    assert "null" not in backend_names() and "null" in backend_names(include_internal=True)
    check_backend_choice("null", {"rate": 1000.0})
    result = CliRunner().invoke(cli, ["segment", str(slide), "--model", str(bundle_dir), "--out", str(tmp_path / "o"),
                                      "--backend", "null", "--workers", "2"])
    assert result.exit_code == 0, result.output


def test_names_get_did_you_mean() -> None:
    with pytest.raises(UnknownName, match=r"did you mean 'uni'") as err:
        get_spec("unii")
    assert err.value.exit_code == 2
    with pytest.raises(UnknownName, match=r"did you mean 'tiff'\?"):
        get_writer("tif")
    with pytest.raises(UsageError, match=r"did you mean 'geojson'\?"):
        parse_formats("geojsn")
    with pytest.raises(UnknownName) as none_close:
        get_spec("zzzzzz")
    assert "did you mean" not in str(none_close.value)


def test_a_rerun_is_logged_once_and_a_failure_at_warning(slide: Path, bundle_dir: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    import slidefuse

    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\0 not a slide")
    with slidefuse.load_model(bundle_dir, backend="ort-cpu", backend_options={"threads": 1}, workers=1) as model:
        assert model.segment(slide, out=tmp_path / "out").ok
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="slidefuse"):
            assert model.segment(slide, out=tmp_path / "out", overwrite=True).ok
            again = [r for r in caplog.records if "segmenting it again" in r.getMessage()]
            assert len(again) == 1, [r.getMessage() for r in again]
            results = model.segment_batch([broken], out=tmp_path / "out")
        assert results[0].status == "failed"
        failed = [r for r in caplog.records if r.getMessage().startswith("failed:")]
        assert len(failed) == 1 and failed[0].levelno >= logging.WARNING


@pytest.mark.parametrize("verb", [["bench", "slide", "s.tif"], ["bench", "engine"]])
def test_bench_checks_the_backend_before_the_model_loads(verb: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [*verb, "--model", str(tmp_path / "no.bundle"), "--backend", "nulll"])
    line = one_error_line(result, "did you mean 'null'", code=2)
    assert "no.bundle" not in line


def test_a_huge_memory_budget_is_no_limit() -> None:
    from slidefuse.runtime.backends.memory import budget_bytes

    assert budget_bytes(1e300)[0] is None and budget_bytes(2.0)[0] == 2 << 30
