"""Per-slide claim files, so that any number of `slidefuse segment` processes (one machine or many sharing a
folder, Slurm array jobs, Ray workers) share one slide list and one OUT with no slide done twice.

A claim is the file `OUT/<slide>/.lock`, holding JSON (owner, host, pid, run id, started). It is created
whole: written under a unique name first, then hard-linked to `.lock`, which fails when `.lock` exists (link
is atomic on local file systems and on NFS; where a file system cannot link, `O_CREAT | O_EXCL` is used).
The file's modification time is the heartbeat: the holder touches it every `heartbeat` seconds from one
background thread (`ClaimSet`). A claim is stale when its heartbeat is older than `timeout` seconds, or, on
the same host, when its process is gone; a stale claim is taken over under a second, short-lived exclusive
file (`.lock.takeover`), so two processes never both take over one claim. A claim is removed when its slide
is finished or failed; a killed process leaves it to be taken over.

`exclusive_file` is the same primitive as a mutex for short critical sections (the run log's merged
rewrite uses it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CLAIM_NAME = ".lock"  # a slide's claim file inside its output folder
DEFAULT_TIMEOUT = 120.0  # seconds without a heartbeat after which a claim is stale


def _host() -> str:
    return socket.gethostname()


@dataclass(frozen=True)
class ClaimInfo:
    """What a claim file records about its holder."""

    owner: str  # unique per claim holder (process or Ray attempt); the holder compares it before release
    host: str  # host name of the holder
    pid: int  # process id of the holder on `host`
    run_id: str  # the batch run that holds it
    started: float  # when the claim was made (seconds since the epoch, holder's clock)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def read(cls, path: Path) -> ClaimInfo | None:
        """The claim in `path`; None when it is absent or unreadable (being written, or foreign)."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(str(d["owner"]), str(d["host"]), int(d["pid"]), str(d["run_id"]), float(d["started"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _link_exclusive(target: Path, text: str) -> bool:
    """Create `target` holding `text`, atomically and only if it does not exist; True when created."""
    tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex}.new")
    tmp.write_text(text, encoding="utf-8")
    try:
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            # NFS may report a link that did succeed as failed (lost reply): the link count tells.
            return os.stat(tmp).st_nlink == 2
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
        try:  # a file system without hard links
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def heartbeat_age(path: Path) -> float | None:
    """Seconds since `path` was last touched; None when it does not exist."""
    try:
        return max(0.0, time.time() - os.stat(path).st_mtime)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def exclusive_file(path: Path, *, wait: float = 30.0, stale_after: float = 60.0) -> Iterator[None]:
    """Hold `path` as a mutex across processes and hosts for the block (created exclusively, removed after).

    Waits up to `wait` seconds (then TimeoutError); a mutex file older than `stale_after` seconds (its holder
    was killed inside the block) is removed and taken.
    """
    path = Path(path)
    deadline = time.monotonic() + wait
    me = json.dumps({"host": _host(), "pid": os.getpid(), "time": time.time()})
    while not _link_exclusive(path, me):
        age = heartbeat_age(path)
        if age is not None and age > stale_after:
            log.info("%s: left by a killed process %.0f s ago; removed", path, age)
            path.unlink(missing_ok=True)
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: held by another process for more than {wait:.0f} s; if no slidefuse "
                               "process runs on this folder, delete it")
        time.sleep(0.01)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class ClaimPolicy:
    """How claims behave."""

    timeout: float = DEFAULT_TIMEOUT  # seconds without a heartbeat after which a claim may be taken over
    heartbeat: float | None = None  # seconds between heartbeats; None = timeout / 4

    @property
    def interval(self) -> float:
        return self.heartbeat if self.heartbeat is not None else max(0.05, self.timeout / 4)


