"""Building models (encoder registry, decoder, checkpoints) and exporting them to bundles. Needs the
`export` extra (torch, timm, onnx)."""
