"""Outputs on a cluster go to a folder every node sees (a shared file system: NFS, Lustre, a mounted bucket).

The driver writes a token file into OUT before any worker starts; each worker, wherever it runs, reads it
back. A worker that cannot see it is on a node that does not share OUT, and the run is refused with the
node named, before any slide is touched.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from slidefuse.atomic import write_text_atomic
from slidefuse.errors import SlidefuseError

TOKEN_PREFIX = ".slidefuse-shared-"  # OUT/.slidefuse-shared-<run id>: removed when the run ends


class SharedStorageError(SlidefuseError, OSError):
    """An output folder that some node of the cluster cannot see."""


def write_token(out_root: Path, run_id: str) -> tuple[Path, str]:
    """Write OUT/.slidefuse-shared-<run id> holding a random token; returns (its path, the token)."""
    token = uuid.uuid4().hex
    path = Path(out_root) / f"{TOKEN_PREFIX}{run_id}"
    write_text_atomic(path, token)
    return path, token


def check_token(token_path: Path, token: str) -> None:
    """Raise SharedStorageError unless `token_path` holds `token` as seen from this process's node."""
    try:
        seen = Path(token_path).read_text(encoding="utf-8").strip()
    except OSError:
        seen = None
    if seen != token:
        raise SharedStorageError(
            f"out={Path(token_path).parent} is not shared with host {socket.gethostname()} (pid {os.getpid()}): "
            f"the file {Path(token_path).name} the driver wrote there is {'absent' if seen is None else 'different'}"
            " on this node; a multi-node run needs an out folder on storage every node mounts at the same "
            "path (NFS, Lustre, ...)")
