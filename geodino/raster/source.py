"""Windowed, thread-safe raster reading: one file, a mosaic of tiles, or either warped onto a new grid.

A :class:`RasterSource` presents its inputs as one pixel grid (``height x width``, ``crs``, ``transform``) and
reads any :class:`~geodino.raster.windows.Window` of it — also windows reaching outside, padded by reflection or a
constant — as raw float32 values plus a validity mask.

Mosaics are read member by member (no VRT): every member covers an integer-aligned footprint of the common grid,
and where members overlap the first one listed that holds valid data wins (as ``rasterio.merge``'s default).
Warping (``target_crs`` / ``target_resolution``) wraps each member in a ``rasterio.vrt.WarpedVRT`` spanning the
common grid, with an alpha band that carries validity.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds

from geodino.raster.windows import Window

__all__ = ["RasterSource", "RasterSourceError", "reflect_indices", "resolve_bands"]

PathLike = str | os.PathLike[str]
_ALIGN_TOL = 1e-3  # pixels: how far a mosaic tile's origin may sit from the common grid
_RES_TOL = 1e-6  # relative: how much two resolutions may differ and still count as equal
#: Ceiling on GDAL's block cache while RasterSource reads, bytes. Each window is read once (neighbours re-read
#: only their margins), so a large cache buys nothing, and GDAL's default (5% of RAM) makes a long run's memory
#: grow with the raster's size up to that cap. Not applied when the user sets GDAL_CACHEMAX in the environment.
READ_CACHE_BYTES = 32 * 2**20


class RasterSourceError(ValueError):
    """An input raster that cannot be read as asked (the message names the file)."""


class _CacheCeiling:
    """Holds GDAL's process-wide block cache at or below a ceiling while any thread reads, then restores it."""

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._readers = 0
        self._saved: int | None = None  # the cache size to restore, when this lowered it

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            self._readers += 1
            if self._readers == 1 and "GDAL_CACHEMAX" not in os.environ:
                current = int(get_gdal_config("GDAL_CACHEMAX"))
                if current > self.limit:  # lowering also evicts blocks above the ceiling
                    self._saved = current
                    set_gdal_config("GDAL_CACHEMAX", self.limit)
        try:
            yield
        finally:
            with self._lock:
                self._readers -= 1
                if self._readers == 0 and self._saved is not None:
                    set_gdal_config("GDAL_CACHEMAX", self._saved)
                    self._saved = None


_READ_CACHE = _CacheCeiling(READ_CACHE_BYTES)


@dataclass(frozen=True)
class _Member:
    """One input file and where it lands on the common grid."""

    path: str
    footprint: Window  # grid pixels this member may hold data for
    offset: tuple[int, int]  # grid (row, col) of the member's pixel (0, 0); (0, 0) when warped
    warp: dict[str, Any] | None  # WarpedVRT keyword arguments, or None to read the file directly
    alpha: int | None  # 1-based index of the band that holds validity when warped


def reflect_indices(indices: np.ndarray, size: int) -> np.ndarray:
    """Map any integer indices into ``[0, size)`` by mirror reflection about the edge pixels.

    Equals numpy's ``np.pad(..., mode="reflect")`` (edge pixel not repeated: ... 2 1 | 0 1 2 ... n-1 | n-2 ...),
    extended periodically for indices arbitrarily far outside; a 1-pixel axis maps everything to 0.

    Args:
        indices: Integer array of positions (may be negative or >= size).
        size: Axis length (>= 1).

    Returns:
        Array of the same shape with values in ``[0, size)``.
    """
    if size == 1:
        return np.zeros_like(indices)
    period = 2 * (size - 1)
    m = np.mod(indices, period)
    return np.where(m >= size, period - m, m)


def _is_local(path: str) -> bool:
    return "://" not in path and not path.startswith("/vsi")


def _open(path: str) -> Any:
    if _is_local(path) and not Path(path).exists():
        raise FileNotFoundError(f"raster file not found: {path}")
    try:
        return rasterio.open(path)
    except RasterioError as exc:
        raise RasterSourceError(f"{path}: cannot be opened as a raster (expected a GeoTIFF/COG/VRT): {exc}") from exc


def _band_token(name: str) -> str | None:
    """'B04', 'b4', 'B8A', 'Band 4' -> canonical 'b4' / 'b8a'; None if the name holds no such token."""
    match = re.search(r"(?:^|[^a-z0-9])b(?:and)?[ _-]?0*(\d+)(a?)(?:$|[^a-z0-9])", name.lower())
    return f"b{int(match.group(1))}{match.group(2)}" if match else None


