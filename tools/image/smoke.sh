#!/bin/sh
# Image smoke test (build step and HEALTHCHECK): the CLI runs, libvips has OpenSlide, the bundled demonstration
# model verifies (every sha256) and loads in the image's onnxruntime, and, in the GPU image, onnxruntime-gpu and
# TensorRT import. Prints one line per check; exits non-zero on the first failure.
set -eu
slidefuse --version
demo=$(python -c 'import pathlib, slidefuse; print(pathlib.Path(slidefuse.__file__).parent / "data" / "default")')
slidefuse -q info "$demo" >/dev/null
echo "demo bundle verified: $demo"
python - <<'PY'
import importlib.util
from importlib.metadata import distributions

import onnxruntime as ort
import pyvips

assert pyvips.type_find("VipsForeignLoad", "openslideload") != 0, "libvips has no OpenSlide loader"
print("libvips", pyvips.version(0), pyvips.version(1), "with openslideload; onnxruntime", ort.__version__,
      ort.get_available_providers())
names = {d.metadata["Name"].lower() for d in distributions()}
assert not {"onnxruntime", "onnxruntime-gpu"} <= names, "onnxruntime and onnxruntime-gpu are both installed"
if "onnxruntime-gpu" in names:
    assert "CUDAExecutionProvider" in ort.get_available_providers(), "onnxruntime-gpu without its CUDA provider"
if importlib.util.find_spec("tensorrt") is not None:
    import tensorrt
    print("tensorrt", tensorrt.__version__)
PY
