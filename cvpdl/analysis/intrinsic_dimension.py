"""Intrinsic dimension of embeddings (Li et al., CVPR 2023): TwoNN (Facco et al. 2017), cross-checked with the
Levina–Bickel MLE, both from scikit-dimension. Every model is measured on the same samples."""
from __future__ import annotations

import numpy as np
import skdim


def intrinsic_dimension(embeddings: np.ndarray) -> dict[str, float]:
    x = np.asarray(embeddings, dtype=np.float64)
    x = x[np.unique(x, axis=0, return_index=True)[1]]  # TwoNN needs distinct points (r1 > 0)
    return {"twonn": float(skdim.id.TwoNN().fit(x).dimension_), "mle": float(skdim.id.MLE().fit(x).dimension_)}
