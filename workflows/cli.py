"""Command-line interface of the mapping workflows: ``geodino map``, ``geodino embed``, ``geodino export-cog``.

:func:`register` adds the commands to a typer app (the top-level ``geodino`` command calls it lazily). Heavy imports
happen inside the command bodies, so ``--help`` stays fast. ``python -m geodino.workflows.cli`` runs the same
commands on their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

_INPUTS = typer.Argument(..., help="Input raster(s): a GeoTIFF/COG/VRT, or several tiles of one mosaic.")


def _bands(value: str | None) -> list[int | str] | None:
    """'1,2,3' -> [1, 2, 3]; 'B04,B03,B02' -> names; None stays None; '' or ',' is refused."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise typer.BadParameter(f"no band given in {value!r}; omit --bands to read every band", param_hint="--bands")
    return [int(v) if v.isdigit() else v for v in items]


def _resolution(value: str | None) -> float | tuple[float, float] | None:
    """'0.6' -> 0.6; '0.6,0.5' -> (0.6, 0.5)."""
    if not value:
        return None
    parts = [float(v) for v in value.split(",")]
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def _run_options(
    tile: int | None,
    overlap: int | None,
    chunk: int | None,
    batch_size: int,
    bands: str | None,
    zarr_format: int,
    workers: int | None,
    scheduler: str | None,
    resume: bool,
    overwrite: bool,
    allow_no_crs: bool,
    target_crs: str | None,
    target_resolution: str | None,
    blend: str,
    storage_dtype: str | None,
    device: str | None,
    progress: bool,
) -> dict[str, Any]:
    """The keyword arguments shared by ``map`` and ``embed``."""
    if scheduler in ("threads", "sync"):
        mode, address = scheduler, None
    elif scheduler:
        mode, address = "distributed", scheduler
    else:
        mode, address = ("distributed" if workers else "threads"), None
    return {
        "tile": tile,
        "overlap": overlap,
        "chunk": chunk,
        "batch_size": batch_size,
        "bands": _bands(bands),
        "zarr_format": zarr_format,
        "scheduler": mode,
        "workers": workers,
        "address": address,
        "resume": resume,
        "overwrite": overwrite,
        "allow_no_crs": allow_no_crs,
        "target_crs": target_crs,
        "target_resolution": _resolution(target_resolution),
        "blend": blend,
        "storage_dtype": storage_dtype,
        "device": device,
        "progress": progress,
    }


def _fail(err: Exception) -> None:
    """Print a one-line error and exit with status 2 (no traceback for input errors)."""
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(2)


