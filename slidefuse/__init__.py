"""slidefuse: pathology foundation-model segmentation, exported to fused ONNX/TensorRT engines and
streamed over whole-slide images."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
