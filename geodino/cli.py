"""The ``geodino`` command. It parses arguments and hands over to a wing, imported only when a command runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="geodino",
    help="DINOv3 vision transformers for satellite and aerial imagery: load, embed, map.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def info(
    checkpoint: Annotated[Path, typer.Argument(help="Meta .pth, timm state dict, Hugging Face folder/.safetensors")],
    pretraining: Annotated[
        str | None, typer.Option(help="sat493m or lvd1689m, when the file cannot tell (sets normalisation)")
    ] = None,
) -> None:
    """Show what a backbone checkpoint holds: architecture, parameters, normalisation, ignored keys."""
    import warnings

    from rich.console import Console
    from rich.table import Table

    from geodino.models.checkpoint import CheckpointError, load_backbone

    console = Console()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = load_backbone(checkpoint, pretraining=pretraining)
    except CheckpointError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    meta, cfg = model.meta, model.config
    table = Table(title=str(checkpoint), show_header=False)
    rows = {
        "architecture": meta.name,
        "format": meta.checkpoint_format,
        "pretraining": meta.weights,
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "width / depth / heads": f"{cfg.embed_dim} / {cfg.depth} / {cfg.num_heads}",
        "ffn": f"{cfg.ffn_layer}, hidden {cfg.ffn_hidden}",
        "qkv bias (k masked)": str(cfg.qkv_bias),
        "local_cls_norm": str(cfg.local_cls_norm),
        "patch size": str(cfg.patch_size),
        "bands": ", ".join(meta.bands),
        "mean": ", ".join(f"{v:.3f}" for v in meta.mean),
        "std": ", ".join(f"{v:.3f}" for v in meta.std),
        "training GSD": f"{meta.gsd} m" if meta.gsd else "unknown",
        "ignored keys": ", ".join(meta.ignored_keys) or "none",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)
    for w in caught:
        console.print(f"[yellow]note:[/yellow] {w.message}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the generated scene and outputs")] = Path("geodino-demo"),
    size: Annotated[int, typer.Option(help="Scene side in pixels")] = 1024,
) -> None:
    """Generate a georeferenced scene, embed it with the built-in tiny backbone, write Zarr and a preview PNG."""
    from geodino.demo import run_demo

    run_demo(out, size=size)


def _register_wings() -> None:
    """Add the commands of the wings that are installed (each imports its heavy parts inside its commands)."""
    if importlib.util.find_spec("geodino.workflows.cli") is not None:
        from geodino.workflows.cli import register

        register(app)
    if importlib.util.find_spec("geodino.training.cli") is not None:
        from geodino.training.cli import register as register_training

        register_training(app)


_register_wings()


def main() -> None:
    """Entry point of the ``geodino`` script."""
    app()


if __name__ == "__main__":
    main()
