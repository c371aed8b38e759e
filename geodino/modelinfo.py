"""THE model-metadata contract: what anyone must know to run a model on a raster, in one frozen dataclass.

A backbone's pretrained-weights metadata (:class:`geodino.models.meta.BackboneMeta`) yields one
(:meth:`BackboneMeta.model_info`, an embedding model); a head describes its outputs with the fields of this class
(``describe()``); a saved model (:mod:`geodino.bundle`) stores one; the mapping workflows read one (their
``PredictorInfo`` is this class). Nothing here imports torch, numpy or a wing, so every layer may use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

Kind = Literal["classification", "regression", "embedding"]
Activation = Literal["softmax", "sigmoid", "none"]

KINDS: tuple[str, ...] = ("classification", "regression", "embedding")
ACTIVATIONS: tuple[str, ...] = ("softmax", "sigmoid", "none")
_TUPLE_FIELDS = ("mean", "std", "class_names", "band_names", "channel_names")


@dataclass(frozen=True)
class ModelInfo:
    """What a workflow must know about a model to run it on a raster, and what its outputs mean.

    Attach one to a model as ``model.geodino_info`` (a ModelInfo or a dict of its fields) so that
    ``--model package.module:attr`` finds it; a saved model (``geodino.save_model``) carries one.

    Attributes:
        in_bands: Number of input bands C the model takes.
        out_channels: Number of output channels K (classes, regression targets, embedding features).
        kind: "classification", "regression" or "embedding".
        factor: Output stride f: input pixels per output pixel (1 for dense maps, 16 for ViT patch tokens).
        mean: Per-band mean after scaling (None: zeros).
        std: Per-band standard deviation after scaling (None: ones).
        scale: Multiplier applied to raw values first (None: from the raster dtype, see
            ``geodino.raster.normalize.default_scale``).
        class_names: One name per class (classification).
        class_colours: One (r, g, b) colour per class, 0..255 (classification).
        name: Human-readable model name.
        tile: Preferred tile (patch) side in input pixels, or None for the workflow default.
        multiple: Input sides must be multiples of this (16 for a ViT/16).
        activation: Applied to raw outputs before blending ("softmax" turns logits into probabilities); None:
            "softmax" for classification (models return logits), "none" otherwise.
        band_names: Names of the expected input bands, in channel order.
        gsd: Ground sample distance the model was trained at, in metres (None: unknown).
        units: Units of regression outputs, e.g. "m" (None: unitless or unknown).
        valid_range: (low, high) of meaningful regression outputs, e.g. (0.0, 96.0) metres of canopy height; None
            on a side: unbounded there.
        channel_names: One name per output channel (regression/embedding), e.g. ("canopy_height", "uncertainty").
        overlap: Preferred overlap of neighbouring tiles in input pixels, or None for the workflow default.
    """

    in_bands: int
    out_channels: int
    kind: Kind = "regression"
    factor: int = 1
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    class_names: tuple[str, ...] | None = None
    class_colours: tuple[tuple[int, int, int], ...] | None = None
    name: str = "model"
    tile: int | None = None
    multiple: int = 1
    activation: Activation | None = None
    band_names: tuple[str, ...] | None = None
    gsd: float | None = None
    units: str | None = None
    valid_range: tuple[float | None, float | None] | None = None
    channel_names: tuple[str, ...] | None = None
    overlap: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.in_bands < 1 or self.out_channels < 1 or self.factor < 1 or self.multiple < 1:
            raise ValueError(f"in_bands, out_channels, factor and multiple must be >= 1: {self}")
        if self.tile is not None and self.tile < 1:
            raise ValueError(f"tile must be >= 1 or None, got {self.tile}")
        if self.overlap is not None and not 0 <= self.overlap < (self.tile or self.overlap + 1):
            raise ValueError(f"overlap must be in [0, tile) or None, got {self.overlap} (tile {self.tile})")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS} or None, got {self.activation!r}")
        per_band = {"mean": self.mean, "std": self.std, "band_names": self.band_names}
        for attr, values in per_band.items():
            if values is not None and len(values) != self.in_bands:
                raise ValueError(f"{attr} has {len(values)} values for {self.in_bands} input bands")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")
        per_channel = {
            "class names": self.class_names,
            "class colours": self.class_colours,
            "channel names": self.channel_names,
        }
        for what, values in per_channel.items():
            if values is not None and len(values) != self.out_channels:
                raise ValueError(f"{len(values)} {what} for {self.out_channels} output channels")
        if self.class_names is not None and self.kind != "classification":
            raise ValueError(f"class_names are for classification models, this one is {self.kind}")
        if self.class_colours is not None and any(
            len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.class_colours
        ):
            raise ValueError(f"class colours must be (r, g, b) triples in 0..255, got {self.class_colours}")
        if self.valid_range is not None:
            low, high = self.valid_range if len(self.valid_range) == 2 else (1, 0)
            if len(self.valid_range) != 2 or (low is not None and high is not None and not low < high):
                raise ValueError(
                    f"valid_range must be (low, high), low < high, None: unbounded; got {self.valid_range}"
                )
        if (self.units is not None or self.valid_range is not None) and self.kind == "classification":
            raise ValueError("units and valid_range describe regression outputs, not class probabilities")

    @property
    def output_activation(self) -> Activation:
        """The activation actually applied: explicit, else softmax for classification, else none."""
        if self.activation is not None:
            return self.activation
        return "softmax" if self.kind == "classification" else "none"

    def replace(self, **changes: Any) -> ModelInfo:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain python types only (lists for tuples): JSON- and ``torch.load(weights_only=True)``-safe."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """The inverse of :meth:`to_dict` (sequences become tuples).

        Raises:
            ValueError: On unknown fields or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model-info fields {unknown}; known: {sorted(known)}")
        values = dict(data)
        for key in _TUPLE_FIELDS:
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        if values.get("class_colours") is not None:
            values["class_colours"] = tuple(tuple(int(v) for v in c) for c in values["class_colours"])
        if values.get("valid_range") is not None:
            values["valid_range"] = tuple(None if v is None else float(v) for v in values["valid_range"])
        try:
            return cls(**values)
        except TypeError as err:  # a required field missing
            raise ValueError(f"incomplete model info: {err}") from err

    @classmethod
    def coerce(cls, value: ModelInfo | dict[str, Any]) -> ModelInfo:
        """A ModelInfo from itself or a dict of its fields."""
        if isinstance(value, ModelInfo):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"geodino_info must be a ModelInfo or a dict, got {type(value).__name__}")
        return cls.from_dict(value)

    def output_attrs(self) -> dict[str, Any]:
        """Attributes an output variable of this model carries (model name, classes or units, channel names)."""
        attrs: dict[str, Any] = {"model": self.name}
        if self.class_names:
            attrs["class_names"] = list(self.class_names)
        if self.class_colours:
            attrs["class_colours"] = [list(c) for c in self.class_colours]
        if self.units:
            attrs["units"] = self.units
        if self.valid_range is not None:  # CF: valid_range, or valid_min / valid_max for a half-open range
            low, high = self.valid_range
            if low is not None and high is not None:
                attrs["valid_range"] = [low, high]
            elif low is not None:
                attrs["valid_min"] = low
            elif high is not None:
                attrs["valid_max"] = high
        if self.channel_names:
            attrs["channel_names"] = list(self.channel_names)
        return attrs

    def summary(self) -> dict[str, str]:
        """Human-readable rows (for ``geodino info``)."""
        rows = {
            "name": self.name,
            "task": self.kind,
            "input bands": f"{self.in_bands}" + (f" ({', '.join(self.band_names)})" if self.band_names else ""),
            "scale": "from the raster dtype" if self.scale is None else f"{self.scale:g}",
            "mean": _floats(self.mean) if self.mean else "0",
            "std": _floats(self.std) if self.std else "1",
            "GSD": f"{self.gsd:g} m" if self.gsd else "unknown",
            "tile / overlap / multiple / output stride": (
                f"{self.tile or 'default'} / {'default' if self.overlap is None else self.overlap} / "
                f"{self.multiple} / {self.factor}"
            ),
            "outputs": f"{self.out_channels} channels, activation {self.output_activation}",
        }
        if self.class_names:
            colours = self.class_colours or [None] * self.out_channels
            rows["classes"] = ", ".join(
                n + (f" #{c[0]:02x}{c[1]:02x}{c[2]:02x}" if c else "")
                for n, c in zip(self.class_names, colours, strict=True)
            )
        if self.channel_names:
            rows["channels"] = ", ".join(self.channel_names)
        if self.units:
            rows["units"] = self.units
        if self.valid_range is not None:
            low, high = ("" if v is None else f"{v:g}" for v in self.valid_range)
            rows["valid range"] = f"{low or '-inf'} .. {high or 'inf'}"
        return rows


def _floats(values: tuple[float, ...]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
