"""TIAToolbox's SemanticSegmentor over one slide with a slidefuse bundle's own network (run in TIAToolbox's
environment by run_anchors.py; never imported by slidefuse).

    PEER_PYTHON benchmarks/anchors/tia_segment.py --bundle B --slide S --out DIR [--batch 8] [--threads 2]

The network is rebuilt from the bundle's model.safetensors by slidefuse.model (importable here through
PYTHONPATH; it needs torch, timm and safetensors, which TIAToolbox brings), the same module that exported the
bundle. It takes uint8 RGB tiles NHWC and returns class probabilities NCHW; the wrapper below hands TIAToolbox
probabilities NHWC, as its own UNet does, and argmax as post-processing. Tiles: the bundle's tile size at the
bundle's pixel size, stride tile - overlap (the bundle's overlap), TIAToolbox's own tissue mask
(`auto_get_mask`). Writes OUT/classes.npy (uint8 class map at the bundle's pixel size) and OUT/tia.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tiatoolbox.models.engine.io_config import IOSegmentorConfig
from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor
from tiatoolbox.models.models_abc import ModelABC


class BundleNetwork(ModelABC):
    """slidefuse's SegmentationModel as a TIAToolbox model."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.net(tiles)

    @staticmethod
    def infer_batch(model: torch.nn.Module, batch_data: Any, *, device: str) -> np.ndarray:
        model.eval()
        tiles = torch.as_tensor(np.asarray(batch_data), dtype=torch.uint8)
        with torch.inference_mode():
            probs = model(tiles.to(device))  # [B, C, T, T]
        return probs.permute(0, 2, 3, 1).cpu().numpy()  # NHWC

    @staticmethod
    def postproc(image: np.ndarray) -> np.ndarray:
        return np.argmax(image, axis=-1).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--slide", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from slidefuse.model.assembly import build_model_from_state

    manifest = json.loads((args.bundle / "manifest.json").read_text())
    t, mpp, overlap = int(manifest["tile_size"]), float(manifest["mpp"]), int(manifest["overlap"])
    net = build_model_from_state(manifest["encoder"], len(manifest["classes"]), t, int(manifest["decoder_width"]),
                                 args.bundle / manifest["torch_weights"])
    model = BundleNetwork(net.eval())
    ioconfig = IOSegmentorConfig(
        input_resolutions=[{"units": "mpp", "resolution": mpp}],
        output_resolutions=[{"units": "mpp", "resolution": mpp}],
        patch_input_shape=(t, t), patch_output_shape=(t, t), stride_shape=(t - overlap, t - overlap),
        save_resolution={"units": "mpp", "resolution": mpp},
    )
    t0 = time.perf_counter()
    seg = SemanticSegmentor(model=model, batch_size=args.batch, num_workers=0, device="cpu", verbose=False)
    out = seg.run(images=[args.slide], patch_mode=False, ioconfig=ioconfig, save_dir=args.out / "tia",
                  output_type="zarr", overwrite=True)
    seconds = time.perf_counter() - t0
    import zarr

    path = out[args.slide] if isinstance(out, dict) else out
    z = zarr.open(str(path), mode="r")
    classes = np.asarray(z["predictions"]).astype(np.uint8)
    np.save(args.out / "classes.npy", classes)
    (args.out / "tia.json").write_text(json.dumps({"seconds": seconds, "shape": list(classes.shape),
                                                   "torch": torch.__version__}))
    print(json.dumps({"seconds": round(seconds, 1), "shape": list(classes.shape)}), file=sys.stderr)


if __name__ == "__main__":
    main()
