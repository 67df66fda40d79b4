"""`slidefuse train`: train the shared decoder on a frozen encoder (the reference paper's protocol)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("train")
@click.option("--encoder", required=True, help="Encoder registry id (see 'slidefuse models').")
@click.option("--encoder-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Encoder checkpoint in its publisher's format.")
@click.option("--random-encoder", is_flag=True,
              help="Train on a randomly initialised encoder, on purpose (tests, the demo model).")
@click.option("--train-encoder", is_flag=True,
              help="Also train the encoder. NOT the paper's protocol: for encoders without pretrained weights.")
@click.option("--tiles", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Dataset folder (layout below).")
@click.option("--classes", required=True, help="Comma-separated class names, background first; masks hold their "
              "indices: background,tumour,stroma.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Decoder checkpoint to write, NAME.safetensors; NAME.json (and NAME.encoder.safetensors) beside it.")
@click.option("--epochs", type=int, default=50, show_default=True, help="Training epochs.")
@click.option("--batch", "batch_size", type=int, default=8, show_default=True, help="Tiles per step.")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Peak learning rate of each cosine cycle.")
@click.option("--restart-every", type=int, default=10, show_default=True,
              help="Epochs per cosine cycle (lr annealed to 0, then restarted).")
@click.option("--val-every", type=int, default=10, show_default=True, help="Validate every N epochs (and at the end).")
@click.option("--tile", "tile_size", type=int, default=512, show_default=True, help="Tile side T in px.")
@click.option("--decoder-width", type=int, default=None, help="Decoder width D [the encoder's default, 256].")
@click.option("--cache-features", is_flag=True,
              help="Compute the frozen encoder's features once; image augmentation is then replaced by random "
                   "flips/rotations of the feature maps.")
@click.option("--no-augment", is_flag=True, help="Turn image augmentation off.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the decoder init, shuffling, augmentation.")
@click.option("--device", default="auto", show_default=True,
              help="torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:N.")
def command(encoder: str, encoder_weights: Path | None, random_encoder: bool, train_encoder: bool, tiles: Path,
            classes: str, out: Path, epochs: int, batch_size: int, lr: float, restart_every: int, val_every: int,
            tile_size: int, decoder_width: int | None, cache_features: bool, no_augment: bool, seed: int,
            device: str) -> None:
    """Train the shared decoder on a frozen ENCODER with the reference paper's protocol: cross-entropy + Dice,
    NAdam, lr cosine-annealed to 0 with warm restarts, random affine + colour jitter, validation Dice per class,
    best checkpoint kept.

    \b
    Dataset layout (--tiles DIR):
      DIR/train/images/<stem>.png   RGB tiles, T x T px (T = --tile), at the um/px you will export with
      DIR/train/masks/<stem>.png    same stem and size; uint8 class index per pixel (PNG mode L or P):
                                    0..C-1 in --classes order, 255 = ignore
      DIR/val/images/*.png, DIR/val/masks/*.png   the validation split, same rules
      DIR/dataset.json              optional {"mpp": 1.0}: recorded in the checkpoint's sidecar
    \b
    Writes --out NAME.safetensors (the best decoder), NAME.json (encoder id, classes, tile, decoder width,
    val history, the export command) and, when the encoder was trained or random, NAME.encoder.safetensors
    (timm layout, for --encoder-weights). Export with e.g.
      slidefuse export uni --encoder-weights uni.bin --decoder-weights NAME.safetensors --classes ...
        --mpp 0.5 --out BUNDLE
    The encoder is never random by accident: pass --encoder-weights or --random-encoder.
    """
    from slidefuse.train.loop import TrainConfig, train

    cfg = TrainConfig(
        encoder=encoder, classes=tuple(c.strip() for c in classes.split(",")), tiles=tiles, out=out,
        encoder_weights=encoder_weights, random_encoder=random_encoder, train_encoder=train_encoder,
        epochs=epochs, batch_size=batch_size, lr=lr, restart_every=restart_every, val_every=val_every,
        tile_size=tile_size, decoder_width=decoder_width, cache_features=cache_features, augment=not no_augment,
        seed=seed, device=device,
    )
    result = train(cfg)
    import json

    hint = json.loads(result.sidecar.read_text()).get("export_command", "")
    click.echo(f"best val Dice {result.best_val_dice:.4f} at epoch {result.best_epoch} ({result.seconds:.0f} s)")
    encoder_note = f", encoder {result.encoder_checkpoint}" if result.encoder_checkpoint else ""
    click.echo(f"checkpoint {result.checkpoint}{encoder_note}, sidecar {result.sidecar}")
    click.echo(f"export with: {hint}")
