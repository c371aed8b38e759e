"""Plotting helpers for geodino outputs: class maps with their colours and legend, heights with a colour bar,
prediction errors, confusion matrices and embeddings as PCA RGB; :func:`plot_output` opens a mapping output and
picks the right one.

matplotlib is the optional extra ``plots`` and is imported inside the functions (so ``import geodino.heads.plots``
stays cheap); without it they raise an ImportError saying ``pip install geodino[plots]``. Every helper draws on
the Axes given, or on a new pyplot figure when ``ax`` is None, and returns the Axes.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr
    from matplotlib.axes import Axes

__all__ = [
    "default_class_colours",
    "plot_classes",
    "plot_confusion",
    "plot_embedding",
    "plot_error",
    "plot_heights",
    "plot_output",
]

INSTALL_HINT = "pip install geodino[plots]"
#: Longest side, in pixels, that :func:`plot_output` reads from a store (larger outputs are decimated).
MAX_DISPLAY = 2048

# Ten well-separated colours (the "tab10" qualitative palette's values); more classes continue on a golden-angle
# walk around the hue circle.
_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def default_class_colours(n: int) -> tuple[tuple[int, int, int], ...]:
    """n distinct (r, g, b) colours in 0..255, the same for every call (for models without ``class_colours``)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    colours = list(_PALETTE[:n])
    for i in range(len(colours), n):
        hue = (0.13 + i * 0.618033988749895) % 1.0  # golden-ratio steps keep neighbours apart
        lightness = 0.45 + 0.15 * ((i // 10) % 2)
        r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.65)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colours)


