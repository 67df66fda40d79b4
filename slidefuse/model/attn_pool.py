"""The CONCH models' attentional pooler: the "attn-pool" embedding rule (registry `EncoderSpec.embedding`).

Both publishers pool the trunk's tokens (class token included, after the final LayerNorm) with one learned
query through multi-head cross-attention, then apply a LayerNorm (`ln_contrast`); the embedding is that
LayerNorm's output, before any contrastive projection:

    q = ln_q(query) W_q + b_q;  k = ln_k(tokens) W_k + b_k;  v = ln_k(tokens) W_v + b_v   (8 heads)
    embedding = ln_contrast(softmax(q k^T / sqrt(d_head)) v W_o + b_o)

- CONCH (MahmoodLab/CONCH conch/open_clip_custom/transformer.py `AttentionalPooler`, vision_tower.py
  `VisualModel.forward_no_head`): `torch.nn.MultiheadAttention(d, 8, kdim=ctx, vdim=ctx)`, with biases; keys
  `visual.attn_pool_contrast.{query, ln_q, ln_k, attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight,
  attn.in_proj_bias, attn.out_proj}` and `visual.ln_contrast.*`.
- CONCH v1.5 (TITAN / TRIDENT conch_v1_5.py `AttentionalPooler`, `CONCHVisionTower.forward`): `to_q`, `to_kv`
  (keys then values), `to_out`, all without bias; keys `attn_pool_contrast.{query, ln_q, ln_k, to_q, to_kv,
  to_out}` and `ln_contrast.*`.

`AttentionalPool` holds one layout for both (missing biases are zeros, which is exact) and is written with
plain matmul/softmax so that it exports to ONNX as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from slidefuse.model.registry import EncoderSpec

log = logging.getLogger(__name__)

POOLER_HEADS = 8  # both publishers: attn_pooler_heads=8 (CONCH config), n_head=8 (CONCHVisionTower)
_MHA = "attn_pool_contrast.attn."


class AttentionalPool(nn.Module):
    """tokens [B, N, context] -> embedding [B, d]: one-query cross-attention pooler + LayerNorm."""

    def __init__(self, d_model: int, context_dim: int, heads: int = POOLER_HEADS) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"pooler width {d_model} is not a multiple of its {heads} heads")
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(1, d_model))
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(context_dim, d_model)
        self.v = nn.Linear(context_dim, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ln = nn.LayerNorm(d_model)  # the publishers' ln_contrast

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        h = self.heads
        d = self.query.shape[-1]
        kv = self.ln_k(tokens)
        q = self.q(self.ln_q(self.query)).reshape(1, h, 1, d // h)  # [1, h, 1, dh]
        k = self.k(kv).reshape(b, n, h, d // h).permute(0, 2, 3, 1)  # [B, h, dh, N]
        v = self.v(kv).reshape(b, n, h, d // h).transpose(1, 2)  # [B, h, N, dh]
        attn = torch.softmax(torch.matmul(q * (d // h) ** -0.5, k), dim=-1)  # [B, h, 1, N]
        pooled = torch.matmul(attn, v).reshape(b, d)
        return self.ln(self.out(pooled))


def build_pooler(spec: EncoderSpec) -> AttentionalPool:
    """The attentional pooler of an "attn-pool" encoder (width `spec.embedding_dim()`, keys of `spec.width`)."""
    if spec.embedding != "attn-pool":
        raise ValueError(f"encoder '{spec.id}' has the {spec.embedding!r} embedding, no attentional pooler")
    return AttentionalPool(spec.embedding_dim(), spec.width)


def _zeros_like_bias(w: torch.Tensor) -> torch.Tensor:
    return torch.zeros(w.shape[0], dtype=w.dtype)


def _open_clip_attn(sd: dict[str, torch.Tensor], p: str) -> dict[str, torch.Tensor]:
    """torch.nn.MultiheadAttention's tensors (separate or packed in-projection) -> q/k/v/out."""
    if p + "in_proj_weight" in sd:
        wq, wk, wv = sd[p + "in_proj_weight"].chunk(3)
    else:
        wq, wk, wv = sd[p + "q_proj_weight"], sd[p + "k_proj_weight"], sd[p + "v_proj_weight"]
    bq, bk, bv = sd[p + "in_proj_bias"].chunk(3)
    return {"q.weight": wq, "q.bias": bq, "k.weight": wk, "k.bias": bk, "v.weight": wv, "v.bias": bv,
            "out.weight": sd[p + "out_proj.weight"], "out.bias": sd[p + "out_proj.bias"]}


def _titan_attn(sd: dict[str, torch.Tensor], p: str) -> dict[str, torch.Tensor]:
    """TITAN's to_q / to_kv / to_out (no biases) -> q/k/v/out with zero biases."""
    wk, wv = sd[p + "to_kv.weight"].chunk(2)
    out = {"q.weight": sd[p + "to_q.weight"], "k.weight": wk, "v.weight": wv, "out.weight": sd[p + "to_out.weight"]}
    out.update({name.replace("weight", "bias"): _zeros_like_bias(w) for name, w in list(out.items())})
    return out


def pooler_state(sd: dict[str, torch.Tensor], spec: EncoderSpec, path: Path | str) -> dict[str, torch.Tensor]:
    """The publisher's checkpoint `sd` -> `AttentionalPool` keys. CheckpointError when the file has no pooler."""
    from slidefuse.model.checkpoints import SHOW, CheckpointError

    prefix = "visual." if spec.checkpoint_format == "open_clip-conch" else ""
    pool = prefix + "attn_pool_contrast."
    ln = prefix + "ln_contrast."
    if pool + "query" not in sd or ln + "weight" not in sd:
        raise CheckpointError(
            f"{Path(path).name} has no attentional pooler for encoder '{spec.id}' ('{pool}*' and '{ln}*', which "
            f"its embedding needs); first keys: {', '.join(list(sd)[:SHOW])}; pass the publisher's full "
            + ("open_clip CONCH checkpoint (pytorch_model.bin)" if prefix else "vision checkpoint "
               "(pytorch_model_vision.bin)"))
    try:
        attn = _open_clip_attn(sd, pool + "attn.") if prefix else _titan_attn(sd, pool)
        query = sd[pool + "query"]
        return {"query": query.reshape(-1, query.shape[-1]), **attn,
                "ln_q.weight": sd[pool + "ln_q.weight"], "ln_q.bias": sd[pool + "ln_q.bias"],
                "ln_k.weight": sd[pool + "ln_k.weight"], "ln_k.bias": sd[pool + "ln_k.bias"],
                "ln.weight": sd[ln + "weight"], "ln.bias": sd[ln + "bias"]}
    except KeyError as e:
        raise CheckpointError(f"{Path(path).name}: the attentional pooler of encoder '{spec.id}' lacks {e}; pass "
                              "the publisher's checkpoint") from None


def load_pooler_weights(pooler: AttentionalPool, spec: EncoderSpec, path: Path | str) -> None:
    """Load the attentional pooler from the publisher's checkpoint file `path`, strictly (keys and shapes)."""
    from slidefuse.model.checkpoints import load_strict, read_state_file

    what = f"the attentional pooler of encoder '{spec.id}'"
    load_strict(pooler, pooler_state(read_state_file(path), spec, path), what, path)
    log.info("%s: loaded the attentional pooler (%d-d) from %s", spec.id, spec.embedding_dim(), path)
