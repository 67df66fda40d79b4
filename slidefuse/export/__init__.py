"""Exporting models to bundles: fused ONNX graph and parity gate (onnx_export, bundle_writer, parity), fp16
graph (fp16), calibrated INT8 graph and the CPU paths' gates (quantize), TensorRT engines (trt_build), and the
publishers' reference builders used to verify the encoders (references). The network itself is
`slidefuse.model`. Needs the `export` extra (torch, timm, onnx)."""
