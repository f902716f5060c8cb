"""The pure WSC core: tensors in, tensors out.

Binning of continuous metadata, the PCA projection fitted on training embeddings, and the weight space correlation
between linear heads. Only torch and the standard library are imported here (no Lightning, Hydra or OmegaConf), so
the numbers can be tested and reused outside any training loop.
"""

from .analysis import TaskCorrelation, WSCResult, compute_wsc
from .binning import BINNING_METHODS, IGNORE_INDEX, BinningMethod, bin_names, digitize, fit_bin_edges
from .projection import PCAProjection, choose_k, fit_pca_projection
from .similarity import (
    WSCSummary,
    cosine_matrix,
    intra_inter_cosines,
    summarize,
    weight_space_correlation,
)

__all__ = [
    "BINNING_METHODS",
    "IGNORE_INDEX",
    "BinningMethod",
    "PCAProjection",
    "TaskCorrelation",
    "WSCResult",
    "WSCSummary",
    "bin_names",
    "choose_k",
    "compute_wsc",
    "cosine_matrix",
    "digitize",
    "fit_bin_edges",
    "fit_pca_projection",
    "intra_inter_cosines",
    "summarize",
    "weight_space_correlation",
]
