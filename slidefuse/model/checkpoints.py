"""Loading published checkpoints from local files, converted to the timm layout and loaded strictly.

Files: `.safetensors` (safetensors.torch.load_file) or `.bin` / `.pth` / `.pt` / `.ckpt` / `.torch` (torch.load with
weights_only=True; arbitrary pickles are never executed). Nothing is ever downloaded.

Layouts (`EncoderSpec.checkpoint_format`):
- "timm": a timm VisionTransformer state dict (UNI, UNI2-h, Virchow, Prov-GigaPath, H-optimus, ...).
- "hf-vit": transformers `ViTModel` (Phikon): separate q/k/v, `layernorm_before/after`, pooler dropped.
- "hf-dinov2": transformers `Dinov2Model` (Phikon-v2): LayerScale `lambda1`, mask token dropped.
- "hf-dinov2-reg": transformers `Dinov2WithRegistersModel` / Hibou's custom DINOv2 with registers (SwiGLU
  `mlp.weights_in` / `weights_out`, packed as timm's `fc1` / `fc2`); the class token's position embedding is
  folded into the class token (timm `no_embed_class` layout).
- "open_clip-conch": the CONCH open_clip CoCa checkpoint; only the vision trunk (`visual.trunk.*`) is kept.

Wrappers are unwrapped ("teacher", "model", "state_dict", "module" entries; "module.", "backbone.",
"_orig_mod." prefixes). Position embeddings made for another grid are resampled once, with the publisher's own
run-time rule (`slidefuse.model.posembed`), to the model's grid. An MLP of the wrong type (a GELU file for a
SwiGLU encoder, or the reverse) and anything else that does not fit is a CheckpointError naming the encoder and
the first mismatching keys or shapes.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from slidefuse.errors import CheckpointError, UsageError

if TYPE_CHECKING:
    from slidefuse.model.registry import EncoderSpec

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

TORCH_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".torch")  # .torch: Lunit's releases
WRAPPER_KEYS = ("teacher", "model", "state_dict", "module", "model_state_dict")
STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.", "model.", "vit.", "dinov2.", "trunk.")
SHOW = 5  # how many mismatching keys an error lists


# ---------------------------------------------------------------------------------------------- files
def read_state_file(path: Path | str) -> StateDict:
    """Tensors of a local checkpoint file (CPU), wrappers removed. Raises CheckpointError for an unsupported
    suffix, a file that is not a checkpoint, or one that holds Python objects besides tensors."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file {path} does not exist: pass the path of a local checkpoint file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); re-save it") from exc
    elif suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"{path} holds Python objects besides tensors, which slidefuse does not unpickle "
                f"(weights_only=True): re-save it as a plain state dict or as .safetensors"
            ) from exc
        except (RuntimeError, OSError, EOFError, KeyError, ValueError, IndexError, TypeError) as exc:
            # a text or random file fails inside the unpickler with any of these (e.g. KeyError: 101)
            raise CheckpointError(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {exc}); "
                                  "pass the checkpoint file itself, re-saved with torch.save or as .safetensors") \
                from exc
    else:
        raise CheckpointError(
            f"{path}: unsupported checkpoint suffix {suffix!r}; expected .safetensors or one of "
            f"{', '.join(TORCH_SUFFIXES)}"
        )
    return unwrap(obj, path)


