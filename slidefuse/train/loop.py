"""The training loop of `slidefuse train`: the reference paper's protocol for the shared decoder.

Protocol (defaults): the encoder is frozen (eval mode, no gradients) and only the decoder is trained;
loss = cross-entropy + soft Dice; NAdam; lr 1e-4 annealed to 0 by cosine with warm restarts every 10 epochs
(`CosineAnnealingWarmRestarts` with T_0 = 10 epochs' worth of iterations, stepped once per iteration, so the
lr falls smoothly within an epoch and is back at 1e-4 at epochs 10, 20, ...); batch 8; 50 epochs; augmentation
= random affine + brightness/colour jitter on the uint8 tiles (see `dataset.augment_batch`); inputs normalised
with the encoder's own mean/std (inside `SegmentationModel`); validation every 10 epochs (and after the last
epoch, and once before training as a baseline) with Dice per class averaged over the classes as the selection
metric; the best checkpoint is kept.

Feature caching (`cache_features=True`): with a frozen encoder, the features of each tile are computed once and
stored (float16, d * (T/P)^2 * 2 bytes per tile), so an epoch costs only the decoder. A cached feature is only
valid for the tile it was computed from, so image-space augmentation (affine, colour) is OFF with caching;
instead the feature map and its label get the same random flip / 90-degree rotation (a feature-space
augmentation: a cheap regulariser, not equivalent to encoding the flipped tile). Validation is unaffected
(it never augments).

Device: `device="auto"` trains on CUDA when torch sees a GPU, else on the CPU; augmentation runs on the same
device (random numbers come from one seeded CPU generator, so a run is reproducible on a given device).

`train_encoder=True` also trains the encoder (same optimiser and lr). That is NOT the paper's protocol; it
exists for encoders with no pretrained weights, such as the tiny encoder of the demonstration bundle.

Outputs, for `out = CKPT.safetensors`:
    CKPT.safetensors          the best decoder state dict (`slidefuse export --decoder-weights`)
    CKPT.encoder.safetensors  the encoder state dict in timm layout (`--encoder-weights`), written when the
                              encoder was trained or randomly initialised (otherwise export uses the original file)
    CKPT.json                 sidecar: encoder id, classes, tile, decoder width, config, val history, best epoch
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slidefuse.atomic import atomic_path, write_text_atomic
from slidefuse.errors import UsageError, require
from slidefuse.train.dataset import AugmentParams, TileSplit, augment_batch, load_dataset
from slidefuse.train.losses import DiceMeter, ce_dice_loss

if TYPE_CHECKING:
    import torch

    from slidefuse.model.assembly import SegmentationModel

log = logging.getLogger(__name__)

SIDECAR_VERSION = 1
DATASET_INFO = "dataset.json"  # optional file in the tiles folder; its "mpp" is recorded in the sidecar


@dataclass(frozen=True)
class TrainConfig:
    """Everything `train` needs; saved (paths as strings) in the checkpoint's JSON sidecar."""

    encoder: str  # encoder registry id
    classes: tuple[str, ...]  # class names, index 0 = background; masks hold indices into this
    tiles: Path  # dataset folder (layout in slidefuse.train.dataset)
    out: Path  # decoder checkpoint to write, *.safetensors
    encoder_weights: Path | None = None  # encoder checkpoint in its publisher's format
    random_encoder: bool = False  # explicitly train on a randomly initialised encoder (tests, demo)
    train_encoder: bool = False  # also train the encoder: NOT the paper's protocol
    epochs: int = 50  # training epochs
    batch_size: int = 8  # tiles per step
    lr: float = 1e-4  # peak learning rate of each cosine cycle
    restart_every: int = 10  # epochs per cosine cycle (warm restart period)
    val_every: int = 10  # validate every this many epochs (and after the last)
    tile_size: int = 512  # tile side T in px; dataset tiles must be T x T
    decoder_width: int | None = None  # decoder width D; None = the encoder's default
    cache_features: bool = False  # cache frozen-encoder features (image augmentation off, see module doc)
    augment: bool = True  # image augmentation (affine + colour jitter); ignored with cache_features
    augment_params: AugmentParams = field(default_factory=AugmentParams)  # augmentation ranges
    seed: int = 0  # seed of the decoder init, shuffling and augmentation
    device: str = "auto"  # torch device: "cpu", "cuda", "cuda:1", ...; "auto" = cuda when available, else cpu

    def check(self) -> None:
        """Raise UsageError for inconsistent or out-of-range options."""
        if self.encoder_weights is None and not self.random_encoder:
            raise UsageError(
                f"encoder '{self.encoder}' has no weights: pass encoder_weights=FILE, or random_encoder=True "
                f"to train on a randomly initialised encoder on purpose", field="encoder_weights"
            )
        if self.encoder_weights is not None and self.random_encoder:
            raise UsageError(f"encoder_weights={self.encoder_weights} and random_encoder=True both given: choose one",
                             field="encoder_weights")
        if self.cache_features and self.train_encoder:
            raise UsageError("cache_features=True with train_encoder=True: a trained encoder's features change "
                             "every step; drop one of them", field="cache_features")
        if Path(self.out).suffix != ".safetensors":
            raise UsageError(f"out={self.out}: expected a .safetensors file name, e.g. decoder.safetensors",
                             field="out")
        for name, value in (("epochs", self.epochs), ("batch_size", self.batch_size),
                            ("restart_every", self.restart_every), ("val_every", self.val_every)):
            if value < 1:
                raise UsageError(f"{name}={value}: expected a positive integer", field=name)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"lr={self.lr}: expected a positive learning rate, e.g. 1e-4", field="lr")
        if len(self.classes) < 2 or any(not c for c in self.classes) or len(set(self.classes)) != len(self.classes):
            raise UsageError(f"classes={','.join(self.classes)}: expected two or more distinct non-empty "
                             f"names, background first, e.g. background,tumour,stroma", field="classes")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("tiles", "out", "encoder_weights"):
            d[k] = str(d[k]) if d[k] is not None else None
        d["classes"] = list(self.classes)
        return d