# Options shared by map and embed (typer reads them from the signatures below).
Tile = Annotated[int | None, typer.Option(help="Patch side in input pixels (default: the model's, else 224).")]
Overlap = Annotated[int | None, typer.Option(help="Patch overlap in input pixels (default: tile // 4).")]
Chunk = Annotated[int | None, typer.Option(help="Output chunk side in output pixels (multiple of the stride).")]
Batch = Annotated[int, typer.Option("--batch-size", help="Patches per forward pass.")]
Bands = Annotated[str | None, typer.Option(help="Comma-separated 1-based band indexes or names, e.g. B04,B03,B02.")]
ZarrFormat = Annotated[int, typer.Option("--zarr-format", help="Zarr format: 3, or 2 for GDAL < 3.11.")]
Workers = Annotated[int | None, typer.Option(help="Run on a local Dask cluster of N worker processes.")]
SchedulerOpt = Annotated[
    str | None, typer.Option("--scheduler", help="Address of a Dask scheduler, or 'threads' / 'sync'.")
]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run, skipping finished chunks.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output store.")]
NoCrs = Annotated[bool, typer.Option("--allow-no-crs", help="Accept inputs without a CRS.")]
TargetCrs = Annotated[str | None, typer.Option("--target-crs", help="Warp inputs onto this CRS first.")]
TargetRes = Annotated[
    str | None, typer.Option("--target-resolution", help="Warp inputs onto this pixel size ('x' or 'x,y').")
]
Blend = Annotated[str, typer.Option(help="Blending window: hann, center or uniform.")]
Storage = Annotated[str | None, typer.Option("--storage-dtype", help="float32 (default) or float16 storage.")]
Device = Annotated[str | None, typer.Option(help="torch device (default: cuda if available, else cpu).")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
StackOpt = Annotated[
    bool,
    typer.Option(
        "--stack",
        help="The inputs, in the order given, are bands of one image (e.g. B04.tif B03.tif B02.tif), read onto the "
        "finest file's grid; --bands then counts over the stacked files' bands.",
    ),
]
OverlapOpt = Annotated[
    bool,
    typer.Option(
        "--allow-overlap",
        help="Accept mosaic tiles that overlap beyond a border strip (the first file listed wins where both hold data).",
    ),
]
ComplexOpt = Annotated[
    str, typer.Option("--complex", help="Complex-valued bands (SAR SLC): 'refuse' (default) or 'magnitude' (|z|).")
]


def map_command(
    inputs: Annotated[list[Path], _INPUTS],
    model: Annotated[str, typer.Option(help="Saved geodino model, or 'package.module:attr'.")],
    out: Annotated[Path, typer.Option(help="Output Zarr store.")],
    outputs: Annotated[
        str | None, typer.Option(help="Comma-separated variables, e.g. probabilities,classes (default: all).")
    ] = None,
    tile: Tile = None,
    overlap: Overlap = None,
    chunk: Chunk = None,
    batch_size: Batch = 8,
    bands: Bands = None,
    zarr_format: ZarrFormat = 3,
    workers: Workers = None,
    scheduler: SchedulerOpt = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    allow_no_crs: NoCrs = False,
    target_crs: TargetCrs = None,
    target_resolution: TargetRes = None,
    blend: Blend = "hann",
    storage_dtype: Storage = None,
    device: Device = None,
    progress: Progress = True,
    stack: StackOpt = False,
    complex_mode: ComplexOpt = "refuse",
    allow_overlap: OverlapOpt = False,
) -> None:
    """Run a model over raster(s) of any size and write a georeferenced Zarr store."""
    from geodino.workflows.mapping import map_raster

    options = _run_options(
        tile, overlap, chunk, batch_size, bands, zarr_format, workers, scheduler, resume, overwrite,
        allow_no_crs, target_crs, target_resolution, blend, storage_dtype, device, progress,
    )  # fmt: skip
    options.update(stack=stack, complex_mode=complex_mode, allow_overlap=allow_overlap)
    names = [o.strip() for o in outputs.split(",")] if outputs else None
    try:
        ds = map_raster([str(p) for p in inputs], model, out, outputs=names, **options)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        _fail(err)
    typer.echo(f"wrote {out}: {', '.join(f'{k} {tuple(v.shape)}' for k, v in ds.data_vars.items())}")


def embed_command(
    inputs: Annotated[list[Path], _INPUTS],
    backbone: Annotated[str, typer.Option(help="Backbone checkpoint path, or a hub name: test, vits16, vitl16...")],
    out: Annotated[Path, typer.Option(help="Output Zarr store.")],
    pretraining: Annotated[
        str | None,
        typer.Option(
            help="sat493m or lvd1689m: what the checkpoint was pretrained on, for files that do not say "
            "(Meta's .pth files other than the SAT-493M ViT-L). Sets the input normalisation."
        ),
    ] = None,
    tile: Tile = None,
    overlap: Overlap = None,
    chunk: Chunk = None,
    batch_size: Batch = 8,
    bands: Bands = None,
    zarr_format: ZarrFormat = 3,
    workers: Workers = None,
    scheduler: SchedulerOpt = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    allow_no_crs: NoCrs = False,
    target_crs: TargetCrs = None,
    target_resolution: TargetRes = None,
    blend: Blend = "hann",
    storage_dtype: Storage = None,
    device: Device = None,
    progress: Progress = True,
    stack: StackOpt = False,
    complex_mode: ComplexOpt = "refuse",
    allow_overlap: OverlapOpt = False,
) -> None:
    """Write backbone patch embeddings of raster(s) at patch resolution to a Zarr store."""
    from geodino.workflows.mapping import embed_raster

    options = _run_options(
        tile, overlap, chunk, batch_size, bands, zarr_format, workers, scheduler, resume, overwrite,
        allow_no_crs, target_crs, target_resolution, blend, storage_dtype, device, progress,
    )  # fmt: skip
    options.update(stack=stack, complex_mode=complex_mode, allow_overlap=allow_overlap)
    try:
        ds = embed_raster([str(p) for p in inputs], backbone, out, pretraining=pretraining, **options)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        _fail(err)
    typer.echo(f"wrote {out}: embedding {tuple(ds['embedding'].shape)}")


def export_cog_command(
    store: Annotated[Path, typer.Argument(help="Zarr store written by geodino map / embed.")],
    var: Annotated[str, typer.Argument(help="Variable to export, e.g. classes.")],
    out_tif: Annotated[Path, typer.Argument(help="Output Cloud-Optimised GeoTIFF.")],
    band: Annotated[
        str | None, typer.Option(help="Comma-separated channel indexes (0-based) or class names (default: all).")
    ] = None,
    overviews: Annotated[bool, typer.Option("--overviews/--no-overviews", help="Build overviews.")] = True,
) -> None:
    """Export one variable of a mapping store as a Cloud-Optimised GeoTIFF."""
    from geodino.workflows.cog import export_cog

    selection = None if band is None else [int(b) if b.strip().isdigit() else b.strip() for b in band.split(",")]
    try:
        path = export_cog(store, var, out_tif, band=selection, overviews=overviews)
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add ``map``, ``embed`` and ``export-cog`` to a typer app."""
    app.command("map")(map_command)
    app.command("embed")(embed_command)
    app.command("export-cog")(export_cog_command)


def main() -> None:
    """Entry point of ``python -m geodino.workflows.cli``."""
    app = typer.Typer(help="geodino mapping workflows.", no_args_is_help=True, add_completion=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
