"""The settings of a mapping run, as one typed, documented object.

:class:`MapOptions` is what ``geodino map`` / ``geodino embed`` build from their flags, what
:func:`~geodino.workflows.mapping.map_raster` takes (``options=`` or the same names as keyword arguments), what the
run manifest stores, and what ``--resume`` compares field by field. Each field says in its metadata

- ``kind``: ``"result"`` when it changes the bytes written (a resume must use the same value) or ``"run"`` when it
  only changes how the run executes (scheduler, workers, device, batch size, progress; recorded, not compared);
- ``flag``: its command-line flag (help text, which commands have it, how the text is parsed).

The CLI options are generated from these fields, so a setting is defined once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from geodino.errors import InputError

BLENDS = ("hann", "center", "uniform")
SCHEDULERS = ("threads", "sync", "distributed")
TTAS = ("flips", "d4")
STORAGE_DTYPES = ("float32", "float16")
PRETRAININGS = ("sat493m", "lvd1689m")

BOTH = ("map", "embed")


@dataclass(frozen=True)
class Flag:
    """How a field appears on the command line.

    Attributes:
        help: Help text.
        cli_type: The type typer parses (text for values that :attr:`parse` converts).
        parse: Text -> field value (raises :class:`~geodino.errors.InputError` naming the flag), or None.
        commands: The commands that offer the flag.
        decls: Explicit flag declarations (default ``--field-name``).
    """

    help: str
    cli_type: Any
    parse: Callable[[Any], Any] | None = None
    commands: tuple[str, ...] = BOTH
    decls: tuple[str, ...] = ()

    def names(self, name: str) -> tuple[str, ...]:
        return self.decls or ("--" + name.replace("_", "-"),)


def _opt(default: Any, kind: Literal["result", "run"], flag: Flag | None, doc: str) -> Any:
    return field(default=default, metadata={"kind": kind, "flag": flag, "doc": doc})


def flag_name(name: str) -> str:
    """The command-line flag of a field (``batch_size`` -> ``--batch-size``)."""
    f = {f.name: f for f in dataclasses.fields(MapOptions)}.get(name)
    flag = f.metadata.get("flag") if f is not None else None
    return flag.names(name)[0].split("/")[0] if flag is not None else name


def _label(name: str) -> str:
    """``batch_size (--batch-size)``: both spellings, for messages read by Python and CLI users alike."""
    flag = flag_name(name)
    return name if flag == name else f"{name} ({flag})"


# ----------------------------------------------------------------------------------------------------------------
# Parsers of flag text.


def parse_list(name: str) -> Callable[[str | None], tuple[str, ...] | None]:
    """'a,b' -> ('a', 'b'); None stays None; an empty selection is refused."""

    def parse(value: str | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        items = tuple(v.strip() for v in value.split(",") if v.strip())
        if not items:
            raise InputError(f"{flag_name(name)}: expected a comma-separated list, got {value!r}")
        return items

    return parse


def parse_bands(value: str | None) -> tuple[int | str, ...] | None:
    """'1,2,3' -> (1, 2, 3); 'B04,B03,B02' -> names; None stays None."""
    items = parse_list("bands")(value)
    return None if items is None else tuple(int(v) if v.isdigit() else v for v in items)


def parse_resolution(value: str | None) -> float | tuple[float, float] | None:
    """'0.6' -> 0.6; '0.6,0.5' -> (0.6, 0.5)."""
    if value is None:
        return None
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise InputError(
            f"--target-resolution: expected a pixel size in target CRS units, 'x' or 'x,y' (e.g. 0.6), got {value!r}"
        )
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapOptions:
    """Every setting of a mapping run (``map_raster``, ``embed_raster``, ``geodino map`` and ``geodino embed``).

    Defaults derived from the model (tile, overlap, chunk, batch size) stay None here; the manifest also records
    the values the run resolved them to.
    """

    tile: int | None = _opt(
        None,
        "result",
        Flag("Patch side in input pixels (default: the model's, else 224).", int | None),
        "patch side in input pixels",
    )
    overlap: int | None = _opt(
        None,
        "result",
        Flag("Patch overlap in input pixels (default: tile // 4).", int | None),
        "overlap of neighbouring patches",
    )
    chunk: int | tuple[int, int] | None = _opt(
        None,
        "result",
        Flag("Output chunk side in output pixels (multiple of the stride).", int | None),
        "output chunk (rows, cols) in output pixels",
    )
    batch_size: int | None = _opt(
        None,
        "run",
        Flag("Patches per forward pass (default: 8).", int | None, decls=("--batch-size",)),
        "patches per forward pass",
    )
    outputs: tuple[str, ...] | None = _opt(
        None,
        "result",
        Flag(
            "Comma-separated variables, e.g. probabilities,classes (default: all).",
            str | None,
            parse_list("outputs"),
            commands=("map",),
        ),
        "variables to write (default: all of the model kind's)",
    )
    blend: str = _opt("hann", "result", Flag("Blending window: hann, center or uniform.", str), "blending window")
    bands: tuple[int | str, ...] | None = _opt(
        None,
        "result",
        Flag("Comma-separated 1-based band indexes or names, e.g. B04,B03,B02.", str | None, parse_bands),
        "input bands (1-based indexes or names)",
    )
    stack: bool = _opt(
        False,
        "result",
        Flag("The inputs, in order, are bands of one image (a band stack).", bool),
        "inputs are bands of one image",
    )
    complex_mode: str | None = _opt(
        None,
        "result",
        Flag(
            "Complex-valued bands (SAR SLC): 'refuse' (the default) or 'magnitude' (|z|).",
            str | None,
            decls=("--complex",),
        ),
        "complex-valued input handling",
    )
    allow_overlap: bool = _opt(
        False,
        "result",
        Flag("Accept mosaic tiles that overlap beyond a border strip (the first file listed wins).", bool),
        "accept overlapping mosaic tiles",
    )
    zarr_format: int = _opt(3, "result", Flag("Zarr format: 3, or 2 for GDAL < 3.11.", int), "Zarr format")
    scheduler: str = _opt("threads", "run", None, "threads, sync or distributed")
    workers: int | None = _opt(
        None,
        "run",
        Flag("Run on a local Dask cluster of N worker processes.", int | None),
        "threads, or LocalCluster worker processes",
    )
    address: str | None = _opt(None, "run", None, "address of an existing Dask scheduler")
    resume: bool = _opt(
        False,
        "run",
        Flag("Continue an interrupted run, skipping finished chunks.", bool),
        "continue a store made with the same settings",
    )
    overwrite: bool = _opt(False, "run", Flag("Replace an existing output store.", bool), "replace a store")
    progress: bool = _opt(
        True, "run", Flag("Show a progress bar.", bool, decls=("--progress/--no-progress",)), "show a progress bar"
    )
    allow_no_crs: bool = _opt(False, "result", Flag("Accept inputs without a CRS.", bool), "accept inputs without CRS")
    target_crs: Any = _opt(  # noqa: RUF009 (a CRS object or its text)
        None, "result", Flag("Warp inputs onto this CRS first.", str | None), "warp onto a CRS"
    )
    target_resolution: float | tuple[float, float] | None = _opt(
        None,
        "result",
        Flag("Warp inputs onto this pixel size ('x' or 'x,y', target CRS units).", str | None, parse_resolution),
        "warp onto a pixel size",
    )
    storage_dtype: str | None = _opt(
        None, "result", Flag("float32 (default) or float16 storage.", str | None), "float storage dtype"
    )
    nodata: float | None = _opt(
        None, "result", Flag("Override the inputs' nodata value.", float | None), "input nodata override"
    )
    device: str | None = _opt(
        None, "run", Flag("torch device (default: cuda if available, else cpu).", str | None), "torch device"
    )
    tta: str | None = _opt(
        None,
        "result",
        Flag("Test-time augmentation: flips or d4 (default: none).", str | None),
        "test-time augmentation",
    )
    pretraining: str | None = _opt(
        None,
        "result",
        Flag(
            "sat493m or lvd1689m: what the checkpoint was pretrained on, for files that do not say (Meta's .pth "
            "files other than the SAT-493M ViT-L). Sets the input normalisation.",
            str | None,
            commands=("embed",),
        ),
        "pretraining data of a backbone checkpoint that cannot tell",
    )
    random_weights: bool = _opt(
        False,
        "result",
        Flag("Run a hub architecture (vits16, vitl16...) with RANDOM weights, on purpose.", bool, commands=("embed",)),
        "use a hub architecture with random weights",
    )

    def __post_init__(self) -> None:
        for name in ("bands", "outputs"):
            value = getattr(self, name)
            if value is not None:
                items = (value,) if isinstance(value, str | int) else tuple(value)
                if not items:
                    raise InputError(f"{_label(name)}: an empty selection; leave it out for the default")
                object.__setattr__(self, name, items)
        if isinstance(self.chunk, Sequence):
            object.__setattr__(self, "chunk", tuple(int(v) for v in self.chunk))
        if isinstance(self.target_resolution, Sequence):
            object.__setattr__(self, "target_resolution", tuple(float(v) for v in self.target_resolution))
        for name in ("batch_size", "workers", "tile"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise InputError(f"{_label(name)} must be at least 1, got {value}")
        if self.overlap is not None and self.overlap < 0:
            raise InputError(f"{_label('overlap')} must be >= 0, got {self.overlap}")
        _choice("blend", self.blend, BLENDS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("zarr_format", self.zarr_format, (2, 3))
        _choice("tta", self.tta, (None, *TTAS))
        _choice("storage_dtype", self.storage_dtype, (None, *STORAGE_DTYPES))
        _choice("pretraining", self.pretraining, (None, *PRETRAININGS))
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite contradict each other: choose one")

    # ------------------------------------------------------------------------------------------------------------

    def replace(self, **changes: Any) -> MapOptions:
        """A copy with some fields changed (unknown names raise ``TypeError`` listing the known ones)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown mapping option(s) {unknown}; known: {', '.join(self.field_names())}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls, kind: str | None = None) -> list[str]:
        """Field names, optionally only those of ``kind`` ("result" or "run")."""
        return [f.name for f in dataclasses.fields(cls) if kind is None or f.metadata["kind"] == kind]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values of every field (tuples as lists, a CRS object as its text)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif value is not None and not isinstance(value, bool | int | float | str):
                value = str(value)
            out[f.name] = value
        return out

    def result_dict(self) -> dict[str, Any]:
        """The fields that change the bytes written (what a resumed run must repeat)."""
        values = self.to_dict()
        return {name: values[name] for name in self.field_names("result")}

    @classmethod
    def from_cli(cls, values: dict[str, Any], scheduler: str | None = None) -> MapOptions:
        """Options from the values of the generated flags (texts parsed, ``--scheduler`` split).

        Args:
            values: Field name -> flag value, for the flags a command offers.
            scheduler: ``--scheduler``: "threads", "sync", or a scheduler address (implies distributed).
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            flag = fields[name].metadata["flag"]
            kwargs[name] = flag.parse(value) if flag.parse is not None else value
        if scheduler in ("threads", "sync"):
            kwargs["scheduler"] = scheduler
        elif scheduler:
            kwargs["scheduler"], kwargs["address"] = "distributed", scheduler
        elif kwargs.get("workers"):
            kwargs["scheduler"] = "distributed"
        return cls(**kwargs)


def _choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        shown = ", ".join(str(a) for a in allowed if a is not None)
        raise InputError(f"{_label(name)} must be one of {shown}, got {value!r}")


def cli_flags(command: str) -> list[tuple[str, Any, Flag]]:
    """(field name, default, flag) of the flags ``command`` ("map" or "embed") offers, in field order."""
    out = []
    for f in dataclasses.fields(MapOptions):
        flag = f.metadata["flag"]
        if flag is not None and command in flag.commands:
            out.append((f.name, f.default, flag))
    return out
