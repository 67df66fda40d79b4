"""onnxruntime backends."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from slidefuse.runtime.backends.base import Backend


class OrtCpuBackend(Backend):
    name = "ort-cpu"
    description = "onnxruntime on the CPU"

    @classmethod
    def availability(cls) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    def _load(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = int(self.options.get("threads") or 0)
        so.intra_op_num_threads = threads or (os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(
            str(self.bundle.model_path), sess_options=so, providers=["CPUExecutionProvider"]
        )
        self._input = self.bundle.manifest.input_name
        self._output = self.bundle.manifest.output_name

    def _close(self) -> None:
        self._session = None

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        (out,) = self._session.run([self._output], {self._input: tiles})
        return np.asarray(out, dtype=np.float32)

    def info(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"backend": self.name, "providers": ["CPUExecutionProvider"], "onnxruntime": ort.__version__}
