"""N-band input: adapt an RGB DINOv3 backbone's patch embedding to any list of named bands.

DINOv3 was pretrained on RGB only. To feed it multispectral imagery, the patch-embedding filters of the new bands
are derived from the three RGB filters, with one of two explicit strategies (never by silently dropping or
truncating bands):

- ``"rgb_map"``: bands named as red / green / blue (through ``rgb_map`` or the presets below) get that RGB filter,
  every other band a zero filter. On the mapped bands the adapted model computes exactly what the RGB model
  computes, and the extra bands start with no influence (a fine-tuning starting point that loses nothing).
- ``"mean_rgb"``: the DINOv3 team's multispectral initialisation. Mapped bands keep their RGB filter, every other
  band gets the mean of the three RGB filters, then the whole weight is multiplied by 3/N (N = number of bands) so
  that the activation scale stays that of an RGB input.

Presets (band name -> RGB channel; names are matched case-insensitively, and a Sentinel-2 style number may be
written with or without its leading zero, so ``"B4"`` and ``"b04"`` both match ``"B04"``):

- `SENTINEL2_RGB`: Sentinel-2 MSI ``B04`` red (665 nm), ``B03`` green (560 nm), ``B02`` blue (490 nm).
- `LANDSAT89_RGB`: Landsat 8/9 OLI Collection-2 surface reflectance ``SR_B4`` red, ``SR_B3`` green, ``SR_B2`` blue.

Without an explicit ``rgb_map`` both presets are tried, plus the plain names ``red`` / ``green`` / ``blue`` and
``r`` / ``g`` / ``b``. (Landsat 8/9 ``B4``/``B3``/``B2`` coincide with the Sentinel-2 numbering; Landsat 4-7 TM/ETM+
number red as ``B3``, so pass an explicit ``rgb_map`` for them.)

Every band needs a normalisation mean/std. Bands mapped to an RGB channel inherit that channel's statistics from
the RGB model unless others are given; the others must be given, e.g. from
`geodino.raster.stats.band_statistics`.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from geodino.models.meta import RGB
from geodino.models.vit import DinoVisionTransformer

__all__ = ["LANDSAT89_RGB", "SENTINEL2_RGB", "Strategy", "adapt_bands", "patch_embed_weight", "resolve_rgb_map"]

Strategy = Literal["rgb_map", "mean_rgb"]
Stats = Sequence[float | None] | Mapping[str, float]

SENTINEL2_RGB: dict[str, str] = {"B04": "red", "B03": "green", "B02": "blue"}
LANDSAT89_RGB: dict[str, str] = {"SR_B4": "red", "SR_B3": "green", "SR_B2": "blue"}
_PLAIN_RGB: dict[str, str] = {"red": "red", "green": "green", "blue": "blue", "r": "red", "g": "green", "b": "blue"}
_TARGETS: dict[str, str] = {"red": "red", "green": "green", "blue": "blue", "r": "red", "g": "green", "b": "blue"}
_STATS_HINT = (
    "compute them from your imagery with geodino.raster.stats.band_statistics(path) (per-band mean/std after "
    "scaling to reflectance or [0, 1]) and pass mean=/std= as sequences in band order or mappings by band name"
)


def _key(name: str) -> str:
    """Case-insensitive band key; 'B04', 'b4' -> 'b4' and 'SR_B04' -> 'sr_b4', anything else lower-cased."""
    low = name.strip().lower()
    match = re.fullmatch(r"(sr_)?b0*(\d+)(a?)", low)
    if match:
        return f"{match.group(1) or ''}b{int(match.group(2))}{match.group(3)}"
    return low


def _check_bands(bands: Sequence[str]) -> tuple[str, ...]:
    if isinstance(bands, str):
        raise TypeError(f"bands must be a sequence of band names, got the single string {bands!r}")
    names = tuple(bands)
    if not names:
        raise ValueError("bands is empty: give the names of the input bands, in channel order")
    bad = [b for b in names if not isinstance(b, str) or not b.strip()]
    if bad:
        raise TypeError(f"band names must be non-empty strings, got {bad!r}")
    seen: dict[str, str] = {}
    for b in names:
        if _key(b) in seen:
            raise ValueError(f"band {b!r} appears twice in bands {names} (same band as {seen[_key(b)]!r})")
        seen[_key(b)] = b
    return names


def _rgb_channels(model: DinoVisionTransformer) -> dict[str, int]:
    """Input channel of red, green and blue in an RGB backbone."""
    bands = tuple(model.meta.bands)
    if model.in_chans != 3 or sorted(bands) != sorted(RGB):
        raise ValueError(
            f"adapt_bands starts from an RGB backbone (3 input bands named {RGB} in some order); this one takes "
            f"{model.in_chans} bands {bands}. Adapt the original RGB model instead of an adapted one."
        )
    return {name: bands.index(name) for name in RGB}


def resolve_rgb_map(bands: Sequence[str], rgb_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """Which of `bands` stand for red, green and blue.

    Args:
        bands: input band names in channel order.
        rgb_map: band name -> "red" / "green" / "blue" ("r" / "g" / "b" also accepted); names are matched
            case-insensitively, keys absent from `bands` are ignored (so a preset fits a band subset). None tries
            `SENTINEL2_RGB`, `LANDSAT89_RGB` and the names red/green/blue/r/g/b.

    Returns:
        {band name as given in `bands`: RGB channel name}, in band order; at most one band per channel.

    Raises:
        ValueError: an unknown RGB target, or two bands mapped to the same channel.
    """
    names = _check_bands(bands)
    if rgb_map is None:
        lookup = {_key(k): v for preset in (SENTINEL2_RGB, LANDSAT89_RGB, _PLAIN_RGB) for k, v in preset.items()}
    else:
        lookup = {}
        for band, target in rgb_map.items():
            channel = _TARGETS.get(str(target).strip().lower())
            if channel is None:
                raise ValueError(f"rgb_map maps {band!r} to {target!r}; the targets are 'red', 'green' and 'blue'")
            lookup[_key(band)] = channel
    mapping = {b: lookup[_key(b)] for b in names if _key(b) in lookup}
    for channel in RGB:
        users = [b for b, c in mapping.items() if c == channel]
        if len(users) > 1:
            raise ValueError(
                f"bands {users} all map to {channel}; one band per RGB channel (pass an explicit rgb_map to choose)"
            )
    return mapping


def patch_embed_weight(
    rgb_weight: Tensor, rgb_channels: Mapping[str, int], mapping: Sequence[str | None], strategy: Strategy
) -> Tensor:
    """N-band patch-embedding kernel from an RGB one.

    Args:
        rgb_weight: (D, 3, p, p) RGB kernel.
        rgb_channels: RGB channel name -> its index in `rgb_weight`'s dimension 1.
        mapping: per new band, the RGB channel it copies, or None.
        strategy: "rgb_map" (unmapped bands: zero filter) or "mean_rgb" (unmapped bands: mean of the three RGB
            filters, then the whole kernel times 3/N).

    Returns:
        (D, N, p, p) kernel, N = len(mapping), same dtype and device.
    """
    if strategy not in ("rgb_map", "mean_rgb"):
        raise ValueError(f"unknown strategy {strategy!r}; choose 'rgb_map' or 'mean_rgb'")
    n = len(mapping)
    D, _, ph, pw = rgb_weight.shape
    out = rgb_weight.new_zeros(D, n, ph, pw)
    fill = rgb_weight.mean(dim=1) if strategy == "mean_rgb" else None  # (D, p, p)
    for i, channel in enumerate(mapping):
        if channel is not None:
            out[:, i] = rgb_weight[:, rgb_channels[channel]]
        elif fill is not None:
            out[:, i] = fill
    if strategy == "mean_rgb":
        # keeps the summed response of N bands at the scale of 3 RGB bands
        out = out * (3.0 / n)
    return out


def _stats_for(
    values: Stats | None, what: str, names: tuple[str, ...], inherited: dict[str, float]
) -> tuple[list[float | None], list[str]]:
    """Per-band values of `what` (mean/std) and the bands that had to inherit theirs from RGB."""
    out: list[float | None] = [None] * len(names)
    if isinstance(values, Mapping):
        index = {_key(b): i for i, b in enumerate(names)}
        unknown = [k for k in values if _key(k) not in index]
        if unknown:
            raise ValueError(f"{what} given for {unknown}, which are not among the bands {names}")
        for k, v in values.items():
            if out[index[_key(k)]] is not None:
                raise ValueError(f"{what} given twice for band {names[index[_key(k)]]!r} (keys {list(values)})")
            out[index[_key(k)]] = v
    elif values is not None:
        if isinstance(values, str) or len(values) != len(names):
            found = "a string" if isinstance(values, str) else f"{len(values)} values"
            raise ValueError(f"{what} must hold one value per band ({len(names)}: {names}), got {found}")
        out = list(values)
    filled = []
    for i, b in enumerate(names):
        if out[i] is None and b in inherited:
            out[i] = inherited[b]
            filled.append(b)
    return out, filled


def _statistics(
    names: tuple[str, ...], mapping: dict[str, str], model: DinoVisionTransformer, mean: Stats | None, std: Stats | None
) -> tuple[tuple[float, ...], tuple[float, ...], list[str]]:
    """Per-band mean and std; mapped bands without given values inherit the RGB model's."""
    rgb_index = {c: i for i, c in enumerate(model.meta.bands)}
    rgb_mean = {b: float(model.meta.mean[rgb_index[c]]) for b, c in mapping.items()}
    rgb_std = {b: float(model.meta.std[rgb_index[c]]) for b, c in mapping.items()}
    means, inherited_m = _stats_for(mean, "mean", names, rgb_mean)
    stds, inherited_s = _stats_for(std, "std", names, rgb_std)
    missing = [b for b, m, s in zip(names, means, stds, strict=True) if m is None or s is None]
    if missing:
        raise ValueError(
            f"no normalisation statistics for bands {missing} (bands not mapped to red/green/blue need a mean "
            f"and a std); {_STATS_HINT}"
        )
    mean_t = tuple(float(m) for m in means)  # type: ignore[arg-type]
    std_t = tuple(float(s) for s in stds)  # type: ignore[arg-type]
    bad = [b for b, m, s in zip(names, mean_t, std_t, strict=True) if not (math.isfinite(m) and s > 0 and s < math.inf)]
    if bad:
        raise ValueError(f"bands {bad} have a non-finite mean or a std that is not > 0: mean {mean_t}, std {std_t}")
    return mean_t, std_t, sorted(set(inherited_m) | set(inherited_s), key=names.index)