def unwrap(obj: object, path: Path | str = "checkpoint") -> StateDict:
    """The tensor dict inside common wrappers ({"teacher": ...}, {"state_dict": ...}, ...), with prefixes
    shared by every key ("module.", "backbone.", ...) removed."""
    for _ in range(4):
        if isinstance(obj, Mapping) and not _all_tensors(obj):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                raise CheckpointError(
                    f"{path}: no state dict found; top-level entries are {', '.join(map(str, list(obj)[:10]))}, "
                    f"expected tensors or one of {', '.join(WRAPPER_KEYS)}"
                )
            obj = inner
    if not isinstance(obj, Mapping) or not _all_tensors(obj):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
    sd: StateDict = dict(obj)
    changed = True
    while changed and sd:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def _all_tensors(obj: Mapping[object, object]) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def save_state(module: nn.Module, path: Path | str) -> Path:
    """Write `module.state_dict()` (CPU, contiguous) to a .safetensors file; returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


# ---------------------------------------------------------------------------------------------- layouts
def _qkv(sd: StateDict, out: StateDict, src: str, dst: str, names: tuple[str, str, str]) -> None:
    """Fuse separate query/key/value Linear weights (`{src}.{name}.weight|bias`) into timm's `{dst}.qkv`."""
    for kind in ("weight", "bias"):
        parts = [sd.pop(f"{src}.{n}.{kind}", None) for n in names]
        if all(p is not None for p in parts):
            out[f"{dst}.qkv.{kind}"] = torch.cat(parts, dim=0)  # type: ignore[arg-type]
        else:  # leave what exists so the strict check reports it
            for n, p in zip(names, parts, strict=True):
                if p is not None:
                    sd[f"{src}.{n}.{kind}"] = p


def _swiglu(sd: StateDict, out: StateDict, src: str, dst: str) -> None:
    """transformers 5's in-memory SwiGLU (`gate_proj`, `up_proj`, `down_proj`) -> timm's packed `fc1` (gate half
    first, as SwiGLUPacked applies SiLU to the first half) and `fc2`. Published files hold `weights_in` /
    `weights_out`, mapped by name in _HF_BLOCK."""
    for kind in ("weight", "bias"):
        gate, up = sd.get(f"{src}.gate_proj.{kind}"), sd.get(f"{src}.up_proj.{kind}")
        if gate is not None and up is not None:
            out[f"{dst}.fc1.{kind}"] = torch.cat([sd.pop(f"{src}.gate_proj.{kind}"), sd.pop(f"{src}.up_proj.{kind}")])
        down = sd.pop(f"{src}.down_proj.{kind}", None)
        if down is not None:
            out[f"{dst}.fc2.{kind}"] = down


