"""Windowed, thread-safe raster reading: one file, a mosaic of tiles, a stack of per-band files, or a mosaic of
such stacks — any of them warped onto a new grid.

A :class:`RasterSource` presents its inputs as one pixel grid (``height x width``, ``crs``, ``transform``) and
reads any :class:`~geodino.raster.windows.Window` of it — also windows reaching outside, padded by reflection or a
constant — as raw float32 values plus a validity mask.

Mosaics are read member by member (no VRT): every member covers an integer-aligned footprint of the common grid.
Tiles may share a border strip (where they do, the first one listed that holds valid data wins, as
``rasterio.merge``'s default); tiles that cover each other over more than that are refused, because they are
usually bands or dates of one place given without ``stack=True``.

Stacks (``stack=True``) take the files, in the order given, as bands of one image: each file's bands are read
onto the finest grid among them (coarser files through a ``WarpedVRT``), and a pixel is valid only where every
file is. Warping (``target_crs`` / ``target_resolution``) wraps each member in a ``rasterio.vrt.WarpedVRT``
spanning the common grid, with an alpha band that carries validity.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import threading
import warnings
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

from geodino.raster.normalize import default_scale
from geodino.raster.windows import Window

__all__ = [
    "ComplexMode",
    "RasterSource",
    "RasterSourceError",
    "RasterSourceWarning",
    "band_label",
    "reflect_indices",
    "resolve_bands",
]

PathLike = str | os.PathLike[str]
_ALIGN_TOL = 1e-3  # pixels: how far a mosaic tile's origin may sit from the common grid
_RES_TOL = 1e-6  # relative: how much two resolutions may differ and still count as equal
#: Ceiling on GDAL's block cache while RasterSource reads, bytes. Each window is read once (neighbours re-read
#: only their margins), so a large cache buys nothing, and GDAL's default (5% of RAM) makes a long run's memory
#: grow with the raster's size up to that cap. Not applied when the user sets GDAL_CACHEMAX in the environment.
READ_CACHE_BYTES = 32 * 2**20
#: Mosaic tiles may overlap on a border strip; an overlap spanning more than this fraction of the smaller tile in
#: BOTH directions means the files cover each other (bands or dates of one place), not a mosaic. Sentinel-2 MGRS
#: tiles share 9% of their side, Landsat WRS-2 scenes 7-30% sideways: both stay well under it.
MAX_MOSAIC_OVERLAP = 0.5
#: Most pixels per file read (decimated, overviews first) to check that an input is not entirely nodata.
EMPTY_CHECK_PIXELS = 2**22

ComplexMode = Literal["refuse", "magnitude"]


class RasterSourceError(ValueError):
    """An input raster that cannot be read as asked (the message names the file)."""


class RasterSourceWarning(UserWarning):
    """An input that is read, but probably not as the user expects (the message names the file)."""


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
class _Place:
    """Where one input file lands on the common grid."""

    footprint: Window  # grid pixels this file may hold data for
    offset: tuple[int, int]  # grid (row, col) of the file's pixel (0, 0); (0, 0) when warped
    warp: dict[str, Any] | None  # WarpedVRT keyword arguments, or None to read the file directly
    alpha: int | None  # 1-based index of the band that holds validity when warped


@dataclass(frozen=True)
class _Member:
    """One input file read by the source: where it lands, which of its bands it gives and where they go."""

    path: str
    footprint: Window
    offset: tuple[int, int]
    warp: dict[str, Any] | None
    alpha: int | None
    bands: tuple[int, ...]  # 1-based band indexes read from the file
    channels: tuple[int, ...]  # output channel of each band read
    flags: tuple[frozenset[Any], ...]  # GDAL mask flags of each band read
    tile: int  # index of the mosaic tile (a file, or a stack of files) the member belongs to


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


def band_label(name: str) -> str | None:
    """The Sentinel-2 style band name held in a file or band name, or None.

    ``'T32TQM_20200101_B04_10m'`` -> ``'B04'``, ``'LC08_..._SR_B4'`` -> ``'B04'``, ``'..._B8A'`` -> ``'B8A'``,
    ``'B11'`` -> ``'B11'`` (the token rule of :func:`resolve_bands`, written two digits wide).
    """
    token = _band_token(name)
    if token is None:
        return None
    number, suffix = token[1:].rstrip("a"), token.endswith("a")
    return f"B{int(number)}A" if suffix else f"B{int(number):02d}"


def _gdal_detail(exc: BaseException) -> str:
    """The messages of an error and of the GDAL errors chained under it, most specific last, without rasterio's
    'See previous exception for details.'"""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).replace("See previous exception for details.", "").strip()
        if text and text not in parts:
            parts.append(text)
        current = current.__cause__ or current.__context__
    return " <- ".join(parts) if parts else type(exc).__name__


def _gdal_transform(t: Affine) -> str:
    """A geotransform in GDAL's order (x0, pixel width, row rotation, y0, column rotation, pixel height)."""
    return f"({t.c:g}, {t.a:g}, {t.b:g}, {t.f:g}, {t.d:g}, {t.e:g})"


_DATUM_KEYS = ("datum", "ellps", "towgs84", "nadgrids", "no_defs", "type")


