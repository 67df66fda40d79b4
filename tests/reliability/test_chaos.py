"""Fault injection over seeded rounds (slow): 3-4 real `slidefuse segment` processes share one list of eight slides
and one OUT, and one or two of them get a fault at a seeded moment of a chosen stage (planning, inference, the
output writes, or anywhere): SIGKILL, SIGSTOP for longer than --claim-timeout then SIGCONT, or SIGTERM. One round
also starts from a garbage and an empty `.lock` and a garbage run-log line; another kills every process, and a
final plain run completes the list, as an operator would. After each round: every slide done exactly once by one
of the round's processes, whose report.json matches the files (sizes by os.stat, mask.tif and mask.geojson decoded
whole), run.json lists every slide, nothing temporary is left, and each exit code is true to what the process did
(its own run-log records and summary line). Reproduce a round with SLIDEFUSE_CHAOS_SEED (printed)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from distributed.helpers import make_slides, write_list
from runtime.onnx_models import COLOUR_CLASSES

from slidefuse.runtime.segment.claims import CLAIM_NAME

from .claims_helpers import (
    assert_outputs_whole,
    holder_pid,
    leftovers,
    out_listing,
    parse_records,
    raw_masks,
    segment_process,
    summary_counts,
)

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("SLIDEFUSE_CHAOS_SEED", "27"))
CLAIM_TIMEOUT_S = 3.0  # --claim-timeout of every process: heartbeat every 0.75 s, a SIGSTOP of 4.5+ s loses it
PROCESS_LIMIT_S = 240.0  # a process still running this long after its round's faults is a hang
Stage = Literal["planning", "inference", "outputs", "recorded", "any"]
Sig = Literal["SIGKILL", "SIGSTOP", "SIGTERM"]


@dataclass(frozen=True)
class Fault:
    sig: Sig  # what the victim gets (SIGSTOP: then SIGCONT after CLAIM_TIMEOUT_S + 1.5..3 s)
    stage: Stage  # when: a slide folder of the victim's in this stage, plus 0..0.25 s; "any": 0.2..1.5 s later


@dataclass(frozen=True)
class Round:
    name: str
    processes: int
    faults: tuple[Fault, ...]
    garbage: bool = False  # an empty and a garbage `.lock`, and a garbage `.run/*.jsonl` line, before the start


ROUNDS = (
    Round("kill-in-planning", 3, (Fault("SIGKILL", "planning"),)),
    Round("stop-in-inference", 4, (Fault("SIGSTOP", "inference"),)),
    Round("term-in-outputs", 3, (Fault("SIGTERM", "outputs"),)),
    Round("kill-and-term", 4, (Fault("SIGKILL", "inference"), Fault("SIGTERM", "planning"))),
    Round("garbage-then-stop-in-outputs", 3, (Fault("SIGSTOP", "outputs"),), garbage=True),
    Round("kill-after-report", 4, (Fault("SIGKILL", "recorded"),)),
    Round("stop-in-planning-and-kill", 4, (Fault("SIGSTOP", "planning"), Fault("SIGKILL", "outputs"))),
    Round("kill-all", 3, (Fault("SIGKILL", "planning"), Fault("SIGKILL", "any"), Fault("SIGKILL", "any"))),
)
PLANTED = "planted-0-00000000.jsonl"  # the garbage run log of the garbage round


@dataclass
class Proc:
    """One `slidefuse segment` process of a round, and the fault it got."""

    popen: subprocess.Popen[str]
    log: Path  # its stderr (log lines and summary)
    sig: Sig | None = None  # the fault it got (sent while it was running)
    when: str = ""  # where and when the fault hit it
    stderr: str = ""  # read once it ended

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Outcome:
    """What one round did, for its table row and the invariants."""

    procs: list[Proc]
    final: Proc | None = None  # the plain run that completed the list after every process was killed
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def row(self, spec: Round, seed: int, records: list[dict[str, Any]]) -> str:
        """One line: the faults (victim, stage, moment), each process's exit code and own records (o ok, s
        skipped, c claim lost, f failed), the final run, the seconds."""
        faults = "; ".join(f"{p.sig} pid {p.pid} {p.when}" for p in self.procs if p.sig) or "none hit"
        codes = " ".join(f"{p.popen.returncode}({_tally(records, p.pid)})" for p in self.procs)
        final = "" if self.final is None else \
            f" | final run exit {self.final.popen.returncode}({_tally(records, self.final.pid)})"
        notes = f" | {'; '.join(self.notes)}" if self.notes else ""
        return (f"{spec.name:<30} seed {seed} | {spec.processes} procs | {faults} | exits {codes}{final} | "
                f"{self.seconds:.1f} s{notes}")


def _tally(records: list[dict[str, Any]], pid: int) -> str:
    counts = Counter(str(e["status"]) for e in records if e.get("pid") == pid)
    return "".join(f"{counts[s]}{s[0]}" for s in ("ok", "skipped", "claim_lost", "failed") if counts[s]) or "-"


@pytest.fixture(scope="module")
def chaos_slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight slides: six of 1024 x 768 px and two of 3072 x 2048 px (0.5 um/px), the larger ones second and fifth."""
    folder = tmp_path_factory.mktemp("chaos-slides")
    small = make_slides(folder, 6, size=(1024, 768))
    big = make_slides(folder, 2, size=(3072, 2048), prefix="b")
    return [small[0], big[0], small[1], small[2], big[1], small[3], small[4], small[5]]


