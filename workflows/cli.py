"""Command-line interface of the mapping workflows: ``geodino map``, ``geodino embed``, ``geodino export-cog``.

:func:`register` adds the commands to a typer app (the top-level ``geodino`` command calls it lazily). The run
flags of ``map`` and ``embed`` are generated from :class:`~geodino.workflows.options.MapOptions` (one definition
of each setting: its type, default and help). Every anticipated failure ends as one or two lines on stderr and
exit status 2 (:func:`geodino.errors.cli_errors`); Ctrl-C says how to resume and exits with 130. Heavy imports
happen inside the command bodies, so ``--help`` stays fast. ``python -m geodino.workflows.cli`` runs the same
commands on their own.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from geodino.errors import cli_errors
from geodino.workflows.options import MapOptions, cli_flags

_INPUTS = typer.Argument(
    ..., help="Input raster(s): a GeoTIFF/COG/VRT, several tiles of one mosaic, or with --stack one file per band."
)
SchedulerOpt = Annotated[
    str | None,
    typer.Option("--scheduler", help="Address of a Dask scheduler (tcp://host:8786), or 'threads' / 'sync'."),
]


def _resume_hint(err: BaseException) -> str | None:
    return "resume with --resume (finished chunks are kept)" if isinstance(err, KeyboardInterrupt) else None


def with_run_options(command: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the run flags of ``command`` ("map" / "embed"), passed to it as ``options: MapOptions``.

    The decorated function takes its own parameters plus ``options``; the flags come from the fields of
    :class:`MapOptions` (plus ``--scheduler``, which sets ``scheduler`` / ``address``).
    """
    flags = cli_flags(command)

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != "options"]
        generated = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[flag.cli_type, typer.Option(*flag.names(name), help=flag.help)],
            )
            for name, default, flag in flags
        ]
        scheduler = inspect.Parameter(
            "scheduler", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=SchedulerOpt
        )

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> None:
            values = {name: kwargs.pop(name) for name, _, _ in flags}
            options = MapOptions.from_cli(values, scheduler=kwargs.pop("scheduler"))
            func(**kwargs, options=options)

        wrapper.__signature__ = inspect.Signature([*own, *generated, scheduler])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {}
        del wrapper.__wrapped__  # typer must read the generated signature, not func's
        return cli_errors(_resume_hint)(wrapper)

    return decorate


def _wrote(out: Path, ds: Any) -> str:
    weights = ds.attrs.get("weights")
    note = " (RANDOM weights: not a pretrained model)" if weights == "random" else ""
    return f"wrote {out}: {', '.join(f'{k} {tuple(v.shape)}' for k, v in ds.data_vars.items())}{note}"


@with_run_options("map")
def map_command(
    inputs: Annotated[list[Path], _INPUTS],
    model: Annotated[str, typer.Option(help="Saved geodino model, or 'package.module:attr'.")],
    out: Annotated[Path, typer.Option(help="Output Zarr store.")],
    options: MapOptions,
) -> None:
    """Run a model over raster(s) of any size and write a georeferenced Zarr store."""
    from geodino.workflows.mapping import map_raster

    ds = map_raster([str(p) for p in inputs], model, out, options)
    typer.echo(_wrote(out, ds))


@with_run_options("embed")
def embed_command(
    inputs: Annotated[list[Path], _INPUTS],
    backbone: Annotated[
        str,
        typer.Option(
            help="Backbone checkpoint path, or 'test' (built-in tiny model); an architecture name "
            "(vits16, vitl16...) only with --random-weights."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output Zarr store.")],
    options: MapOptions,
) -> None:
    """Write backbone patch embeddings of raster(s) at patch resolution to a Zarr store."""
    from geodino.workflows.mapping import embed_raster

    ds = embed_raster([str(p) for p in inputs], backbone, out, options)
    typer.echo(_wrote(out, ds))


@cli_errors()
def export_cog_command(
    store: Annotated[Path, typer.Argument(help="Zarr store written by geodino map / embed.")],
    var: Annotated[str, typer.Argument(help="Variable to export, e.g. classes.")],
    out_tif: Annotated[Path, typer.Argument(help="Output Cloud-Optimised GeoTIFF.")],
    band: Annotated[
        str | None, typer.Option(help="Comma-separated channel indexes (0-based) or class names (default: all).")
    ] = None,
    overviews: Annotated[bool, typer.Option("--overviews/--no-overviews", help="Build overviews.")] = True,
    allow_incomplete: Annotated[
        bool, typer.Option("--allow-incomplete", help="Export a store whose run did not finish (gaps as nodata).")
    ] = False,
) -> None:
    """Export one variable of a mapping store as a Cloud-Optimised GeoTIFF."""
    from geodino.workflows.cog import export_cog

    selection = None if band is None else [int(b) if b.strip().isdigit() else b.strip() for b in band.split(",")]
    path = export_cog(store, var, out_tif, band=selection, overviews=overviews, allow_incomplete=allow_incomplete)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add ``map``, ``embed`` and ``export-cog`` to a typer app."""
    app.command("map")(map_command)
    app.command("embed")(embed_command)
    app.command("export-cog")(export_cog_command)


def main() -> None:
    """Entry point of ``python -m geodino.workflows.cli``."""
    from geodino.cli import debug_option

    app = typer.Typer(
        help="geodino mapping workflows.", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
    )
    app.callback()(debug_option)
    register(app)
    app()


if __name__ == "__main__":
    main()