def resolve_bands(spec: Sequence[int | str], names: tuple[str, ...], path: str) -> list[int]:
    """1-based band indexes for a list of indexes and/or band names.

    Names match a file's band descriptions case-insensitively, or by band token ("B04" matches "B4 (red)").

    Args:
        spec: 1-based indexes and/or names.
        names: The file's band names, in band order.
        path: The file, named in errors.

    Raises:
        ValueError: On an index out of range, an unknown name, or an empty selection.
    """
    count = len(names)
    out: list[int] = []
    for item in spec:
        if isinstance(item, int | np.integer) and not isinstance(item, bool):
            if not 1 <= item <= count:
                raise ValueError(f"{path}: band index {item} out of range; the file has bands 1..{count}")
            out.append(int(item))
            continue
        if not isinstance(item, str):
            raise TypeError(f"bands must be 1-based indexes or names, got {item!r}")
        lowered = [n.lower() for n in names]
        if item.lower() in lowered:
            out.append(lowered.index(item.lower()) + 1)
            continue
        token = _band_token(item)
        hits = [i + 1 for i, n in enumerate(names) if token is not None and _band_token(n) == token]
        if len(hits) == 1:
            out.append(hits[0])
            continue
        raise ValueError(f"{path}: unknown band name {item!r}; available band names: {', '.join(names)}")
    if not out:
        raise ValueError(f"{path}: no band selected")
    return out


def _north_up(transform: Affine) -> bool:
    return transform.b == 0 and transform.d == 0 and transform.a > 0 and transform.e < 0


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= _RES_TOL * max(abs(a), abs(b))


def _grid_from_bounds(
    bounds: list[tuple[float, float, float, float]], res: tuple[float, float], anchor: tuple[float, float] = (0.0, 0.0)
) -> tuple[Affine, int, int]:
    """North-up grid of resolution ``res`` covering the union of ``(left, bottom, right, top)`` bounds.

    Pixel edges fall on ``anchor + k * res`` (k integer), so a member already on that lattice stays pixel-aligned.
    """
    left, bottom = min(b[0] for b in bounds), min(b[1] for b in bounds)
    right, top = max(b[2] for b in bounds), max(b[3] for b in bounds)
    rx, ry = res
    ax, ay = anchor
    left = ax + math.floor((left - ax) / rx + _ALIGN_TOL) * rx
    top = ay + math.ceil((top - ay) / ry - _ALIGN_TOL) * ry
    width = max(1, math.ceil((right - left) / rx - _ALIGN_TOL))
    height = max(1, math.ceil((top - bottom) / ry - _ALIGN_TOL))
    return Affine(rx, 0.0, left, 0.0, -ry, top), height, width


def _bounds_window(b: tuple[float, float, float, float], transform: Affine, height: int, width: int) -> Window:
    """Grid pixels covering bounds ``b``, one pixel of slack on each side, clipped to the grid."""
    col0 = math.floor((b[0] - transform.c) / transform.a) - 1
    col1 = math.ceil((b[2] - transform.c) / transform.a) + 1
    row0 = math.floor((b[3] - transform.f) / transform.e) - 1
    row1 = math.ceil((b[1] - transform.f) / transform.e) + 1
    win = Window(row0, col0, row1 - row0, col1 - col0).clip(height, width)
    return win if win is not None else Window(0, 0, 0, 0)


