"""The library's errors name fields and values in the Python API's spelling (`mpp=0.5`, `max_tiles`), never a
command-line flag a Python user never typed; the CLI turns fields into its flags (tests/cli/test_error_flags.py).
This scans the message text of every `raise` in the library modules for `--<word>`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import slidefuse

PACKAGE = Path(slidefuse.__file__).parent
LIBRARY = ("runtime", "distributed", "deploy", "export", "model", "train", "bench", "api.py", "errors.py")

# Flags a message may name, each with why:
ALLOWED = (
    "--tile --pyramid",  # `vips tiffsave`'s own options, in the command that converts a slide into a pyramid
    "--format jpeg",  # `wsidicomizer`'s own option, in the command that re-encodes a DICOM series
    "--model-repository",  # `tritonserver`'s own option, in the command that serves a model repository
    "--precision {}",  # `slidefuse build BUNDLE --precision P`: the fix is building a TensorRT engine on this
    # machine, which is that command (export.trt_build.build_engine is its implementation, not an API)
)
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def _text(node: ast.AST) -> str:
    """The literal text of a raise: its string constants, an f-string's values as `{}`."""
    parts, inside = [], set()
    for n in ast.walk(node):
        if isinstance(n, ast.JoinedStr):
            parts.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in n.values))
            inside.update(id(v) for v in ast.walk(n) if v is not n)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in inside:
            parts.append(n.value)
    return " ".join(parts)


def _raises() -> list[tuple[str, str]]:
    files = [p for name in LIBRARY for p in ((PACKAGE / name).rglob("*.py") if (PACKAGE / name).is_dir()
                                             else [PACKAGE / name])]
    out = []
    for path in sorted(files):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                out.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", _text(node.exc)))
    return out


def test_library_errors_name_no_flags() -> None:
    raises = _raises()
    assert len(raises) > 200 and any("max_tiles=" in text for _, text in raises)  # the scan sees the messages
    flagged = {}
    for where, text in raises:
        for allowed in ALLOWED:
            text = text.replace(allowed, "")
        if FLAG.search(text):
            flagged[where] = text
    assert not flagged, f"library errors that name CLI flags (name the field, e.g. mpp=0.5): {flagged}"


def test_the_scan_catches_a_flag() -> None:
    tree = ast.parse('raise UsageError(f"--mpp {mpp}: expected a positive number")')
    assert FLAG.search(_text(tree.body[0].exc))  # type: ignore[attr-defined]