def _stage_of(slide_dir: Path) -> str:
    """Which stage a slide folder shows: "outputs" (tissue.png or a `*.partial` written, no report.json yet),
    "inference" (the raw mask), "planning" (claimed, nothing written yet) or "recorded" (report.json)."""
    try:
        names = os.listdir(slide_dir)
    except OSError:
        return "planning"
    if "report.json" in names:
        return "recorded"
    if "tissue.png" in names or any(".partial" in n for n in names):
        return "outputs"
    return "inference" if raw_masks(slide_dir) else "planning"


def _find_victim(stage: Stage, dirs: list[Path], live: dict[int, Proc], rng: random.Random) -> Proc | None:
    """A live, unfaulted process that holds a slide in `stage` now (None if none does)."""
    for d in rng.sample(dirs, len(dirs)):
        pid = holder_pid(d)
        if pid in live and _stage_of(d) == stage:
            return live[pid]
    return None


def _wait_for_victim(stage: Stage, dirs: list[Path], procs: list[Proc], rng: random.Random,
                     t0: float) -> tuple[Proc | None, str]:
    """The victim of a fault at `stage`, and when it was found; a random live process when none was caught
    in that stage before every process ended or 90 s passed ("missed")."""
    deadline = time.monotonic() + 90.0
    if stage == "any":
        time.sleep(rng.uniform(0.2, 1.5))
    while time.monotonic() < deadline:
        live = {p.pid: p for p in procs if p.sig is None and p.popen.poll() is None}
        if not live:
            return None, f"{stage}: every process had ended"
        if stage == "any":
            return rng.choice(sorted(live.values(), key=lambda p: p.pid)), f"any, t={time.monotonic() - t0:.1f} s"
        victim = _find_victim(stage, dirs, live, rng)
        if victim is not None:
            delay = 0.0 if stage == "recorded" else rng.uniform(0.0, 0.25)  # "recorded" lasts milliseconds
            time.sleep(delay)
            return victim, f"{stage}+{delay:.2f} s, t={time.monotonic() - t0:.1f} s"
        time.sleep(0.01)
    live = {p.pid: p for p in procs if p.sig is None and p.popen.poll() is None}
    pick = rng.choice(sorted(live.values(), key=lambda p: p.pid)) if live else None
    return pick, f"{stage} missed, t={time.monotonic() - t0:.1f} s"


def _inject(fault: Fault, dirs: list[Path], procs: list[Proc], rng: random.Random, t0: float,
            timers: list[threading.Timer]) -> str | None:
    """Send `fault` to its victim; returns a note when it hit nobody."""
    victim, when = _wait_for_victim(fault.stage, dirs, procs, rng, t0)
    if victim is None or victim.popen.poll() is not None:
        return f"{fault.sig} not sent ({when})"
    victim.sig, victim.when = fault.sig, when
    os.kill(victim.pid, getattr(signal, fault.sig))
    if fault.sig == "SIGSTOP":
        hold = CLAIM_TIMEOUT_S + rng.uniform(1.5, 3.0)
        victim.when += f", resumed after {hold:.1f} s"
        timer = threading.Timer(hold, os.kill, args=(victim.pid, signal.SIGCONT))
        timer.start()
        timers.append(timer)
    return None


def _plant_garbage(out: Path, slides: list[Path], rng: random.Random) -> None:
    """An empty `.lock` and one of random bytes in two slide folders, and a run log with two damaged lines."""
    for slide, content in ((slides[0], b""), (slides[3], rng.randbytes(64))):
        (out / slide.stem).mkdir(parents=True)
        (out / slide.stem / CLAIM_NAME).write_bytes(content)
    (out / ".run").mkdir(parents=True)
    (out / ".run" / PLANTED).write_bytes(b'\x00\xff not a record\n{"slide": 5, "status": "ok"}\n')


