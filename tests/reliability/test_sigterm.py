"""SIGTERM (what Slurm, Kubernetes and `kill` send before they kill a job) takes Ctrl-C's way out: a real
`slidefuse segment` process stops promptly with one line and exit code 143, leaving no claim, no `*.partial`
file, no raw mask and no run-log mutex behind, and the rerun completes. The handler itself is checked in-process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slidefuse.atomic import stale_temporaries
from slidefuse.runtime import interrupt
from slidefuse.runtime.segment.claims import CLAIM_NAME

from .conftest import REPO, cli_process, segment_until, write_slide

STOP_GRACE_S = 10.0  # generous on a loaded 2-core machine; the measured figure is printed
MARKERS = {  # stderr lines of `slidefuse segment` that mark where the signal is sent
    "planning": "slide(s) to segment into",
    "inference": "tiles to run",
    "outputs": "wrote ",
}


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two slides that take about a second per stage each (6000 x 4000 px at 0.5 um/px), so that the second is
    planned, and the first's outputs written, on the background thread while the other is inferred."""
    folder = tmp_path_factory.mktemp("sigterm")
    for seed, name in ((3, "a.tif"), (4, "b.tif")):
        write_slide(folder / name, size=(6000, 4000), seed=seed)
    return folder


def _leftovers(out: Path) -> list[str]:
    """Claims, temporaries (`*.partial`, staged folders, the raw mask) and mutexes a stopped run left in OUT."""
    found = [p.name for p in out.glob("*.lock")]
    for folder in (p for p in out.iterdir() if p.is_dir() and p.name != ".run"):
        found += [f"{folder.name}/{p.name}" for p in stale_temporaries(folder)]
        found += [f"{folder.name}/{p.name}" for p in folder.glob(CLAIM_NAME + "*")]
    return found


def _status_line(stderr: str) -> str:
    return next(ln for ln in stderr.splitlines() if "segmented," in ln)


@pytest.mark.parametrize("stage", sorted(MARKERS))
def test_sigterm_stops_cleanly_and_the_rerun_completes(tmp_path: Path, slides: Path, bundle_dir: Path,
                                                        stage: str) -> None:
    out = tmp_path / "out"
    proc = segment_until([slides, "--model", bundle_dir, "--out", out], MARKERS[stage])[0]
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    seconds = time.perf_counter() - t0
    print(f"SIGTERM during {stage}: exit {proc.returncode} in {seconds:.2f} s")
    if proc.returncode != 0:  # 0: the run finished before the signal arrived
        assert proc.returncode == 143, rest
        assert "slidefuse: terminated (SIGTERM)" in rest and "Traceback" not in rest, rest
        assert seconds < STOP_GRACE_S
    assert _leftovers(out) == []
    rerun = cli_process("segment", "--threads", "1", slides, "--model", bundle_dir, "--out", out)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert "0 failed" in _status_line(stderr) and _leftovers(out) == []
    again = cli_process("segment", "--threads", "1", slides, "--model", bundle_dir, "--out", out)
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0 and "0 segmented, 2 skipped" in _status_line(stderr), stderr


def test_sigint_still_exits_130(tmp_path: Path, slides: Path, bundle_dir: Path) -> None:
    out = tmp_path / "out"
    proc = segment_until([slides / "a.tif", "--model", bundle_dir, "--out", out], MARKERS["inference"])[0]
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    if proc.returncode != 0:
        assert proc.returncode == 130 and "slidefuse: interrupted" in rest, rest
    assert _leftovers(out) == []


@pytest.mark.slow  # a local Ray cluster takes ~10 s to start on 2 cores
def test_sigterm_stops_a_ray_run(tmp_path: Path, slides: Path, bundle_dir: Path) -> None:
    pytest.importorskip("ray")
    out = tmp_path / "out"
    args: list[str | Path] = ["--ray", "--ray-workers", "1", slides, "--model", bundle_dir, "--out", out]
    proc = segment_until(args, "worker(s) ready")[0]
    proc.send_signal(signal.SIGTERM)  # Ray's start replaced the handler with one that aborts; it is put back
    _, rest = proc.communicate(timeout=120)
    if proc.returncode != 0:
        assert proc.returncode == 143 and "slidefuse: terminated (SIGTERM)" in rest, rest
    assert [p.name for p in out.glob("*.lock")] == [] and not list(out.glob("*/" + CLAIM_NAME))


@pytest.fixture
def handler() -> Iterator[None]:
    """The command line's handler installed in this (main) thread; the previous handlers restored after."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupt.install_handler()
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)
        interrupt.STOP.clear()


def _raise_in_thread() -> BaseException | None:
    caught: list[BaseException] = []

    def work() -> None:
        try:
            interrupt.check()
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return caught[0] if caught else None


def _kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(1.0)  # the handler runs here, on the main thread


def test_sigterm_raises_terminated_everywhere_and_exits_143(handler: None) -> None:
    with pytest.raises(interrupt.Terminated) as info:
        _kill_self(signal.SIGTERM)
    assert isinstance(info.value, KeyboardInterrupt)  # every Ctrl-C clean-up runs for it
    assert interrupt.exit_code(info.value) == 143
    assert isinstance(_raise_in_thread(), interrupt.Terminated)  # work on other threads stops the same way
    _kill_self(signal.SIGTERM)  # a repeated SIGTERM does not cut the clean-up short


def test_sigint_raises_keyboardinterrupt_and_exits_130(handler: None) -> None:
    with pytest.raises(KeyboardInterrupt) as info:
        _kill_self(signal.SIGINT)
    assert not isinstance(info.value, interrupt.Terminated) and interrupt.exit_code(info.value) == 130
    caught = _raise_in_thread()
    assert isinstance(caught, KeyboardInterrupt) and not isinstance(caught, interrupt.Terminated)


def test_the_library_installs_no_handler() -> None:
    code = ("import signal, slidefuse, slidefuse.api, slidefuse.runtime.segment; "
            "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, signal.getsignal(signal.SIGINT))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[0] == "True", done.stdout + done.stderr
    assert "default_int_handler" in done.stdout  # Python's own, not the command line's
