"""The pure WSC core: tensors in, tensors out.

Binning of continuous metadata, the PCA projection fitted on training embeddings, the weight space correlation
between linear heads, batched linear probes with their quality metrics, the permutation null, and the engine that
combines them into one analysis (significance, encodability gate, deconfounded probes). Only torch and the standard
library are imported here (no Lightning, Hydra or OmegaConf), so the numbers can be tested and reused outside any
training loop.
"""

from .analysis import TaskCorrelation, WSCResult, compute_wsc
from .engine import (
    AnalysisSettings,
    Deconfounded,
    ProbeQuality,
    TaskAnalysis,
    WSCAnalysis,
    analyze_embeddings,
    null_to_dict,
    split_subset,
)
from .binning import BINNING_METHODS, IGNORE_INDEX, BinningMethod, bin_names, digitize, fit_bin_edges
from .null import NullResult, null_result, permutation_null, permuted_labels
from .probes import (
    ProbeFit,
    balanced_accuracy,
    bootstrap_auroc_ci,
    fit_linear_probes,
    independence_weights,
    macro_auroc,
    probe_scores,
)
from .projection import PCAProjection, choose_k, fit_pca_projection
from .similarity import (
    WSCSummary,
    cosine_matrix,
    identifiable_rows,
    intra_inter_cosines,
    summarize,
    weight_space_correlation,
)

__all__ = [
    "AnalysisSettings",
    "BINNING_METHODS",
    "BinningMethod",
    "Deconfounded",
    "IGNORE_INDEX",
    "NullResult",
    "PCAProjection",
    "ProbeFit",
    "ProbeQuality",
    "TaskAnalysis",
    "TaskCorrelation",
    "WSCAnalysis",
    "WSCResult",
    "WSCSummary",
    "analyze_embeddings",
    "balanced_accuracy",
    "bin_names",
    "bootstrap_auroc_ci",
    "choose_k",
    "compute_wsc",
    "cosine_matrix",
    "digitize",
    "fit_bin_edges",
    "fit_linear_probes",
    "fit_pca_projection",
    "identifiable_rows",
    "independence_weights",
    "intra_inter_cosines",
    "macro_auroc",
    "null_result",
    "null_to_dict",
    "permutation_null",
    "permuted_labels",
    "probe_scores",
    "split_subset",
    "summarize",
    "weight_space_correlation",
]
