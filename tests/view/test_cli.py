"""`slidefuse view`: its checks before serving (local host unless --allow-remote, OUT with a run log, the view
extra), through the real CLI; uvicorn.run is replaced so nothing listens."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from slidefuse.cli import cli
from slidefuse.commands.view import is_local


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    uvicorn = pytest.importorskip("uvicorn")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    return seen


def test_local_by_default(batch: Path, tmp_path: Path, served: dict[str, Any]) -> None:
    r = CliRunner().invoke(cli, ["view", str(batch), "--cache", str(tmp_path / "c"), "--port", "8123"])
    assert r.exit_code == 0, r.output
    assert served["host"] == "127.0.0.1" and served["port"] == 8123
    assert "3 slide(s)" in r.output and "warning" not in r.output


def test_non_local_host_needs_allow_remote(batch: Path, tmp_path: Path, served: dict[str, Any]) -> None:
    r = CliRunner().invoke(cli, ["view", str(batch), "--host", "0.0.0.0", "--cache", str(tmp_path / "c")])
    assert r.exit_code == 2 and "--allow-remote" in r.output and "app" not in served
    assert r.output.count("\n") == 1
    r = CliRunner().invoke(cli, ["view", str(batch), "--host", "0.0.0.0", "--allow-remote", "--cache",
                                 str(tmp_path / "c")])
    assert r.exit_code == 0 and served["host"] == "0.0.0.0"
    assert "warning: serving on 0.0.0.0" in r.output


@pytest.mark.parametrize(("host", "local"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                             ("127.0.0.2", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                             ("example.org", False)])
def test_is_local(host: str, local: bool) -> None:
    assert is_local(host) is local


def test_out_without_run_log(tmp_path: Path, served: dict[str, Any]) -> None:
    r = CliRunner().invoke(cli, ["view", str(tmp_path), "--cache", str(tmp_path / "c")])
    assert r.exit_code == 2 and "no run log" in r.output and str(tmp_path) in r.output
    r = CliRunner().invoke(cli, ["view", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "nope" in r.output and "Traceback" not in r.output


def test_missing_extra_names_it(batch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ImportError
    r = CliRunner().invoke(cli, ["view", str(batch), "--cache", str(tmp_path / "c")])
    assert r.exit_code != 0 and "pip install 'slidefuse[view]'" in r.output