@dataclass
class TrainResult:
    """What `train` produced."""

    checkpoint: Path  # best decoder state dict
    encoder_checkpoint: Path | None  # encoder state dict (timm layout) when written, else None
    sidecar: Path  # JSON sidecar
    best_epoch: int  # epoch of the best validation Dice (0 = before training)
    best_val_dice: float  # its mean Dice per class
    history: list[dict[str, Any]]  # one entry per epoch (val fields only on validation epochs)
    seconds: float  # wall time of the whole run


def ckpt_paths(out: Path) -> tuple[Path, Path, Path]:
    """(decoder checkpoint, encoder checkpoint, sidecar) paths for `--out out`."""
    out = Path(out)
    stem = out.with_suffix("")
    return out, stem.with_name(stem.name + ".encoder.safetensors"), out.with_suffix(".json")


# ---------------------------------------------------------------------------------------------- stages
def resolve_device(name: str) -> torch.device:
    """`name` ("auto", "cpu", "cuda", "cuda:N", ...) -> a torch.device that exists here; UsageError otherwise."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"device={name!r}: not a torch device; use auto, cpu, cuda or cuda:N",
                         field="device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device={name}: no CUDA device here (torch {torch.__version__}); use device=cpu",
                         field="device")
    return device


def build_for_training(cfg: TrainConfig, device: torch.device) -> SegmentationModel:
    """The SegmentationModel to train, on `device`: the encoder from `encoder_weights` (or random on request), a
    freshly initialised decoder (seeded); encoder frozen unless `train_encoder`."""
    from slidefuse.model.assembly import build_model

    model = build_model(cfg.encoder, len(cfg.classes), tile_size=cfg.tile_size, decoder_width=cfg.decoder_width,
                        encoder_weights=cfg.encoder_weights, random_weights=True, seed=cfg.seed)
    for p in model.encoder.parameters():
        p.requires_grad_(cfg.train_encoder)
    return model.to(device)


def _device(model: SegmentationModel) -> torch.device:
    return model.decoder.proj.weight.device


def encode_split(model: SegmentationModel, split: TileSplit, batch_size: int) -> torch.Tensor:
    """Frozen-encoder features of every tile of `split`: float16 [N, d, h, w] (kept on the CPU)."""
    import torch

    out = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(split), batch_size):
            tiles = torch.from_numpy(split.images[i : i + batch_size]).to(_device(model))
            out.append(model.features(model.normalise(tiles)).to(torch.float16).cpu())
    return torch.cat(out)


def dihedral(features: torch.Tensor, masks: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random flip / 90-degree rotation per sample of feature maps [B, d, h, w] and labels [B, T, T]."""
    import torch

    f_out, m_out = [], []
    for i in range(features.shape[0]):
        k, flip = int(torch.randint(0, 4, (1,), generator=gen)), bool(torch.randint(0, 2, (1,), generator=gen))
        f, m = features[i], masks[i]
        if flip:
            f, m = f.flip(-1), m.flip(-1)
        f_out.append(torch.rot90(f, k, (-2, -1)))
        m_out.append(torch.rot90(m, k, (-2, -1)))
    return torch.stack(f_out), torch.stack(m_out)


