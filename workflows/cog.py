"""Export one variable of a mapping store as a Cloud-Optimised GeoTIFF.

The variable is streamed chunk by chunk (one Zarr chunk in memory at a time) into a tiled GeoTIFF, which GDAL's COG
driver then converts, building the overviews itself (writing a COG straight from Dask has produced all-zero
overviews, rioxarray #410). CRS, transform and nodata come from the store.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import zarr
from affine import Affine
from rasterio.windows import Window as RioWindow

from geodino.workflows.sink import CLASS_NODATA


def _georeference(store: Path, var: str) -> tuple[Any, Affine]:
    """CRS (or None) and affine transform from the store's ``spatial_ref`` (rioxarray CF convention)."""
    group = zarr.open_group(str(store), mode="r")
    if var not in group:
        names = sorted(k for k in group.array_keys() if k not in ("x", "y", "spatial_ref"))
        raise ValueError(f"{store}: no variable {var!r}; available: {', '.join(names)}")
    ref = dict(group["spatial_ref"].attrs) if "spatial_ref" in group else {}
    crs = rasterio.crs.CRS.from_wkt(ref["crs_wkt"]) if ref.get("crs_wkt") else None
    geo = ref.get("GeoTransform")
    if geo is None:
        raise ValueError(f"{store}: spatial_ref has no GeoTransform; not a georeferenced geodino store")
    values = [float(v) for v in str(geo).split()]
    return crs, Affine.from_gdal(*values)


def _select_bands(array: Any, attrs: dict[str, Any], band: int | str | Sequence[int | str] | None) -> list[int]:
    """0-based channel indexes of a (K, H, W) array for ``band`` (indexes or class names; None: all)."""
    count = array.shape[0]
    if band is None:
        return list(range(count))
    items = [band] if isinstance(band, int | str) else list(band)
    names = [str(n).lower() for n in attrs.get("class_names", [])]
    out = []
    for item in items:
        if isinstance(item, str) and not item.isdigit():
            if item.lower() not in names:
                raise ValueError(f"unknown band {item!r}; class names are {attrs.get('class_names')}")
            out.append(names.index(item.lower()))
        else:
            index = int(item)
            if not 0 <= index < count:
                raise ValueError(f"band index {index} out of range 0..{count - 1}")
            out.append(index)
    return out


def export_cog(
    store: str | Path,
    var: str,
    out_tif: str | Path,
    *,
    band: int | str | Sequence[int | str] | None = None,
    overviews: bool = True,
    compress: str = "deflate",
    blocksize: int = 512,
    allow_incomplete: bool = False,
) -> Path:
    """Write one variable of a mapping store as a COG, streaming chunk by chunk.

    Args:
        store: The ``.zarr`` output of :func:`~geodino.workflows.mapping.map_raster`.
        var: Variable name ("classes", "probabilities", "prediction", "embedding").
        out_tif: Output GeoTIFF path.
        band: For (K, y, x) variables: 0-based channel index(es) or class name(s); None for all channels.
        overviews: Build overviews (nearest for class maps, average otherwise).
        compress: GDAL compression.
        blocksize: Internal tile size of the COG; GDAL builds overviews down to one block, so a raster no larger
            than ``blocksize`` in both sides gets none (a warning says so).
        allow_incomplete: Export a store whose run did not finish (missing chunks become nodata; a warning gives
            the count). Refused otherwise.

    Returns:
        The path written.

    Raises:
        IncompleteStoreError: Chunks are missing and ``allow_incomplete`` is False.
    """
    from geodino.workflows.mapping import check_complete

    store, out_tif = Path(store), Path(out_tif)
    check_complete(store, allow_incomplete=allow_incomplete, stacklevel=3)
    crs, transform = _georeference(store, var)
    array = zarr.open_array(str(store), path=var, mode="r")
    attrs = dict(array.attrs)
    two_d = array.ndim == 2
    channels = [0] if two_d else _select_bands(array, attrs, band)
    dtype = np.dtype(array.dtype)
    if dtype == np.float16:
        dtype = np.dtype(np.float32)  # GeoTIFF readers rarely support float16
    nodata: float = CLASS_NODATA if dtype == np.uint8 else float("nan")
    height, width = array.shape[-2:]
    if overviews and max(height, width) <= blocksize:
        warnings.warn(
            f"{out_tif}: {width} x {height} px fits in one {blocksize}-px COG block, so GDAL writes no overviews",
            stacklevel=2,
        )
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": len(channels),
        "dtype": dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    out_tif.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_tif.parent, prefix=".geodino-cog-") as tmp:
        staging = Path(tmp) / "staging.tif"
        with rasterio.open(staging, "w", **profile) as dst:
            _stream(array, dst, channels, two_d, dtype)
            _describe(dst, attrs, channels, two_d)
        options = {"COMPRESS": compress.upper(), "BLOCKSIZE": str(blocksize)}
        options["OVERVIEWS"] = "AUTO" if overviews else "NONE"
        options["OVERVIEW_RESAMPLING"] = "NEAREST" if dtype == np.uint8 else "AVERAGE"
        if dtype.kind == "f":
            options["PREDICTOR"] = "YES"
        rasterio.shutil.copy(staging, out_tif, driver="COG", **options)
    return out_tif


def _stream(array: Any, dst: Any, channels: list[int], two_d: bool, dtype: np.dtype) -> None:
    """Copy the variable into ``dst`` one Zarr chunk (row block x column block) at a time."""
    height, width = array.shape[-2:]
    ch, cw = array.chunks[-2:]
    for r0 in range(0, height, ch):
        for c0 in range(0, width, cw):
            h, w = min(ch, height - r0), min(cw, width - c0)
            if two_d:
                block = np.asarray(array[r0 : r0 + h, c0 : c0 + w])[None]
            else:
                block = np.stack([np.asarray(array[k, r0 : r0 + h, c0 : c0 + w]) for k in channels])
            dst.write(block.astype(dtype, copy=False), window=RioWindow(c0, r0, w, h))


def _describe(dst: Any, attrs: dict[str, Any], channels: list[int], two_d: bool) -> None:
    """Band descriptions from class names; a colour table for class maps."""
    names = attrs.get("class_names")
    if names and not two_d:
        for i, k in enumerate(channels, start=1):
            dst.set_band_description(i, str(names[k]))
    colours = attrs.get("class_colours")
    if two_d and colours and dst.dtypes[0] == "uint8":
        dst.write_colormap(1, {i: (*map(int, c), 255) for i, c in enumerate(colours)})