def _launch(list_file: Path, bundle: Path, out: Path, log: Path) -> Proc:
    """A `slidefuse segment` process, reaped as soon as it ends (as a shell or Slurm would: a killed process left
    a zombie still answers kill(pid, 0), so its claims and mutexes would look alive to the others)."""
    with open(log, "w", encoding="utf-8") as f:  # the child keeps its own handle
        popen = segment_process(list_file, bundle, out, "--claim-timeout", str(CLAIM_TIMEOUT_S), quiet=False,
                                stderr=f)
    threading.Thread(target=popen.wait, name=f"reap-{popen.pid}", daemon=True).start()
    return Proc(popen, log)


def _end(proc: Proc, timeout: float) -> None:
    proc.popen.communicate(timeout=timeout)
    proc.stderr = proc.log.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def _reaped(procs: list[Proc], timers: list[threading.Timer]) -> Iterator[None]:
    """On the way out (a failure included): resume the stopped, kill whatever still runs, wait for them all."""
    try:
        yield
    finally:
        for t in timers:
            t.cancel()
        for p in procs:
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
        for t in timers:
            t.join()
        for p in procs:
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait(timeout=60)


def _run_round(spec: Round, rng: random.Random, bundle: Path, slides: list[Path], tmp: Path) -> Outcome:
    """Start the round's processes, inject its faults, let the survivors finish (or, when none is left, run one
    plain process that completes the list) and return what happened."""
    out, list_file = tmp / "out", write_list(tmp / "slides.txt", slides)
    if spec.garbage:
        _plant_garbage(out, slides, rng)
    dirs = [out / s.stem for s in slides]
    t0 = time.monotonic()
    procs = [_launch(list_file, bundle, out, tmp / f"proc{i}.log") for i in range(spec.processes)]
    outcome, timers = Outcome(procs), list[threading.Timer]()
    with _reaped(procs, timers):
        for fault in spec.faults:
            note = _inject(fault, dirs, procs, rng, t0, timers)
            if note is not None:
                outcome.notes.append(note)
        for t in timers:
            t.join()  # resumed before anyone is waited for
        for p in procs:
            _end(p, PROCESS_LIMIT_S)
    if any(p.sig in (None, "SIGSTOP") for p in procs):  # survivors finish the list, nobody else needed
        undone = [d.name for d in dirs if not (d / "report.json").is_file()]
        assert undone == [], f"survivors ended with slides undone: {undone}\n{_evidence(out, outcome)}"
    else:  # every process was killed or terminated: the operator runs it once more
        final = _launch(list_file, bundle, out, tmp / "final.log")
        with _reaped([final], []):
            _end(final, PROCESS_LIMIT_S)
        outcome.final = final
    outcome.seconds = time.monotonic() - t0
    return outcome


def _evidence(out: Path, outcome: Outcome) -> str:
    """What an invariant failure shows: the OUT listing, every run-log record, each process's last log lines."""
    records, damaged = parse_records(out)
    rows = [json.dumps({k: e.get(k) for k in ("slide", "status", "pid", "run_id", "t", "error", "holder")})
            for e in records]
    logs = [f"--- pid {p.pid} ({p.sig or 'no fault'}, exit {p.popen.returncode}):\n{p.stderr[-1500:]}"
            for p in [*outcome.procs, *([outcome.final] if outcome.final else [])]]
    return (f"OUT:\n{out_listing(out)}\nrecords:\n" + "\n".join(rows) + f"\ndamaged lines: {damaged}\n"
            + "\n".join(logs))


def _writer_pid(run_id: str) -> int:
    """The pid in a run id (`host-pid-random`)."""
    return int(run_id.rsplit("-", 2)[1])


