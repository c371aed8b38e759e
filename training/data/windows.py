"""Random training windows from rasters, streamed window by window and sharded across workers and ranks.

The stream is a function of ``(seed, epoch, index)`` only: global index ``i`` always names the same window
(source, row, col), whatever the number of data-loader workers or ranks. Shard ``k`` of ``n`` (``n`` = world size x
workers, ``k`` = rank x workers + worker id) takes the indices ``i = k, k + n, k + 2n, ...``, so no two shards ever
yield the same index. Windows that are mostly nodata are skipped (their index is consumed, nothing is yielded).

The stream's position is resumable: the loop tells the stream which index each consumed batch reached
(:meth:`RasterWindows.advance`, from the ``last_index`` that :class:`IndexedCollate` adds to a batch), and
:meth:`RasterWindows.state_dict` / :meth:`RasterWindows.load_state_dict` carry, per shard, the next index to read
plus the number of batches consumed. A restored stream starts every shard there and rotates the workers so that the
data loader (which takes batches from workers 0, 1, ... in turn) hands over the very batches an uninterrupted run
would have; resumed on another sharding (world size or worker count), every shard starts past the furthest index
any shard had reached (no window is seen twice, but the batches differ from an uninterrupted run).

Worker processes draw nothing from the global random generators (every window's augmentations are seeded by the
window's own seed, a function of ``(seed, epoch, index)``); even so :func:`seed_worker` seeds Python ``random``,
NumPy's global generator and torch in each worker from ``(seed, epoch, rank, shard, start index)``, so any code
that does draw from them repeats on resume.

Rasters are read through :class:`geodino.raster.source.RasterSource` (files, mosaics, bands, nodata masks): only the
window asked for is read, so rasters far larger than memory are fine.
"""

from __future__ import annotations

import glob
import os
import pickle
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from geodino.raster.normalize import default_scale
from geodino.raster.windows import Window

if TYPE_CHECKING:  # pragma: no cover
    from geodino.models.meta import BackboneMeta
    from geodino.raster.source import RasterSource

__all__ = [
    "IndexedCollate",
    "RasterWindows",
    "TrainingDataError",
    "WindowRef",
    "expand_paths",
    "normalization_stats",
    "open_sources",
    "seed_worker",
]

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
#: Consecutive mostly-nodata windows after which a shard gives up (the data cannot feed training).
MAX_CONSECUTIVE_SKIPS = 500


class TrainingDataError(ValueError):
    """Training data that cannot be used as asked (the message names the path and what was expected)."""


@dataclass(frozen=True)
class WindowRef:
    """Where one training window comes from: global stream index, source index, and its pixel window."""

    index: int
    source: int
    row: int
    col: int
    size: int

    @property
    def window(self) -> Window:
        return Window(self.row, self.col, self.size, self.size)


