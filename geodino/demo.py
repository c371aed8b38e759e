"""Pure-numpy picture helpers kept in the core (``geodino demo`` itself now lives in :mod:`geodino.workflows.demo`).

:func:`pca_preview` turns patch embeddings into an RGB picture; ``geodino.heads.plots.plot_embedding`` draws it.
"""

from __future__ import annotations

import numpy as np


def pca_preview(embedding: np.ndarray) -> np.ndarray:
    """(D, h, w) features -> (h, w, 3) uint8: the first three principal components, stretched per channel."""
    d, h, w = embedding.shape
    flat = embedding.reshape(d, -1).T
    valid = np.isfinite(flat).all(axis=1)
    centred = flat[valid] - flat[valid].mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    comps = np.zeros((flat.shape[0], 3), np.float32)
    comps[valid] = centred @ vt[:3].T
    lo, hi = np.percentile(comps[valid], [2, 98], axis=0)
    rgb = np.clip((comps - lo) / (hi - lo + 1e-9), 0, 1)
    return (rgb.reshape(h, w, 3) * 255).astype(np.uint8)
