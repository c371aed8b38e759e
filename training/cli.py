"""Command-line interface of pretraining: ``geodino pretrain`` and ``geodino plot-run``.

:func:`register` adds the commands to a typer app (the top-level ``geodino`` command calls it). Heavy imports happen
inside the command bodies, so ``geodino --help`` stays fast.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+=")


def _message(err: BaseException) -> str:
    """One line for an anticipated error; an error re-raised from a data-loader worker loses its traceback text."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else type(err).__name__


def _fail(err: BaseException) -> None:
    """Print a one-line error and exit with status 2 (no traceback for input errors)."""
    typer.echo(f"error: {_message(err)}", err=True)
    raise typer.Exit(2)


def _split(extra: list[str]) -> tuple[list[str], list[str]]:
    """Positional arguments -> (data paths, ``section.key=value`` overrides)."""
    overrides = [e for e in extra if _OVERRIDE.match(e)]
    paths = [e for e in extra if not _OVERRIDE.match(e)]
    return paths, overrides


def _absolute(path: str) -> str:
    """Local paths made absolute, so that a run resumes from any working directory."""
    return path if "://" in path or path.startswith("/vsi") else str(Path(path).expanduser().absolute())


def _init_distributed(device: str = "auto") -> None:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE > 1); else nothing.

    NCCL when training on CUDA (each process on GPU LOCAL_RANK), gloo on CPU.
    """
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def pretrain_command(
    extra: Annotated[
        list[str] | None,
        typer.Argument(help="More data paths, and section.key=value config overrides (e.g. optim.lr=1e-4)."),
    ] = None,
    recipe: Annotated[str, typer.Option(help="Shipped recipe name (tiny, ...) or a YAML file.")] = "tiny",
    data: Annotated[
        list[str] | None, typer.Option(help="Raster file, folder, glob or .txt list (repeatable; more may follow).")
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Run folder (config.yaml, metrics.csv, checkpoints/, backbone.pth).")
    ] = Path("pretrain-run"),
    steps: Annotated[int | None, typer.Option(help="Optimiser steps (train.steps).")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    nproc: Annotated[
        int | None, typer.Option(help="Local processes (one per GPU, or CPU processes): re-run under torchrun.")
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="Across processes: ddp (default), fsdp2 (sharded) or none (parallel.strategy).")
    ] = None,
    peak_tflops: Annotated[
        float | None, typer.Option(help="The device's peak TFLOP/s for the mfu column (default: known GPUs).")
    ] = None,
    from_run: Annotated[
        Path | None,
        typer.Option("--from", help="Previous stage's run folder to start from (init.from_run; hires, distill)."),
    ] = None,
) -> None:
    """Self-supervised pretraining (DINO + iBOT + KoLeo, optional Gram anchoring) on rasters.

    --nproc N runs N processes on this machine (torchrun underneath); under torchrun (e.g. several nodes) the
    command joins its process group. The ranks split the windows and train one model on their global batch.
    """
    from geodino.models.checkpoint import CheckpointError
    from geodino.training.config import ConfigError, load_config
    from geodino.training.data.windows import TrainingDataError
    from geodino.training.launch import LaunchError, check_nproc, relaunch
    from geodino.training.loop import RunError, train
    from geodino.training.meta_arch import BatchError, GramTeacherError

    paths, overrides = _split(list(extra or []))
    paths = [*(data or []), *paths]
    if paths:
        overrides.insert(0, "data.paths=" + json.dumps([_absolute(p) for p in paths]))  # JSON is YAML
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    if from_run is not None:
        overrides.append("init.from_run=" + json.dumps(_absolute(str(from_run))))
    if strategy is not None:
        overrides.append(f"parallel.strategy={strategy}")
    if peak_tflops is not None:
        overrides.append(f"parallel.peak_tflops={peak_tflops}")
    try:
        if check_nproc(nproc):
            # Checked here first, so that a bad recipe or override fails once, not once per process.
            load_config(out / "config.yaml" if resume and (out / "config.yaml").is_file() else recipe, overrides)
            args = ["pretrain", "--recipe", recipe, "--out", str(out), *(["--resume"] if resume else []), *overrides]
            code, message = relaunch(int(nproc), args)
            if message:
                typer.echo(message.rstrip("\n"), err=True)
            raise typer.Exit(code)
    except (ConfigError, LaunchError) as err:
        _fail(err)
    try:
        if resume:
            saved = out / "config.yaml"
            if not saved.is_file():
                raise RunError(f"{out}: no config.yaml there, so no run to resume")
            cfg = load_config(saved, overrides)
        else:
            cfg = load_config(recipe, overrides)
            if not cfg.data.paths:
                raise TrainingDataError("no training data: pass --data PATH (rasters, folders, globs or .txt lists)")
        _init_distributed(cfg.train.device)
        result = train(cfg, out, resume=resume, log=typer.echo)
    except (ConfigError, TrainingDataError, RunError, CheckpointError, GramTeacherError, BatchError) as err:
        _fail(err)
    import os

    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"wrote {result.backbone} (steps {result.start_iteration}..{result.end_iteration})")


def plot_run_command(
    run_dir: Annotated[Path, typer.Argument(help="A pretraining run folder (holding metrics.csv).")],
    out: Annotated[Path | None, typer.Option(help="PNG to write (default: RUN_DIR/run.png).")] = None,
) -> None:
    """Draw a run's loss terms, schedules and patch-feature diagnostics to a PNG."""
    from geodino.training.plots import plot_run

    try:
        path = plot_run(run_dir, out)
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add ``pretrain`` and ``plot-run`` to ``app``."""
    app.command("pretrain")(pretrain_command)
    app.command("plot-run")(plot_run_command)


def main() -> None:  # pragma: no cover - ``python -m geodino.training.cli``
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