class RasterSource:
    """One raster grid over one file, a mosaic of files, or their warp onto a target CRS / resolution.

    Args:
        paths: One path (GeoTIFF, COG, VRT, or any GDAL dataset name) or several tiles of one mosaic (same CRS,
            same resolution, same band count, aligned to a common grid) — or tiles in any CRS when ``target_crs``
            is given.
        bands: 1-based band indexes or band names (dataset descriptions, case-insensitive; 'B4' / 'b04' match a
            description holding 'B04'). Default: every band except alpha bands.
        nodata: Nodata value overriding the files' own (applies to all bands).
        allow_no_crs: Accept files without a CRS (the grid then has ``crs`` None).
        target_crs: Warp onto this CRS (anything rasterio accepts, e.g. "EPSG:4326").
        target_resolution: Warp onto this pixel size (one number or ``(x, y)``, in the target CRS's units), e.g.
            to run a model trained at 0.6 m on 0.3 m imagery.
        resampling: rasterio resampling name used when warping ("nearest", "bilinear", "cubic", "average"...).

    Raises:
        FileNotFoundError: A local path does not exist.
        RasterSourceError: A file cannot be opened, has no CRS, or the files do not form one mosaic.
        ValueError: Unknown band, resampling name, or bad arguments.
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        *,
        bands: Sequence[int | str] | None = None,
        nodata: float | None = None,
        allow_no_crs: bool = False,
        target_crs: Any = None,
        target_resolution: float | tuple[float, float] | None = None,
        resampling: str = "bilinear",
    ) -> None:
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        self._paths = tuple(os.fspath(p) for p in paths)
        if not self._paths:
            raise ValueError("RasterSource needs at least one path")
        if resampling not in Resampling.__members__:
            raise ValueError(f"unknown resampling {resampling!r}; expected one of {', '.join(Resampling.__members__)}")
        self._resampling = resampling
        self._nodata_override = None if nodata is None else float(nodata)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[list[tuple[Any, Any]]] = []
        datasets = [_open(p) for p in self._paths]
        try:
            self._describe(datasets, bands, allow_no_crs, target_crs, target_resolution)
        except BaseException:
            for ds in datasets:
                ds.close()
            raise
        # Keep the validation handles as this thread's readers.
        handles = [self._wrap(ds, m) for ds, m in zip(datasets, self._members, strict=True)]
        self._local.handles = handles
        self._opened.append(handles)

    # ------------------------------------------------------------------ set-up
    def _describe(
        self,
        datasets: list[Any],
        bands: Sequence[int | str] | None,
        allow_no_crs: bool,
        target_crs: Any,
        target_resolution: float | tuple[float, float] | None,
    ) -> None:
        """Validate the inputs and work out the common grid, the bands and each member's place."""
        first = datasets[0]
        for ds, path in zip(datasets, self._paths, strict=True):
            if ds.crs is None and not allow_no_crs:
                raise RasterSourceError(
                    f"{path}: the raster has no CRS; georeferenced outputs need one (pass allow_no_crs=True to "
                    "read it anyway)"
                )
            if ds.count != first.count:
                raise RasterSourceError(
                    f"{path}: has {ds.count} bands but {self._paths[0]} has {first.count}; mosaic tiles must share "
                    "their bands"
                )
        self._all_names = tuple(d or f"band_{i}" for i, d in enumerate(first.descriptions, start=1))
        alpha = [i for i, ci in enumerate(first.colorinterp, start=1) if ci == ColorInterp.alpha]
        if bands is None:
            self._bands = [i for i in range(1, first.count + 1) if i not in alpha] or [1]
        else:
            if isinstance(bands, str | int):
                bands = [bands]
            self._bands = resolve_bands(bands, self._all_names, self._paths[0])
        self._dtype = np.result_type(*[np.dtype(first.dtypes[b - 1]) for b in self._bands])
        self._file_nodata = first.nodata
        # Per band: does a mask need reading? (GDAL mask flags: nodata value, alpha band, per-dataset mask.)
        self._flags = [[set(ds.mask_flag_enums[b - 1]) for b in self._bands] for ds in datasets]
        crss = [ds.crs for ds in datasets]
        warp = target_resolution is not None or (
            target_crs is not None and any(c is None or c != rasterio.crs.CRS.from_user_input(target_crs) for c in crss)
        )
        if warp:
            self._plan_warped(datasets, target_crs, target_resolution)
        else:
            self._plan_direct(datasets)

    def _plan_direct(self, datasets: list[Any]) -> None:
        """Members read as they are: one file, or aligned tiles of one CRS and resolution."""
        first, path0 = datasets[0], self._paths[0]
        if len(datasets) == 1:
            self._crs, self._transform = first.crs, first.transform
            self._height, self._width = first.height, first.width
            self._members = [_Member(path0, Window.full(first.height, first.width), (0, 0), None, None)]
            return
        for ds, path in zip(datasets, self._paths, strict=True):
            if ds.crs != first.crs:
                raise RasterSourceError(
                    f"mixed CRS in mosaic: {path} is {ds.crs} but {path0} is {first.crs}; pass target_crs=... to warp "
                    "all tiles onto one grid"
                )
            if not _north_up(ds.transform):
                raise RasterSourceError(
                    f"{path}: mosaic tiles must be north-up (no rotation), found transform {tuple(ds.transform)[:6]}; "
                    "pass target_resolution=... to warp them"
                )
            if not (_same(ds.transform.a, first.transform.a) and _same(ds.transform.e, first.transform.e)):
                raise RasterSourceError(
                    f"{path}: resolution {ds.res} differs from {path0}'s {first.res}; mosaic tiles must share one "
                    "resolution (pass target_resolution=... to resample)"
                )
        rx, ry = first.transform.a, -first.transform.e
        anchor = (first.transform.c, first.transform.f)
        transform, height, width = _grid_from_bounds([tuple(ds.bounds) for ds in datasets], (rx, ry), anchor)
        members = []
        for ds, path in zip(datasets, self._paths, strict=True):
            col = (ds.transform.c - transform.c) / rx
            row = (transform.f - ds.transform.f) / ry
            if abs(col - round(col)) > _ALIGN_TOL or abs(row - round(row)) > _ALIGN_TOL:
                raise RasterSourceError(
                    f"{path}: tile origin is off the mosaic's pixel grid by ({row - round(row):.4f}, "
                    f"{col - round(col):.4f}) pixels; pass target_resolution=... to resample onto one grid"
                )
            offset = (round(row), round(col))
            members.append(_Member(path, Window(*offset, ds.height, ds.width), offset, None, None))
        self._crs, self._transform, self._height, self._width = first.crs, transform, height, width
        self._members = members

    def _plan_warped(self, datasets: list[Any], target_crs: Any, target_resolution: Any) -> None:
        """Members warped with WarpedVRT onto one north-up grid in the target CRS and resolution."""
        crss = [ds.crs for ds in datasets]
        if any(c is None for c in crss):
            bad = self._paths[crss.index(None)]
            raise RasterSourceError(f"{bad}: the raster has no CRS, so it cannot be warped")
        if target_crs is None:
            if any(c != crss[0] for c in crss):
                bad = next(p for p, c in zip(self._paths, crss, strict=True) if c != crss[0])
                raise RasterSourceError(
                    f"mixed CRS in mosaic: {bad} is not {crss[0]} like {self._paths[0]}; pass target_crs=..."
                )
            dst_crs = crss[0]
        else:
            dst_crs = rasterio.crs.CRS.from_user_input(target_crs)
        bounds = []
        natural = []
        for ds in datasets:
            if ds.crs == dst_crs:
                bounds.append(tuple(ds.bounds))
                natural.append(ds.res)
            else:
                bounds.append(transform_bounds(ds.crs, dst_crs, *ds.bounds, densify_pts=21))
                t, _, _ = calculate_default_transform(ds.crs, dst_crs, ds.width, ds.height, *ds.bounds)
                natural.append((t.a, -t.e))
        if target_resolution is None:
            res = (min(r[0] for r in natural), min(r[1] for r in natural))
        elif isinstance(target_resolution, int | float):
            res = (float(target_resolution), float(target_resolution))
        else:
            res = (float(target_resolution[0]), float(target_resolution[1]))
        if res[0] <= 0 or res[1] <= 0:
            raise ValueError(f"target_resolution must be positive, got {target_resolution}")
        # Anchor the grid on the first member already in the target CRS (it then needs no shift), else on
        # multiples of the resolution.
        native = [ds for ds in datasets if ds.crs == dst_crs and _north_up(ds.transform)]
        anchor = (native[0].transform.c, native[0].transform.f) if native else (0.0, 0.0)
        transform, height, width = _grid_from_bounds(bounds, res, anchor)
        members = []
        for ds, path, b in zip(datasets, self._paths, bounds, strict=True):
            src_alpha = [i for i, ci in enumerate(ds.colorinterp, start=1) if ci == ColorInterp.alpha]
            kwargs: dict[str, Any] = {
                "crs": dst_crs,
                "transform": transform,
                "width": width,
                "height": height,
                "resampling": Resampling[self._resampling],
                "add_alpha": not src_alpha,
            }
            if self._nodata_override is not None:
                kwargs["src_nodata"] = self._nodata_override
            alpha_index = src_alpha[0] if src_alpha else ds.count + 1
            footprint = (
                Window.full(height, width) if len(datasets) == 1 else _bounds_window(b, transform, height, width)
            )
            members.append(_Member(path, footprint, (0, 0), kwargs, alpha_index))
        self._crs, self._transform, self._height, self._width = dst_crs, transform, height, width
        self._members = members

    def _wrap(self, ds: Any, member: _Member) -> tuple[Any, Any]:
        """(dataset, reader) for one member: the reader is the dataset itself or a WarpedVRT over it."""
        if member.warp is None:
            return (ds, ds)
        return (ds, WarpedVRT(ds, **member.warp))

    def _handles(self) -> list[tuple[Any, Any]]:
        """This thread's open (dataset, reader) pairs, opened on first use."""
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = [self._wrap(_open(m.path), m) for m in self._members]
            self._local.handles = handles
            with self._lock:
                self._opened.append(handles)
        return handles

    # ------------------------------------------------------------------ properties
    @property
    def paths(self) -> tuple[str, ...]:
        """The input paths, as given."""
        return self._paths

    @property
    def height(self) -> int:
        """Rows of the grid."""
        return self._height

    @property
    def width(self) -> int:
        """Columns of the grid."""
        return self._width

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self._height, self._width)

    @property
    def count(self) -> int:
        """Number of selected bands C."""
        return len(self._bands)

    @property
    def bands(self) -> tuple[int, ...]:
        """1-based indexes of the selected bands in the file(s)."""
        return tuple(self._bands)

    @property
    def band_names(self) -> tuple[str, ...]:
        """Names of the selected bands (descriptions, or 'band_<i>' where a band has none)."""
        return tuple(self._all_names[b - 1] for b in self._bands)

    @property
    def available_band_names(self) -> tuple[str, ...]:
        """Names of every band of the file(s)."""
        return self._all_names

    @property
    def dtype(self) -> np.dtype:
        """Numpy dtype of the selected bands in the file(s) (reads return float32 regardless)."""
        return self._dtype

    @property
    def crs(self) -> Any:
        """``rasterio.crs.CRS`` of the grid, or None (only with ``allow_no_crs``)."""
        return self._crs

    @property
    def transform(self) -> Affine:
        """Affine geotransform of the grid (pixel (col, row) -> map (x, y) of the pixel's upper-left corner)."""
        return self._transform

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size ``(x, y)`` in CRS units (positive)."""
        t = self._transform
        return (math.hypot(t.a, t.d), math.hypot(t.b, t.e))

    @property
    def nodata(self) -> float | None:
        """The nodata value in force: the override given, else the first file's (None if it has none)."""
        return self._nodata_override if self._nodata_override is not None else self._file_nodata

    def window(self) -> Window:
        """The whole grid as a window."""
        return Window.full(self._height, self._width)

    def output_transform(self, factor: int) -> Affine:
        """Geotransform of an output grid ``factor`` times coarser whose pixel (0, 0) covers input pixels
        ``[0, factor) x [0, factor)`` (same upper-left corner)."""
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        return self._transform @ Affine.scale(factor)

    # ------------------------------------------------------------------ reading
    def read(
        self, window: Window, *, fill: Literal["reflect", "constant"] = "reflect", fill_value: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read raw values of a window of the grid; the window may reach outside the raster.

        Args:
            window: Pixel window of the grid (any offsets).
            fill: How pixels outside the raster are made: "reflect" mirrors the raster about its edge pixels (also
                for windows far outside or rasters smaller than the padding), "constant" uses ``fill_value``.
            fill_value: Value of outside pixels with ``fill="constant"``.

        Returns:
            ``data`` (C, h, w) float32 raw (not normalised) values and ``valid`` (h, w) bool: False where any
            selected band is nodata (nodata value, NaN, alpha band or mask band), and outside the raster with
            "constant" fill; reflected pixels carry the validity of the pixel they mirror.
        """
        if fill not in ("reflect", "constant"):
            raise ValueError(f"fill must be 'reflect' or 'constant', got {fill!r}")
        inner = window.clip(self._height, self._width)
        if inner == window:
            return self._read_grid(window)
        if window.is_empty:
            return (
                np.zeros((self.count, window.height, window.width), dtype=np.float32),
                np.zeros(window.shape, dtype=bool),
            )
        if fill == "constant":
            data = np.full((self.count, window.height, window.width), fill_value, dtype=np.float32)
            valid = np.zeros(window.shape, dtype=bool)
            if inner is not None:
                part = inner.slices_in(window)
                data[(slice(None), *part)], valid[part] = self._read_grid(inner)
            return data, valid
        pad_r = (max(0, -window.row), max(0, window.bottom - self._height))
        pad_c = (max(0, -window.col), max(0, window.right - self._width))
        if inner is not None and max(pad_r) < inner.height and max(pad_c) < inner.width:
            # Fast path: every mirrored pixel lies in the part read, so numpy's reflect pad (one mirror per side)
            # gives the same pixels as reflect_indices.
            data, valid = self._read_grid(inner)
            return (
                np.pad(data, ((0, 0), pad_r, pad_c), mode="reflect"),
                np.pad(valid, (pad_r, pad_c), mode="reflect"),
            )
        rows = reflect_indices(np.arange(window.row, window.bottom), self._height)
        cols = reflect_indices(np.arange(window.col, window.right), self._width)
        box = Window(
            int(rows.min()), int(cols.min()), int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        )
        return self._take(*self._read_grid(box), box, window)

    def _take(self, data: np.ndarray, valid: np.ndarray, box: Window, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Gather ``window`` by reflection from arrays covering ``box`` (which must hold every mirrored pixel)."""
        rows = reflect_indices(np.arange(window.row, window.bottom), self._height) - box.row
        cols = reflect_indices(np.arange(window.col, window.right), self._width) - box.col
        index = np.ix_(rows, cols)
        return data[(slice(None), *index)], valid[index]

    def _read_grid(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read a window lying inside the grid: every member's part, first valid member wins."""
        with _READ_CACHE():
            return self._read_members(window)

    def _read_members(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        handles = self._handles()
        if len(self._members) == 1:
            return self._read_member(0, handles[0][1], window)
        data = np.zeros((self.count, window.height, window.width), dtype=np.float32)
        valid = np.zeros(window.shape, dtype=bool)
        for i, member in enumerate(self._members):
            inter = window.intersection(member.footprint)
            if inter is None:
                continue
            d, v = self._read_member(i, handles[i][1], inter)
            part = inter.slices_in(window)
            take = v & ~valid[part]
            region = data[(slice(None), *part)]
            region[:, take] = d[:, take]
            valid[part] |= v
        return data, valid

    def _read_member(self, i: int, reader: Any, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read a grid window inside member ``i``'s footprint: (C, h, w) float32 values, (h, w) validity."""
        member = self._members[i]
        local = window.shift(-member.offset[0], -member.offset[1]).to_rasterio()
        try:
            if member.warp is not None:
                # One call for the bands and the alpha band: the warper then runs once per block.
                both = reader.read([*self._bands, member.alpha], window=local, out_dtype=np.float32)
                data, valid = both[:-1], both[-1] > 0
            else:
                data = reader.read(self._bands, window=local, out_dtype=np.float32)
                valid = self._direct_mask(i, reader, local, data)
        except RasterioError as exc:
            raise RasterSourceError(f"{member.path}: reading window {window} failed: {exc}") from exc
        valid &= ~np.isnan(data).any(axis=0)
        if self._nodata_override is not None:
            valid &= ~(data == np.float32(self._nodata_override)).any(axis=0)
        return data, valid

    def _direct_mask(self, i: int, reader: Any, local: Any, data: np.ndarray) -> np.ndarray:
        """Validity from GDAL's mask bands (nodata value, alpha, per-dataset mask) of the selected bands."""
        need = []
        for band, flags in zip(self._bands, self._flags[i], strict=True):
            if flags == {MaskFlags.all_valid}:
                continue
            if self._nodata_override is not None and flags == {MaskFlags.nodata}:
                continue  # the override replaces the file's nodata value (compared in _read_member)
            need.append(band)
        valid = np.ones(data.shape[1:], dtype=bool)
        if need:
            masks = reader.read_masks(need, window=local)
            valid &= (masks > 0).all(axis=0)
        return valid

    # ------------------------------------------------------------------ life cycle
    def close(self) -> None:
        """Close every handle opened by any thread; later reads reopen lazily."""
        with self._lock:
            for handles in self._opened:
                for ds, reader in handles:
                    if reader is not ds:
                        reader.close()
                    ds.close()
            self._opened.clear()
            self._local = threading.local()

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_local", "_lock", "_opened"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened = []

    def __repr__(self) -> str:
        where = self._paths[0] if len(self._paths) == 1 else f"{len(self._paths)} tiles"
        return (
            f"RasterSource({where}, {self._height}x{self._width}, bands={self.band_names}, crs={self._crs}, "
            f"res={self.res})"
        )