def evaluate(model: SegmentationModel, split: TileSplit, batch_size: int,
             features: torch.Tensor | None = None) -> dict[str, Any]:
    """Validation loss (mean of CE + Dice over batches) and Dice per class over the whole split."""
    import torch

    meter = DiceMeter(model.num_classes)
    losses = []
    dev = _device(model)
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(split), batch_size):
            target = torch.from_numpy(split.masks[i : i + batch_size]).to(dev)
            if features is not None:
                logits = model.decoder(features[i : i + batch_size].to(dev).float())
            else:
                logits = model.forward_logits(torch.from_numpy(split.images[i : i + batch_size]).to(dev))
            ce, dice = ce_dice_loss(logits, target)
            losses.append(float(ce + dice) * target.shape[0])
            meter.update(logits, target)
    per_class = meter.per_class()
    return {"val_loss": sum(losses) / len(split), "val_dice": meter.mean(),
            "val_dice_per_class": [None if math.isnan(x) else round(float(x), 5) for x in per_class]}


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def _atomic_json(obj: dict[str, Any], path: Path) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def _dataset_mpp(tiles: Path) -> float | None:
    info = Path(tiles) / DATASET_INFO
    if not info.is_file():
        return None
    try:
        mpp = json.loads(info.read_text()).get("mpp")
    except (json.JSONDecodeError, AttributeError):
        log.warning("%s: unreadable; the tiles' pixel size is not recorded", info)
        return None
    return float(mpp) if isinstance(mpp, int | float) else None


def export_hint(cfg: TrainConfig, model: SegmentationModel, encoder_file: Path | None, mpp: float | None) -> str:
    """The `slidefuse export` command line that turns this checkpoint into a bundle."""
    enc = encoder_file if encoder_file is not None else cfg.encoder_weights
    return (f"slidefuse export {cfg.encoder} --encoder-weights {enc} --decoder-weights {cfg.out} "
            f"--decoder-width {model.decoder_width} --tile {cfg.tile_size} --classes {','.join(cfg.classes)} "
            f"--mpp {mpp if mpp is not None else 'MPP'} --out BUNDLE")


def _epoch_line(e: dict[str, Any], epochs: int, classes: tuple[str, ...]) -> str:
    line = f"epoch {e['epoch']}/{epochs}"
    if e.get("train_loss") is not None:
        line += f"  train loss {e['train_loss']:.4f}"
    if "val_loss" in e:
        per = ", ".join(f"{c} {'n/a' if d is None else f'{d:.3f}'}" for c, d in zip(classes, e["val_dice_per_class"],
                                                                                   strict=True))
        line += f"  val loss {e['val_loss']:.4f}  val Dice {e['val_dice']:.4f} ({per})"
    if e.get("lr") is not None:
        line += f"  lr {e['lr']:.2e}"
    return line + f"  {e['seconds']:.1f} s"