def _check_slides(out: Path, slides: list[Path], outcome: Outcome, records: list[dict[str, Any]]) -> None:
    """Each slide: outputs whole and as report.json records them, written by one of the round's processes, which
    alone recorded it "ok"; or, when that writer was killed between its report.json and its record, recorded
    "skipped" by the process that took its claim over. run.json lists every slide so."""
    pids = {p.pid for p in outcome.procs} | ({outcome.final.pid} if outcome.final else set())
    killed = {p.pid for p in outcome.procs if p.sig == "SIGKILL"}
    expected: dict[str, str] = {}
    for s in slides:
        report = assert_outputs_whole(out / s.stem, len(COLOUR_CLASSES))
        writer = str(report["run"]["run_id"])
        assert _writer_pid(writer) in pids, f"{s.name}: written by {writer}, no process of this round"
        oks = [e for e in records if e["slide"] == str(s) and e["status"] == "ok"]
        assert len(oks) <= 1, f"{s.name}: recorded ok by {len(oks)} processes: {[e['pid'] for e in oks]}"
        if oks:
            assert oks[0]["run_id"] == writer, f"{s.name}: report.json by {writer}, ok recorded by {oks[0]['run_id']}"
            expected[str(s)] = "ok"
        else:
            skips = [e for e in records if e["slide"] == str(s) and e["status"] == "skipped"]
            assert _writer_pid(writer) in killed and skips, f"{s.name}: written by {writer}, never recorded ok"
            expected[str(s)] = "skipped"
    run = json.loads((out / "run.json").read_text())
    assert {e["slide"]: e["status"] for e in run["slides"]} == expected and len(run["slides"]) == len(slides)
    assert sum(run["counts"].values()) == len(slides) and run["counts"]["ok"] == list(expected.values()).count("ok")


def _check_exit(proc: Proc, own: Counter[str]) -> None:
    """The exit code is true to what the process did: -9 killed, 143 terminated (with its line); otherwise its
    summary counts its own run-log records, and it is 0 exactly when none of its slides failed."""
    assert "Traceback" not in proc.stderr, f"pid {proc.pid} printed a traceback"
    if proc.sig == "SIGKILL":
        assert proc.popen.returncode == -signal.SIGKILL, f"pid {proc.pid}: SIGKILLed, exit {proc.popen.returncode}"
        return
    if proc.sig == "SIGTERM":
        assert proc.popen.returncode == 143 and "slidefuse: terminated (SIGTERM)" in proc.stderr, \
            f"pid {proc.pid}: SIGTERMed, exit {proc.popen.returncode}"
        return
    counts = summary_counts(proc.stderr)
    assert counts is not None, f"pid {proc.pid}: no summary line"
    statuses = ("ok", "skipped", "failed", "claim_lost")
    assert {k: counts[k] for k in statuses} == {k: own[k] for k in statuses}, \
        f"pid {proc.pid}: summary {counts}, own records {dict(own)}"
    assert proc.popen.returncode == (1 if counts["failed"] else 0), f"pid {proc.pid}: exit {proc.popen.returncode}"


def _check_records(out: Path, outcome: Outcome, damaged: dict[str, list[int]]) -> None:
    """No process wrote a damaged record; only the planted file, and a killed process's last line, may be."""
    killed_runs = {f.name for f in (out / ".run").glob("*.jsonl")
                   if f.name != PLANTED and _writer_pid(f.stem) in {p.pid for p in outcome.procs if p.sig == "SIGKILL"}}
    for name, lines in damaged.items():
        if name == PLANTED:
            continue
        last = len((out / ".run" / name).read_bytes().splitlines())
        assert name in killed_runs and lines == [last], f"{name}: damaged lines {lines}"


def _check_round(out: Path, slides: list[Path], outcome: Outcome) -> None:
    records, damaged = parse_records(out)
    _check_records(out, outcome, damaged)
    _check_slides(out, slides, outcome, records)
    assert leftovers(out) == [], f"left behind: {leftovers(out)}"
    assert not any(e["status"] == "failed" for e in records), "a healthy slide failed"
    for p in [*outcome.procs, *([outcome.final] if outcome.final else [])]:
        _check_exit(p, Counter(str(e["status"]) for e in records if e.get("pid") == p.pid))


@pytest.mark.parametrize("number", range(len(ROUNDS)), ids=[r.name for r in ROUNDS])
def test_chaos_round(number: int, tmp_path: Path, claims_bundle: Path, chaos_slides: list[Path]) -> None:
    spec, seed = ROUNDS[number], SEED * 100 + number
    outcome = _run_round(spec, random.Random(seed), claims_bundle, chaos_slides, tmp_path)
    out = tmp_path / "out"
    row = outcome.row(spec, seed, parse_records(out)[0])
    print(f"\nchaos round | {row}")
    try:
        _check_round(out, chaos_slides, outcome)
        if spec.garbage:  # both garbage claims were taken over, and the damaged run log named, by someone
            logs = "".join(p.stderr for p in outcome.procs)
            assert logs.count("not a slidefuse claim") == 2 and f"{PLANTED}: 2 damaged line(s) skipped" in logs
    except AssertionError as exc:
        raise AssertionError(f"{row}\n{exc}\n{_evidence(out, outcome)}") from None
