"""Imagery and labels on one grid: labels placed through CRS + geotransform (never by array index), then chips.

Labels come as one raster, a mosaic of label rasters (any grid and CRS each), or ONE vector file (polygons or
points with a value column). They are brought onto the imagery grid:

* canopy height (float metres): label rasters are reprojected with AVERAGE resampling, nodata and ignore values
  left out of the average (a fine imagery pixel inside one coarse label cell gets that cell's height; a coarse
  imagery pixel gets the area-weighted mean of the label cells it covers); a pixel less than half labelled
  (:data:`MIN_LABELLED_AREA`) stays unlabelled. Unlabelled pixels are NaN; 0 m is a valid height. Vector features carry their height in ``label_column``; where several features cover a pixel it
  gets their mean.
* land cover (class indices 0..K-1 of a :class:`ClassMap`): label rasters are mapped to class indices and
  reprojected with NEAREST resampling; vector layers are reprojected to the grid CRS and rasterised with
  ``rasterio.features.rasterize``. A pixel covered by features of two different classes is left unlabelled
  (:data:`~geodino.heads.data.chips.IGNORE_INDEX`) rather than given to whichever was drawn last.
  ``all_touched=False`` (the default) labels the pixels whose centre lies inside a polygon (a point labels the
  pixel holding it); ``all_touched=True`` labels every pixel a geometry touches — thin or small polygons keep
  pixels, at the price of labels spilling one pixel beyond the boundary.

:func:`make_chips` then cuts ``T x T`` chips at the origins of the global patch grid
(:class:`~geodino.raster.plan.PatchGrid`) where enough pixels have a target, reading imagery with
:class:`~geodino.raster.source.RasterSource` (files, mosaics, per-band stacks).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from geodino.errors import InputError
from geodino.heads.data.chips import IGNORE_INDEX, TASKS, ChipSet, GridRef, Task
from geodino.raster.normalize import Normalization, default_scale
from geodino.raster.windows import Window

__all__ = [
    "MIN_LABELLED_AREA",
    "VECTOR_SUFFIXES",
    "ClassMap",
    "LabelError",
    "LabelSpec",
    "labels_on_grid",
    "make_chips",
    "resolve_classes",
]

LabelSpec = str | Path | Sequence[str | Path]
"""Label raster(s) (several = a mosaic, each on its own grid) or ONE vector file."""

#: File name endings read as vector layers (geopandas); anything else is read as a raster (rasterio).
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".parquet", ".geoparquet", ".fgb", ".gml", ".kml")
_PARQUET = (".parquet", ".geoparquet")
#: Canopy height: a grid pixel keeps an averaged height when at least this fraction of its area is labelled.
MIN_LABELLED_AREA = 0.5
#: Rows of imagery whose labels :func:`make_chips` places at a time (a strip of chip rows): bounds its memory.
STRIP_ROWS = 2048
_SCAN_ROWS = 1024  # rows per block when scanning a label raster for its values
_MAX_LISTED = 10  # values / columns named in an error message


class LabelError(InputError):
    """Labels that cannot be used as given (the message names the file, what was expected, what was found)."""


class _NoOverlapError(LabelError):
    """The labels do not reach the grid at all."""


def _key(value: Any) -> int | str:
    """The canonical form of a label value: integral numbers -> int, anything else -> str."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        if math.isfinite(value) and float(value).is_integer():
            return int(value)
        return str(value)
    text = str(value)
    try:
        return int(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class ClassMap:
    """Label values -> class indices 0..K-1 (class ``k`` is ``values[k]``, called ``names[k]``).

    Attributes:
        values: The label value of each class: integers (raster labels, integer columns) or strings.
        names: One name per class (reports, legends, the saved model).
    """

    values: tuple[int | str, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(_key(v) for v in self.values))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        if not self.values:
            raise LabelError("a class map needs at least one class")
        if len(self.values) != len(self.names):
            raise LabelError(f"{len(self.values)} class values but {len(self.names)} class names")
        if len(set(self.values)) != len(self.values):
            raise LabelError(f"class values must be unique, got {self.values}")
        if len(set(self.names)) != len(self.names):
            raise LabelError(f"class names must be unique, got {self.names}")

    def __len__(self) -> int:
        return len(self.values)

    def lookup(self, raw: np.ndarray, *, where: str) -> np.ndarray:
        """Class indices of raw label values.

        Args:
            raw: (...) label values (numbers or strings).
            where: The file, named in errors.

        Returns:
            (...) int64 class indices.

        Raises:
            LabelError: A value that is not one of the classes (the message lists the unexpected values).
        """
        raw = np.asarray(raw)
        if raw.size == 0:
            return np.zeros(raw.shape, dtype=np.int64)
        if raw.dtype.kind in "biuf" and all(isinstance(v, int) for v in self.values):
            values = np.asarray(self.values, dtype=np.float64)
            order = np.argsort(values)
            flat = raw.astype(np.float64).ravel()
            pos = np.clip(np.searchsorted(values[order], flat), 0, len(values) - 1)
            hit = values[order][pos] == flat
            if not hit.all():
                self._refuse(np.unique(flat[~hit]), where)
            return order[pos].reshape(raw.shape).astype(np.int64)
        index = {v: k for k, v in enumerate(self.values)}
        keys = [_key(v) for v in raw.ravel()]
        stray = sorted({k for k in keys if k not in index}, key=str)
        if stray:
            self._refuse(np.asarray(stray, dtype=object), where)
        return np.asarray([index[k] for k in keys], dtype=np.int64).reshape(raw.shape)

    def _refuse(self, stray: np.ndarray, where: str) -> None:
        shown = ", ".join(str(_key(v)) for v in stray[:_MAX_LISTED]) + (" ..." if len(stray) > _MAX_LISTED else "")
        declared = ", ".join(f"{v}={n}" if str(v) != n else n for v, n in zip(self.values, self.names, strict=True))
        raise LabelError(
            f"{where}: label values outside the declared classes: found {shown}; expected one of {declared} "
            "(declare them with --classes, or mark them as nodata / ignore values)"
        )


# ---------------------------------------------------------------------------------------------------- reading
def _label_paths(spec: LabelSpec) -> tuple[tuple[str, ...], bool]:
    """The files of a label spec and whether they form a vector layer."""
    items = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    if not items:
        raise LabelError("no label file given")
    paths = tuple(os.fspath(p) for p in items)
    for p in paths:
        if "://" not in p and not p.startswith("/vsi") and not Path(p).exists():
            raise LabelError(f"label file not found: {p}")
    vector = [p.lower().endswith(VECTOR_SUFFIXES) for p in paths]
    if any(vector) and len(paths) > 1:
        raise LabelError(
            f"labels {', '.join(paths)}: give one vector file, or label rasters (a mosaic), not {len(paths)} files "
            "with a vector among them"
        )
    return paths, any(vector)


def _read_vector(path: str) -> Any:
    import geopandas as gpd

    try:
        if path.lower().endswith(_PARQUET):
            return gpd.read_parquet(path)
        return gpd.read_file(path)
    except ImportError as exc:  # GeoParquet needs pyarrow, an optional dependency
        raise LabelError(
            f"{path}: reading GeoParquet labels needs pyarrow ({exc}); install it, or give the "
            "labels as GeoPackage / GeoJSON"
        ) from exc
    except Exception as exc:  # pyogrio / pyarrow raise many types for unreadable files
        raise LabelError(
            f"{path}: cannot be read as a vector layer (expected GeoPackage/GeoJSON/Shapefile/GeoParquet): {exc}"
        ) from exc


def _value_column(gdf: Any, path: str, label_column: str | None) -> Any:
    """The label values of a layer's features (a pandas Series), checking the column exists."""
    columns = [c for c in gdf.columns if c != gdf.geometry.name]
    if label_column is None or label_column not in gdf.columns or label_column == gdf.geometry.name:
        listed = ", ".join(map(str, columns[: _MAX_LISTED * 3])) or "none"
        what = "no label column was given" if label_column is None else f"it has no column {label_column!r}"
        raise LabelError(f"{path}: vector labels need a label column (--label-column); {what}; columns: {listed}")
    return gdf[label_column]


def _is_ignored(values: Any, nodata: float | None, ignore_values: Sequence[float | str]) -> np.ndarray:
    """(N,) bool: label values (a layer's column) that mean "no label": missing, NaN, nodata, an ignore value."""
    out = values.isna().to_numpy().copy()
    drop = {_key(v) for v in ignore_values} | ({_key(nodata)} if nodata is not None else set())
    if drop:
        out |= np.asarray([not missing and _key(v) in drop for v, missing in zip(values, out, strict=True)], bool)
    return out


def _raster_invalid(
    ds: Any, raw: np.ndarray, window: Any, nodata: float | None, ignore_values: Sequence[float | str]
) -> np.ndarray:
    """(h, w) bool: label pixels without a label: the file's mask (or the ``nodata`` override), NaN, ignore values."""
    invalid = np.zeros(raw.shape, dtype=bool)
    if raw.dtype.kind == "f":
        invalid |= ~np.isfinite(raw)
    if nodata is not None:
        invalid |= raw == np.asarray(nodata).astype(raw.dtype)
    else:
        invalid |= ds.read_masks(1, window=window) == 0
    for v in ignore_values:
        if isinstance(v, str):
            raise LabelError(f"{ds.name}: ignore value {v!r} is text, but raster labels hold numbers")
        invalid |= raw == v
    return invalid


def _open_label_raster(path: str) -> Any:
    import rasterio
    from rasterio.errors import RasterioError

    try:
        ds = rasterio.open(path)
    except RasterioError as exc:
        raise LabelError(f"{path}: cannot be opened as a label raster (expected a GeoTIFF/COG/VRT): {exc}") from exc
    if ds.count != 1:
        ds.close()
        raise LabelError(f"{path}: a label raster must have 1 band, found {ds.count}")
    if ds.crs is None:
        ds.close()
        raise LabelError(f"{path}: label raster has no CRS; labels are placed on the imagery through CRS + transform")
    return ds


def _scan_raster_values(path: str, nodata: float | None, ignore_values: Sequence[float | str]) -> set[int | str]:
    """Every labelled value of a label raster."""
    from rasterio.windows import Window as RioWindow

    found: set[int | str] = set()
    with _open_label_raster(path) as ds:
        for row in range(0, ds.height, _SCAN_ROWS):
            win = RioWindow(0, row, ds.width, min(_SCAN_ROWS, ds.height - row))
            raw = ds.read(1, window=win)
            values = np.unique(raw[~_raster_invalid(ds, raw, win, nodata, ignore_values)])
            found.update(_key(v) for v in values)
    return found


def _parse_classes(classes: Sequence[str], numeric: bool, where: str) -> ClassMap:
    """``--classes`` entries: ``NAME`` (a label value, used as its name) or ``VALUE=NAME``."""
    values: list[int | str] = []
    names: list[str] = []
    for entry in classes:
        text = str(entry).strip()
        value, _, name = text.partition("=")
        value, name = value.strip(), (name.strip() or value.strip())
        key = _key(value)
        if numeric and not isinstance(key, int):
            raise LabelError(
                f"{where}: raster labels hold numbers, so each class must be given as VALUE or VALUE=NAME "
                f"(e.g. 1=forest); got {text!r}"
            )
        values.append(key)
        names.append(name)
    return ClassMap(tuple(values), tuple(names))


def resolve_classes(
    labels: Sequence[LabelSpec],
    *,
    label_column: str | None = None,
    classes: Sequence[str] | None = None,
    nodata: float | None = None,
    ignore_values: Sequence[float | str] = (),
) -> ClassMap:
    """The land-cover classes of a set of label files.

    Without ``classes``, every labelled value found becomes a class, in sorted order (named by its value). With
    ``classes`` (entries ``NAME`` — a label value used as its own name — or ``VALUE=NAME``; raster labels need
    numeric values), class ``k`` is the ``k``-th entry, and any labelled value not declared is an error.

    Args:
        labels: Label specs (label rasters or one vector file each).
        label_column: The vector layers' class column.
        classes: Declared classes, in class-index order.
        nodata: Label value meaning "unlabelled" (overrides label rasters' own nodata).
        ignore_values: Further label values meaning "unlabelled".

    Returns:
        The class map.

    Raises:
        LabelError: No labelled value at all, a missing column, undeclared values.
    """
    found: dict[int | str, str] = {}  # value -> first file holding it
    numeric = True
    names: list[str] = []
    for spec in labels:
        paths, vector = _label_paths(spec)
        names.extend(paths)
        if vector:
            gdf = _read_vector(paths[0])
            values = _value_column(gdf, paths[0], label_column)
            keep = ~_is_ignored(values, nodata, ignore_values)
            keys = {_key(v) for v in values[keep]}
            numeric &= all(isinstance(k, int) for k in keys)
            for k in keys:
                found.setdefault(k, paths[0])
            continue
        for p in paths:
            for k in _scan_raster_values(p, nodata, ignore_values):
                found.setdefault(k, p)
    where = ", ".join(names)
    if classes is None:
        if not found:
            raise LabelError(f"{where}: no labelled pixel or feature found (all nodata / ignored?)")
        values = sorted(found, key=lambda v: (isinstance(v, str), v))
        return ClassMap(tuple(values), tuple(str(v) for v in values))
    class_map = _parse_classes(classes, numeric and all(not p.lower().endswith(VECTOR_SUFFIXES) for p in names), where)
    stray = sorted((k for k in found if k not in class_map.values), key=str)
    if stray:
        files = sorted({found[k] for k in stray})
        class_map._refuse(np.asarray(stray, dtype=object), ", ".join(files))
    return class_map


# ----------------------------------------------------------------------------------------------- onto a grid
@dataclass(frozen=True)
class _Grid:
    """A destination grid (or a window of one)."""

    crs: Any
    transform: Affine
    shape: tuple[int, int]

    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        from rasterio.transform import array_bounds

        west, south, east, north = array_bounds(self.shape[0], self.shape[1], self.transform)
        return west, south, east, north


def _unlabelled(task: Task, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) targets with no label: NaN heights or IGNORE_INDEX classes."""
    if task == "canopy-height":
        return np.full(shape, np.nan, dtype=np.float32)
    return np.full(shape, IGNORE_INDEX, dtype=np.int64)


def _has_label(task: Task, target: np.ndarray) -> np.ndarray:
    return np.isfinite(target) if task == "canopy-height" else target != IGNORE_INDEX


def _source_window(ds: Any, grid: _Grid) -> Any:
    """The label raster's window covering the grid (2 pixels of slack), or None when they do not overlap."""
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window as RioWindow
    from rasterio.windows import from_bounds

    try:
        left, bottom, right, top = transform_bounds(grid.crs, ds.crs, *grid.bounds(), densify_pts=21)
    except Exception as exc:  # PROJ cannot transform between the two CRSs
        raise LabelError(f"{ds.name}: cannot transform the imagery grid into the labels' CRS {ds.crs}: {exc}") from exc
    if not all(map(math.isfinite, (left, bottom, right, top))):
        return None
    win = from_bounds(left, bottom, right, top, transform=ds.transform)
    col0, row0 = math.floor(win.col_off) - 2, math.floor(win.row_off) - 2
    col1 = math.ceil(win.col_off + win.width) + 2
    row1 = math.ceil(win.row_off + win.height) + 2
    col0, row0, col1, row1 = max(col0, 0), max(row0, 0), min(col1, ds.width), min(row1, ds.height)
    if col1 <= col0 or row1 <= row0:
        return None
    return RioWindow(col0, row0, col1 - col0, row1 - row0)


def _average_heights(
    raw: np.ndarray, invalid: np.ndarray, src_transform: Affine, src_crs: Any, grid: _Grid
) -> np.ndarray:
    """(h, w) float32 heights on the grid: AVERAGE of the labelled cells, NaN where under half the pixel is labelled.

    GDAL's AVERAGE leaves nodata out of the mean, so a pixel touching a labelled cell by a rounding sliver would get
    that cell's value. The labelled fraction of each pixel is therefore reprojected too (validity as 1 / 0,
    AVERAGE, the source bordered by unlabelled cells so the label raster's edge counts as unlabelled), and pixels
    less than :data:`MIN_LABELLED_AREA` labelled become NaN.
    """
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    pad = 2
    src = np.pad(raw.astype(np.float32), pad, constant_values=np.nan)
    src[pad:-pad, pad:-pad][invalid] = np.nan
    cover_src = np.isfinite(src).astype(np.float32)
    src_transform = src_transform @ Affine.translation(-pad, -pad)
    common = {
        "src_transform": src_transform,
        "src_crs": src_crs,
        "dst_transform": grid.transform,
        "dst_crs": grid.crs,
        "resampling": Resampling.average,
    }
    heights = np.full(grid.shape, np.nan, dtype=np.float32)
    # Each grid pixel: the area-weighted mean of the labelled cells it overlaps (a pixel inside one coarser label
    # cell gets that cell's value).
    reproject(src, heights, src_nodata=np.nan, dst_nodata=np.nan, **common)
    cover = np.zeros(grid.shape, dtype=np.float32)
    reproject(cover_src, cover, **common)
    heights[cover < MIN_LABELLED_AREA] = np.nan
    return heights


def _raster_on_grid(
    path: str,
    grid: _Grid,
    task: Task,
    class_map: ClassMap | None,
    nodata: float | None,
    ignore_values: Sequence[float | str],
) -> np.ndarray | None:
    """One label raster reprojected onto the grid, or None when it does not reach the grid."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    with _open_label_raster(path) as ds:
        win = _source_window(ds, grid)
        if win is None:
            return None
        raw = ds.read(1, window=win)
        invalid = _raster_invalid(ds, raw, win, nodata, ignore_values)
        src_transform = ds.window_transform(win)
        src_crs = ds.crs
    if task == "canopy-height":
        if raw.dtype.kind not in "biuf":
            raise LabelError(f"{path}: canopy heights must be numbers, found {raw.dtype} values")
        return _average_heights(raw, invalid, src_transform, src_crs, grid)
    assert class_map is not None
    if raw.dtype.kind == "f" and not np.all(np.mod(raw[~invalid], 1) == 0):
        raise LabelError(
            f"{path}: land-cover labels must be whole numbers, found fractional values "
            f"such as {raw[~invalid][np.mod(raw[~invalid], 1) != 0][0]:g}"
        )
    src = np.full(raw.shape, IGNORE_INDEX, dtype=np.int32)
    src[~invalid] = class_map.lookup(raw[~invalid], where=path)
    dst = np.full(grid.shape, IGNORE_INDEX, dtype=np.int32)
    reproject(
        src,
        dst,
        src_transform=src_transform,
        src_crs=src_crs,
        src_nodata=IGNORE_INDEX,
        dst_transform=grid.transform,
        dst_crs=grid.crs,
        dst_nodata=IGNORE_INDEX,
        resampling=Resampling.nearest,
    )
    return dst.astype(np.int64)


def _prepare_layer(
    gdf: Any,
    path: str,
    crs: Any,
    label_column: str | None,
    nodata: float | None,
    ignore_values: Sequence[float | str],
) -> Any:
    """The labelled features of a layer (no null / empty geometry, no nodata or ignored value) in ``crs``."""
    values = _value_column(gdf, path, label_column)
    if gdf.crs is None:
        raise LabelError(f"{path}: vector labels have no CRS; labels are placed on the imagery through their CRS")
    keep = ~_is_ignored(values, nodata, ignore_values) & gdf.geometry.notna().to_numpy()
    layer = gdf[keep]
    layer = layer[~layer.geometry.is_empty]
    try:
        return layer.to_crs(crs)
    except Exception as exc:
        raise LabelError(f"{path}: cannot reproject the labels into the imagery CRS: {exc}") from exc


def _rasterize_layer(
    layer: Any,
    path: str,
    grid: _Grid,
    task: Task,
    class_map: ClassMap | None,
    label_column: str | None,
    all_touched: bool,
) -> np.ndarray | None:
    """A prepared layer (in the grid's CRS) rasterised onto the grid, or None when no feature reaches the grid."""
    from rasterio.enums import MergeAlg
    from rasterio.features import rasterize

    left, bottom, right, top = grid.bounds()
    layer = layer.cx[left:right, bottom:top]
    if layer.empty:
        return None
    geoms = list(layer.geometry)
    vals = layer[label_column].to_numpy()
    opts = {"out_shape": grid.shape, "transform": grid.transform, "all_touched": all_touched}
    if task == "canopy-height":
        try:
            heights = vals.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise LabelError(f"{path}: column {label_column!r} must hold canopy heights (numbers): {exc}") from exc
        # Mean of the features covering each pixel: sum of heights / number of features.
        total = rasterize(zip(geoms, heights, strict=True), fill=0.0, dtype="float64", merge_alg=MergeAlg.add, **opts)
        count = rasterize(((g, 1) for g in geoms), fill=0, dtype="uint32", merge_alg=MergeAlg.add, **opts)
        out = np.full(grid.shape, np.nan, dtype=np.float32)
        hit = count > 0
        out[hit] = (total[hit] / count[hit]).astype(np.float32)
        return out
    assert class_map is not None
    index = class_map.lookup(np.asarray(vals, dtype=object), where=f"{path} (column {label_column!r})")
    out = np.full(grid.shape, IGNORE_INDEX, dtype=np.int64)
    claims = np.zeros(grid.shape, dtype=np.uint16)
    for k in np.unique(index):
        shapes = [(g, 1) for g, i in zip(geoms, index, strict=True) if i == k]
        mask = rasterize(shapes, fill=0, dtype="uint8", **opts).astype(bool)
        out[mask] = k
        claims += mask
    out[claims > 1] = IGNORE_INDEX  # claimed by two classes: ambiguous, so unlabelled
    return out


class _Labels:
    """A label spec opened once: rasters (read per grid window) or a vector layer (read now, reprojected once per
    CRS)."""

    def __init__(self, spec: LabelSpec, *, label_column: str | None):
        self.paths, self.vector = _label_paths(spec)
        self.gdf = _read_vector(self.paths[0]) if self.vector else None
        if self.gdf is not None:
            _value_column(self.gdf, self.paths[0], label_column)
        self.name = ", ".join(self.paths)
        self._layers: dict[tuple[Any, ...], Any] = {}

    def extent(self) -> str:
        """The labels' bounds with their CRS, for messages."""
        if self.gdf is not None:
            return f"{_fmt_bounds(tuple(self.gdf.total_bounds))} in {_crs_text(self.gdf.crs)}"
        import rasterio

        parts = []
        for path in self.paths:
            with rasterio.open(path) as ds:
                parts.append(f"{_fmt_bounds(tuple(ds.bounds))} in {_crs_text(ds.crs)}")
        return "; ".join(parts)

    def _layer(
        self, crs: Any, label_column: str | None, nodata: float | None, ignore_values: Sequence[float | str]
    ) -> Any:
        key = (crs.to_wkt(), label_column, nodata, tuple(ignore_values))
        if key not in self._layers:
            self._layers[key] = _prepare_layer(self.gdf, self.paths[0], crs, label_column, nodata, ignore_values)
        return self._layers[key]

    def on_grid(
        self,
        grid: _Grid,
        *,
        task: Task,
        class_map: ClassMap | None,
        label_column: str | None,
        nodata: float | None,
        ignore_values: Sequence[float | str],
        all_touched: bool,
    ) -> np.ndarray:
        """(h, w) targets on the grid (see :func:`labels_on_grid`).

        Raises:
            _NoOverlapError: No label file reaches the grid.
        """
        if task == "land-cover" and class_map is None:
            raise LabelError("land-cover labels need a class map (see resolve_classes)")
        if self.vector:
            layer = self._layer(grid.crs, label_column, nodata, ignore_values)
            got = _rasterize_layer(layer, self.paths[0], grid, task, class_map, label_column, all_touched)
            parts = [] if got is None else [got]
        else:
            parts = [
                p
                for p in (_raster_on_grid(path, grid, task, class_map, nodata, ignore_values) for path in self.paths)
                if p is not None
            ]
        if not parts:
            raise _NoOverlapError(
                f"{self.name}: the labels do not overlap the imagery grid (bounds {_fmt_bounds(grid.bounds())} in "
                f"{_crs_text(grid.crs)})"
            )
        out = parts[0]
        for part in parts[1:]:  # mosaic: the first label raster listed that has a label wins
            fill = ~_has_label(task, out)
            out[fill] = part[fill]
        return out


def _fmt_bounds(b: tuple[float, float, float, float]) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in b) + ")"


def _crs_text(crs: Any) -> str:
    epsg = crs.to_epsg() if crs is not None else None
    return f"EPSG:{epsg}" if epsg else str(crs)


def _as_grid(crs: Any, transform: Affine, shape: tuple[int, int], window: Window | None) -> _Grid:
    from rasterio.crs import CRS

    if crs is None:
        raise LabelError("the imagery grid has no CRS; labels are placed on it through CRS + transform")
    crs = CRS.from_user_input(crs)
    transform = Affine(*tuple(transform)[:6])
    if window is None:
        return _Grid(crs, transform, (int(shape[0]), int(shape[1])))
    return _Grid(crs, transform @ Affine.translation(window.col, window.row), window.shape)


def labels_on_grid(
    labels: LabelSpec,
    *,
    task: Task,
    crs: Any,
    transform: Affine,
    shape: tuple[int, int],
    window: Window | None = None,
    class_map: ClassMap | None = None,
    label_column: str | None = None,
    nodata: float | None = None,
    ignore_values: Sequence[float | str] = (),
    all_touched: bool = False,
) -> np.ndarray:
    """Labels on a pixel grid (or a window of it), placed through CRS + geotransform.

    Args:
        labels: Label raster(s) — a mosaic, each on its own grid and CRS — or one vector file.
        task: "canopy-height" (heights, AVERAGE resampling) or "land-cover" (classes, NEAREST / rasterised).
        crs: The grid's CRS (anything rasterio accepts).
        transform: The grid's affine geotransform.
        shape: (H, W) of the grid.
        window: A window of the grid to return instead of all of it (may reach outside the grid).
        class_map: Label values -> class indices (land cover; see :func:`resolve_classes`).
        label_column: Vector layers: the column holding classes or heights.
        nodata: Label value meaning "unlabelled" (overrides label rasters' own nodata).
        ignore_values: Further label values meaning "unlabelled".
        all_touched: Vectors: label every pixel a geometry touches, not only those whose centre it holds.

    Returns:
        (h, w) float32 heights, NaN where unlabelled (canopy height); int64 class indices, ``IGNORE_INDEX``
        where unlabelled (land cover).

    Raises:
        LabelError: Labels that do not overlap the grid, undeclared class values, a missing column, no CRS.
    """
    if task not in TASKS:
        raise LabelError(f"task must be one of {TASKS}, got {task!r}")
    grid = _as_grid(crs, transform, shape, window)
    return _Labels(labels, label_column=label_column).on_grid(
        grid,
        task=task,
        class_map=class_map,
        label_column=label_column,
        nodata=nodata,
        ignore_values=ignore_values,
        all_touched=all_touched,
    )


# ------------------------------------------------------------------------------------------------------ chips
def _window_counts(labelled: np.ndarray, rows: np.ndarray, cols: np.ndarray, tile: int) -> np.ndarray:
    """(len(rows), len(cols)) labelled pixels in each tile x tile window (origins may run past the array)."""
    h, w = labelled.shape
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    integral[1:, 1:] = labelled.cumsum(0).cumsum(1)
    r0, r1 = np.minimum(rows, h), np.minimum(rows + tile, h)
    c0, c1 = np.minimum(cols, w), np.minimum(cols + tile, w)
    return integral[r1][:, c1] - integral[r0][:, c1] - integral[r1][:, c0] + integral[r0][:, c0]


def _gsd(src: Any) -> float | None:
    """The imagery's pixel size in metres, when its CRS is in metres and pixels are square."""
    crs = src.crs
    units = getattr(crs, "linear_units", "") if crs is not None else ""
    rx, ry = src.res
    if str(units).lower() in ("metre", "meter", "m", "metres", "meters") and math.isclose(rx, ry, rel_tol=1e-6):
        return float(rx)
    return None


def _image_name(image: str | Path | Sequence[str | Path]) -> str:
    first = image if isinstance(image, str | os.PathLike) else next(iter(image))
    while not isinstance(first, str | os.PathLike):  # a list of band stacks
        first = next(iter(first))
    return Path(os.fspath(first)).name


def _open_image(image: Any, *, stack: bool, bands: Sequence[int | str] | None) -> Any:
    from geodino.raster.source import RasterSource

    paths = image if isinstance(image, str | os.PathLike) else list(image)
    return RasterSource(paths, stack=stack, bands=list(bands) if bands is not None else None)


def _chips_of_source(
    src: Any,
    target_of: Callable[[Window], np.ndarray],
    *,
    task: Task,
    normalization: Normalization,
    tile: int,
    stride: int,
    min_labelled: int,
) -> tuple[list[np.ndarray], list[np.ndarray], list[tuple[int, int]], bool]:
    """The chips of one imagery source: normalised images, targets and origins of chips with enough labels.

    Labels are placed strip by strip (chip rows spanning about :data:`STRIP_ROWS` rows), so memory stays bounded
    by a strip, not the raster.

    Args:
        src: The imagery source.
        target_of: (h, w) targets of a window lying inside the raster; raises _NoOverlapError when no label
            reaches it.

    Returns:
        (images, targets, origins, reached): ``reached`` is False when no label reached any strip.
    """
    from geodino.raster.plan import PatchGrid

    grid = PatchGrid(src.height, src.width, patch=tile, stride=stride)
    rows, cols = grid.row_origins(), grid.col_origins()
    per_strip = max(1, (STRIP_ROWS - tile) // stride + 1)
    images, targets, origins = [], [], []
    reached = False
    for start in range(0, len(rows), per_strip):
        strip = rows[start : start + per_strip]
        top, bottom = int(strip[0]), min(int(strip[-1]) + tile, src.height)
        try:
            target = target_of(Window(top, 0, bottom - top, src.width))
        except _NoOverlapError:
            continue
        reached = True
        padded = _unlabelled(task, (int(strip[-1]) + tile - top, int(cols[-1]) + tile))
        padded[: bottom - top, : src.width] = target  # targets outside the raster stay unlabelled
        counts = _window_counts(_has_label(task, padded), strip - top, cols, tile)
        for i, j in zip(*np.nonzero(counts >= min_labelled), strict=True):
            r, c = int(strip[i]), int(cols[j])
            data, valid = src.read(Window(r, c, tile, tile), fill="reflect")
            chip_target = padded[r - top : r - top + tile, c : c + tile].copy()
            chip_target[~valid] = np.nan if task == "canopy-height" else IGNORE_INDEX  # imagery nodata: no target
            if int(_has_label(task, chip_target).sum()) < min_labelled:
                continue
            images.append(normalization.apply(data, valid, in_place=True))
            targets.append(chip_target)
            origins.append((r, c))
    return images, targets, origins, reached


def _check_same_bands(name: str, names: Sequence[str], first: str, first_names: Sequence[str]) -> None:
    """Refuse sources whose bands name different bands than the first source's (the band-token rule)."""
    from geodino.raster.source import band_label

    for k, (a, b) in enumerate(zip(first_names, names, strict=True), start=1):
        la, lb = band_label(a), band_label(b)
        if la is not None and lb is not None and la != lb:
            raise LabelError(
                f"{name}: band {k} is {lb} where {first} has {la}; every imagery source must list the same bands "
                "in the same order"
            )


def make_chips(
    images: Sequence[str | Path | Sequence[str | Path]],
    labels: Sequence[LabelSpec],
    *,
    task: Task,
    normalization: Normalization | None = None,
    tile: int = 224,
    stride: int | None = None,
    class_map: ClassMap | None = None,
    label_column: str | None = None,
    classes: Sequence[str] | None = None,
    stack: bool = False,
    bands: Sequence[int | str] | None = None,
    label_nodata: float | None = None,
    ignore_values: Sequence[float | str] = (),
    all_touched: bool = False,
    min_labelled: int = 1,
    expected_bands: int | None = None,
) -> ChipSet:
    """Chips of imagery with their targets, on the global patch grid of each imagery source.

    Args:
        images: Imagery sources: each a path, or a list of paths (a mosaic; a band stack with ``stack=True``; a
            list of lists = a mosaic of band stacks), read with :class:`~geodino.raster.source.RasterSource`.
        labels: One label spec per imagery source, or one for all of them (a source it does not reach gives no
            chip, with a warning; it must reach at least one).
        task: "canopy-height" or "land-cover".
        normalization: How raw values become model inputs; None: ``Normalization.for_dtype(dtype, 0, 1)`` (the
            dtype's conventional scale, no centring).
        tile: Chip side T in pixels.
        stride: Step between chip origins (default ``tile``: chips do not overlap); origins are multiples of it.
        class_map: Land-cover classes; None: :func:`resolve_classes` over all label specs with ``classes``.
        label_column: Vector labels: the column with classes or heights.
        classes: Declared classes (``NAME`` or ``VALUE=NAME``), when ``class_map`` is None.
        stack: Each imagery source's files are the bands of one image.
        bands: Bands to read (1-based indexes or names), default all.
        label_nodata: Label value meaning "unlabelled" (overrides the label rasters' own nodata).
        ignore_values: Further label values meaning "unlabelled".
        all_touched: Vector labels: label every pixel a geometry touches (see the module docstring).
        min_labelled: Keep chips with at least this many pixels that have a target.
        expected_bands: Refuse imagery whose band count differs (e.g. a backbone's input bands).

    Returns:
        The chip set, ``grids[i]`` describing ``images[i]``; chips whose imagery reaches past the raster are reflect-padded with unlabelled targets
        there (a raster smaller than a tile gives one such chip). Image nodata pixels have no target and are 0.

    Raises:
        LabelError: Band counts that differ from ``expected_bands`` or between sources, labels that do not overlap
            the imagery, undeclared classes, a missing label column, no chip with labels.
    """
    if task not in TASKS:
        raise LabelError(f"task must be one of {TASKS}, got {task!r}")
    images = [images] if isinstance(images, str | os.PathLike) else list(images)
    if not images:
        raise LabelError("no imagery given")
    specs = [labels] if isinstance(labels, str | os.PathLike) else list(labels)
    if len(specs) not in (1, len(images)):
        raise LabelError(f"give one label spec per imagery source ({len(images)}) or one for all; got {len(specs)}")
    shared = len(specs) == 1 and len(images) > 1
    stride = tile if stride is None else stride
    if tile < 1 or not 1 <= stride <= tile or min_labelled < 1:
        raise LabelError(
            f"need tile >= 1, 1 <= stride <= tile and min_labelled >= 1; got {tile}, {stride}, {min_labelled}"
        )
    if task == "canopy-height" and (class_map is not None or classes is not None):
        raise LabelError("classes apply to land cover only, not to canopy heights")
    opened = [_Labels(s, label_column=label_column) for s in specs]
    if task == "land-cover" and class_map is None:
        class_map = resolve_classes(
            specs, label_column=label_column, classes=classes, nodata=label_nodata, ignore_values=ignore_values
        )
    all_images: list[np.ndarray] = []
    all_targets: list[np.ndarray] = []
    all_origins: list[tuple[int, int]] = []
    all_source: list[int] = []
    grids: list[GridRef] = []
    first: Any = None
    defaulted = normalization is None
    skipped: list[str] = []
    for i, image in enumerate(images):
        name = _image_name(image)
        with _open_image(image, stack=stack, bands=bands) as src:
            if expected_bands is not None and src.count != expected_bands:
                raise LabelError(
                    f"{name}: expected {expected_bands} imagery bands, found {src.count} ({', '.join(src.band_names)})"
                )
            if first is None:
                first = (src.count, src.band_names, src.dtype, _gsd(src))
                if normalization is None:
                    normalization = Normalization.for_dtype(src.dtype, [0.0] * src.count, [1.0] * src.count)
                if normalization.bands != src.count:
                    raise LabelError(
                        f"{name}: the normalisation has {normalization.bands} bands, the imagery {src.count}"
                    )
            elif src.count != first[0]:
                raise LabelError(
                    f"{name}: {src.count} imagery bands, but {_image_name(images[0])} has {first[0]}; "
                    "every imagery source must have the same bands"
                )
            elif defaulted and default_scale(src.dtype) != normalization.scale:
                raise LabelError(
                    f"{name}: imagery of dtype {src.dtype}, but {_image_name(images[0])} is {first[2]}: their raw "
                    "values are on different scales (give a normalization)"
                )
            if i > 0:
                _check_same_bands(name, src.band_names, _image_name(images[0]), first[1])
            if src.crs is None:
                raise LabelError(f"{name}: imagery has no CRS; labels are placed on it through CRS + transform")
            spec = opened[0 if len(opened) == 1 else i]
            base = _Grid(src.crs, src.transform, src.shape)

            def target_of(window: Window, spec: _Labels = spec, base: _Grid = base) -> np.ndarray:
                grid = _Grid(base.crs, base.transform @ Affine.translation(window.col, window.row), window.shape)
                return spec.on_grid(
                    grid,
                    task=task,
                    class_map=class_map,
                    label_column=label_column,
                    nodata=label_nodata,
                    ignore_values=ignore_values,
                    all_touched=all_touched,
                )

            chips, targets, origins, reached = _chips_of_source(
                src,
                target_of,
                task=task,
                normalization=normalization,
                tile=tile,
                stride=stride,
                min_labelled=min_labelled,
            )
            grids.append(GridRef(name, src.crs.to_wkt(), tuple(src.transform)[:6], src.shape))
            if not reached:
                message = (
                    f"{spec.name}: the labels (bounds {spec.extent()}) do not overlap the imagery grid of {name} "
                    f"(bounds {_fmt_bounds(base.bounds())} in {_crs_text(base.crs)})"
                )
                if not shared:
                    raise _NoOverlapError(message)
                skipped.append(name)
                continue
            all_images += chips
            all_targets += targets
            all_origins += origins
            all_source += [len(grids) - 1] * len(chips)
    if shared and len(skipped) == len(images):
        raise _NoOverlapError(f"{opened[0].name}: the labels overlap none of the imagery ({', '.join(skipped)})")
    if skipped:
        warnings.warn(f"{opened[0].name}: labels do not reach {', '.join(skipped)}; no chips from it", stacklevel=2)
    if not all_images:
        raise LabelError(
            f"no chip of {tile}x{tile} pixels has {min_labelled} or more labelled pixels (imagery "
            f"{', '.join(_image_name(im) for im in images)}; labels {', '.join(s.name for s in opened)}): the labels "
            "may be all nodata, or fall where the imagery is nodata"
        )
    assert normalization is not None and first is not None
    dtype = np.float32 if task == "canopy-height" else np.int64
    return ChipSet(
        images=np.stack(all_images).astype(np.float32, copy=False),
        targets=np.stack(all_targets).astype(dtype, copy=False),
        origins=np.asarray(all_origins, dtype=np.int64).reshape(-1, 2),
        source=np.asarray(all_source, dtype=np.int64),
        grids=tuple(grids),
        task=task,
        normalization=normalization,
        class_names=class_map.names if task == "land-cover" and class_map is not None else None,
        band_names=tuple(first[1]),
        gsd=first[3],
        meta={
            "tile": tile,
            "stride": stride,
            "min_labelled": min_labelled,
            "all_touched": all_touched,
            "labels": [s.name for s in opened],
            "class_values": list(class_map.values) if task == "land-cover" and class_map is not None else None,
        },
    )