# ---------------------------------------------------------------------------------------------- epochs
def batch_logits(model: SegmentationModel, cfg: TrainConfig, tiles: torch.Tensor, target: torch.Tensor,
                 features: torch.Tensor | None, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward one training batch: uint8 tiles [B, T, T, 3] and masks [B, T, T] (or cached float16 features
    [B, d, h, w]) -> (logits float [B, C, T, T] with gradients, the possibly augmented target [B, T, T])."""
    import torch

    if features is not None:
        feats, target = dihedral(features.float(), target, gen)
        return model.decoder(feats.to(_device(model))), target.to(_device(model))
    tiles, target = tiles.to(_device(model)), target.to(_device(model))
    if cfg.augment:
        tiles, target = augment_batch(tiles, target, cfg.augment_params, gen)
    x = model.normalise(tiles)
    if cfg.train_encoder:
        return model.decoder(model.features(x)), target
    with torch.no_grad():
        feats = model.features(x)
    return model.decoder(feats), target


def run_epoch(model: SegmentationModel, cfg: TrainConfig, split: TileSplit, features: torch.Tensor | None,
              opt: torch.optim.Optimizer, sched: Any, gen: torch.Generator) -> float:
    """One pass over `split` in a random order (the scheduler is stepped per iteration); returns the mean
    training loss (CE + Dice) per tile."""
    import torch

    model.train()
    if not cfg.train_encoder:
        model.encoder.eval()
    order = torch.randperm(len(split), generator=gen)
    total = 0.0
    for start in range(0, len(split), cfg.batch_size):
        idx = order[start : start + cfg.batch_size].numpy()
        target = torch.from_numpy(split.masks[idx])
        logits, target = batch_logits(model, cfg, torch.from_numpy(split.images[idx]), target,
                                      features[idx] if features is not None else None, gen)
        ce, dice = ce_dice_loss(logits, target)
        loss = ce + dice
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(idx)
    return total / len(split)


class Checkpointer:
    """Keeps the best checkpoint (highest val Dice, then lowest val loss) and the JSON sidecar up to date."""

    def __init__(self, cfg: TrainConfig, model: SegmentationModel) -> None:
        self.cfg = cfg
        self.model = model
        self.decoder_path, self.encoder_path, self.sidecar_path = ckpt_paths(cfg.out)
        self.decoder_path.parent.mkdir(parents=True, exist_ok=True)
        self.write_encoder = cfg.train_encoder or cfg.encoder_weights is None
        self.mpp = _dataset_mpp(cfg.tiles)
        self.encoder_sha: str | None = None
        if cfg.encoder_weights is not None:
            from slidefuse.runtime.bundle import sha256_file

            self.encoder_sha = sha256_file(Path(cfg.encoder_weights))
        self.best: dict[str, Any] = {"epoch": -1, "val_dice": -1.0, "val_loss": math.inf}
        self.t_start = time.perf_counter()

    def consider(self, entry: dict[str, Any]) -> None:
        """Save the model's weights when the validated `entry` beats the best so far."""
        dice = entry["val_dice"] if math.isfinite(entry["val_dice"]) else 0.0
        if (dice, -entry["val_loss"]) <= (self.best["val_dice"], -self.best["val_loss"]):
            return
        self.best.update(epoch=entry["epoch"], val_dice=dice, val_loss=entry["val_loss"])
        meta = {"encoder": self.cfg.encoder, "classes": ",".join(self.cfg.classes), "epoch": str(entry["epoch"])}
        _atomic_save(self.model.decoder.state_dict(), self.decoder_path, meta)
        if self.write_encoder:
            _atomic_save(self.model.encoder.state_dict(), self.encoder_path, meta)

    def write_sidecar(self, history: list[dict[str, Any]], finished: bool) -> None:
        cfg = self.cfg
        _atomic_json({
            "format_version": SIDECAR_VERSION, "kind": "slidefuse decoder checkpoint",
            "encoder": cfg.encoder, "classes": list(cfg.classes), "tile_size": cfg.tile_size,
            "decoder_width": self.model.decoder_width, "mpp": self.mpp,
            "protocol": "encoder trained too (NOT the paper's protocol)" if cfg.train_encoder
            else "paper: frozen encoder, decoder only",
            "files": {"decoder": self.decoder_path.name,
                      "encoder": self.encoder_path.name if self.write_encoder else None},
            "encoder_weights": {"file": str(cfg.encoder_weights) if cfg.encoder_weights else None,
                                "sha256": self.encoder_sha, "random_init": cfg.encoder_weights is None},
            "scheduler": "CosineAnnealingWarmRestarts, T_0 = restart_every epochs of iterations, stepped per "
                         "iteration, eta_min 0",
            "config": cfg.to_dict(), "best": dict(self.best), "history": history, "finished": finished,
            "export_command": export_hint(cfg, self.model, self.encoder_path if self.write_encoder else None,
                                          self.mpp),
            "seconds": round(time.perf_counter() - self.t_start, 1),
        }, self.sidecar_path)


# ---------------------------------------------------------------------------------------------- orchestrator
def train(cfg: TrainConfig) -> TrainResult:
    """Train the decoder (and the encoder only with `train_encoder`) per the module docstring; returns the
    best checkpoint's files and the history. Raises UsageError / DatasetError for bad options or data."""
    cfg.check()
    torch = require("torch", "export", "slidefuse train")
    t_start = time.perf_counter()
    num_classes = len(cfg.classes)
    train_split, val_split = load_dataset(cfg.tiles, num_classes, cfg.tile_size)
    counts = train_split.class_pixels(num_classes)
    log.info("tiles: %d train, %d val (%d px); train pixels per class: %s", len(train_split), len(val_split),
             cfg.tile_size, ", ".join(f"{c} {n / max(1, counts.sum()):.1%}" for c, n in zip(cfg.classes, counts,
                                                                                          strict=True)))
    device = resolve_device(cfg.device)
    model = build_for_training(cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    log.info("training %s on %s (%d parameters; encoder %s)",
             "encoder + decoder" if cfg.train_encoder else "the decoder", device, sum(p.numel() for p in params),
             "TRAINED (not the paper's protocol)" if cfg.train_encoder else "frozen")

    train_feats = val_feats = None
    if cfg.cache_features:
        t0 = time.perf_counter()
        train_feats = encode_split(model, train_split, cfg.batch_size)
        val_feats = encode_split(model, val_split, cfg.batch_size)
        mb = (train_feats.numel() + val_feats.numel()) * 2 / 2**20
        log.info("cached encoder features of %d tiles (%.0f MB, %.1f s); image augmentation is off, feature maps "
                 "get random flips/rotations", len(train_split) + len(val_split), mb, time.perf_counter() - t0)

    gen = torch.Generator().manual_seed(cfg.seed)
    iters = math.ceil(len(train_split) / cfg.batch_size)
    opt = torch.optim.NAdam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=cfg.restart_every * iters, eta_min=0.0)
    ckpt = Checkpointer(cfg, model)
    history: list[dict[str, Any]] = []

    for epoch in range(0, cfg.epochs + 1):  # epoch 0: the untrained baseline, validated only
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"epoch": epoch, "train_loss": None, "lr": None}
        if epoch > 0:
            entry["lr"] = opt.param_groups[0]["lr"]
            entry["train_loss"] = run_epoch(model, cfg, train_split, train_feats, opt, sched, gen)
            if not math.isfinite(entry["train_loss"]):
                raise UsageError(f"training diverged at epoch {epoch} (loss {entry['train_loss']}) with lr={cfg.lr}; "
                                 "lower it", field="lr")
        if epoch % cfg.val_every == 0 or epoch == cfg.epochs:
            entry.update(evaluate(model, val_split, cfg.batch_size, val_feats))
            ckpt.consider(entry)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        history.append(entry)
        log.info("%s", _epoch_line(entry, cfg.epochs, cfg.classes))
        ckpt.write_sidecar(history, finished=epoch == cfg.epochs)

    seconds = time.perf_counter() - t_start
    log.info("best val Dice %.4f at epoch %d; checkpoint %s (%.0f s)", ckpt.best["val_dice"], ckpt.best["epoch"],
             ckpt.decoder_path, seconds)
    return TrainResult(ckpt.decoder_path, ckpt.encoder_path if ckpt.write_encoder else None, ckpt.sidecar_path,
                       int(ckpt.best["epoch"]), float(ckpt.best["val_dice"]), history, seconds)


def val_losses(history: list[dict[str, Any]]) -> np.ndarray:
    """float64 [n]: the validation losses of a history, in epoch order (validation epochs only)."""
    return np.array([e["val_loss"] for e in history if "val_loss" in e], dtype=np.float64)
