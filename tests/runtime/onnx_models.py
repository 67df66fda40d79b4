"""Pure-ONNX test bundles (built with onnx.helper, no torch): a per-pixel colour classifier.

The graph takes uint8 RGB tiles ``[B, H, W, 3]`` (H and W dynamic, so the same graph also runs on a whole
region in one piece) and returns float32 probabilities ``[B, C, H, W]``:

    x = tiles / 255 (NCHW) -> optional depthwise box blur of radius r (zero padding) -> 1x1 conv -> softmax

The 1x1 conv is a nearest-prototype classifier: logit_k = -s * |x - p_k|^2 up to a term common to all classes,
i.e. ``2 s p_k . x - s |p_k|^2``, with prototypes for background (glass), haematoxylin-ish and eosin-ish
colours. The blur makes the receptive field ``2 r + 1`` px, so tile borders matter within ``r`` px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from slidefuse.runtime.bundle import Bundle, ClassInfo, Manifest, load_bundle, write_manifest

# class name -> (RGB prototype in 0..1, display colour)
COLOUR_CLASSES: tuple[tuple[str, tuple[float, float, float], tuple[int, int, int]], ...] = (
    ("background", (0.94, 0.94, 0.94), (255, 255, 255)),
    ("haematoxylin", (0.35, 0.25, 0.55), (60, 40, 160)),
    ("eosin", (0.85, 0.50, 0.70), (230, 100, 170)),
)


def colour_classifier(
    blur_radius: int = 1, sharpness: float = 12.0, depth: int = 0, width: int = 16
) -> onnx.ModelProto:
    """The ONNX model described in the module docstring (opset 17).

    ``depth > 0`` adds a side branch of ``depth`` 3x3 convs (``width`` channels, ReLU, seeded random weights)
    whose output enters the logits with a weight of 1e-3: the predictions stay (almost exactly) those of the
    colour classifier, but each tile costs about ``depth * 18 * width**2`` FLOP per pixel, like a real network
    (for benchmarks where a nearly free model would hide what scales with the number of tiles)."""
    protos = np.array([p for _, p, _ in COLOUR_CLASSES], dtype=np.float32)  # [C, 3]
    c = protos.shape[0]
    weight = (2.0 * sharpness * protos).reshape(c, 3, 1, 1).astype(np.float32)
    bias = (-sharpness * (protos**2).sum(axis=1)).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(1.0 / 255.0, dtype=np.float32), "inv255"),
        numpy_helper.from_array(weight, "cls_w"),
        numpy_helper.from_array(bias, "cls_b"),
    ]
    nodes = [
        helper.make_node("Cast", ["tiles"], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x_f"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["x_nchw", "inv255"], ["x01"]),
    ]
    feat = "x01"
    if blur_radius > 0:
        k = 2 * blur_radius + 1
        blur = np.full((3, 1, k, k), 1.0 / (k * k), dtype=np.float32)
        inits.append(numpy_helper.from_array(blur, "blur_w"))
        nodes.append(helper.make_node("Conv", ["x01", "blur_w"], ["x_blur"], group=3,
                                      pads=[blur_radius] * 4, kernel_shape=[k, k]))
        feat = "x_blur"
    logits = "logits"
    if depth > 0:
        rng = np.random.default_rng(0)
        hidden, cin = "x01", 3
        for i in range(depth):
            w = (rng.normal(size=(width, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"heavy_w{i}"))
            nodes.append(helper.make_node("Conv", [hidden, f"heavy_w{i}"], [f"heavy_c{i}"], pads=[1] * 4,
                                          kernel_shape=[3, 3]))
            nodes.append(helper.make_node("Relu", [f"heavy_c{i}"], [f"heavy_r{i}"]))
            hidden, cin = f"heavy_r{i}", width
        head = (rng.normal(size=(c, width, 1, 1)) * 1e-3).astype(np.float32)
        inits.append(numpy_helper.from_array(head, "heavy_head"))
        nodes.append(helper.make_node("Conv", [hidden, "heavy_head"], ["heavy_logits"], kernel_shape=[1, 1]))
        logits = "colour_logits"
    nodes.append(helper.make_node("Conv", [feat, "cls_w", "cls_b"], [logits], kernel_shape=[1, 1]))
    if depth > 0:
        nodes.append(helper.make_node("Add", ["colour_logits", "heavy_logits"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "colour_classifier",
        [helper.make_tensor_value_info("tiles", TensorProto.UINT8, ["B", "H", "W", 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["B", c, "H", "W"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="slidefuse-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_bundle(
    folder: Path,
    *,
    tile_size: int = 64,
    mpp: float = 2.0,
    overlap: int = 16,
    blur_radius: int = 1,
    depth: int = 0,
) -> Bundle:
    """Write a valid, sha256-verified bundle with the colour classifier into `folder`; returns it loaded."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(colour_classifier(blur_radius, depth=depth), str(folder / "model.onnx"))
    manifest = Manifest(
        encoder="test-colour",
        patch_size=1,
        tile_size=tile_size,
        mpp=mpp,
        classes=tuple(ClassInfo(name, colour) for name, _, colour in COLOUR_CLASSES),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        torch_weights=None,
        decoder_width=0,
        overlap=overlap,
        tools={"onnx": onnx.__version__},
        weights={"kind": f"fixed colour prototypes, blur radius {blur_radius}, side-branch depth {depth}"},
    )
    write_manifest(folder, manifest)
    return load_bundle(folder)


def run_whole(model_path: Path, rgb: np.ndarray) -> np.ndarray:
    """Run the graph on one whole image in one piece: uint8 [H, W, 3] -> float32 [C, H, W]."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), sess_options=so, providers=["CPUExecutionProvider"])
    (out,) = sess.run(["probabilities"], {"tiles": np.ascontiguousarray(rgb[None])})
    return np.asarray(out[0], dtype=np.float32)