def _differ_in_datum_only(a: Any, b: Any) -> bool:
    """True when two different CRSs have the same projection and parameters and differ only in their datum
    (e.g. NAD83 and NAD83(HARN) State Plane): a shift of up to metres that PROJ may not know how to apply."""
    if a is None or b is None or a == b:
        return False
    try:
        pa, pb = a.to_dict(), b.to_dict()
    except Exception:  # a CRS PROJ cannot express as parameters: no verdict
        return False
    strip = lambda d: {k: v for k, v in d.items() if k not in _DATUM_KEYS}  # noqa: E731
    return bool(pa) and strip(pa) == strip(pb)


def _crs_name(crs: Any) -> str:
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    name = crs.to_wkt().split('"')[1] if '"' in crs.to_wkt() else str(crs)
    return f"EPSG:{epsg} ({name})" if epsg else name


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


def _layout(paths: Any, stack: bool) -> tuple[tuple[tuple[str, ...], ...], bool]:
    """The input files as mosaic tiles, each a tuple of files (one file, or the files of one band stack).

    Returns:
        (tiles, stacked): ``stacked`` is True for ``stack=True`` or a list of lists.
    """
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not items:
        raise ValueError("RasterSource needs at least one path")
    nested = [not isinstance(p, str | os.PathLike) for p in items]
    if any(nested):
        if not all(nested):
            raise ValueError("give RasterSource paths, or lists of paths (one band stack per tile), not a mix")
        tiles = tuple(tuple(os.fspath(p) for p in tile) for tile in items)
        if any(not tile for tile in tiles):
            raise ValueError("RasterSource: a band stack needs at least one path")
        return tiles, True
    flat = tuple(os.fspath(p) for p in items)
    return ((flat,) if stack else tuple((p,) for p in flat)), stack


def _unique(names: list[str], stems: list[str]) -> tuple[str, ...]:
    """Band names made unique: a repeated name is prefixed with its file's name, then numbered if still repeated."""
    out = [f"{s}:{n}" if names.count(n) > 1 else n for n, s in zip(names, stems, strict=True)]
    seen: dict[str, int] = {}
    final = []
    for n in out:
        if out.count(n) > 1:
            seen[n] = seen.get(n, 0) + 1
            final.append(f"{n}#{seen[n]}")
        else:
            final.append(n)
    return tuple(final)


def _covers(a: Window, b: Window) -> bool:
    """True when two footprints overlap over more than a border strip: the overlap spans more than
    :data:`MAX_MOSAIC_OVERLAP` of the smaller one in both directions."""
    inter = a.intersection(b)
    if inter is None:
        return False
    return inter.height > MAX_MOSAIC_OVERLAP * min(a.height, b.height) and inter.width > MAX_MOSAIC_OVERLAP * min(
        a.width, b.width
    )


def _alpha_index(ds: Any) -> int:
    """1-based index of the band holding validity once warped: the file's alpha band, else the one WarpedVRT adds."""
    alpha = [i for i, ci in enumerate(ds.colorinterp, start=1) if ci == ColorInterp.alpha]
    return alpha[0] if alpha else ds.count + 1


def _mixed_crs(path: str, crs: Any, path0: str, crs0: Any, what: str) -> str:
    """The refusal of files in two CRSs without --target-crs."""
    note = (
        " (they differ only in the datum realisation; mixing them shifts one by whatever PROJ knows, possibly nothing)"
        if _differ_in_datum_only(crs, crs0)
        else ""
    )
    return (
        f"mixed CRS in {what}: {path} is {_crs_name(crs)} but {path0} is {_crs_name(crs0)}{note}; pass --target-crs "
        "(target_crs=...) to warp all files onto one grid"
    )


def _sample_is_empty(ds: Any, bands: list[int], nodata_override: float | None) -> bool | None:
    """Whether a decimated read (overviews first) of a file's bands finds no valid pixel; None when not checked
    (a file larger than :data:`EMPTY_CHECK_PIXELS` without overviews)."""
    from geodino.raster.stats import decimated_shape

    floating = any(not np.issubdtype(np.dtype(ds.dtypes[b - 1]), np.integer) for b in bands)
    masked = [b for b in bands if set(ds.mask_flag_enums[b - 1]) != {MaskFlags.all_valid}]
    if not masked and not floating and nodata_override is None:
        return False  # no mask, no NaN possible: every pixel is valid
    overviews = ds.overviews(bands[0])
    if overviews:
        f = overviews[-1]
        shape = (max(1, math.ceil(ds.height / f)), max(1, math.ceil(ds.width / f)))
    elif ds.height * ds.width <= EMPTY_CHECK_PIXELS:
        shape = decimated_shape(ds.height, ds.width, 2**16)
    else:
        return None
    try:
        valid = np.ones(shape, dtype=bool)
        if masked:
            masks = ds.read_masks(masked, out_shape=(len(masked), *shape), resampling=Resampling.nearest)
            valid &= (masks > 0).all(axis=0)
        if floating or nodata_override is not None:
            data = ds.read(bands, out_shape=(len(bands), *shape), resampling=Resampling.nearest)
            if floating:
                valid &= ~np.isnan(data).any(axis=0)
            if nodata_override is not None:
                valid &= ~(data == nodata_override).any(axis=0)
    except RasterioError:
        return None  # unreadable blocks are reported by the read that needs them, with the window
    return not bool(valid.any())


