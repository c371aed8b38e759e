"""Which backbone blocks a head reads: one index helper and the named layer sets (pure Python, no torch).

Every head asks the backbone for features through `DinoVisionTransformer.forward_intermediates`, with block
indices resolved here, so index lists are never copied around by hand:

- ``"last"``: the final block, ``[n - 1]``.
- ``"four_even"``: four evenly spaced blocks ending with the last, ``[n/4 - 1, n/2 - 1, 3n/4 - 1, n - 1]``
  (rounded down); ``[5, 11, 17, 23]`` for the 24 blocks of a ViT-L, the layers of Meta's CHMv2 head. (Meta's
  depth-estimation configs use ``[4, 11, 17, 23]`` for "four even intervals" of a ViT-L; CHMv2 does not.)
- ``"last_four"``: the last four blocks, ``[n - 4, ..., n - 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

LAYER_SETS = ("last", "four_even", "last_four")

LayerSpec = str | int | Sequence[int] | None


def named_layers(name: str, n_blocks: int) -> list[int]:
    """Block indices (0-based) of the named layer set `name` for a backbone of `n_blocks` blocks."""
    if name == "last":
        return [n_blocks - 1]
    if n_blocks < 4:
        raise ValueError(f"layer set {name!r} needs at least 4 blocks, the backbone has {n_blocks}")
    if name == "four_even":
        return [n_blocks * (i + 1) // 4 - 1 for i in range(4)]
    if name == "last_four":
        return list(range(n_blocks - 4, n_blocks))
    raise ValueError(f"unknown layer set {name!r}; known: {', '.join(LAYER_SETS)}, or a list of block indices")


def feature_take_indices(n_blocks: int, indices: LayerSpec = None) -> tuple[list[int], int]:
    """Resolve a layer request to 0-based block indices, timm-style.

    Args:
        n_blocks: depth of the backbone.
        indices: None (every block), an int n (the last n blocks), a named set (see `LAYER_SETS`) or a list of
            block indices (negative ones count from the end; order is kept, repeats are allowed).

    Returns:
        the indices, in the requested order, and the largest of them.
    """
    if indices is None:
        take = list(range(n_blocks))
    elif isinstance(indices, str):
        take = named_layers(indices, n_blocks)
    elif isinstance(indices, int):
        if not 1 <= indices <= n_blocks:
            raise ValueError(f"the last {indices} blocks were requested from a backbone of {n_blocks} blocks")
        take = list(range(n_blocks - indices, n_blocks))
    else:
        raw = [int(i) for i in indices]
        if not raw:
            raise ValueError("an empty list of block indices")
        bad = [i for i in raw if not -n_blocks <= i < n_blocks]
        if bad:
            raise ValueError(f"block indices {bad} are outside 0..{n_blocks - 1} (or -{n_blocks}..-1)")
        take = [i + n_blocks if i < 0 else i for i in raw]
    return take, max(take)