def _pyplot() -> Any:
    """matplotlib.pyplot, or an ImportError naming the extra to install."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(f"plotting needs matplotlib, the optional extra 'plots': {INSTALL_HINT}") from err
    return plt


def _axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    _, new = _pyplot().subplots()
    return new


def _patch(colour: Sequence[float], label: str) -> Any:
    try:
        from matplotlib.patches import Patch
    except ImportError as err:
        raise ImportError(f"plotting needs matplotlib, the optional extra 'plots': {INSTALL_HINT}") from err
    return Patch(facecolor=colour, edgecolor="black", linewidth=0.3, label=label)


# ----------------------------------------------------------------------------------------------------------------
# Arrays.


def plot_classes(
    classes: np.ndarray,
    class_names: Sequence[str],
    class_colours: Sequence[Sequence[int]] | None = None,
    ax: Axes | None = None,
    nodata: int | None = -1,
    *,
    legend: bool = True,
    title: str | None = None,
) -> Axes:
    """A class map in its class colours, nodata transparent, with a legend of every class.

    Args:
        classes: (h, w) class indices 0..K-1 (integers, or floats where NaN is nodata).
        class_names: K names (the legend's entries, in class order).
        class_colours: K (r, g, b) colours in 0..255; None: :func:`default_class_colours`.
        ax: Axes to draw on; None: a new figure.
        nodata: The value marking pixels without a class (255 in a mapping output's ``classes``), or None.
        legend: Draw the legend (off for a second panel sharing the first one's legend).
        title: Axes title.

    Raises:
        ValueError: Not an (h, w) map, colours that do not match the names, or a value that is neither a class
            index nor ``nodata``.
    """
    classes = np.asarray(classes)
    k = len(class_names)
    if classes.ndim != 2:
        raise ValueError(f"plot_classes needs an (h, w) class map, got shape {classes.shape}")
    colours = default_class_colours(k) if class_colours is None else tuple(tuple(c) for c in class_colours)
    if len(colours) != k or any(len(c) != 3 for c in colours):
        raise ValueError(f"need {k} (r, g, b) class colours for {k} class names, got {colours}")
    known = np.isfinite(classes) if np.issubdtype(classes.dtype, np.inexact) else np.ones(classes.shape, bool)
    if nodata is not None:
        known &= classes != nodata
    index = np.where(known, classes, 0).astype(np.int64)
    if known.any() and (index[known].min() < 0 or index[known].max() >= k or np.any(index[known] != classes[known])):
        found = np.unique(classes[known][(index[known] < 0) | (index[known] >= k) | (index[known] != classes[known])])
        raise ValueError(f"class map holds values {found[:10].tolist()} that are neither 0..{k - 1} nor {nodata}")
    lut = np.array([[r / 255, g / 255, b / 255, 1.0] for r, g, b in colours] or [[0, 0, 0, 0]], np.float32)
    rgba = lut[index]
    rgba[~known] = 0.0  # transparent
    ax = _axes(ax)
    ax.imshow(rgba, interpolation="nearest")
    if legend:
        handles = [_patch(lut[i, :3], str(name)) for i, name in enumerate(class_names)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_heights(
    heights: np.ndarray,
    ax: Axes | None = None,
    vmax: float | None = None,
    units: str | None = "m",
    *,
    vmin: float | None = None,
    title: str | None = None,
    colorbar: bool = True,
    cmap: str = "viridis",
) -> Axes:
    """A height (or any regression) map with a colour bar; NaN pixels transparent.

    Args:
        heights: (h, w) values.
        ax: Axes to draw on; None: a new figure.
        vmax: Top of the colour scale; None: the largest finite value.
        units: Colour-bar units, e.g. "m" (None: no units).
        vmin: Bottom of the colour scale; None: 0, or the smallest value if it is negative.
        title: Axes title.
        colorbar: Draw the colour bar.
        cmap: matplotlib colour map name.

    Raises:
        ValueError: Not an (h, w) map, or no finite value.
    """
    heights = np.asarray(heights, dtype=np.float64)
    if heights.ndim != 2:
        raise ValueError(f"plot_heights needs an (h, w) map, got shape {heights.shape}")
    lo, hi = _finite_range(heights, "height map")
    vmin = min(0.0, lo) if vmin is None else vmin
    vmax = hi if vmax is None else vmax
    ax = _axes(ax)
    image = ax.imshow(np.ma.masked_invalid(heights), cmap=cmap, vmin=vmin, vmax=max(vmax, vmin + 1e-9))
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="height" + (f" ({units})" if units else ""), shrink=0.85)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_error(
    error: np.ndarray, ax: Axes | None = None, limit: float | None = None, units: str | None = "m", *, title=None
) -> Axes:
    """A signed error map (prediction - truth) on a diverging colour scale centred on 0, with a colour bar.

    Args:
        error: (h, w) differences; NaN transparent.
        ax: Axes to draw on; None: a new figure.
        limit: The scale runs from -limit to +limit; None: the 99th percentile of |error|.
        units: Colour-bar units.
        title: Axes title.
    """
    error = np.asarray(error, dtype=np.float64)
    if error.ndim != 2:
        raise ValueError(f"plot_error needs an (h, w) map, got shape {error.shape}")
    _finite_range(error, "error map")
    if limit is None:
        limit = float(np.percentile(np.abs(error[np.isfinite(error)]), 99))
    limit = max(limit, 1e-9)
    ax = _axes(ax)
    image = ax.imshow(np.ma.masked_invalid(error), cmap="RdBu_r", vmin=-limit, vmax=limit)
    label = "prediction - truth" + (f" ({units})" if units else "")
    ax.figure.colorbar(image, ax=ax, label=label, shrink=0.85)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], ax: Axes | None = None) -> Axes:
    """A confusion matrix normalised per truth row (colour), with the pixel counts written in the cells.

    Args:
        confusion: (K, K) counts, rows = truth, columns = prediction; a row without pixels stays blank.
        class_names: K names.
        ax: Axes to draw on; None: a new figure.
    """
    c = np.asarray(confusion, dtype=np.int64)
    k = len(class_names)
    if c.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {c.shape} for {k} class names")
    rows = c.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(rows > 0, c / np.maximum(rows, 1), np.nan)
    ax = _axes(ax)
    image = ax.imshow(np.ma.masked_invalid(fraction), cmap="Blues", vmin=0.0, vmax=1.0)
    ax.figure.colorbar(image, ax=ax, label="fraction of the truth row", shrink=0.85)
    if k <= 30:  # counts stay legible
        for i in range(k):
            for j in range(k):
                dark = np.isfinite(fraction[i, j]) and fraction[i, j] > 0.5
                ax.text(j, i, f"{c[i, j]}", ha="center", va="center", fontsize="x-small",
                        color="white" if dark else "black")  # fmt: skip
    ax.set_xticks(range(k), [str(n) for n in class_names], rotation=45, ha="right")
    ax.set_yticks(range(k), [str(n) for n in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    return ax


def plot_embedding(embedding: np.ndarray, ax: Axes | None = None, *, title: str | None = None) -> Axes:
    """Embedding features as an RGB picture of their first three principal components.

    The picture is :func:`geodino.demo.pca_preview`'s (components stretched per channel between their 2nd and
    98th percentiles); pixels with a non-finite feature are black.

    Args:
        embedding: (D, h, w) features, D >= 3.
        ax: Axes to draw on; None: a new figure.
        title: Axes title.
    """
    from geodino.demo import pca_preview

    embedding = np.asarray(embedding, dtype=np.float32)
    if embedding.ndim != 3 or embedding.shape[0] < 3:
        raise ValueError(f"plot_embedding needs (D, h, w) features with D >= 3, got shape {embedding.shape}")
    if np.isfinite(embedding).all(axis=0).sum() < 3:
        raise ValueError("plot_embedding: fewer than 3 pixels have finite features")
    ax = _axes(ax)
    ax.imshow(pca_preview(embedding), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title or "embedding (PCA RGB)")
    return ax


def _finite_range(values: np.ndarray, what: str) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError(f"{what}: no finite value to plot")
    return float(finite.min()), float(finite.max())


# ----------------------------------------------------------------------------------------------------------------
# Mapping outputs.


def plot_output(path_or_dataarray: str | Path | xr.Dataset | xr.DataArray, ax: Axes | None = None) -> Axes:
    """Plot a geodino mapping output (the Zarr store of ``geodino map`` / ``geodino embed``, or a variable of it).

    The kind decides the picture: a classification store shows ``classes`` (or the argmax of ``probabilities``)
    in the model's class colours with a legend; a regression store its ``prediction`` (channel 0 when there are
    several) as heights with a colour bar in the output's units; an embedding store its PCA RGB. Stores are read
    lazily and decimated to at most ``MAX_DISPLAY`` pixels on the longer side before loading.

    Args:
        path_or_dataarray: Store path, an opened Dataset, or one of its DataArrays.
        ax: Axes to draw on; None: a new figure.

    Raises:
        ValueError: The input is not a geodino output (no recognised variable or kind).
    """
    da = _output_variable(path_or_dataarray)
    da = _decimated(da)
    name, attrs = str(da.name), dict(da.attrs)
    title = f"{name} ({attrs['model']})" if attrs.get("model") else name
    if _is_classification(da):
        names = attrs["class_names"]
        if "class" in da.dims:  # probabilities: the most likely class, NaN (no input) -> nodata
            probs = da.transpose("class", ...).values
            valid = np.isfinite(probs).all(axis=0)
            classes = np.where(valid, np.nanargmax(np.where(valid, probs, 0), axis=0), -1)
            return plot_classes(classes, names, attrs.get("class_colours"), ax, nodata=-1, title=title)
        fill = attrs.get("_FillValue", da.encoding.get("_FillValue"))
        nodata = None if fill is None or (isinstance(fill, float) and math.isnan(fill)) else int(fill)
        return plot_classes(da.values, names, attrs.get("class_colours"), ax, nodata=nodata, title=title)
    if name == "embedding" or "feature" in da.dims:
        return plot_embedding(da.transpose(..., "y", "x").values.reshape(-1, da.sizes["y"], da.sizes["x"]), ax,
                              title=title)  # fmt: skip
    values = da.values
    if values.ndim == 3:  # (band, y, x): the first channel
        channels = attrs.get("channel_names") or [f"band {i}" for i in range(values.shape[0])]
        title = f"{title}: {channels[0]}" if values.shape[0] > 1 else title
        values = values[0]
    units = attrs.get("units")
    return plot_heights(values, ax, units=units, title=title)


def _output_variable(source: Any) -> xr.DataArray:
    """The variable to plot: the DataArray given, or the kind's main variable of a store / Dataset."""
    import xarray as xr

    if isinstance(source, xr.DataArray):
        return source
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"output store not found: {path}")
        # Raw values (no masking): class maps keep their uint8 nodata value, floats store NaN as nodata anyway.
        source = xr.open_zarr(str(path), mask_and_scale=False, decode_coords="all")
    if not isinstance(source, xr.Dataset):
        raise TypeError(f"plot_output takes a store path, a Dataset or a DataArray, got {type(source).__name__}")
    kind = source.attrs.get("kind")
    preferred = {
        "classification": ("classes", "probabilities"),
        "regression": ("prediction",),
        "embedding": ("embedding",),
    }
    for name in preferred.get(kind, ()):
        if name in source.data_vars:
            return source[name]
    raise ValueError(
        f"not a geodino mapping output: root attribute kind={kind!r}, variables {sorted(source.data_vars)} "
        f"(expected kind classification / regression / embedding and its variable)"
    )


def _is_classification(da: xr.DataArray) -> bool:
    return bool(da.attrs.get("class_names")) and (da.name in ("classes", "probabilities") or "class" in da.dims)


def _decimated(da: xr.DataArray) -> xr.DataArray:
    if "y" not in da.dims or "x" not in da.dims:
        raise ValueError(f"output variable {da.name!r} has dims {da.dims}, expected y and x")
    step = max(1, math.ceil(max(da.sizes["y"], da.sizes["x"]) / MAX_DISPLAY))
    return da.isel(y=slice(None, None, step), x=slice(None, None, step)) if step > 1 else da
