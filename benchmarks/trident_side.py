"""TRIDENT's side of benchmarks/bench_embed_trident.py; runs in TRIDENT's own environment (its venv's python), imports
TRIDENT only (never slidefuse), prints one JSON line.

    PY=/path/to/trident-venv/bin/python
    $PY benchmarks/trident_side.py extract --slide S --coords-from FEATURES.h5 --weights W --out DIR [--threads 2]
    $PY benchmarks/trident_side.py read --slide S --features FEATURES.h5 --out DIR

extract: TRIDENT's coordinate file is written by TRIDENT's own `coords_to_h5` from the tile corners in a slidefuse
features.h5 (same tiles, same patch size, same magnifications), then TRIDENT's `extract_patch_features` runs its
phikon encoder (`encoder_factory("phikon", weights_path=W)`: transformers ViTModel, CLS of last_hidden_state)
over them on the CPU. Reported: tiles, seconds of `extract_patch_features`, the features file.
read: TRIDENT's readers on a slidefuse features.h5: `read_coords` (N, coordinates, attributes) and
`extract_slide_features` with the `mean-phikon` slide encoder, which loads the file's `features` and `coords` the
way TRIDENT's slide encoders do; reported: N, D, a hash of the coordinates, and the slide embedding.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time


def extract(a: argparse.Namespace) -> dict[str, object]:
    import h5py
    import torch
    from trident import load_wsi
    from trident.IO import coords_to_h5
    from trident.patch_encoder_models import encoder_factory

    torch.set_num_threads(a.threads)
    with h5py.File(a.coords_from, "r") as f:
        coords = f["coords"][:]
        attrs = dict(f["coords"].attrs)
    os.makedirs(a.out, exist_ok=True)
    wsi = load_wsi(a.slide, max_workers=a.workers)
    coords_path = os.path.join(a.out, f"{wsi.name}_patches.h5")
    coords_to_h5(coords.tolist(), coords_path, int(attrs["patch_size"]), int(attrs["level0_magnification"]),
                 int(attrs["target_magnification"]), a.out, wsi.width, wsi.height, wsi.name, 0)
    encoder = encoder_factory("phikon", weights_path=a.weights)
    encoder.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        path = wsi.extract_patch_features(encoder, coords_path, os.path.join(a.out, "features"), device="cpu",
                                          batch_limit=a.batch)
    seconds = time.perf_counter() - t0
    with h5py.File(path, "r") as f:
        n = int(f["features"].shape[0])
    return {"tiles": n, "seconds": round(seconds, 2), "tiles_per_s": round(n / seconds, 2), "features": path,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def read(a: argparse.Namespace) -> dict[str, object]:
    import numpy as np
    import torch
    from trident import load_wsi
    from trident.IO import read_coords
    from trident.slide_encoder_models import encoder_factory as slide_encoder_factory

    attrs, coords = read_coords(a.features)
    wsi = load_wsi(a.slide)
    encoder = slide_encoder_factory("mean-phikon")
    path = wsi.extract_slide_features(patch_features_path=a.features, slide_encoder=encoder,
                                      save_features=a.out, device="cpu")
    import h5py

    with h5py.File(path, "r") as f:
        slide_feature = np.asarray(f["features"][:]).ravel()
    return {"n": int(coords.shape[0]), "coords_sha256": hashlib.sha256(np.ascontiguousarray(coords, dtype=np.int64)
                                                                       .tobytes()).hexdigest(),
            "coords_attrs": {k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items()},
            "slide_feature_dim": int(slide_feature.shape[0]), "slide_feature": slide_feature.tolist(),
            "torch": torch.__version__}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["extract", "read"])
    ap.add_argument("--slide", required=True)
    ap.add_argument("--coords-from")
    ap.add_argument("--features")
    ap.add_argument("--weights")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    print(json.dumps(extract(a) if a.what == "extract" else read(a)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
