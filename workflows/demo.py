"""``geodino demo``: a real map, end to end, on a generated landscape whose truth is known.

1. :func:`geodino.workflows.landscape.landscape` generates a scene (land-cover classes and tree heights rendered
   into a 3-band image, deterministic per seed) and writes it as GeoTIFFs in UTM 33N at 1 m: the western part
   for training, the eastern part held out, and the whole truth rasters;
2. :func:`geodino.heads.api.train_head` trains a land-cover head and a canopy-height head on the training part
   (the built-in ``test`` backbone: random weights, so the heads learn from random features of the pixels; the
   output says so);
3. :func:`geodino.workflows.evaluation.evaluate` maps the held-out part with the mapping workflow (the code path of
   ``geodino map``), scores it against the truth and writes ``report.json``;
4. the maps are exported as COGs, and PNGs a person can look at are drawn: the held-out image, class map | truth,
   heights | truth.

Everything it prints is measured in the run; nothing is downloaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["colourise_classes", "colourise_heights", "run_demo"]

#: Held-out fraction of the scene's width (its eastern part), rounded to whole tiles.
HOLDOUT = 0.25


def colourise_classes(classes: np.ndarray, colours: Any, nodata: int = 255) -> np.ndarray:
    """(h, w) class indices -> (h, w, 3) uint8 with each class's colour; ``nodata`` (and unknown) white."""
    palette = np.full((256, 3), 255, np.uint8)
    palette[: len(colours)] = np.asarray(colours, np.uint8)
    index = np.where((classes >= 0) & (classes < 256), classes, nodata).astype(np.uint8)
    return palette[index]


def colourise_heights(heights: np.ndarray, vmax: float) -> np.ndarray:
    """(h, w) metres -> (h, w, 3) uint8 on a dark-blue -> green -> yellow ramp; NaN white."""
    stops = np.array([[20, 20, 80], [30, 110, 140], [60, 170, 90], [250, 230, 60]], np.float32)
    t = np.clip(np.nan_to_num(heights / max(vmax, 1e-6), nan=0.0), 0.0, 1.0) * (len(stops) - 1)
    lo = np.minimum(t.astype(np.int64), len(stops) - 2)
    frac = (t - lo)[..., None]
    rgb = stops[lo] * (1 - frac) + stops[lo + 1] * frac
    rgb[~np.isfinite(heights)] = 255
    return rgb.astype(np.uint8)


def _side_by_side(panels: list[np.ndarray], gap: int = 6) -> np.ndarray:
    h = max(p.shape[0] for p in panels)
    out = np.full((h, sum(p.shape[1] for p in panels) + gap * (len(panels) - 1), 3), 255, np.uint8)
    col = 0
    for p in panels:
        out[: p.shape[0], col : col + p.shape[1]] = p
        col += p.shape[1] + gap
    return out


def _save_png(rgb: np.ndarray, path: Path, scale: int = 1) -> Path:
    from PIL import Image

    img = Image.fromarray(rgb)
    if scale > 1:
        img = img.resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    img.save(path)
    return path


