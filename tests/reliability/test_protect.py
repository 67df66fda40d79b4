"""The shipped model is protected: export never writes into the package's data folder, and a bundle's files
and folders are readable by every user (0644 / 0755), whatever modes its writers created them with."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from slidefuse.errors import UsageError
from slidefuse.export.bundle_writer import check_target, staging_folder
from slidefuse.paths import PACKAGE_DATA

from .conftest import REPO


def test_export_refuses_the_package_data_folder() -> None:
    for target in (PACKAGE_DATA / "default", PACKAGE_DATA, PACKAGE_DATA / "new"):
        with pytest.raises(UsageError, match="own data folder"):
            check_target(target, force=True)
    assert PACKAGE_DATA == REPO / "slidefuse" / "data"


def test_export_cli_refuses_the_demo_bundle() -> None:
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from slidefuse.cli import cli

    result = CliRunner().invoke(cli, ["export", "tiny", "--random-weights", "--classes", "background,tissue",
                                      "--mpp", "2", "--out", str(PACKAGE_DATA / "default"), "--force"])
    assert result.exit_code == 2 and "own data folder" in result.stderr and "Traceback" not in result.output


def test_staged_bundle_gets_public_modes(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with staging_folder(out, force=False) as stage:
        (stage / "engines").mkdir(mode=0o700)
        fd = os.open(stage / "model.safetensors", os.O_CREAT | os.O_WRONLY, 0o600)  # as safetensors does
        os.write(fd, b"w")
        os.close(fd)
        (stage / "engines" / "x.engine").write_bytes(b"e")
        (stage / "engines" / "x.engine").chmod(0o600)
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes == {".": 0o755, "engines": 0o755, "model.safetensors": 0o644, "engines/x.engine": 0o644}


def test_demo_bundle_files_are_world_readable() -> None:
    folder = PACKAGE_DATA / "default"
    for p in folder.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) & 0o444 == 0o444, p


@pytest.mark.parametrize("content", [b"not a checkpoint\n" * 10, b"", b"\x80\x02}q\x00.", bytes(range(256))])
def test_garbage_torch_checkpoint_is_one_line(tmp_path: Path, content: bytes) -> None:
    pytest.importorskip("torch")
    from slidefuse.errors import CheckpointError
    from slidefuse.model.checkpoints import read_state_file

    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        read_state_file(path)
    assert "\n" not in str(err.value)
