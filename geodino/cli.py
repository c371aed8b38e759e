"""The ``geodino`` command. It parses arguments and hands over to a wing, imported only when a command runs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from geodino.errors import cli_errors

app = typer.Typer(
    name="geodino",
    help="DINOv3 vision transformers for satellite and aerial imagery: load, embed, map.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def debug_option(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show Python tracebacks of errors (also GEODINO_DEBUG=1).")
    ] = False,
) -> None:
    """DINOv3 vision transformers for satellite and aerial imagery: load, embed, map."""
    if debug:
        os.environ["GEODINO_DEBUG"] = "1"


app.callback()(debug_option)


def _is_store(path: Path) -> bool:
    return path.is_dir() and ((path / "zarr.json").exists() or (path / ".zgroup").exists())


@app.command()
@cli_errors()
def info(
    target: Annotated[
        str,
        typer.Argument(
            help="Saved geodino model (.gdm), backbone checkpoint (Meta .pth, timm state dict, Hugging Face folder/.safetensors), a hub name "
            "(test, vits16...), or an output store (OUT.zarr) written by geodino map / embed"
        ),
    ],
    pretraining: Annotated[
        str | None, typer.Option(help="sat493m or lvd1689m, when the file cannot tell (sets normalisation)")
    ] = None,
) -> None:
    """Show what a saved model, a checkpoint or hub model holds, or what made an output store and how complete it is."""
    import warnings

    from rich.console import Console
    from rich.table import Table

    console = Console()
    path = Path(target)
    if _is_store(path):
        from geodino.workflows.manifest import summary

        typer.echo("\n".join(summary(path)))
        return
    from geodino.bundle import describe_model, is_model_file

    if path.is_file() and is_model_file(path):
        typer.echo(describe_model(path))
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _load_for_info(target, pretraining)
    meta, cfg = model.meta, model.config
    table = Table(title=str(target), show_header=False)
    rows = {
        "architecture": meta.name,
        "format": meta.checkpoint_format or "none (hub constructor)",
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


def _load_for_info(target: str, pretraining: str | None) -> Any:
    """A checkpoint file's backbone, or a hub architecture with random weights (what its name describes)."""
    from geodino import hub
    from geodino.models.checkpoint import load_backbone

    if Path(target).exists() or hub.resolve_name(target) is None:
        if not Path(target).exists():
            raise FileNotFoundError(
                f"{target}: no such file, and not a hub name (known: {', '.join(hub.known_names())})"
            )
        return load_backbone(target, pretraining=pretraining)
    if pretraining is not None:
        raise ValueError(f"--pretraining applies to checkpoint files; {target!r} is a hub name")
    return getattr(hub, hub.resolve_name(target))(weights=None)


@app.command()
@cli_errors()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the generated scene and outputs")] = Path("geodino-demo"),
    size: Annotated[int, typer.Option(help="Scene side in pixels (1 m each)")] = 512,
    seed: Annotated[int, typer.Option(help="Landscape and training seed")] = 0,
    epochs: Annotated[int | None, typer.Option(help="Training epochs per head (default 15)")] = None,
) -> None:
    """Train heads on a generated landscape with known truth, map the held-out part, print the metrics."""
    from geodino.workflows.demo import run_demo

    run_demo(out, size=size, seed=seed, epochs=epochs, echo=typer.echo)


def _register_wings() -> None:
    """Add the commands of the wings that are installed (each imports its heavy parts inside its commands)."""
    if importlib.util.find_spec("geodino.workflows.cli") is not None:
        from geodino.workflows.cli import register

        register(app)
    if importlib.util.find_spec("geodino.workflows.evaluation_cli") is not None:
        from geodino.workflows.evaluation_cli import register as register_evaluation

        register_evaluation(app)
    if importlib.util.find_spec("geodino.heads.cli") is not None:
        from geodino.heads.cli import register as register_heads

        register_heads(app)
    if importlib.util.find_spec("geodino.training.cli") is not None:
        from geodino.training.cli import register as register_training

        register_training(app)


_register_wings()


def main() -> None:
    """Entry point of the ``geodino`` script."""
    app()


if __name__ == "__main__":
    main()