class RasterSource:
    """One raster grid over one file, a mosaic of files, a stack of per-band files, or a mosaic of stacks —
    optionally warped onto a target CRS / resolution.

    Args:
        paths: One path (GeoTIFF, COG, VRT, or any GDAL dataset name); several tiles of one mosaic (same CRS,
            same resolution, same band count, aligned to a common grid, overlapping at most on a border strip) —
            or tiles in any CRS when ``target_crs`` is given; with ``stack=True``, the files of one band stack;
            or a list of lists: one band stack per mosaic tile (implies ``stack=True``), every tile listing the
            same bands in the same order.
        bands: 1-based band indexes or band names (dataset descriptions, case-insensitive; 'B4' / 'b04' match a
            description holding 'B04'). Default: every band except alpha bands. In a stack, indexes and names
            count over the stacked bands: file 1's bands, then file 2's, and so on (so with one band per file,
            band i is file i); a stacked band may be chosen once only.
        nodata: Nodata value overriding the files' own (applies to all bands).
        allow_no_crs: Accept files without a CRS (the grid then has ``crs`` None).
        target_crs: Warp onto this CRS (anything rasterio accepts, e.g. "EPSG:4326").
        target_resolution: Warp onto this pixel size (one number or ``(x, y)``, in the target CRS's units), e.g.
            to run a model trained at 0.6 m on 0.3 m imagery.
        resampling: rasterio resampling name used when warping and when bringing a stack's coarser files onto
            its grid ("bilinear", the default, suits reflectance; "nearest" for classes or to keep raw values).
        stack: Take the files, in the order given, as bands of one image. Their grid is the finest file's
            (its CRS, resolution and pixel lattice), or ``target_crs`` / ``target_resolution``; a pixel is valid
            where every file is.
        complex_mode: What to do with complex-valued bands (SAR SLC): "refuse" (the default) or "magnitude"
            (read ``|z|``; said in a warning and in :meth:`describe`).
        allow_overlap: Accept mosaic tiles that cover each other beyond a border strip (the first file listed
            wins where both hold data).

    Raises:
        FileNotFoundError: A local path does not exist.
        RasterSourceError: A file cannot be opened, has no CRS, is rotated, holds complex values, or the files do
            not form one mosaic / stack.
        ValueError: Unknown band, resampling name, or bad arguments.
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike] | Sequence[Sequence[PathLike]],
        *,
        bands: Sequence[int | str] | None = None,
        nodata: float | None = None,
        allow_no_crs: bool = False,
        target_crs: Any = None,
        target_resolution: float | tuple[float, float] | None = None,
        resampling: str = "bilinear",
        stack: bool = False,
        complex_mode: ComplexMode = "refuse",
        allow_overlap: bool = False,
    ) -> None:
        self._tiles, self._stack = _layout(paths, stack)
        self._paths = tuple(p for tile in self._tiles for p in tile)
        if resampling not in Resampling.__members__:
            raise ValueError(f"unknown resampling {resampling!r}; expected one of {', '.join(Resampling.__members__)}")
        if complex_mode not in ("refuse", "magnitude"):
            raise ValueError(f"--complex (complex_mode) must be 'refuse' or 'magnitude', got {complex_mode!r}")
        self._resampling = resampling
        self._complex_mode: ComplexMode = complex_mode
        self._complex = False  # set when complex bands are read as magnitude
        self._allow_overlap = allow_overlap
        self._nodata_override = None if nodata is None else float(nodata)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[list[tuple[Any, Any]]] = []
        datasets = [_open(p) for p in self._paths]
        try:
            used = self._describe(datasets, bands, allow_no_crs, target_crs, target_resolution)
            self._check_not_empty([datasets[i] for i in used])
        except BaseException:
            for ds in datasets:
                ds.close()
            raise
        # Keep the validation handles of the files read as this thread's readers; close the others.
        handles = [self._wrap(datasets[i], m) for i, m in zip(used, self._members, strict=True)]
        read = set(used)
        for i, ds in enumerate(datasets):
            if i not in read:
                ds.close()
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
    ) -> list[int]:
        """Validate the inputs and work out the common grid, the bands and each member's place.

        Returns:
            Indexes (into the flat path list) of the files read, in member order.
        """
        for ds, path in zip(datasets, self._paths, strict=True):
            if ds.crs is None and not allow_no_crs:
                raise RasterSourceError(
                    f"{path}: the raster has no CRS; georeferenced outputs need one (pass --allow-no-crs "
                    "(allow_no_crs=True) to read it anyway)"
                )
        if bands is not None and isinstance(bands, str | int):
            bands = [bands]
        # Per tile, per file: the 1-based bands read and the output channel of each.
        selection = self._select_stacked(datasets, bands) if self._stack else self._select_mosaic(datasets, bands)
        used = [i for i, (file_bands, _) in enumerate(selection) if file_bands]
        self._check_complex(datasets, selection)
        self._check_dtypes(datasets, selection, used)
        dtypes = [np.dtype(datasets[i].dtypes[b - 1]) for i in used for b in selection[i][0]]
        self._dtype = np.result_type(*dtypes)
        if self._complex:
            self._dtype = np.abs(np.zeros(1, dtype=self._dtype)).dtype
        self._file_nodata = datasets[used[0]].nodata
        crss = [datasets[i].crs for i in used]
        warp = target_resolution is not None or (
            target_crs is not None and any(c is None or c != rasterio.crs.CRS.from_user_input(target_crs) for c in crss)
        )
        chosen = [datasets[i] for i in used]
        chosen_paths = [self._paths[i] for i in used]
        if warp:
            places = self._plan_warped(chosen, chosen_paths, target_crs, target_resolution)
        elif self._stack:
            places = self._plan_stack(chosen, chosen_paths)
        else:
            places = self._plan_direct(chosen, chosen_paths)
        tile_of = [t for t, tile in enumerate(self._tiles) for _ in tile]
        self._members = []
        for i, place in zip(used, places, strict=True):
            file_bands, channels = selection[i]
            ds = datasets[i]
            self._members.append(
                _Member(
                    self._paths[i], place.footprint, place.offset, place.warp, place.alpha, tuple(file_bands),
                    tuple(channels), tuple(frozenset(ds.mask_flag_enums[b - 1]) for b in file_bands), tile_of[i],
                )
            )  # fmt: skip
        self._tile_members: list[list[int]] = [[] for _ in self._tiles]
        for i, m in enumerate(self._members):
            self._tile_members[m.tile].append(i)
        self._tile_footprints = self._footprints()
        self._check_overlaps()
        return used

    def _select_mosaic(
        self, datasets: list[Any], bands: Sequence[int | str] | None
    ) -> list[tuple[list[int], list[int]]]:
        """Mosaic tiles share their bands: the selection is made on the first file and applies to every tile."""
        first = datasets[0]
        for ds, path in zip(datasets, self._paths, strict=True):
            if ds.count != first.count:
                raise RasterSourceError(
                    f"{path}: has {ds.count} bands but {self._paths[0]} has {first.count}; mosaic tiles must share "
                    "their bands (to stack files as bands of one image, pass --stack (stack=True))"
                )
        self._all_names = tuple(d or f"band_{i}" for i, d in enumerate(first.descriptions, start=1))
        alpha = [i for i, ci in enumerate(first.colorinterp, start=1) if ci == ColorInterp.alpha]
        if bands is None:
            self._bands = [i for i in range(1, first.count + 1) if i not in alpha] or [1]
        else:
            self._bands = resolve_bands(bands, self._all_names, self._paths[0])
        return [(list(self._bands), list(range(len(self._bands)))) for _ in datasets]

    def _select_stacked(
        self, datasets: list[Any], bands: Sequence[int | str] | None
    ) -> list[tuple[list[int], list[int]]]:
        """Stacked bands: file 1's bands, then file 2's...; the selection counts over that list."""
        per_tile = {len(t) for t in self._tiles}
        if len(per_tile) > 1:
            raise RasterSourceError(
                f"the stacks of a mosaic must hold the same files: tile 1 ({self._tiles[0][0]}, ...) has "
                f"{len(self._tiles[0])} files, another has {sorted(per_tile - {len(self._tiles[0])})[0]}"
            )
        layers = len(self._tiles[0])
        by_tile = [datasets[t * layers : (t + 1) * layers] for t in range(len(self._tiles))]
        names_of = [self._stack_names(tile_ds, self._tiles[t]) for t, tile_ds in enumerate(by_tile)]
        for t in range(1, len(self._tiles)):
            for k in range(layers):
                ds0, ds = by_tile[0][k], by_tile[t][k]
                a, b = self._tiles[0][k], self._tiles[t][k]
                if ds.count != ds0.count:
                    raise RasterSourceError(
                        f"{b}: has {ds.count} bands but {a}, file {k + 1} of the first stack, has {ds0.count}; "
                        "every stack of a mosaic must list the same bands in the same order"
                    )
                for n0, n in zip(names_of[0][k], names_of[t][k], strict=True):
                    t0, t1 = _band_token(n0), _band_token(n)
                    if t0 is not None and t1 is not None and t0 != t1:
                        raise RasterSourceError(
                            f"{b}: holds band {band_label(n)} where {a}, file {k + 1} of the first stack, holds "
                            f"{band_label(n0)}; every stack of a mosaic must list the same bands in the same order"
                        )
        flat = [(k, b) for k, ds in enumerate(by_tile[0]) for b in range(1, ds.count + 1)]
        self._all_names = _unique([n for names in names_of[0] for n in names], [
            Path(self._tiles[0][k]).stem for k, _ in flat
        ])  # fmt: skip
        if bands is None:
            alpha = {
                (k, b)
                for k, ds in enumerate(by_tile[0])
                for b, ci in enumerate(ds.colorinterp, start=1)
                if ci == ColorInterp.alpha and ds.count > 1
            }
            chosen = [i + 1 for i, fb in enumerate(flat) if fb not in alpha] or [1]
        else:
            where = f"the stack {', '.join(self._tiles[0])}"
            chosen = resolve_bands(bands, self._all_names, where)
            repeated = sorted({i for i in chosen if chosen.count(i) > 1})
            if repeated:
                i = repeated[0]
                raise RasterSourceError(
                    f"{where}: bands {','.join(map(str, chosen))} choose stacked band {i} ({self._all_names[i - 1]}, "
                    f"from {self._tiles[0][flat[i - 1][0]]}) more than once; with --stack, band numbers count over "
                    f"the stacked files' bands (1..{len(flat)}), file by file"
                )
        self._bands = chosen
        selection: list[tuple[list[int], list[int]]] = []
        for _ in self._tiles:
            for k in range(layers):
                picks = [(flat[i - 1][1], c) for c, i in enumerate(chosen) if flat[i - 1][0] == k]
                selection.append(([b for b, _ in picks], [c for _, c in picks]))
        return selection

    @staticmethod
    def _stack_names(datasets: list[Any], paths: tuple[str, ...]) -> list[list[str]]:
        """Band names of each file of a stack: its band descriptions, else (one band) the band named in its file
        name ('..._B04.tif', '..._SR_B4.TIF' -> 'B04') or the file's name, else '<file name>_band_<i>'."""
        out = []
        for ds, path in zip(datasets, paths, strict=True):
            stem = Path(path).stem
            names = []
            for i, d in enumerate(ds.descriptions, start=1):
                if d:
                    names.append(d)
                elif ds.count == 1:
                    names.append(band_label(stem) or stem)
                else:
                    names.append(f"{stem}_band_{i}")
            out.append(names)
        return out

    def _check_complex(self, datasets: list[Any], selection: list[tuple[list[int], list[int]]]) -> None:
        """Complex bands are refused, or read as magnitude when asked (and said)."""
        found = [
            (self._paths[i], datasets[i].dtypes[b - 1])
            for i, (file_bands, _) in enumerate(selection)
            for b in file_bands
            if np.issubdtype(np.dtype(datasets[i].dtypes[b - 1]), np.complexfloating)
        ]
        if not found:
            return
        path, dtype = found[0]
        if self._complex_mode == "refuse":
            raise RasterSourceError(
                f"{path}: holds complex values ({dtype}, e.g. SAR SLC); models take real bands: pass --complex "
                "magnitude (complex_mode='magnitude') to read |z|, or give a detected (amplitude/intensity) product"
            )
        kinds = {np.dtype(d) for _, d in found}
        others = {
            np.dtype(datasets[i].dtypes[b - 1]) for i, (fb, _) in enumerate(selection) for b in fb
        } - kinds  # fmt: skip
        if others:
            raise RasterSourceError(
                f"{path}: complex bands ({dtype}) mixed with real bands ({', '.join(sorted(map(str, others)))}); "
                "read them separately"
            )
        self._complex = True
        warnings.warn(
            f"{path}: complex values ({dtype}) are read as their magnitude |z| (--complex magnitude)",
            RasterSourceWarning,
            stacklevel=4,
        )

    def _check_dtypes(self, datasets: list[Any], selection: list[tuple[list[int], list[int]]], used: list[int]) -> None:
        """Refuse bands whose dtypes call for different input scales (one scale applies to every band)."""
        seen: dict[float, tuple[str, str]] = {}
        for i in used:
            for b in selection[i][0]:
                dtype = datasets[i].dtypes[b - 1]
                if np.issubdtype(np.dtype(dtype), np.complexfloating):
                    continue  # magnitude: checked with the complex bands
                seen.setdefault(default_scale(dtype), (self._paths[i], dtype))
        if len(seen) > 1:
            (s1, (p1, d1)), (s2, (p2, d2)) = list(seen.items())[:2]
            raise RasterSourceError(
                f"{p2} is {d2} but {p1} is {d1}: their raw values call for different input scales ({s2:g} and "
                f"{s1:g}, see geodino.raster.normalize.default_scale) and one scale applies to every band; convert "
                "the files to one dtype"
            )

    def _footprints(self) -> list[Window]:
        """Per tile: the grid pixels where every file of the tile may hold data."""
        out: list[Window] = []
        for members in self._tile_members:
            wins = [self._members[i].footprint for i in members]
            fp: Window | None = wins[0]
            for w in wins[1:]:
                fp = fp.intersection(w) if fp is not None else None
            out.append(fp if fp is not None else Window(0, 0, 0, 0))
        return out

    def _check_overlaps(self) -> None:
        """Refuse stacks whose files do not cover each other, and mosaic tiles that overlap beyond a border."""
        if self._stack:
            for indexes in self._tile_members:
                members = [self._members[i] for i in indexes]
                for a, b in itertools.combinations(members, 2):
                    if not _covers(a.footprint, b.footprint):
                        inter = a.footprint.intersection(b.footprint)
                        size = "do not overlap" if inter is None else f"overlap on {inter.height} x {inter.width} px"
                        raise RasterSourceError(
                            f"{a.path} ({a.footprint.height} x {a.footprint.width} px on the stack's grid) and "
                            f"{b.path} ({b.footprint.height} x {b.footprint.width} px) {size}: the files of a stack "
                            "are bands of one image and must cover the same area; adjacent tiles form a mosaic "
                            "(drop --stack), or a list of stacks (one per tile) in Python"
                        )
        if self._allow_overlap or len(self._tiles) < 2:
            return
        fps = np.array([(w.row, w.col, w.bottom, w.right) for w in self._tile_footprints], dtype=np.int64)
        for i in range(len(fps) - 1):
            rest = fps[i + 1 :]
            ih = np.minimum(fps[i, 2], rest[:, 2]) - np.maximum(fps[i, 0], rest[:, 0])
            iw = np.minimum(fps[i, 3], rest[:, 3]) - np.maximum(fps[i, 1], rest[:, 1])
            mh = np.minimum(fps[i, 2] - fps[i, 0], rest[:, 2] - rest[:, 0])
            mw = np.minimum(fps[i, 3] - fps[i, 1], rest[:, 3] - rest[:, 1])
            bad = np.flatnonzero((ih > MAX_MOSAIC_OVERLAP * mh) & (iw > MAX_MOSAIC_OVERLAP * mw))
            if bad.size:
                self._refuse_overlap(i, i + 1 + int(bad[0]))

    def _refuse_overlap(self, i: int, j: int) -> None:
        a, b = self._tile_footprints[i], self._tile_footprints[j]
        inter = a.intersection(b)
        assert inter is not None
        name = lambda t: self._tiles[t][0] if len(self._tiles[t]) == 1 else f"the stack of {self._tiles[t][0]}"  # noqa: E731
        smaller = min(a.height * a.width, b.height * b.width)
        share = 100.0 * inter.height * inter.width / max(1, smaller)
        same = inter == a == b
        hint = (
            "they cover each other completely: if they are bands of one image, pass --stack (stack=True) to stack them"
            if same
            else "if they are bands or dates of one image on one grid, pass --stack (stack=True); if the overlap is "
            "intended (the first file listed wins), pass --allow-overlap (allow_overlap=True)"
        )
        raise RasterSourceError(
            f"{name(i)} and {name(j)} overlap on {inter.height} x {inter.width} pixels ({share:.0f}% of the "
            f"smaller): mosaic tiles may share only a border strip (the first file listed would win and the other "
            f"would be ignored there); {hint}"
        )

    def _check_rotation(self, datasets: list[Any], paths: Sequence[str]) -> None:
        for ds, path in zip(datasets, paths, strict=True):
            t = ds.transform
            if t.b != 0 or t.d != 0:
                raise RasterSourceError(
                    f"{path}: rotated or sheared geotransform {_gdal_transform(t)} (GDAL order: x0, pixel width, "
                    "row rotation, y0, column rotation, pixel height); outputs need a north-up grid: pass "
                    "--target-resolution (target_resolution=...) to warp it onto one"
                )

    def _plan_direct(self, datasets: list[Any], paths: list[str]) -> list[_Place]:
        """Members read as they are: one file, or aligned tiles of one CRS and resolution."""
        first, path0 = datasets[0], paths[0]
        self._check_rotation(datasets, paths)
        if len(datasets) == 1:
            self._crs, self._transform = first.crs, first.transform
            self._height, self._width = first.height, first.width
            return [_Place(Window.full(first.height, first.width), (0, 0), None, None)]
        for ds, path in zip(datasets, paths, strict=True):
            if ds.crs != first.crs:
                raise RasterSourceError(_mixed_crs(path, ds.crs, path0, first.crs, "mosaic"))
            if not (_same(ds.transform.a, first.transform.a) and _same(ds.transform.e, first.transform.e)):
                raise RasterSourceError(
                    f"{path}: resolution {ds.res} differs from {path0}'s {first.res}; pass --target-resolution "
                    "(target_resolution=...) to resample all tiles onto one grid"
                )
            if not _north_up(ds.transform):
                raise RasterSourceError(
                    f"{path}: mosaics need north-up tiles; geotransform is {_gdal_transform(ds.transform)}"
                )
        rx, ry = first.transform.a, -first.transform.e
        anchor = (first.transform.c, first.transform.f)
        transform, height, width = _grid_from_bounds([tuple(ds.bounds) for ds in datasets], (rx, ry), anchor)
        places = [self._aligned(ds, path, transform) for ds, path in zip(datasets, paths, strict=True)]
        self._crs, self._transform, self._height, self._width = first.crs, transform, height, width
        return places

    def _aligned(self, ds: Any, path: str, transform: Affine) -> _Place:
        """The place of a file on the grid's pixel lattice, read without resampling."""
        rx, ry = transform.a, -transform.e
        col = (ds.transform.c - transform.c) / rx
        row = (transform.f - ds.transform.f) / ry
        if abs(col - round(col)) > _ALIGN_TOL or abs(row - round(row)) > _ALIGN_TOL:
            raise RasterSourceError(
                f"{path}: origin is off the common pixel grid by ({row - round(row):.4f}, "
                f"{col - round(col):.4f}) pixels; pass --target-resolution (target_resolution=...) to resample onto "
                "one grid"
            )
        offset = (round(row), round(col))
        return _Place(Window(*offset, ds.height, ds.width), offset, None, None)

    def _plan_stack(self, datasets: list[Any], paths: list[str]) -> list[_Place]:
        """A stack (or mosaic of stacks) in one CRS: the finest file's grid; coarser files are resampled."""
        self._check_rotation(datasets, paths)
        first, path0 = datasets[0], paths[0]
        for ds, path in zip(datasets, paths, strict=True):
            if ds.crs != first.crs:
                raise RasterSourceError(_mixed_crs(path, ds.crs, path0, first.crs, "stack"))
            if not _north_up(ds.transform):
                raise RasterSourceError(
                    f"{path}: stacks need north-up files; geotransform is {_gdal_transform(ds.transform)}"
                )
        res = (min(ds.res[0] for ds in datasets), min(ds.res[1] for ds in datasets))
        finest = next((ds for ds in datasets if _same(ds.res[0], res[0]) and _same(ds.res[1], res[1])), first)
        anchor = (finest.transform.c, finest.transform.f)
        transform, height, width = _grid_from_bounds([tuple(ds.bounds) for ds in datasets], res, anchor)
        places = []
        for ds, path in zip(datasets, paths, strict=True):
            if _same(ds.res[0], res[0]) and _same(ds.res[1], res[1]):
                places.append(self._aligned(ds, path, transform))
            else:
                if ds.crs is None:
                    raise RasterSourceError(
                        f"{path}: resolution {ds.res} differs from the stack's {res}, and a file without a CRS "
                        "cannot be resampled onto it"
                    )
                kwargs = self._warp_kwargs(ds, first.crs, transform, height, width)
                footprint = _bounds_window(tuple(ds.bounds), transform, height, width)
                places.append(_Place(footprint, (0, 0), kwargs, _alpha_index(ds)))
        self._crs, self._transform, self._height, self._width = first.crs, transform, height, width
        return places

    def _warp_kwargs(self, ds: Any, crs: Any, transform: Affine, height: int, width: int) -> dict[str, Any]:
        """WarpedVRT arguments bringing a file onto the grid, with an alpha band for validity."""
        kwargs: dict[str, Any] = {
            "crs": crs,
            "transform": transform,
            "width": width,
            "height": height,
            "resampling": Resampling[self._resampling],
            "add_alpha": not any(ci == ColorInterp.alpha for ci in ds.colorinterp),
        }
        if self._nodata_override is not None:
            kwargs["src_nodata"] = self._nodata_override
        return kwargs

    def _plan_warped(
        self, datasets: list[Any], paths: list[str], target_crs: Any, target_resolution: Any
    ) -> list[_Place]:
        """Members warped with WarpedVRT onto one north-up grid in the target CRS and resolution."""
        crss = [ds.crs for ds in datasets]
        if any(c is None for c in crss):
            bad = paths[crss.index(None)]
            raise RasterSourceError(f"{bad}: the raster has no CRS, so it cannot be warped")
        if target_crs is None:
            for path, c in zip(paths, crss, strict=True):
                if c != crss[0]:
                    raise RasterSourceError(
                        _mixed_crs(path, c, paths[0], crss[0], "stack" if self._stack else "mosaic")
                    )
            dst_crs = crss[0]
        else:
            dst_crs = rasterio.crs.CRS.from_user_input(target_crs)
            self._warn_datum(paths, crss)
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
        if not (res[0] > 0 and res[1] > 0):
            raise ValueError(f"--target-resolution (target_resolution) must be positive, got {target_resolution}")
        # Anchor the grid on the first member already in the target CRS (it then needs no shift), else on
        # multiples of the resolution.
        native = [ds for ds in datasets if ds.crs == dst_crs and _north_up(ds.transform)]
        anchor = (native[0].transform.c, native[0].transform.f) if native else (0.0, 0.0)
        transform, height, width = _grid_from_bounds(bounds, res, anchor)
        places = []
        for ds, b in zip(datasets, bounds, strict=True):
            kwargs = self._warp_kwargs(ds, dst_crs, transform, height, width)
            footprint = (
                Window.full(height, width) if len(datasets) == 1 else _bounds_window(b, transform, height, width)
            )
            places.append(_Place(footprint, (0, 0), kwargs, _alpha_index(ds)))
        self._crs, self._transform, self._height, self._width = dst_crs, transform, height, width
        return places

    def _warn_datum(self, paths: list[str], crss: list[Any]) -> None:
        """Warn once about inputs whose CRSs differ only in their datum realisation."""
        for (pa, a), (pb, b) in itertools.combinations(zip(paths, crss, strict=True), 2):
            if _differ_in_datum_only(a, b):
                warnings.warn(
                    f"{pa} is in {_crs_name(a)} and {pb} in {_crs_name(b)}: the same projection on two "
                    "realisations of a datum; they are warped onto one grid with whatever datum shift PROJ knows "
                    "(possibly none: errors up to metres). Reproject them consistently first if that matters",
                    RasterSourceWarning,
                    stacklevel=5,
                )
                return

    def _check_not_empty(self, datasets: list[Any]) -> None:
        """Warn when a decimated read (overviews first) of the input finds no valid pixel.

        Only files with overviews or of at most :data:`EMPTY_CHECK_PIXELS` pixels are sampled, so the check
        stays cheap; larger files without overviews are not checked here (an all-NaN output says it later).
        In a mosaic every tile must be empty to warn; in a stack, one empty file empties the stack.
        """
        empty: list[str] = []
        for members in self._tile_members:
            verdicts = [
                (
                    self._members[i].path,
                    _sample_is_empty(datasets[i], list(self._members[i].bands), self._nodata_override),
                )
                for i in members
            ]
            hits = [path for path, verdict in verdicts if verdict]
            if not hits:
                return  # this tile holds data, or could not be checked cheaply: no verdict on the whole
            empty.extend(hits)
        if empty:
            shown = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
            warnings.warn(
                f"{shown}: no valid pixel found in the bands read (every sampled pixel is nodata, masked or NaN): "
                "the output will be empty (NaN)",
                RasterSourceWarning,
                stacklevel=4,
            )

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
        """The input paths, as given (a mosaic of stacks: tile by tile, file by file)."""
        return self._paths

    @property
    def stack(self) -> bool:
        """True when the files are read as bands of one image (``stack=True`` or a list of stacks)."""
        return self._stack

    @property
    def tiles(self) -> tuple[tuple[str, ...], ...]:
        """The mosaic's tiles, each the tuple of its files (one file each unless stacked)."""
        return self._tiles

    @property
    def complex_mode(self) -> ComplexMode:
        """How complex bands are read: "refuse", or "magnitude" (|z|)."""
        return self._complex_mode

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
        """1-based indexes of the selected bands in the file(s) (a stack: in the stacked bands, file by file)."""
        return tuple(self._bands)

    @property
    def band_names(self) -> tuple[str, ...]:
        """Names of the selected bands (descriptions, or 'band_<i>' where a band has none; in a stack, a
        one-band file without description is named after the band token in its file name, e.g. 'B04')."""
        return tuple(self._all_names[b - 1] for b in self._bands)

    @property
    def available_band_names(self) -> tuple[str, ...]:
        """Names of every band of the file(s)."""
        return self._all_names

    @property
    def dtype(self) -> np.dtype:
        """Numpy dtype of the selected bands in the file(s) (reads return float32 regardless; the magnitude's
        real dtype for complex bands read as magnitude)."""
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

    def describe(self) -> dict[str, Any]:
        """What the source reads and how, as plain JSON-able values (for run manifests and fingerprints).

        Returns:
            Keys ``tiles`` (list of lists of paths), ``stack``, ``bands`` (1-based), ``band_names``,
            ``band_files`` / ``file_bands`` (the file each selected band comes from, in the first tile, and its
            1-based index there), ``resampled``
            (files brought onto the grid by a warp), ``resampling``, ``complex_mode``, ``notes`` (what a reader
            should know, e.g. complex values read as magnitude), ``shape``, ``transform`` (affine order), ``crs``
            (WKT or None), ``nodata``.
        """
        band_files, file_bands = [""] * self.count, [0] * self.count
        for m in self._members:
            if m.tile == 0:
                for c, b in zip(m.channels, m.bands, strict=True):
                    band_files[c], file_bands[c] = m.path, b
        notes = []
        if self._complex:
            notes.append("complex values read as their magnitude |z|")
        resampled = [m.path for m in self._members if m.warp is not None]
        if resampled:
            notes.append(f"{len(resampled)} file(s) resampled onto the grid with {self._resampling!r}")
        return {
            "tiles": [list(t) for t in self._tiles],
            "stack": self._stack,
            "bands": list(self._bands),
            "band_names": list(self.band_names),
            "band_files": band_files,
            "file_bands": file_bands,
            "resampled": resampled,
            "resampling": self._resampling,
            "complex_mode": self._complex_mode,
            "notes": notes,
            "shape": [self._height, self._width],
            "transform": list(self._transform)[:6],
            "crs": self._crs.to_wkt() if self._crs is not None else None,
            "nodata": self.nodata,
        }

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
        for t, footprint in enumerate(self._tile_footprints):
            inter = window.intersection(footprint)
            if inter is None:
                continue
            d, v = self._read_tile(t, handles, inter)
            if inter == window and len(self._tiles) == 1:
                return d, v
            part = inter.slices_in(window)
            take = v & ~valid[part]
            region = data[(slice(None), *part)]
            region[:, take] = d[:, take]
            valid[part] |= v
        return data, valid

    def _read_tile(self, t: int, handles: list[tuple[Any, Any]], window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read a grid window inside tile ``t``'s footprint: every file of the tile gives its bands; a pixel is
        valid where every file is."""
        members = self._tile_members[t]
        if len(members) == 1 and len(self._members[members[0]].channels) == self.count:
            return self._read_member(members[0], handles[members[0]][1], window)
        data = np.empty((self.count, window.height, window.width), dtype=np.float32)
        valid = np.ones(window.shape, dtype=bool)
        for i in members:
            member = self._members[i]
            d, v = self._read_member(i, handles[i][1], window)
            data[list(member.channels)] = d
            valid &= v
        return data, valid

    def _read_member(self, i: int, reader: Any, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read a grid window inside member ``i``'s footprint: (C_i, h, w) float32 values, (h, w) validity."""
        member = self._members[i]
        local = window.shift(-member.offset[0], -member.offset[1]).to_rasterio()
        out_dtype = np.complex64 if self._complex else np.float32
        try:
            if member.warp is not None:
                # One call for the bands and the alpha band: the warper then runs once per block.
                both = reader.read([*member.bands, member.alpha], window=local, out_dtype=out_dtype)
                data, valid = both[:-1], both[-1].real > 0
            else:
                data = reader.read(list(member.bands), window=local, out_dtype=out_dtype)
                valid = self._direct_mask(member, reader, local, data)
        except RasterioError as exc:
            raise RasterSourceError(
                f"{member.path}: reading rows {window.row}..{window.bottom - 1}, columns {window.col}.."
                f"{window.right - 1} of the grid failed (a truncated or corrupt file?): {_gdal_detail(exc)}"
            ) from exc
        if self._complex:
            data = np.abs(data).astype(np.float32)
        valid &= ~np.isnan(data).any(axis=0)
        if self._nodata_override is not None:
            valid &= ~(data == np.float32(self._nodata_override)).any(axis=0)
        return data, valid

    def _direct_mask(self, member: _Member, reader: Any, local: Any, data: np.ndarray) -> np.ndarray:
        """Validity from GDAL's mask bands (nodata value, alpha, per-dataset mask) of the member's bands."""
        need = []
        for band, flags in zip(member.bands, member.flags, strict=True):
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
        if len(self._paths) == 1:
            where = self._paths[0]
        elif self._stack:
            where = f"stack of {len(self._tiles[0])} files" + (
                f" x {len(self._tiles)} tiles" if len(self._tiles) > 1 else ""
            )
        else:
            where = f"{len(self._paths)} tiles"
        extra = ", complex as magnitude" if self._complex else ""
        return (
            f"RasterSource({where}, {self._height}x{self._width}, bands={self.band_names}, crs={self._crs}, "
            f"res={self.res}{extra})"
        )