def _describe(strategy: Strategy, names: tuple[str, ...], mapping: dict[str, str], inherited: list[str]) -> str:
    mapped = ", ".join(f"{b}->{c}" for b, c in mapping.items()) or "none"
    others = [b for b in names if b not in mapping]
    if strategy == "rgb_map":
        text = f"rgb_map: RGB filters copied for {mapped}; zero filters for {others or 'none'}"
    else:
        text = (
            f"mean_rgb: RGB filters kept for {mapped}; mean of the RGB filters for {others or 'none'}; "
            f"whole kernel x 3/{len(names)}"
        )
    if inherited:
        text += f"; RGB mean/std inherited by {inherited}"
    return text


def adapt_bands(
    model: DinoVisionTransformer,
    bands: Sequence[str],
    *,
    strategy: Strategy = "rgb_map",
    rgb_map: Mapping[str, str] | None = None,
    mean: Stats | None = None,
    std: Stats | None = None,
) -> DinoVisionTransformer:
    """A copy of an RGB backbone whose patch embedding takes `bands`.

    With "rgb_map", the adapted model run on an (B, N, H, W) input equals the RGB model run on the three mapped
    bands (in red, green, blue order): bit for bit when the mapped bands appear in the same relative order as the
    RGB model's channels, otherwise up to float32 summation order (~1e-6).

    Args:
        model: RGB backbone (``model.meta.bands`` a permutation of red/green/blue); left untouched.
        bands: names of the N input bands, in channel order (e.g. Sentinel-2 ``"B01"`` ... ``"B12"``).
        strategy: "rgb_map" (unmapped bands get zero filters) or "mean_rgb" (unmapped bands get the mean RGB
            filter and the whole kernel is scaled by 3/N); see the module docstring.
        rgb_map: band name -> "red"/"green"/"blue"; None tries `SENTINEL2_RGB`, `LANDSAT89_RGB` and the plain
            names. "rgb_map" needs at least one mapped band; "mean_rgb" accepts none.
        mean: per-band means of the scaled inputs, a sequence in band order (None entries inherit for mapped
            bands) or a mapping by band name. Values given for mapped bands replace the inherited RGB ones.
        std: per-band standard deviations, same forms.

    Returns:
        a new backbone (same mode and device) with ``config.in_chans == N`` and ``meta.bands``, ``meta.mean``,
        ``meta.std`` and ``meta.band_adaptation`` set.

    Raises:
        ValueError: a non-RGB model, duplicate band names, unknown RGB targets, no mapped band for "rgb_map", or
            bands without statistics (the message lists them).
    """
    rgb_channels = _rgb_channels(model)
    names = _check_bands(bands)
    if strategy not in ("rgb_map", "mean_rgb"):
        raise ValueError(f"unknown strategy {strategy!r}; choose 'rgb_map' or 'mean_rgb'")
    mapping = resolve_rgb_map(names, rgb_map)
    if strategy == "rgb_map" and not mapping:
        raise ValueError(
            f"strategy 'rgb_map' found no band of {names} for red, green or blue; pass rgb_map={{band: 'red', ...}} "
            f"(presets: SENTINEL2_RGB, LANDSAT89_RGB) or use strategy='mean_rgb'"
        )
    band_mean, band_std, inherited = _statistics(names, mapping, model, mean, std)

    old = model.patch_embed.proj
    with torch.no_grad():
        weight = patch_embed_weight(old.weight, rgb_channels, [mapping.get(b) for b in names], strategy)
    adapted = copy.deepcopy(model)
    proj = nn.Conv2d(
        len(names),
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        proj.weight.copy_(weight)
        if old.bias is not None:
            proj.bias.copy_(old.bias)
    proj.requires_grad_(old.weight.requires_grad)
    adapted.patch_embed.proj = proj
    adapted.config = model.config.replace(in_chans=len(names))
    adapted.meta = model.meta.replace(
        bands=names,
        mean=band_mean,
        std=band_std,
        band_adaptation=_describe(strategy, names, mapping, inherited),
    )
    return adapted.train(model.training)
