"""Train / validation / test splits of a chip set that do not leak neighbouring pixels.

Neighbouring chips of one scene are nearly the same sample; a random split of chips lets a model look at the
validation area while training. :func:`spatial_split` assigns whole square blocks of map units to splits (at
random, reproducibly by seed) and then drops every evaluation chip that comes within ``buffer`` map units of a
training chip. :func:`split_by_source` holds out whole imagery sources; :func:`split_by_polygons` follows a
polygon layer.

Footprints and centres come from each chip's origin, the chip side and its source's geotransform
(:class:`~geodino.heads.data.chips.GridRef`); chips of sources in different CRSs are never compared (their map
units differ), so a buffer only separates chips whose sources share a CRS.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from affine import Affine

from geodino.heads.data.chips import ChipSet
from geodino.heads.data.pairs import LabelError

__all__ = ["SPLITS", "chip_centres", "chip_footprints", "spatial_split", "split_by_polygons", "split_by_source"]

SPLITS = ("train", "val", "test")
_TOUCH_TOL = 1e-9  # relative to the chip side in map units: how much two touching footprints may overlap


def chip_footprints(chips: ChipSet) -> np.ndarray:
    """(N, 4) float64 (left, bottom, right, top) of every chip in its source's map units."""
    out = np.empty((len(chips), 4), dtype=np.float64)
    t = chips.tile
    for s, grid in enumerate(chips.grids):
        pick = chips.source == s
        if not pick.any():
            continue
        a = Affine(*grid.transform)
        rows, cols = chips.origins[pick, 0].astype(np.float64), chips.origins[pick, 1].astype(np.float64)
        # The four corners of the T x T pixel box, through the affine transform (any sign of a and e).
        xs = np.stack([a.c + a.a * cc + a.b * rr for rr in (rows, rows + t) for cc in (cols, cols + t)])
        ys = np.stack([a.f + a.d * cc + a.e * rr for rr in (rows, rows + t) for cc in (cols, cols + t)])
        out[pick] = np.stack([xs.min(0), ys.min(0), xs.max(0), ys.max(0)], axis=1)
    return out


def chip_centres(chips: ChipSet) -> np.ndarray:
    """(N, 2) float64 (x, y) map coordinates of every chip's centre."""
    b = chip_footprints(chips)
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)


def _crs_keys(chips: ChipSet) -> np.ndarray:
    """(N,) int: chips with equal keys lie in the same CRS."""
    names: dict[str | None, int] = {}
    per_grid = [names.setdefault(g.crs, len(names)) for g in chips.grids]
    return np.asarray(per_grid, dtype=np.int64)[chips.source] if len(chips) else np.zeros(0, dtype=np.int64)


