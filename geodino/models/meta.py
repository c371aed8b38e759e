"""Pretrained-weights metadata that travels with a backbone (bands, normalisation, GSD)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from geodino.modelinfo import ModelInfo

RGB = ("red", "green", "blue")

# Input normalisation of RGB scaled to [0, 1] (dinov3-reference.md, "Normalisation of inputs").
WEB_MEAN = (0.485, 0.456, 0.406)
WEB_STD = (0.229, 0.224, 0.225)
# SAT-493M: the release README says red mean 0.430, the CHMv2 notebook and processor use 0.420. geodino follows
# the CHMv2 processor (0.420), the values the only published satellite head was trained and evaluated with.
SAT_MEAN = (0.420, 0.411, 0.296)
SAT_MEAN_README = (0.430, 0.411, 0.296)
SAT_STD = (0.213, 0.156, 0.143)
#: Default tile side of a backbone, in tokens (224 pixels for a ViT/16, its pretraining crop).
DEFAULT_TILE_TOKENS = 14


@dataclass(frozen=True)
class BackboneMeta:
    """What a user needs to feed a backbone correctly, without typing numbers by hand.

    This is the provenance of a backbone's weights (architecture, pretraining data, source file); the input side
    of the model-metadata contract (bands, normalisation, GSD, input multiple) is read from it by
    :meth:`model_info`, which gives the backbone's :class:`~geodino.modelinfo.ModelInfo` as an embedding model.

    Attributes:
        name: architecture name (e.g. "dinov3_vitl16") or "custom".
        weights: pretraining data tag: "lvd1689m" (web), "sat493m" (satellite), "random" or "unknown".
        patch_size: pixels per token side.
        embed_dim: token width D.
        depth: number of blocks.
        bands: input band names, in channel order.
        mean: per-band mean of inputs scaled to [0, 1] (RGB 8-bit imagery: value / 255).
        std: per-band standard deviation, same units.
        gsd: ground sample distance of the pretraining imagery in metres, if known (SAT-493M: 0.6 m).
        source: the file the weights came from, if any.
        checkpoint_format: "meta", "timm", "hf" or "geodino".
        ignored_keys: checkpoint keys deliberately not loaded (e.g. training-only heads).
        band_adaptation: how N-band weights were derived from RGB ones, if they were.
    """

    name: str = "custom"
    weights: str = "random"
    patch_size: int = 16
    embed_dim: int = 0
    depth: int = 0
    bands: tuple[str, ...] = RGB
    mean: tuple[float, ...] = WEB_MEAN
    std: tuple[float, ...] = WEB_STD
    gsd: float | None = None
    source: str | None = None
    checkpoint_format: str | None = None
    ignored_keys: tuple[str, ...] = field(default_factory=tuple)
    band_adaptation: str | None = None

    def replace(self, **changes: Any) -> BackboneMeta:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneMeta:
        tuples = {"bands", "mean", "std", "ignored_keys"}
        return cls(**{k: tuple(v) if k in tuples and v is not None else v for k, v in data.items()})

    def model_info(self, *, tile_tokens: int = DEFAULT_TILE_TOKENS) -> ModelInfo:
        """The backbone as an embedding model: patch tokens (B, D, H / p, W / p) after the final norm.

        Args:
            tile_tokens: Preferred tile side in tokens (tile = ``tile_tokens`` x patch size).
        """
        from geodino.modelinfo import ModelInfo

        return ModelInfo(
            in_bands=len(self.mean),
            out_channels=int(self.embed_dim),
            kind="embedding",
            factor=int(self.patch_size),
            mean=tuple(float(v) for v in self.mean),
            std=tuple(float(v) for v in self.std),
            name=self.name,
            tile=tile_tokens * int(self.patch_size),
            multiple=int(self.patch_size),
            band_names=tuple(self.bands) if len(self.bands) == len(self.mean) else None,
            gsd=self.gsd,
        )


def normalisation_for(weights: str, n_bands: int = 3) -> tuple[tuple[float, ...], tuple[float, ...], float | None]:
    """Mean, std and GSD (m) of a pretraining-data tag; "sat493m" is satellite, anything else uses the web values."""
    if n_bands != 3:
        raise ValueError(f"published DINOv3 statistics are for 3 RGB bands, not {n_bands}")
    if weights == "sat493m":
        return SAT_MEAN, SAT_STD, 0.6
    return WEB_MEAN, WEB_STD, None
