"""The user cache folder: compiled models that make a second start of the same bundle faster.

Root (the first that is set): the environment variable `SLIDEFUSE_CACHE_DIR`, `$XDG_CACHE_HOME/slidefuse`,
`~/.cache/slidefuse`; a backend option (`cache_dir`) overrides all three. Below it, one folder per runtime,
bundle and runtime version: `<root>/<runtime>/<bundle digest, 16 hex>-<version>`, so a changed bundle or an
upgraded runtime never reads a stale compiled model (they also check their own blobs). Nothing here is part of
a bundle: the cache can be deleted at any time, and is rebuilt on the next start.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

ENV_VAR = "SLIDEFUSE_CACHE_DIR"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def cache_root(override: str | None = None) -> Path:
    """The cache root: `override`, else $SLIDEFUSE_CACHE_DIR, $XDG_CACHE_HOME/slidefuse or ~/.cache/slidefuse."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "slidefuse"


def model_cache(runtime: str, digest: str, version: str, override: str | None = None) -> Path | None:
    """The folder for `runtime`'s compiled models of the bundle with `digest` at runtime `version`, created; None
    (logged at WARNING, the model then compiles at every start) when it cannot be created, and for a bundle
    without a digest (an export's staging folder, which is never run twice)."""
    if not _DIGEST.match(digest):
        return None
    safe_version = re.sub(r"[^0-9A-Za-z._-]+", "_", version)[:64]
    folder = cache_root(override) / runtime / f"{digest[:16]}-{safe_version}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("%s: cannot create the model cache folder (%s); the model is compiled at every start: set %s "
                    "or the backend option cache_dir to a writable folder", folder, exc.strerror or exc, ENV_VAR)
        return None
    if not os.access(folder, os.W_OK):
        log.warning("%s: the model cache folder is not writable; the model is compiled at every start: set %s or "
                    "the backend option cache_dir to a writable folder", folder, ENV_VAR)
        return None
    return folder