def _block_counts(n_blocks: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Blocks per split: val and test rounded from their fractions (at least one each when asked for and there are
    blocks to spare), train the rest."""
    total = sum(fractions)
    wanted = [fractions[1] / total * n_blocks, fractions[2] / total * n_blocks]
    counts = [round(w) for w in wanted]
    for k in (0, 1):
        if fractions[k + 1] > 0 and counts[k] == 0 and n_blocks - sum(counts) > 1:
            counts[k] = 1
    while sum(counts) > n_blocks - 1 and sum(counts) > 0:  # keep a block for training when there are two or more
        k = int(np.argmax(counts))
        counts[k] -= 1
    return n_blocks - sum(counts), counts[0], counts[1]


def _near_train(
    bounds: np.ndarray, crs: np.ndarray, train: np.ndarray, others: np.ndarray, buffer: float, tile_size: float
) -> np.ndarray:
    """(len(others),) bool: chips whose footprint overlaps a train chip's or lies closer than ``buffer`` to one."""
    hit = np.zeros(len(others), dtype=bool)
    tol = _TOUCH_TOL * tile_size
    tb = bounds[train]
    for start in range(0, len(others), 512):  # bounded memory: 512 x n_train distances at a time
        idx = others[start : start + 512]
        ob = bounds[idx][:, None, :]
        # Gaps between boxes along x and y (negative = the boxes' projections overlap by that much).
        gx = np.maximum(tb[None, :, 0] - ob[..., 2], ob[..., 0] - tb[None, :, 2])
        gy = np.maximum(tb[None, :, 1] - ob[..., 3], ob[..., 1] - tb[None, :, 3])
        same = crs[idx][:, None] == crs[train][None, :]
        overlap = (gx < -tol) & (gy < -tol)
        distance = np.hypot(np.maximum(gx, 0.0), np.maximum(gy, 0.0))
        hit[start : start + len(idx)] = (same & (overlap | (distance < buffer))).any(axis=1)
    return hit


def _named(chips: ChipSet, index: np.ndarray, name: str, **meta: object) -> ChipSet:
    sub = chips.subset(np.asarray(index, dtype=np.int64))
    return replace(sub, meta={**chips.meta, "split": name, **meta})


def spatial_split(
    chips: ChipSet,
    *,
    block_size: float,
    buffer: float = 0.0,
    fractions: tuple[float, float, float] = (0.8, 0.2, 0.0),
    seed: int = 0,
) -> dict[str, ChipSet]:
    """Split chips by square map blocks, with a buffer between training and evaluation chips.

    Each chip belongs to the ``block_size`` x ``block_size`` block (map units of its source's CRS, blocks
    anchored at the CRS origin) holding its centre. Blocks are shuffled with ``seed`` and dealt to val and test
    by ``fractions`` (rounded; at least one block each when asked for and available), train gets the rest. Any
    val or test chip whose footprint overlaps a train chip's, or lies within ``buffer`` map units of one, is
    dropped — so no evaluation pixel is within ``buffer`` of a pixel a model trained on.

    Args:
        chips: The chip set.
        block_size: Block side in map units (> 0), e.g. metres; a few chips wide keeps blocks independent.
        buffer: Least distance in map units between an evaluation chip and any train chip (>= 0).
        fractions: (train, val, test) shares of the blocks (non-negative, train > 0).
        seed: Seed of the block shuffle: the same seed gives the same split.

    Returns:
        ``{"train", "val", "test"}`` chip sets; each one's ``meta`` says its split, the block size, the buffer,
        the seed and how many chips the buffer dropped.

    Raises:
        LabelError: Bad arguments, or no training chip (names the block size and buffer).
    """
    if not block_size > 0 or not buffer >= 0:
        raise LabelError(f"block_size must be > 0 and buffer >= 0 map units, got {block_size} and {buffer}")
    if len(fractions) != 3 or any(not f >= 0 for f in fractions) or not fractions[0] > 0:
        raise LabelError(f"fractions must be three shares (train, val, test) >= 0 with train > 0, got {fractions}")
    bounds = chip_footprints(chips)
    centres = np.stack([(bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2], axis=1)
    crs = _crs_keys(chips)
    keys = np.stack([crs, np.floor(centres[:, 0] / block_size), np.floor(centres[:, 1] / block_size)], axis=1)
    blocks, block_of = np.unique(keys, axis=0, return_inverse=True)
    block_of = block_of.reshape(-1)
    n_train, n_val, _ = _block_counts(len(blocks), tuple(float(f) for f in fractions))
    order = np.random.default_rng(seed).permutation(len(blocks))
    split_of_block = np.empty(len(blocks), dtype=np.int64)
    split_of_block[order[n_train:]] = 2
    split_of_block[order[n_train : n_train + n_val]] = 1
    split_of_block[order[:n_train]] = 0
    split = split_of_block[block_of]
    train = np.flatnonzero(split == 0)
    if len(train) == 0:
        raise LabelError(
            f"spatial split with block size {block_size:g} and buffer {buffer:g} map units left no training chip "
            f"({len(chips)} chips in {len(blocks)} blocks); use smaller blocks or more labelled imagery"
        )
    meta = {"block_size": block_size, "buffer": buffer, "seed": seed}
    tile_size = float(np.max(bounds[:, 2] - bounds[:, 0])) if len(chips) else 1.0
    out = {"train": _named(chips, train, "train", **meta)}
    for k, name in ((1, "val"), (2, "test")):
        members = np.flatnonzero(split == k)
        near = _near_train(bounds, crs, train, members, buffer, tile_size)
        if fractions[k] > 0 and len(members) and near.all():
            warnings.warn(
                f"spatial split: the {buffer:g} map-unit buffer dropped every {name} chip ({len(members)}); use "
                f"larger blocks (now {block_size:g}) or a smaller buffer",
                stacklevel=2,
            )
        out[name] = _named(chips, members[~near], name, dropped_by_buffer=int(near.sum()), **meta)
    return out


def split_by_source(chips: ChipSet, *, val: Sequence[int], test: Sequence[int] = ()) -> dict[str, ChipSet]:
    """Hold out whole imagery sources: chips of ``val`` / ``test`` sources (indexes into ``chips.grids``) form
    those splits, the rest train.

    Raises:
        LabelError: An index out of range, a source in both val and test, or no training chip.
    """
    val_set, test_set = {int(v) for v in val}, {int(t) for t in test}
    bad = sorted(i for i in val_set | test_set if not 0 <= i < len(chips.grids))
    if bad:
        raise LabelError(
            f"source indexes {bad} out of range: the chips come from {len(chips.grids)} sources "
            f"(0..{len(chips.grids) - 1})"
        )
    if val_set & test_set:
        raise LabelError(f"sources {sorted(val_set & test_set)} are in both val and test")
    in_val = np.isin(chips.source, sorted(val_set))
    in_test = np.isin(chips.source, sorted(test_set))
    train = np.flatnonzero(~in_val & ~in_test)
    if len(train) == 0:
        names = ", ".join(g.name for g in chips.grids)
        raise LabelError(
            f"split by source left no training chip (sources: {names}; val {sorted(val_set)}, test {sorted(test_set)})"
        )
    return {
        "train": _named(chips, train, "train"),
        "val": _named(chips, np.flatnonzero(in_val), "val"),
        "test": _named(chips, np.flatnonzero(in_test), "test"),
    }


def split_by_polygons(chips: ChipSet, layer: str | Path, *, column: str = "split") -> dict[str, ChipSet]:
    """Split chips by a polygon layer whose ``column`` says train / val / test; a chip goes where its centre lies.

    Chips whose centre lies in no polygon, or in polygons of two different splits, are dropped (counted in each
    split's ``meta["dropped_outside"]`` / ``meta["dropped_ambiguous"]``).

    Raises:
        LabelError: An unreadable layer, a missing column, values other than train/val/test, no CRS, or no
            training chip.
    """
    import geopandas as gpd

    from geodino.heads.data.pairs import _read_vector, _value_column

    path = str(layer)
    if not Path(path).exists():
        raise LabelError(f"split layer not found: {path}")
    gdf = _read_vector(path)
    values = _value_column(gdf, path, column).astype(str).str.strip().str.lower()
    bad = sorted(set(values) - set(SPLITS))
    if bad:
        raise LabelError(f"{path}: column {column!r} must hold train / val / test, found {', '.join(bad[:10])}")
    if gdf.crs is None:
        raise LabelError(f"{path}: the split layer has no CRS")
    centres = chip_centres(chips)
    assigned = np.full(len(chips), -1, dtype=np.int64)
    ambiguous = np.zeros(len(chips), dtype=bool)
    for s, grid in enumerate(chips.grids):
        pick = np.flatnonzero(chips.source == s)
        if not len(pick):
            continue
        if grid.crs is None:
            raise LabelError(f"{grid.name}: imagery without a CRS cannot be split by polygons")
        polys = gdf.assign(_split=values.to_numpy()).to_crs(grid.crs)
        points = gpd.GeoDataFrame({"_chip": pick}, geometry=gpd.points_from_xy(*centres[pick].T), crs=polys.crs)
        joined = gpd.sjoin(points, polys[["_split", polys.geometry.name]], predicate="within", how="inner")
        for chip, group in joined.groupby("_chip"):
            names = set(group["_split"])
            if len(names) > 1:
                ambiguous[chip] = True
            else:
                assigned[chip] = SPLITS.index(names.pop())
    assigned[ambiguous] = -1
    meta = {"dropped_outside": int(((assigned < 0) & ~ambiguous).sum()), "dropped_ambiguous": int(ambiguous.sum())}
    if not (assigned == 0).any():
        raise LabelError(f"{path}: no chip centre lies in a train polygon ({len(chips)} chips)")
    return {name: _named(chips, np.flatnonzero(assigned == k), name, **meta) for k, name in enumerate(SPLITS)}
