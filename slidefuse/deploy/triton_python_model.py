"""Triton Python-backend model that runs a slidefuse graph with onnxruntime.

`slidefuse triton BUNDLE --runtime python` copies this file to `<repo>/<name>/1/model.py`, next to the bundle's
`model.onnx`. It serves servers without Triton's onnxruntime backend (PyTriton's `tritonserver`, slim builds):
input uint8 tiles `[B, T, T, 3]` (RGB, 0..255), output float32 probabilities `[B, C, T, T]`, the same contract
as the `onnxruntime_onnx` model. The input and output names come from the model parameters that the repository
writer puts in `config.pbtxt` (`slidefuse.input`, `slidefuse.output`). An instance of kind GPU runs the CUDA
execution provider and fails to load without it (never a silent CPU fall back); kind CPU runs the CPU one with
`slidefuse.threads` intra-op threads (0 = onnxruntime's default).

Requests that Triton's dynamic batcher groups into one `execute` call run as one onnxruntime batch. Tensors
cross the stub through DLPack under numpy >= 2 and through `as_numpy` / `pb_utils.Tensor(name, array)` under
numpy 1: PyTriton 0.7's stub, built against numpy 1, reads numpy 2 inputs wrongly and sends empty outputs for
numpy 2 arrays (and fails on numpy 1's DLPack), so each numpy gets the path that works with it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

CUDA_EP = "CUDAExecutionProvider"
_NUMPY2 = int(np.__version__.split(".")[0]) >= 2


def _tensor(name: str, array: np.ndarray) -> Any:
    """A pb_utils.Tensor of `array` that reaches the server intact under numpy 1 and 2 (see the module doc)."""
    array = np.ascontiguousarray(array)
    return pb_utils.Tensor.from_dlpack(name, array) if _NUMPY2 else pb_utils.Tensor(name, array)


def _param(config: dict[str, Any], key: str, default: str) -> str:
    """A string model parameter of config.pbtxt, or `default` when absent."""
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return default if value is None else str(value)


def _array(tensor: Any) -> np.ndarray:
    """The numpy array of a request's pb_utils.Tensor (through DLPack under numpy >= 2, see the module doc)."""
    return np.from_dlpack(tensor) if _NUMPY2 else tensor.as_numpy()


class TritonPythonModel:
    """One instance per Triton model instance; `execute` gets the requests of one dynamic batch."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.input_name = _param(config, "slidefuse.input", "tiles")
        self.output_name = _param(config, "slidefuse.output", "probabilities")
        graph = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(_param(config, "slidefuse.threads", "0"))
        so.log_severity_level = 3
        if args["model_instance_kind"] == "GPU":
            providers: list[Any] = [(CUDA_EP, {"device_id": args["model_instance_device_id"]})]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(graph, sess_options=so, providers=providers)
        if args["model_instance_kind"] == "GPU" and CUDA_EP not in self.session.get_providers():
            raise pb_utils.TritonModelException(f"onnxruntime did not load {CUDA_EP} (providers: "
                                                f"{self.session.get_providers()}); install onnxruntime-gpu")

    def execute(self, requests: list[Any]) -> list[Any]:
        """uint8 [b_i, T, T, 3] per request -> float32 [b_i, C, T, T] per response, run as one batch."""
        arrays = [_array(pb_utils.get_input_tensor_by_name(r, self.input_name)) for r in requests]
        (probs,) = self.session.run([self.output_name], {self.input_name: np.concatenate(arrays)})
        probs = np.asarray(probs, dtype=np.float32)
        responses, start = [], 0
        for a in arrays:
            part = probs[start:start + len(a)]
            start += len(a)
            responses.append(pb_utils.InferenceResponse(output_tensors=[_tensor(self.output_name, part)]))
        return responses

    def finalize(self) -> None:
        self.session = None
