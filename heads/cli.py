"""Command line of head training: ``geodino train-head``.

:func:`register` adds the command to a typer app (the top-level ``geodino`` command calls it lazily). Heavy
imports happen inside the command, so ``geodino --help`` stays fast. Anticipated failures (bad labels, a missing
column, mismatched bands, an empty split) end as one line on stderr and exit status 2
(:func:`geodino.errors.cli_errors`).

Several images: repeat ``--images`` (and ``--labels``, in the same order, or give one ``--labels`` for all). The
files of ONE image (mosaic tiles, or with ``--stack`` its band files) are joined with commas in one value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from geodino.errors import InputError, cli_errors

_TASKS = "canopy-height|land-cover"
_HEADS = "linear|dpt|upernet|fpn|unet"


def split_files(value: str) -> str | list[str]:
    """One ``--images`` / ``--labels`` value: a path, or comma-joined paths of one source (tiles, band files)."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise InputError(f"empty input {value!r}")
    return parts[0] if len(parts) == 1 else parts


def parse_bands(value: str | None) -> list[int | str] | None:
    """``--bands 1,2,3`` or ``B04,B03,B02`` -> 1-based indexes / names."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InputError("--bands: expected comma-separated band indexes (1-based) or names, got nothing")
    return [int(v) if v.isdigit() else v for v in items]


def parse_names(value: str | None, flag: str) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InputError(f"{flag}: expected a comma-separated list, got {value!r}")
    return items


@cli_errors()
def train_head_command(
    task: Annotated[str, typer.Option(help=f"What to learn: {_TASKS}.")],
    images: Annotated[
        list[str],
        typer.Option(
            help="Imagery: repeat for several images; the files of one image (mosaic tiles, or band files with "
            "--stack) joined with commas."
        ),
    ],
    labels: Annotated[
        list[str],
        typer.Option(
            help="Labels: one per --images (same order) or one for all; rasters on any grid/CRS, or a vector file."
        ),
    ],
    backbone: Annotated[
        str,
        typer.Option(
            help="Backbone checkpoint, or 'test' (built-in tiny model, random weights); an architecture name "
            "(vits16...) only with --random-weights."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Model file to write (.gdm); a summary JSON and CSV go next to it.")],
    head: Annotated[str, typer.Option(help=f"Head: {_HEADS}.")] = "linear",
    label_column: Annotated[
        str | None, typer.Option(help="Vector labels: the column with the classes (or heights).")
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Comma-separated class names (default: from the label values).")
    ] = None,
    stack: Annotated[bool, typer.Option("--stack", help="The comma-joined files of an image are its bands.")] = False,
    bands: Annotated[str | None, typer.Option(help="Bands to use: 1-based indexes or names, comma-separated.")] = None,
    tile: Annotated[int | None, typer.Option(help="Chip side in pixels (multiple of 16; default 224).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default 30, early stopping on validation).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Chips per step (default 8).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 1e-3 linear, 3e-4 others).")] = None,
    loss: Annotated[
        str | None, typer.Option(help="canopy-height: binned|l1|silog; land-cover: ce|ce+dice (default per head).")
    ] = None,
    split: Annotated[
        str, typer.Option(help="blocks | sources | none | a polygon file with a 'split' column (train/val/test).")
    ] = "blocks",
    block_size: Annotated[
        float | None, typer.Option(help="Spatial block side in map units (default: two chips).")
    ] = None,
    buffer: Annotated[float | None, typer.Option(help="Gap between train and validation chips, map units.")] = None,
    val_sources: Annotated[
        str | None, typer.Option(help="--split sources: 0-based indexes of the validation images, comma-separated.")
    ] = None,
    label_nodata: Annotated[float | None, typer.Option(help="Label value meaning 'no label'.")] = None,
    all_touched: Annotated[
        bool, typer.Option("--all-touched", help="Vector labels: burn every pixel a polygon touches.")
    ] = False,
    cache: Annotated[str, typer.Option(help="Feature cache: memory | disk | none.")] = "memory",
    cache_dir: Annotated[Path | None, typer.Option(help="Folder of the disk feature cache.")] = None,
    finetune: Annotated[bool, typer.Option("--finetune", help="Train the backbone too (layer-wise lr decay).")] = False,
    augment: Annotated[str, typer.Option(help="d4 | flips | none.")] = "d4",
    seed: Annotated[int, typer.Option(help="Seed of the split and the training.")] = 0,
    device: Annotated[str, typer.Option(help="torch device of the training: cpu, cuda.")] = "cpu",
    random_weights: Annotated[
        bool, typer.Option("--random-weights", help="Allow a hub architecture name with random weights.")
    ] = False,
    pretraining: Annotated[
        str | None, typer.Option(help="sat493m or lvd1689m, when the checkpoint cannot tell.")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Train a dense head (canopy height or land cover) on imagery + labels; save a model geodino map runs."""
    from geodino.heads.api import train_head

    vals = parse_names(val_sources, "--val-sources")
    try:
        val_index = [int(v) for v in vals] if vals else []
    except ValueError:
        raise InputError(f"--val-sources: expected 0-based image indexes, got {val_sources!r}") from None
    result = train_head(
        [split_files(v) for v in images],
        [split_files(v) for v in labels],
        task=task,  # type: ignore[arg-type]
        backbone=backbone,
        out=out,
        head=head,
        label_column=label_column,
        classes=parse_names(classes, "--classes"),
        label_nodata=label_nodata,
        all_touched=all_touched,
        stack=stack,
        bands=parse_bands(bands),
        tile=tile,
        split=split,
        block_size=block_size,
        buffer=buffer,
        val_sources=val_index,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        loss=loss,
        cache=None if cache == "none" else cache,
        cache_dir=cache_dir,
        finetune=finetune,
        augment=None if augment == "none" else augment,
        seed=seed,
        device=device,
        random_weights=random_weights,
        pretraining=pretraining,
        progress=progress,
        log=typer.echo,
    )
    s = result.summary
    note = (
        " (RANDOM backbone weights: a code-path check, not a useful model)" if s["backbone"]["random_weights"] else ""
    )
    metric = "" if s["val_metric"] is None else f", best validation {s['val_metric']} {s['best_metric']}"
    typer.echo(f"wrote {result.model_path}{metric}{note}; map it with: geodino map IMAGE --model {result.model_path}")


def register(app: typer.Typer) -> None:
    """Add ``train-head`` to a typer app."""
    app.command("train-head")(train_head_command)
