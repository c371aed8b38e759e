"""Command line of head evaluation: ``geodino evaluate MODEL --images ... --labels ... --out REPORT_DIR``.

:func:`register` adds the command to a typer app; the work is :func:`geodino.workflows.evaluation.evaluate`.
Anticipated failures end as one line on stderr and exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from geodino.errors import cli_errors


@cli_errors()
def evaluate_command(
    model: Annotated[Path, typer.Argument(help="Saved head (.gdm), e.g. from geodino train-head.")],
    images: Annotated[
        list[str],
        typer.Option(
            help="Evaluation imagery: one raster, or repeat for the tiles of one mosaic / band files (--stack)."
        ),
    ],
    labels: Annotated[
        list[str], typer.Option(help="Label raster(s) on any grid and CRS (repeat for a mosaic), or one vector file.")
    ],
    out: Annotated[Path, typer.Option(help="Report folder: prediction.zarr, report.json, PNG figures.")],
    label_column: Annotated[str | None, typer.Option(help="Vector labels: the class (or height) column.")] = None,
    label_nodata: Annotated[float | None, typer.Option(help="Label value meaning 'no label'.")] = None,
    all_touched: Annotated[
        bool, typer.Option("--all-touched", help="Vector labels: burn every pixel a polygon touches.")
    ] = False,
    stack: Annotated[bool, typer.Option("--stack", help="The --images files are the bands of one image.")] = False,
    bands: Annotated[str | None, typer.Option(help="Bands to use: 1-based indexes or names, comma-separated.")] = None,
    tile: Annotated[int | None, typer.Option(help="Mapping tile side (default: the model's).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Tiles per forward pass.")] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default: cuda if available, else cpu).")] = None,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Write the PNG figures.")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Map an area with a saved head and score it against labels: report.json + PNGs."""
    from geodino.heads.cli import parse_bands
    from geodino.workflows.evaluation import evaluate

    result = evaluate(
        model,
        images[0] if len(images) == 1 else images,
        labels[0] if len(labels) == 1 else labels,
        out,
        label_column=label_column,
        label_nodata=label_nodata,
        all_touched=all_touched,
        stack=stack,
        bands=parse_bands(bands),
        tile=tile,
        batch_size=batch_size,
        device=device,
        figures=figures,
        progress=progress,
    )
    r = result.report
    keys = ("mae", "rmse", "r2", "bias", "block_r2") if "mae" in r else ("miou", "overall_accuracy")
    numbers = ", ".join(f"{k} {_fmt(r[k])}" for k in keys)
    typer.echo(f"{numbers} over {r['n_pixels']} pixels; wrote {result.report_path}")


def _fmt(value: object) -> str:
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` to a typer app."""
    app.command("evaluate")(evaluate_command)