class ClaimSet:
    """The claims one holder (a process, or a Ray worker) has; a heartbeat thread keeps them fresh.

    Use as a context manager: the thread starts on entry; on exit every claim still held is released.
    """

    def __init__(self, run_id: str, policy: ClaimPolicy | None = None) -> None:
        self.run_id = run_id
        self.policy = policy or ClaimPolicy()
        self._held: dict[Path, str] = {}  # claim file -> owner token
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ClaimSet:
        self._thread = threading.Thread(target=self._beat, name="slidefuse-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for path in list(self._held):
            self.release(path.parent)

    def held(self) -> list[Path]:
        """The slide folders whose claims this set holds."""
        with self._lock:
            return [p.parent for p in self._held]

    def _beat(self) -> None:
        while not self._stop.wait(self.policy.interval):
            with self._lock:
                held = dict(self._held)
            for path, owner in held.items():
                info = ClaimInfo.read(path)
                if info is None or info.owner != owner:
                    log.warning("%s: this process's claim was taken over (no heartbeat for %.0f s?)",
                                path, self.policy.timeout)
                    with self._lock:
                        self._held.pop(path, None)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.utime(path)

    def _stale(self, path: Path, supersede: str | None) -> ClaimInfo | None:
        """The claim in `path` when it may be taken over (stale, dead, or `supersede`'s), else None."""
        info = ClaimInfo.read(path)
        age = heartbeat_age(path)
        if age is None:
            return None
        if info is not None and supersede is not None and info.owner == supersede:
            return info
        if info is not None and info.host == _host() and not _pid_alive(info.pid):
            return info
        if age > self.policy.timeout:
            return info or ClaimInfo("?", "?", 0, "?", 0.0)
        return None

    def try_claim(self, slide_dir: Path, *, owner: str | None = None, supersede: str | None = None) -> bool:
        """Claim `slide_dir` (created if needed); True when this set now holds it, False when another holder
        does. A stale claim (no heartbeat for `timeout`, or a dead process on this host), or one whose owner
        is `supersede` (a Ray attempt known to have died), is taken over."""
        slide_dir = Path(slide_dir)
        slide_dir.mkdir(parents=True, exist_ok=True)
        path = slide_dir / CLAIM_NAME
        owner = owner or f"{self.run_id}:{uuid.uuid4().hex[:12]}"
        me = ClaimInfo(owner, _host(), os.getpid(), self.run_id, time.time())
        if not _link_exclusive(path, me.to_json()):
            old = self._stale(path, supersede)
            if old is None or not self._take_over(path, old, me):
                return False
        with self._lock:
            self._held[path] = owner
        log.debug("%s: claimed by %s", slide_dir, owner)
        return True

    def _take_over(self, path: Path, old: ClaimInfo, me: ClaimInfo) -> bool:
        try:
            with exclusive_file(path.with_name(CLAIM_NAME + ".takeover"), wait=5.0,
                                stale_after=max(10.0, self.policy.timeout)):
                now = ClaimInfo.read(path)
                if now is not None and now.owner != old.owner:
                    return False  # someone else took it over first
                log.info("%s: taking over the claim of %s (pid %d on %s)", path.parent, old.owner, old.pid,
                         old.host)
                path.unlink(missing_ok=True)
                return _link_exclusive(path, me.to_json())
        except TimeoutError:
            return False

    def release(self, slide_dir: Path) -> None:
        """Remove this set's claim on `slide_dir` (only when it is still this set's)."""
        path = Path(slide_dir) / CLAIM_NAME
        with self._lock:
            owner = self._held.pop(path, None)
        if owner is None:
            return
        info = ClaimInfo.read(path)
        if info is not None and info.owner == owner:
            path.unlink(missing_ok=True)


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n (the shard this process takes of n static shares of the slide list)."""
    from slidefuse.errors import UsageError

    i_text, sep, n_text = str(text).partition("/")
    try:
        i, n = int(i_text), int(n_text)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise UsageError(f"shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4 (Slurm: "
                         "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)", field="shard")
    return i, n


def new_run_id() -> str:
    """A batch run's id: host, pid and a random part (unique across hosts and restarts)."""
    return f"{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
