"""slidefuse: pathology foundation-model segmentation, exported to fused ONNX/TensorRT engines and
streamed over whole-slide images.

The Python API (`load_model`, `segment_many`, `SegmentationResult`, `ProgressEvent`) is imported on first
use, so `import slidefuse` and `slidefuse --help` stay light (see `slidefuse.api`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from slidefuse._version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from slidefuse.api import Model, SegmentationResult, load_model, segment_many
    from slidefuse.runtime.progress import ProgressEvent

_LAZY = {
    "load_model": "slidefuse.api",
    "segment_many": "slidefuse.api",
    "Model": "slidefuse.api",
    "SegmentationResult": "slidefuse.api",
    "ProgressEvent": "slidefuse.runtime.progress",
}

__all__ = ["Model", "ProgressEvent", "SegmentationResult", "__version__", "load_model", "segment_many"]


def __getattr__(name: str) -> Any:
    """The API's names, imported when first used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slidefuse' has no attribute {name!r}")