def expand_paths(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Raster paths from files, glob patterns, folders (their rasters, recursively) and ``.txt`` lists.

    A ``.txt`` file lists one path or glob per line (blank lines and ``#`` comments ignored; relative paths are
    relative to the list). Order is kept, duplicates are dropped.

    Raises:
        TrainingDataError: a path that does not exist, a pattern or folder that matches no raster, or no path.
    """
    out: list[str] = []
    for raw in paths:
        item = os.fspath(raw)
        if item.endswith(".txt") and Path(item).is_file():
            base = Path(item).parent
            lines = [ln.split("#", 1)[0].strip() for ln in Path(item).read_text().splitlines()]
            entries = [ln if Path(ln).is_absolute() or "://" in ln else str(base / ln) for ln in lines if ln]
            if not entries:
                raise TrainingDataError(f"{item}: the list holds no raster path")
            out.extend(expand_paths(entries))
        elif any(ch in item for ch in "*?["):
            hits = sorted(glob.glob(item, recursive=True))
            hits = [h for h in hits if Path(h).is_file()]
            if not hits:
                raise TrainingDataError(f"{item}: the pattern matches no file")
            out.extend(hits)
        elif Path(item).is_dir():
            hits = sorted(str(p) for p in Path(item).rglob("*") if p.suffix.lower() in RASTER_SUFFIXES)
            if not hits:
                raise TrainingDataError(f"{item}: the folder holds no raster ({', '.join(RASTER_SUFFIXES)})")
            out.extend(hits)
        elif Path(item).exists() or "://" in item or item.startswith("/vsi"):
            out.append(item)
        else:
            raise TrainingDataError(f"{item}: no such file, folder or pattern")
    if not out:
        raise TrainingDataError("no data path given: pass one or more rasters, folders, globs or .txt lists")
    return list(dict.fromkeys(out))


def open_sources(
    paths: Sequence[str | os.PathLike[str]],
    *,
    bands: Sequence[int | str] | None = None,
    in_chans: int | None = None,
    mosaic: bool = False,
    nodata: float | None = None,
    window_size: int | None = None,
) -> list[RasterSource]:
    """Open the training rasters and check them against the model and the window size.

    Args:
        paths: files, globs, folders, ``.txt`` lists (see :func:`expand_paths`).
        bands: bands to read from every file (indexes or names); None reads all non-alpha bands.
        in_chans: the backbone's input band count; every raster must give exactly that many bands.
        mosaic: all files form one mosaic (one grid) instead of one source each.
        nodata: nodata value overriding the files' own.
        window_size: training window side; rasters smaller than it are left out (with a warning).

    Returns:
        The sources, in path order.

    Raises:
        TrainingDataError: no readable raster, a raster with the wrong band count, or a window larger than every
            raster.
    """
    from geodino.raster.source import RasterSource

    files = expand_paths(paths)
    groups = [files] if mosaic else [[f] for f in files]
    sources: list[RasterSource] = []
    for group in groups:
        try:
            src = RasterSource(group, bands=bands, nodata=nodata)
        except (OSError, ValueError) as exc:  # FileNotFoundError, RasterSourceError, unknown band
            raise TrainingDataError(f"cannot read training raster: {exc}") from exc
        where = group[0] if len(group) == 1 else f"mosaic of {len(group)} files from {group[0]}"
        if in_chans is not None and src.count != in_chans:
            fewer = src.count < in_chans
            hint = "" if fewer or bands is not None else "; choose bands with data.bands=[...]"
            raise TrainingDataError(
                f"{where}: gives {src.count} band(s) {src.band_names} but the backbone takes {in_chans}"
                f"{' (fewer bands than the recipe)' if fewer else ''}{hint}"
            )
        sources.append(src)
    if window_size is not None:
        fit = [s for s in sources if s.height >= window_size and s.width >= window_size]
        if not fit:
            largest = max(sources, key=lambda s: s.height * s.width)
            raise TrainingDataError(
                f"the training window ({window_size}x{window_size} px) is larger than every raster (largest: "
                f"{largest.paths[0]}, {largest.height}x{largest.width}); use smaller windows (data.window_size, crops.global_size)"
            )
        for s in sources:
            if s not in fit:
                warnings.warn(
                    f"{s.paths[0]}: {s.height}x{s.width} px is smaller than the {window_size} px training window; "
                    "left out",
                    stacklevel=2,
                )
        sources = fit
    return sources


def normalization_stats(
    sources: Sequence[RasterSource],
    meta: BackboneMeta | None = None,
    mode: str = "auto",
    max_files: int = 16,
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """Per-band mean and std (in scaled units, raw x dtype scale) to normalise training inputs with.

    Args:
        sources: the training sources.
        meta: the backbone's metadata (its mean/std are those it was pretrained with).
        mode: "meta" (the backbone's statistics), "stats" (computed from the rasters, see
            :func:`geodino.raster.stats.band_statistics`) or "auto": "meta" when the backbone carries pretrained
            weights with as many bands as the rasters, else "stats".
        max_files: most files whose statistics are computed (combined by the law of total variance).

    Returns:
        ``(mean, std, where)``; ``where`` says which statistics were chosen ("meta" or "stats").
    """
    from geodino.raster.stats import band_statistics

    if mode not in ("auto", "meta", "stats"):
        raise TrainingDataError(f"data.normalization must be 'auto', 'meta' or 'stats', got {mode!r}")
    count = sources[0].count
    if mode == "auto":
        pretrained = meta is not None and meta.weights not in ("random",) and len(meta.mean) == count
        mode = "meta" if pretrained else "stats"
    if mode == "meta":
        if meta is None or len(meta.mean) != count:
            have = "no metadata" if meta is None else f"statistics for {len(meta.mean)} bands"
            raise TrainingDataError(
                f"data.normalization='meta' but the backbone has {have} and the rasters give {count} bands"
            )
        return tuple(meta.mean), tuple(meta.std), "meta"
    files = [(p, s.bands) for s in sources for p in s.paths][:max_files]
    means, variances = [], []
    for path, bands in files:
        try:
            m, s = band_statistics(path, list(bands))
        except (OSError, ValueError) as exc:
            raise TrainingDataError(f"cannot compute band statistics: {exc}") from exc
        means.append(np.asarray(m))
        variances.append(np.asarray(s) ** 2)
    mean = np.mean(means, axis=0)
    # Total variance of an equal-weight mixture: mean of variances + variance of means.
    var = np.mean(variances, axis=0) + np.mean([(m - mean) ** 2 for m in means], axis=0)
    std = np.sqrt(np.maximum(var, 1e-12))
    std = np.where(std > 1e-6, std, 1.0)  # a constant band: leave its scale alone
    return tuple(float(v) for v in mean), tuple(float(v) for v in std), "stats"


def _shard() -> tuple[int, int]:
    """(this data-loader worker's id, number of workers); (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed ``random``, NumPy's global generator and torch in a data-loader worker.

    The seed is ``SeedSequence([seed, epoch, rank, shard, start index])`` of the worker's :class:`RasterWindows`: a
    function of where the worker starts reading, never of the process or the clock. The pipeline itself draws
    nothing from these generators (see the module docstring).
    """
    info = torch.utils.data.get_worker_info()
    if info is None or not isinstance(info.dataset, RasterWindows):
        return
    ds = info.dataset
    shard = ds.shard_of(worker_id, info.num_workers)
    start = ds.start_index(shard, ds.world_size * info.num_workers)
    seq = np.random.SeedSequence([ds.seed, ds.epoch, ds.rank, shard, start])
    a, b, c = (int(v) for v in seq.generate_state(3, dtype=np.uint32))
    random.seed(a)
    np.random.seed(b)
    torch.manual_seed(c)


@dataclass
class IndexedCollate:
    """A ``collate_fn`` wrapper adding ``last_index``: the highest stream index among a batch's windows.

    The loop hands it to :meth:`RasterWindows.advance` once the batch is consumed (items must carry ``ref``).
    """

    collate: Callable[[Sequence[Any]], dict[str, Any]]

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(samples)
        batch["last_index"] = max(int(s["ref"].index) for s in samples)
        return batch


class RasterWindows(IterableDataset):
    """An endless, seeded stream of square windows from rasters.

    Each item is a dict: ``image`` (C, S, S) float32 torch tensor in scaled units (raw value x the dtype's
    default scale, e.g. /255 for uint8, /10000 for uint16), ``valid`` (S, S) bool, ``seed`` (an int to seed this
    window's augmentations), and ``ref`` (:class:`WindowRef`). With ``transform`` the item is ``transform(item)``.

    Args:
        sources: opened rasters (see :func:`open_sources`); each at least ``window_size`` on both sides.
        window_size: window side S in pixels.
        max_nodata_fraction: windows with a larger fraction of invalid pixels are skipped.
        seed: seed of the stream.
        epoch: a second seed component (another, independent stream of windows for the same seed). A resumed run
            keeps its epoch and continues from its saved position instead (:meth:`load_state_dict`).
        rank: this process's rank (distributed training).
        world_size: number of ranks.
        transform: applied to each item inside the worker (e.g. :class:`~geodino.training.data.multicrop.MultiCrop`).
        scales: per source, the factor from raw values to scaled units; default from each source's dtype.
    """

    def __init__(
        self,
        sources: Sequence[RasterSource],
        window_size: int,
        *,
        max_nodata_fraction: float = 0.5,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        scales: Sequence[float] | None = None,
    ) -> None:
        if not sources:
            raise TrainingDataError("no training raster")
        if not 0.0 <= max_nodata_fraction <= 1.0:
            raise TrainingDataError(f"data.max_nodata_fraction must be in [0, 1], got {max_nodata_fraction}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        small = [s for s in sources if s.height < window_size or s.width < window_size]
        if small:
            s = small[0]
            raise TrainingDataError(
                f"{s.paths[0]}: {s.height}x{s.width} px is smaller than the {window_size} px window"
            )
        self.sources = list(sources)
        self.window_size = int(window_size)
        self.max_nodata_fraction = float(max_nodata_fraction)
        self.seed, self.epoch = int(seed), int(epoch)
        self.rank, self.world_size = int(rank), int(world_size)
        self.transform = transform
        self.scales = (
            [float(v) for v in scales] if scales is not None else [default_scale(s.dtype) for s in self.sources]
        )
        # Sources are drawn in proportion to their number of window positions (uniform over all positions).
        positions = np.array(
            [(s.height - window_size + 1) * (s.width - window_size + 1) for s in self.sources], dtype=np.float64
        )
        self._cumulative = np.cumsum(positions / positions.sum())
        self.num_workers = 1  # data-loader workers per rank (the loop sets it); shards = world_size x num_workers
        self._next: dict[int, int] = {}  # shard -> next stream index to read (shards that yielded a consumed batch)
        self._batches = 0  # batches consumed on this rank
        self._rotation = 0  # a restored stream's worker w serves the shard of worker (w + rotation) % num_workers
        self._base: int | None = None  # after a restore on another sharding: every shard starts at or past this

    def ref(self, index: int) -> WindowRef:
        """The window at global stream index ``index`` (pure function of seed, epoch and index)."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        u, r, c = rng.random(3)
        k = min(int(np.searchsorted(self._cumulative, u, side="right")), len(self.sources) - 1)
        src, size = self.sources[k], self.window_size
        row = min(int(r * (src.height - size + 1)), src.height - size)
        col = min(int(c * (src.width - size + 1)), src.width - size)
        return WindowRef(index, k, row, col, size)

    def read(self, ref: WindowRef) -> dict[str, Any] | None:
        """Read one window; None when its nodata fraction exceeds ``max_nodata_fraction``."""
        data, valid = self.sources[ref.source].read(ref.window)
        if 1.0 - valid.mean() > self.max_nodata_fraction:
            return None
        data *= np.float32(self.scales[ref.source])
        data[:, ~valid] = 0.0
        seed = int(np.random.default_rng([self.seed, self.epoch, ref.index, 1]).integers(2**62))
        return {"image": torch.from_numpy(data), "valid": torch.from_numpy(valid), "seed": seed, "ref": ref}

    def shard_of(self, worker: int = 0, num_workers: int = 1) -> int:
        """The shard number ``k`` (``rank x workers + w``) that data-loader worker ``worker`` reads."""
        return self.rank * num_workers + (worker + self._rotation) % num_workers

    def start_index(self, shard: int, n: int) -> int:
        """The first index shard ``shard`` of ``n`` reads: its restored position; after a restore on another
        sharding, its first index at or past the furthest one reached; else the shard number itself."""
        if shard in self._next:
            return self._next[shard]
        if self._base is not None:
            return self._base + (shard - self._base) % n
        return shard

    def shard_indices(self, worker: int = 0, num_workers: int = 1) -> Iterator[int]:
        """The endless global indices this (rank, worker) shard owns, from its start (see :meth:`start_index`)."""
        n = self.world_size * num_workers
        index = self.start_index(self.shard_of(worker, num_workers), n)
        while True:
            yield index
            index += n

    # ---------------------------------------------------------------------------------------- position
    def advance(self, last_index: int) -> None:
        """Record that a batch whose highest stream index is ``last_index`` was consumed (in loader order)."""
        n = self.world_size * self.num_workers
        self._next[int(last_index) % n] = int(last_index) + n
        self._batches += 1

    def state_dict(self) -> dict[str, Any]:
        """This rank's stream position: plain ints, picklable (see the module docstring)."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "batches": self._batches,
            "next": dict(self._next),
            "base": self._base,
        }

    def load_state_dict(self, state: dict[str, Any], others: Sequence[dict[str, Any]] = ()) -> bool:
        """Continue from a saved position; returns whether the stream continues exactly.

        Args:
            state: :meth:`state_dict` of this rank at the checkpoint.
            others: every rank's saved state (for a restore on another sharding: the furthest index reached).

        Returns:
            True when seed, epoch, world size and workers match (the batches are those of an uninterrupted run);
            False when the sharding changed (every shard restarts past the furthest index any shard had reached).

        Raises:
            TrainingDataError: the saved stream had another seed or epoch (another stream altogether).
        """
        if (state["seed"], state["epoch"]) != (self.seed, self.epoch):
            raise TrainingDataError(
                f"the checkpoint's window stream has seed {state['seed']} epoch {state['epoch']}, this run seed "
                f"{self.seed} epoch {self.epoch}: restore train.seed={state['seed']} to resume it"
            )
        self._batches = int(state["batches"])
        exact = (state["world_size"], state["num_workers"], state["rank"]) == (
            self.world_size,
            self.num_workers,
            self.rank,
        )
        if exact:
            self._next = {int(k): int(v) for k, v in state["next"].items()}
            self._rotation, self._base = self._batches % self.num_workers, state.get("base")
            return True
        reached = [int(v) for s in (state, *others) for v in s["next"].values()]
        reached += [int(s["base"]) for s in (state, *others) if s.get("base") is not None]
        self._next, self._rotation, self._base = {}, 0, max(reached, default=0)
        return False

    def iter_shard(self, worker: int = 0, num_workers: int = 1) -> Iterator[Any]:
        """Items of one shard, mostly-nodata windows skipped."""
        skipped = 0
        for index in self.shard_indices(worker, num_workers):
            item = self.read(self.ref(index))
            if item is None:
                skipped += 1
                if skipped >= MAX_CONSECUTIVE_SKIPS:
                    raise TrainingDataError(
                        f"{skipped} windows in a row were more than {self.max_nodata_fraction:.0%} nodata; the "
                        "rasters hold too little valid data (raise data.max_nodata_fraction or check nodata)"
                    )
                continue
            skipped = 0
            yield item if self.transform is None else self.transform(item)

    def __iter__(self) -> Iterator[Any]:
        worker, num_workers = _shard()
        if num_workers > 1 or torch.utils.data.get_worker_info() is not None:
            # A forked worker inherits the parent's open GDAL handles, which must not be shared across processes:
            # a pickle round trip gives each source fresh, lazily opened handles.
            self.sources = [pickle.loads(pickle.dumps(s)) for s in self.sources]
        return self.iter_shard(worker, num_workers)

    def check(self, attempts: int = 200) -> float:
        """Read up to ``attempts`` windows in this process and fail clearly when none is usable.

        Returns:
            The fraction of the windows read that were usable.
        """
        used = 0
        for i in range(attempts):
            if self.read(self.ref(i)) is not None:
                used += 1
                if used >= 8:
                    return used / (i + 1)
        if used == 0:
            names = ", ".join(s.paths[0] for s in self.sources[:3])
            raise TrainingDataError(
                f"none of {attempts} random {self.window_size} px windows of {names} is at most "
                f"{self.max_nodata_fraction:.0%} nodata; raise data.max_nodata_fraction or check the nodata value"
            )
        return used / attempts
