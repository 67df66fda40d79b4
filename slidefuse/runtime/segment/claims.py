"""Per-slide claim files, so that any number of `slidefuse segment` processes (one machine or many sharing a
folder, Slurm array jobs, Ray workers) share one slide list and one OUT with no slide done twice.

A claim is the file `OUT/<slide>/.lock`, holding JSON (owner, host, pid, run id, started, epoch). It is
created whole: written under a unique name first, then hard-linked to `.lock`, which fails when `.lock`
exists (link is atomic on local file systems and on NFS; where a file system cannot link, `O_CREAT | O_EXCL`
is used). The file's modification time is the heartbeat: the holder touches it every `heartbeat` seconds
from one background thread (`ClaimSet`). A claim is stale when its heartbeat is older than `timeout` seconds,
or, on the same host, when its process is gone; a stale claim is taken over under a second, short-lived
exclusive file (`.lock.takeover`), so two processes never both take over one claim. A claim is removed when
its slide is finished or failed; a killed process leaves it to be taken over.

Fencing. Each claim has an owner id and an epoch (1 for a new claim, one more at each takeover). The holder
writes under `ClaimSet.fence(slide)` (`slidefuse.atomic.Fence`): its temporaries carry the owner's tag, and
every commit step (a rename into place, report.json, the run-log record) first checks that the claim file
still names this owner at this epoch, raising `ClaimLost` otherwise. A holder that was paused past the
timeout and taken over therefore stops at its next commit step and never overwrites the new holder's files.

A `.lock` that is not a claim (empty, unparseable, or an empty folder: never a claim being written, since
claims appear whole) is taken over once it is `GARBAGE_GRACE` seconds old; a non-empty folder in its place is
refused (`ClaimBlocked`, naming the path), since its content is not ours to remove.

`exclusive_file` is the same primitive as a mutex for short critical sections (the run log's merged
rewrite uses it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from slidefuse.atomic import Fence
from slidefuse.errors import ClaimBlocked, ClaimLost

log = logging.getLogger(__name__)

CLAIM_NAME = ".lock"  # a slide's claim file inside its output folder
DEFAULT_TIMEOUT = 120.0  # seconds without a heartbeat after which a claim is stale
GARBAGE_GRACE = 3.0  # seconds after which a `.lock` that is no claim (empty, unparseable, a folder) is stale


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
    epoch: int = 1  # 1 for a new claim, one more at each takeover (0: a claim of an older slidefuse)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @property
    def holder(self) -> str:
        """host:pid of the holder."""
        return f"{self.host}:{self.pid}"

    @property
    def tag(self) -> str:
        """The owner's tag in temporary file names (12 hex digits of its hash)."""
        return hashlib.sha256(self.owner.encode("utf-8")).hexdigest()[:12]

    @classmethod
    def read(cls, path: Path) -> ClaimInfo | None:
        """The claim in `path`; None when it is absent or unreadable (not a claim: foreign or damaged)."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(str(d["owner"]), str(d["host"]), int(d["pid"]), str(d["run_id"]), float(d["started"]),
                       int(d.get("epoch", 0)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


_GARBAGE = ClaimInfo("?", "?", 0, "?", 0.0, 0)  # stands for a `.lock` that holds no claim


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


def _holder_gone(path: Path) -> bool:
    """Whether the mutex file `path` names a process of this host that no longer exists."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return bool(d["host"] == _host() and not _pid_alive(int(d["pid"])))
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def exclusive_file(path: Path, *, wait: float = 30.0, stale_after: float = 60.0) -> Iterator[None]:
    """Hold `path` as a mutex across processes and hosts for the block (created exclusively, removed after).

    Waits up to `wait` seconds (then TimeoutError); a mutex file whose holder was killed inside the block (a
    process of this host that is gone, or any holder once the file is older than `stale_after` seconds) is
    removed and taken.
    """
    path = Path(path)
    deadline = time.monotonic() + wait
    me = json.dumps({"host": _host(), "pid": os.getpid(), "time": time.time()})
    while not _link_exclusive(path, me):
        age = heartbeat_age(path)
        if age is not None and (age > stale_after or _holder_gone(path)):
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
        self._held: dict[Path, ClaimInfo] = {}  # claim file -> this set's claim in it
        self._lost: dict[Path, str] = {}  # claim file -> who took it over (host:pid), as the heartbeat found
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
            for path, mine in held.items():
                info = ClaimInfo.read(path)
                if info is None or (info.owner, info.epoch) != (mine.owner, mine.epoch):
                    self._mark_lost(path, info)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.utime(path)

    def _mark_lost(self, path: Path, now: ClaimInfo | None) -> str:
        holder = now.holder if now is not None else "nobody (the claim file is gone)"
        with self._lock:
            if self._held.pop(path, None) is not None:
                log.warning("%s: this process's claim was taken over by %s (no heartbeat for %.0f s?); its work "
                            "on the slide stops", path.parent, holder, self.policy.timeout)
            self._lost[path] = holder
        return holder

    def _stale(self, path: Path, supersede: str | None) -> ClaimInfo | None:
        """The claim in `path` when it may be taken over (stale, dead, `supersede`'s, or no claim at all
        for `GARBAGE_GRACE` seconds), else None."""
        info = ClaimInfo.read(path)
        age = heartbeat_age(path)
        if age is None:
            return None
        if info is None:
            return _GARBAGE if age > min(GARBAGE_GRACE, self.policy.timeout) else None
        if supersede is not None and info.owner == supersede:
            return info
        if info.host == _host() and not _pid_alive(info.pid):
            return info
        return info if age > self.policy.timeout else None

    def try_claim(self, slide_dir: Path, *, owner: str | None = None, supersede: str | None = None) -> bool:
        """Claim `slide_dir` (created if needed); True when this set now holds it, False when another holder
        does. A stale claim (no heartbeat for `timeout`, or a dead process on this host), or one whose owner
        is `supersede` (a Ray attempt known to have died), is taken over. Raises ClaimBlocked when a non-empty
        folder stands where the claim file goes."""
        slide_dir = Path(slide_dir)
        path = slide_dir / CLAIM_NAME
        owner = owner or f"{self.run_id}:{uuid.uuid4().hex[:12]}"
        me = ClaimInfo(owner, _host(), os.getpid(), self.run_id, time.time())
        if not self._create(path, me):
            _refuse_folder(path)
            old = self._stale(path, supersede)
            me = replace(me, epoch=old.epoch + 1) if old is not None else me
            if old is None or not self._take_over(path, old, me):
                return False
        with self._lock:
            self._held[path] = me
            self._lost.pop(path, None)
        log.debug("%s: claimed by %s (epoch %d)", slide_dir, owner, me.epoch)
        return True

    @staticmethod
    def _create(path: Path, me: ClaimInfo) -> bool:
        """Link a new claim into place (the folder made first; made again if another process removed it)."""
        for _ in range(3):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                return _link_exclusive(path, me.to_json())
            except FileNotFoundError:  # the folder was removed meanwhile (an empty folder given up): again
                continue
        return _link_exclusive(path, me.to_json())

    def _take_over(self, path: Path, old: ClaimInfo, me: ClaimInfo) -> bool:
        try:
            with exclusive_file(path.with_name(CLAIM_NAME + ".takeover"), wait=5.0,
                                stale_after=max(10.0, self.policy.timeout)):
                now = ClaimInfo.read(path)
                if now is not None and now.owner != old.owner:
                    return False  # someone else took it over first
                if old is _GARBAGE:
                    log.warning("%s: not a slidefuse claim (empty, unreadable or an empty folder) for %.0f s; "
                                "taken over", path, heartbeat_age(path) or 0.0)
                else:
                    log.info("%s: taking over the claim of %s (pid %d on %s, epoch %d)", path.parent, old.owner,
                             old.pid, old.host, old.epoch)
                _remove_claim_file(path)
                return _link_exclusive(path, me.to_json())
        except TimeoutError:
            return False

    def fence(self, slide_dir: Path) -> Fence:
        """The fence of this set's claim on `slide_dir` (held now): its tag names the claim's temporaries, its
        check raises ClaimLost once the claim is no longer this set's at this epoch."""
        path = Path(slide_dir) / CLAIM_NAME
        with self._lock:
            mine = self._held.get(path)
        if mine is None:
            raise ClaimLost(f"{slide_dir}: this process holds no claim on it")
        return Fence(mine.tag, lambda: self.check(Path(slide_dir)))

    def claim_of(self, slide_dir: Path) -> ClaimInfo | None:
        """This set's claim on `slide_dir` as it made it; None when it holds none."""
        with self._lock:
            return self._held.get(Path(slide_dir) / CLAIM_NAME)

    def check(self, slide_dir: Path) -> None:
        """Raise ClaimLost unless the claim file of `slide_dir` still names this set's owner at its epoch
        (read from the file: the commit steps' check)."""
        path = Path(slide_dir) / CLAIM_NAME
        with self._lock:
            mine, lost = self._held.get(path), self._lost.get(path)
        if mine is None:
            raise ClaimLost(f"{slide_dir}: this process's claim was taken over by {lost or 'another process'}; "
                            "its work on the slide stopped", holder=lost)
        now = ClaimInfo.read(path)
        if now is None or (now.owner, now.epoch) != (mine.owner, mine.epoch):
            holder = self._mark_lost(path, now)
            raise ClaimLost(f"{slide_dir}: this process's claim (epoch {mine.epoch}) was taken over by {holder}"
                            + (f" (epoch {now.epoch})" if now is not None else "") + "; its work on the slide "
                            "stopped", holder=holder)

    def lost(self, slide_dir: Path) -> str | None:
        """Who took this set's claim on `slide_dir` over, as the heartbeat found (no file read); else None."""
        with self._lock:
            return self._lost.get(Path(slide_dir) / CLAIM_NAME)

    def release(self, slide_dir: Path) -> None:
        """Remove this set's claim on `slide_dir` (only when it is still this set's)."""
        path = Path(slide_dir) / CLAIM_NAME
        with self._lock:
            mine = self._held.pop(path, None)
        if mine is None:
            return
        info = ClaimInfo.read(path)
        if info is not None and (info.owner, info.epoch) == (mine.owner, mine.epoch):
            path.unlink(missing_ok=True)


def holder_of(slide_dir: Path) -> str | None:
    """host:pid of the process whose claim is on `slide_dir` now; None when there is no readable claim."""
    info = ClaimInfo.read(Path(slide_dir) / CLAIM_NAME)
    return info.holder if info is not None else None


def _refuse_folder(path: Path) -> None:
    """Raise ClaimBlocked when a non-empty folder stands where the claim file goes."""
    try:
        full = path.is_dir() and any(path.iterdir())
    except OSError:  # gone meanwhile, or unreadable: the claim itself then says what is wrong
        full = False
    if full:
        raise ClaimBlocked(f"{path}: a folder, not a slidefuse claim file, stands where the slide's claim goes; "
                           f"remove it (rm -r '{path}') and run again")


def _remove_claim_file(path: Path) -> None:
    """Remove the claim file `path` (an empty folder in its place too; ClaimBlocked for a non-empty one)."""
    if not path.is_dir():
        path.unlink(missing_ok=True)
        return
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:  # something was put inside meanwhile: not ours to remove
        _refuse_folder(path)
        raise ClaimBlocked(f"{path}: cannot remove this folder standing where the slide's claim goes "
                           f"({exc.strerror}); remove it and run again") from None


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