_HF_BLOCK = {
    # hf-vit
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    # hf-dinov2 (+ registers)
    "norm1": "norm1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1",
    "mlp.weights_out": "mlp.fc2",
    "layer_scale1": "ls1.gamma",
    "layer_scale2": "ls2.gamma",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",  # transformers 5 in-memory layout
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_DROP = re.compile(r"^(pooler\.|embeddings\.mask_token$)")
_V5_LAYERS = re.compile(r"^layers\.(\d+)\.")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def hf_to_timm(sd: StateDict, spec: EncoderSpec) -> StateDict:
    """transformers ViTModel / Dinov2Model / Dinov2WithRegistersModel keys -> timm VisionTransformer keys.
    Unknown keys are kept unchanged so the strict check reports them."""
    # transformers 5 keeps ViTModel blocks in memory as `layers.N.*`; files and Dinov2 use `encoder.layer.N.*`
    sd = {_V5_LAYERS.sub(r"encoder.layer.\1.", k): v for k, v in sd.items()}
    sd_keys = set(sd)
    dropped = [k for k in sd if _HF_DROP.match(k)]
    for k in dropped:
        del sd[k]
    if dropped:
        log.info("%s: dropped %d training-only/pooler tensors (%s)", spec.id, len(dropped), ", ".join(dropped))
    out: StateDict = {}
    layers = sorted({int(m.group(1)) for k in sd if (m := _LAYER.match(k))})
    for i in layers:
        # published files: attention.attention.{query,key,value}; transformers 5 state dicts: attention.{q,k,v}_proj
        _qkv(sd, out, f"encoder.layer.{i}.attention.attention", f"blocks.{i}.attn", ("query", "key", "value"))
        _qkv(sd, out, f"encoder.layer.{i}.attention", f"blocks.{i}.attn", ("q_proj", "k_proj", "v_proj"))
        _swiglu(sd, out, f"encoder.layer.{i}.mlp", f"blocks.{i}.mlp")
    for key in list(sd):
        if key in _HF_TOP:
            out[_HF_TOP[key]] = sd.pop(key)
            continue
        m = _LAYER.match(key)
        if m:
            layer, name, kind = m.group(1), m.group(2), m.group(3)
            if name in _HF_BLOCK:
                dst = f"blocks.{layer}.{_HF_BLOCK[name]}"
                out[dst if kind == "lambda1" else f"{dst}.{kind}"] = sd.pop(key)
                continue
        out[key] = sd.pop(key)
    if "reg_token" in out and out["reg_token"].dim() == 2:  # HF stores [1, R, d] already; be lenient on [R, d]
        out["reg_token"] = out["reg_token"].unsqueeze(0)
    hf_pos = "embeddings.position_embeddings" in sd_keys
    if spec.no_embed_class and hf_pos and "pos_embed" in out and "cls_token" in out:
        # HF adds the position embedding to [cls, patches]; timm no_embed_class adds it to patches only. A file
        # already in timm keys (e.g. an encoder saved by `slidefuse train`) has no class row to fold.
        pos = out["pos_embed"]
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    return out


def open_clip_to_timm(sd: StateDict, spec: EncoderSpec) -> StateDict:
    """The CONCH open_clip checkpoint -> its vision trunk (`visual.trunk.*`, a timm ViT) in timm keys."""
    prefix = "visual.trunk."
    trunk = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    if not trunk:
        raise CheckpointError(
            f"checkpoint for encoder '{spec.id}' has no '{prefix}*' tensors (the CONCH vision trunk); "
            f"first keys: {', '.join(list(sd)[:SHOW])}; pass the open_clip CONCH checkpoint"
        )
    log.info("%s: kept %d vision-trunk tensors, ignored %d others (text tower, poolers)",
             spec.id, len(trunk), len(sd) - len(trunk))
    return trunk


def to_timm(sd: StateDict, spec: EncoderSpec) -> StateDict:
    """Convert a state dict in `spec.checkpoint_format` to timm VisionTransformer keys."""
    fmt = spec.checkpoint_format
    if fmt == "open_clip-conch":
        sd = open_clip_to_timm(sd, spec)
    elif fmt in ("hf-vit", "hf-dinov2", "hf-dinov2-reg"):
        sd = hf_to_timm(sd, spec)
    elif any(k.startswith("trunk.") for k in sd):
        # A vision tower wrapping a timm trunk (CONCH v1.5: trunk.* + attn_pool_contrast.* + ln_contrast.*).
        trunk = {k[len("trunk.") :]: v for k, v in sd.items() if k.startswith("trunk.")}
        log.info("%s: kept %d trunk.* tensors, ignored %d others (poolers)", spec.id, len(trunk), len(sd) - len(trunk))
        sd = trunk
    # A classifier head is never used for segmentation (the trunk is built with num_classes=0).
    return {k: v for k, v in sd.items() if not k.startswith("head.")}


# ---------------------------------------------------------------------------------------------- loading
def _resample_pos_embed(sd: StateDict, model: nn.Module, spec: EncoderSpec) -> None:
    """Bring a checkpoint's position embeddings to the model's token grid with the publisher's rule
    (`slidefuse.model.posembed`), once, at load time."""
    target = model.state_dict().get("pos_embed")
    pos = sd.get("pos_embed")
    if target is None or pos is None or pos.dim() != 3 or pos.shape[-1] != target.shape[-1]:
        return  # missing or of another width: the strict check reports it
    prefix = 0 if spec.no_embed_class else spec.num_prefix_tokens
    new_g = math.isqrt(target.shape[1] - prefix)
    if pos.shape == target.shape and spec.pos_resample != "bicubic-offset":
        return  # same grid: every rule but CONCH v1.5's (which goes through its trunk's grid) is the identity
    from slidefuse.model.posembed import publisher_pos_embed

    try:
        resampled = publisher_pos_embed(pos, spec, new_g)
    except ValueError:
        return  # not a square grid (e.g. a wrong prefix count): the strict check reports it
    if resampled.shape != target.shape or not torch.equal(resampled, pos):
        log.info("%s: position embeddings %s -> %s (%s, as the publisher's code)", spec.id, list(pos.shape),
                 list(resampled.shape), spec.pos_resample)
    sd["pos_embed"] = resampled


def _mlp_kind(sd: StateDict) -> tuple[str, list[int], list[int]] | None:
    """('GELU', fc1 shape, fc2 shape) or ('packed SwiGLU', ...) of block 0's MLP in timm keys, or None."""
    fc1, fc2 = sd.get("blocks.0.mlp.fc1.weight"), sd.get("blocks.0.mlp.fc2.weight")
    if fc1 is None or fc2 is None or fc1.dim() != 2 or fc2.dim() != 2:
        return None
    kind = "GELU" if fc2.shape[1] == fc1.shape[0] else "packed SwiGLU" if 2 * fc2.shape[1] == fc1.shape[0] else "?"
    return kind, list(fc1.shape), list(fc2.shape)


def check_mlp(sd: StateDict, model: nn.Module, spec: EncoderSpec, path: Path | str) -> None:
    """Raise CheckpointError when the checkpoint's MLP type (GELU fc1-fc2 vs packed SwiGLU) or hidden width
    differs from the model's, naming both layouts and the publisher's."""
    got, want = _mlp_kind(sd), _mlp_kind(model.state_dict())
    if got is None or want is None or got == want or got[1][1] != want[1][1]:
        return  # same MLP, or another token width: the strict check names the first mismatch
    raise CheckpointError(
        f"{Path(path).name} does not fit encoder '{spec.id}': its MLP is {got[0]} (fc1 {got[1]}, fc2 {got[2]}), "
        f"the model's is {want[0]} (fc1 {want[1]}, fc2 {want[2]}) as its publisher builds it"
        + (f" ({spec.reference.split(';')[0]})" if spec.reference else "")
        + "; pass the publisher's checkpoint for this encoder"
    )


def load_strict(module: nn.Module, sd: StateDict, what: str, path: Path | str) -> None:
    """Load `sd` into `module` requiring the same keys and shapes; tensors are cast to the parameters'
    dtype. Raises CheckpointError listing the first missing / unexpected keys or the first shape mismatch."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_first(unexpected)}")
        raise CheckpointError(f"{Path(path).name} does not fit {what}: {'; '.join(parts)}")
    bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items() if sd[k].shape != v.shape]
    if bad:
        k, got, want = bad[0]
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{Path(path).name} does not fit {what}: parameter {k} has shape {list(got)} in the checkpoint, "
            f"the model expects {list(want)}{more}"
        )
    module.load_state_dict({k: sd[k].to(own[k].dtype) for k in own}, strict=True)


def _first(keys: list[str]) -> str:
    more = f", ... (+{len(keys) - SHOW} more)" if len(keys) > SHOW else ""
    return ", ".join(keys[:SHOW]) + more


def load_encoder_weights(encoder: nn.Module, spec: EncoderSpec, path: Path | str) -> None:
    """Load a published checkpoint (layout `spec.checkpoint_format`) into the timm trunk `encoder`, strictly."""
    sd = to_timm(read_state_file(path), spec)
    check_mlp(sd, encoder, spec, path)
    _resample_pos_embed(sd, encoder, spec)
    what = f"encoder '{spec.id}' ({spec.architecture}; {spec.checkpoint_format} layout)"
    load_strict(encoder, sd, what, path)
    log.info("%s: loaded encoder weights from %s", spec.id, path)


def load_decoder_weights(decoder: nn.Module, path: Path | str) -> None:
    """Load a decoder state dict (the decoder's own keys, or a whole SegmentationModel's `decoder.*` keys)
    strictly."""
    sd = read_state_file(path)
    if any(k.startswith("decoder.") for k in sd):
        sd = {k[len("decoder.") :]: v for k, v in sd.items() if k.startswith("decoder.")}
    load_strict(decoder, sd, "the decoder", path)
    log.info("loaded decoder weights from %s", path)