def run_demo(
    out: str | Path,
    size: int = 512,
    *,
    seed: int = 0,
    epochs: int | None = None,
    head: str = "linear",
    backbone: str = "test",
    tile: int = 64,
    lr: float = 1e-2,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Generate the landscape, train two heads, map the held-out part, score it, write Zarr, COGs and PNGs.

    Args:
        out: Output folder.
        size: Scene side in pixels (1 m each; >= 4 tiles).
        seed: Landscape and training seed.
        epochs: Training epochs per head (default 15).
        head: Head type (see ``geodino train-head``).
        backbone: Backbone (default the built-in random-weights ``test`` model).
        tile: Chip / mapping tile side in pixels (64: many small chips, so a few epochs take many steps).
        lr: Peak learning rate (a linear probe on a small scene takes large steps).
        echo: Called with each line of the summary (default: print).

    Returns:
        The land-cover and canopy-height reports, the paths written and the seconds taken.
    """
    from geodino.heads.api import train_head
    from geodino.workflows.cog import export_cog
    from geodino.workflows.evaluation import evaluate, plots_available
    from geodino.workflows.landscape import CLASS_COLOURS, CLASS_NAMES, landscape, write_landscape

    say = echo or print
    out = Path(out)
    if size < 4 * tile:
        raise ValueError(f"--size must be at least 4 tiles ({4 * tile} pixels), got {size}")
    started = time.perf_counter()
    scene = landscape(size, seed)
    split_col = size - max(tile, round(size * HOLDOUT / tile) * tile)
    data = out / "scene"
    paths = write_landscape(scene, data, split_col=split_col)
    say(
        f"scene: {size}x{size} px at 1 m (EPSG:32633), classes {', '.join(CLASS_NAMES)}, trees up to "
        f"{scene.heights.max():.1f} m; training on the western {split_col} columns, holding out "
        f"{size - split_col} -> {data}"
    )
    figures = plots_available()
    results: dict[str, Any] = {"paths": {k: str(v) for k, v in paths.items()}}
    for task, truth, var in (
        ("land-cover", paths["classes"], "classes"),
        ("canopy-height", paths["heights"], "prediction"),
    ):
        t0 = time.perf_counter()
        trained = train_head(
            [paths["train"]],
            [truth],
            task=task,
            backbone=backbone,
            head=head,
            out=out / f"{task}.gdm",
            classes=[f"{i}={n}" for i, n in enumerate(CLASS_NAMES)] if task == "land-cover" else None,
            class_colours=CLASS_COLOURS if task == "land-cover" else None,
            tile=tile,
            epochs=epochs if epochs is not None else 15,
            lr=lr,
            seed=seed,
        )
        t1 = time.perf_counter()
        report_dir = out / task
        ev = evaluate(trained.model_path, paths["holdout"], truth, report_dir, tile=tile, figures=figures)
        t2 = time.perf_counter()
        cog = export_cog(ev.prediction, var, out / f"{task}.tif", overviews=False)
        results[task] = {
            "report": ev.report,
            "model": str(trained.model_path),
            "zarr": str(ev.prediction),
            "cog": str(cog),
            "train_seconds": round(t1 - t0, 2),
            "map_seconds": round(t2 - t1, 2),
            "random_weights": trained.summary["backbone"]["random_weights"],
        }
    results["png"] = str(_pictures(out, results, scene, split_col))
    results["seconds"] = round(time.perf_counter() - started, 2)
    for line in _summary_lines(results):
        say(line)
    return results


def _pictures(out: Path, results: dict[str, Any], scene: Any, split_col: int) -> Path:
    """demo.png: held-out image | class map | class truth | heights | height truth (one shared height scale)."""
    import xarray as xr

    from geodino.workflows.landscape import CLASS_COLOURS

    classes = xr.open_zarr(results["land-cover"]["zarr"])["classes"].values
    heights = xr.open_zarr(results["canopy-height"]["zarr"])["prediction"].isel(band=0).values
    truth_classes = scene.classes[:, split_col:]
    truth_heights = scene.heights[:, split_col:]
    vmax = float(max(np.nanmax(truth_heights), 1.0))
    panels = [
        scene.image[:, :, split_col:].transpose(1, 2, 0),
        colourise_classes(classes, CLASS_COLOURS),
        colourise_classes(truth_classes, CLASS_COLOURS),
        colourise_heights(heights, vmax),
        colourise_heights(truth_heights, vmax),
    ]
    _save_png(_side_by_side(panels[1:3]), out / "land_cover_map_vs_truth.png")
    _save_png(_side_by_side(panels[3:]), out / "canopy_height_map_vs_truth.png")
    return _save_png(_side_by_side(panels), out / "demo.png")


def _summary_lines(results: dict[str, Any]) -> list[str]:
    lc, ch = results["land-cover"], results["canopy-height"]
    r, h = lc["report"], ch["report"]
    per_class = ", ".join(f"{k} {_f(v)}" for k, v in r["per_class_iou"].items())
    note = (
        "backbone: the built-in 'test' ViT with RANDOM weights (no pretrained weights ship with geodino); the heads "
        "learn from random features of the pixels, so expect far better numbers from a pretrained checkpoint"
        if lc["random_weights"]
        else "backbone: pretrained checkpoint"
    )
    return [
        note,
        f"land cover on the held-out part ({r['n_pixels']} px): mIoU {_f(r['miou'])}, overall accuracy "
        f"{_f(r['overall_accuracy'])}; IoU {per_class}  [trained {lc['train_seconds']} s, mapped "
        f"{lc['map_seconds']} s]",
        f"canopy height on the held-out part ({h['n_pixels']} px, 0 m counted): MAE {_f(h['mae'])} m, RMSE "
        f"{_f(h['rmse'])} m, R2 {_f(h['r2'])}, bias {_f(h['bias'])} m, block-R2 {_f(h['block_r2'])}  [trained "
        f"{ch['train_seconds']} s, mapped {ch['map_seconds']} s]",
        f"wrote {lc['zarr']}, {ch['zarr']} (Zarr), {lc['cog']}, {ch['cog']} (COG), {results['png']} "
        "(held-out image | class map | truth | heights | truth), reports in "
        f"{Path(lc['zarr']).parent}/report.json and {Path(ch['zarr']).parent}/report.json",
        f"done in {results['seconds']} s",
    ]


def _f(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
