"""The WSC engine: one full analysis of a model's heads on cached training embeddings (pure torch).

Given the embeddings of a fixed training subset, the primary head and the metadata labels, ``analyze_embeddings``

1. fits the PCA projection on all subset embeddings (unsupervised, so no label leaks into it);
2. splits the subset once, with a seeded permutation, into a *fit* part and a *held-out* part;
3. for every metadata task fits the linear probe (multinomial, L2, class-balanced) on the projected fit part, and
   in the same batched call the probes of ``num_permutations`` label permutations (the null);
4. takes the *observed* metadata direction: the module's own head (``heads`` protocol: multitask or probe_online) or
   the refitted probe (``probe_refit``), and correlates it with the primary head in the projected space (the
   paper's measure) and in the raw space (the "w/o PCA" reference);
5. reads the observed max |cos| against the null: z-score and ``p = (1 + #(null >= observed)) / (B + 1)``, the
   permutations drawn sequentially so that a clearly null result stops early (``stop_after_exceedances``);
6. gates it: the probe's macro AUROC, with a bootstrap CI, on data the backbone did not train on when the caller
   gives it (``holdout_embeddings``: the validation split), else on the held-out part of the subset; a task whose
   CI includes 0.5 (or whose AUROC is not above ``auroc_floor``) is ``interpretable = False`` with the reason;
7. refits the probe (and its null) with weights ``p(m) p(y) / p(m, y)`` that make the metadata independent of the
   primary label on the fit part (the *deconfounded* WSC), when the primary labels are given and every
   (metadata, primary) cell is populated;
8. forms the verdict's test (:class:`ShortcutTest`, below) with an effect size and its bootstrap interval;
9. adds the identifiable ``w1 - w0`` form when either head is binary, and the paper's reference distributions of
   intra-head and inter-head cosines;
10. optionally (``k_values``) recomputes max |WSC| at other projection sizes (the paper's k-sensitivity study,
    §3.5 and Fig. 4): :func:`wsc_versus_k`.

The shortcut test
-----------------
What a verdict claims. *Use*: the primary head's decisions depend on the metadata's own image features (on the
built-in data this is measured directly by :mod:`wsca_lightning.data.counterfactual`: the same anatomy through every
scanner). Not *encoding* (the embedding carries the metadata: the gate's question) and not *confounding* (metadata
and label associated in the data, which makes any direction fitted to the metadata lean towards the label).

- ``heads`` protocol (multitask or probe_online heads): H0, the primary head's weight vectors are no more aligned
  with the trained metadata head than chance and the label association explain; H1, they share the directions the
  metadata's own features occupy.
- ``probe_refit``: the same with the metadata probe refitted on the frozen embeddings in place of the trained head.

The test is an intersection of three tests, ``p = max(p_permutation, p_deconfounded, p_blind)``:

- ``permutation``: the observed direction beyond probes fitted to permuted metadata labels (the paper's geometry);
- ``deconfounded``: the probe fitted with weights that make the metadata independent of the primary label, beyond
  its own permutation null (the alignment is not borrowed from a label association);
- ``blind``: the primary head more aligned with the metadata direction than primary probes fitted (on bootstrap
  resamples) to embeddings from which the metadata's within-label displacement was projected out
  (:func:`~wsca_lightning.wsc.null.blind_primary_null`): what a primary head that *cannot* use the metadata shows
  when metadata and label share the embedding's dominant directions.

Each part alone fails a null scenario of the calibration suite (``benchmarks/calibration.py``, docs/method.md,
"Calibration"): permuted-label probes point into the embedding's low-variance directions, so an encoded or
label-associated column looks aligned (H0a, H0b); refitted blind probes are smoother than trained heads, so the
blind part alone is anti-conservative for multitask heads. "Significant" needs all three below alpha, so the level
is at most that of the best part in each scenario (an intersection-union test); the rates and the power at shortcut
strengths 0.5-1 are measured there. When a (metadata, primary) cell is empty the deconfounded part cannot exist: the
metadata is tied to the label in the data, and no analysis of these data can say which of the two the head uses;
the verdict then rests on the other two parts and its ``notes`` say so. ``decision="permutation"`` restores the
permutation part alone (the rule before calibration); every part's p is reported either way.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from wsca_lightning.problems import Problem, integer_problems

from .analysis import TaskCorrelation, plain_float
from .null import NullResult, blind_primary_null, permutation_null
from .probes import (
    ProbeFit,
    balanced_accuracy,
    bootstrap_auroc_ci,
    fit_linear_probes,
    independence_weights,
    macro_auroc,
)
from .projection import PCAProjection, fit_pca_projection
from .similarity import cosine_matrix, identifiable_rows, intra_inter_cosines, summarize

SOURCES: tuple[str, ...] = ("head", "probe")
#: How the verdict's p-value is formed (:class:`ShortcutTest`).
DECISIONS: tuple[str, ...] = ("calibrated", "permutation")


@dataclass(frozen=True)
class AnalysisSettings:
    """Every knob of one analysis (defaults: the paper's projection, B = 100 permutations, a 95 % AUROC interval).

    Attributes:
        k_min, var_threshold: projection size ``k = min(d, N - 1, max(k_min, k_var))``.
        num_permutations: label permutations in the null (``B``); 0 skips the null (no z, no p).
        stop_after_exceedances: sequential nulls (Besag and Clifford 1991): every null (permutation, deconfounded,
            blind) stops drawing once this many draws reach the observed value, with ``p = h / l`` (``l`` the draw
            count); a result that is significant at any usual alpha draws all ``B``. 0 draws all ``B`` always.
        holdout_fraction: share of the subset held out to measure probe quality (the rest fits the probes).
        l2, max_iter, tol: probe regularisation and solver limits (:func:`fit_linear_probes`).
        num_bootstrap, ci_level: bootstrap of the held-out AUROC.
        auroc_floor: a probe must also reach an AUROC above this to make the task interpretable.
        deconfound: also fit the deconfounded probe (needs the primary labels).
        seed: seeds the split, the permutations and the bootstrap (per task, combined with the task name).
        k_values: projection sizes at which max |WSC| is also reported (``()`` = none); see :func:`wsc_versus_k`.
        decision: how the verdict's p-value (``test.p``) is formed: ``calibrated`` (default; :data:`DECISIONS`,
            the module docstring's "The shortcut test") or ``permutation`` (the permutation null alone, the rule
            before the calibration suite; anti-conservative for encoded but unused metadata).
    """

    k_min: int = 50
    var_threshold: float = 0.99
    num_permutations: int = 100
    stop_after_exceedances: int = 10
    holdout_fraction: float = 0.25
    l2: float = 1e-2
    max_iter: int = 200
    tol: float = 1e-5
    num_bootstrap: int = 200
    ci_level: float = 0.95
    auroc_floor: float = 0.5
    deconfound: bool = True
    seed: int = 0
    k_values: tuple[int, ...] = ()
    decision: str = "calibrated"

    def problems(self) -> list[Problem]:
        """Every invalid field, keyed by the field's name (empty when valid)."""
        out: list[Problem] = []

        def integer(name: str, low: int) -> None:
            out.extend(integer_problems([(name, getattr(self, name), low)]))

        def number(name: str, low: float, high: float, *, closed_low: bool = False, closed_high: bool = False) -> None:
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if ok:
                ok = (value >= low if closed_low else value > low) and (value <= high if closed_high else value < high)
            if not ok:
                bounds = f"{'[' if closed_low else '('}{low}, {high}{']' if closed_high else ')'}"
                out.append(Problem(name, f"must be a number in {bounds}, got {value!r}"))

        integer("k_min", 1)
        number("var_threshold", 0.0, 1.0, closed_high=True)
        integer("num_permutations", 0)
        if self.num_permutations == 1:
            out.append(Problem("num_permutations", "must be 0 (no null) or >= 2 (the null needs a spread), got 1"))
        integer("stop_after_exceedances", 0)
        number("holdout_fraction", 0.0, 1.0)
        number("l2", 0.0, math.inf, closed_low=True)
        integer("max_iter", 1)
        number("tol", 0.0, math.inf)
        integer("num_bootstrap", 1)
        number("ci_level", 0.0, 1.0)
        number("auroc_floor", 0.0, 1.0, closed_low=True)
        if not isinstance(self.deconfound, bool):
            out.append(Problem("deconfound", f"must be true or false, got {self.deconfound!r}"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            out.append(Problem("seed", f"must be an integer, got {self.seed!r}"))
        if not isinstance(self.k_values, tuple) or not all(
            isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in self.k_values
        ):
            out.append(Problem("k_values", f"must be a list of integers >= 1, got {self.k_values!r}"))
        if self.decision not in DECISIONS:
            out.append(Problem("decision", f"must be one of {', '.join(DECISIONS)}, got {self.decision!r}"))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


@dataclass(frozen=True)
class ProbeQuality:
    """How well the real probe predicts its metadata on the held-out part of the subset."""

    auroc: float  # macro one-vs-rest over the classes present in the held-out part; NaN if none qualifies
    auroc_ci: tuple[float, float]  # percentile bootstrap interval (NaN, NaN) when it cannot be computed
    balanced_accuracy: float
    converged: bool
    n_fit: int  # fit-part rows with a label
    n_holdout: int  # held-out rows with a label
    split: str = "subset_holdout"  # where it was measured: the subset's held-out part, or the caller's holdout data

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "auroc": plain_float(self.auroc),
            "auroc_ci": [plain_float(v) for v in self.auroc_ci],
            "balanced_accuracy": plain_float(self.balanced_accuracy),
            "converged": self.converged,
            "n_fit": self.n_fit,
            "n_holdout": self.n_holdout,
        }


@dataclass(frozen=True, eq=False)
class Deconfounded:
    """WSC of the probe fit with independence weights; ``max_abs`` is None (with ``reason``) when impossible."""

    max_abs: float | None
    null: NullResult | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max_abs": plain_float(self.max_abs)}
        out["p"] = None if self.null is None else plain_float(self.null.p)
        out["z"] = None if self.null is None else plain_float(self.null.z)
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True, eq=False)
class ShortcutTest:
    """The verdict's test for one metadata task: one p-value, its parts, and an effect size with an interval.

    ``p`` is ``None`` when the WSC is undefined (a diverged head). With ``decision = "calibrated"`` it is the largest
    of the parts that apply (``permutation``, ``deconfounded``, ``blind``; the module docstring's "The shortcut
    test"): an intersection-union test, so "significant" needs every part below alpha. With ``"permutation"`` it is
    the permutation part alone. ``effect`` is max |WSC|
    minus the permutation null's median, ``effect_ci`` its percentile-bootstrap interval over the subset
    (``ci_level``); ``notes`` say which parts did not apply and why.
    """

    p: float | None
    decision: str
    parts: dict[str, float | None]
    effect: float | None
    effect_ci: tuple[float, float]
    null_median: float | None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "p": plain_float(self.p),
            "decision": self.decision,
            "parts": {k: plain_float(v) for k, v in self.parts.items()},
            "effect": plain_float(self.effect),
            "effect_ci": [plain_float(v) for v in self.effect_ci],
            "null_median": plain_float(self.null_median),
            "notes": list(self.notes),
        }


@dataclass(frozen=True, eq=False)
class TaskAnalysis:
    """Everything measured for one metadata task (see the module docstring for each step)."""

    source: str  # "head" (the module's trained head) or "probe" (the refitted probe)
    correlation: TaskCorrelation
    identifiable: TaskCorrelation | None  # w1 - w0 form when either head is binary
    null: NullResult | None
    probe: ProbeQuality
    interpretable: bool
    reason: str | None
    deconfounded: Deconfounded | None
    probe_weight: Tensor  # (C_task, k) the real probe in the projected space
    observed_weight: Tensor  # (C_task, k) the direction compared with the primary head
    test: ShortcutTest | None = None  # the verdict's test (None only for analyses built by hand)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (the per-task entry of ``wsc_summary.json``, without row and column names)."""
        out = {"source": self.source, **self.correlation.to_dict()}
        if self.identifiable is not None:
            out["identifiable"] = self.identifiable.to_dict()
        out["null"] = None if self.null is None else null_to_dict(self.null)
        out["probe"] = self.probe.to_dict()
        out["interpretable"] = self.interpretable
        out["reason"] = self.reason
        out["deconfounded"] = None if self.deconfounded is None else self.deconfounded.to_dict()
        out["test"] = None if self.test is None else self.test.to_dict()
        return out


@dataclass(frozen=True, eq=False)
class WSCAnalysis:
    """One analysis: the projection, the per-task results and the reference cosine distributions."""

    projection: PCAProjection
    tasks: dict[str, TaskAnalysis]
    intra: Tensor  # cosines between rows of the same head (primary and every observed head), projected
    inter: Tensor  # cosines between rows of different heads, projected
    n_fit: int
    n_holdout: int
    settings: AnalysisSettings = field(default_factory=AnalysisSettings)
    k_sweep: dict[str, Any] | None = None  # {"k": [...], "max_abs": {task: [...]}} when settings.k_values is set

    def reference_dict(self) -> dict[str, Any]:
        return {"intra": _distribution(self.intra), "inter": _distribution(self.inter)}


def null_to_dict(null: NullResult) -> dict[str, Any]:
    """``{"z", "p", "B", "observed", "mean", "sd", "q05", "q95"}`` of a null (the band drawn in the plots)."""
    q = torch.quantile(null.null, torch.tensor([0.05, 0.95], dtype=torch.float64, device=null.null.device))
    return {
        "z": plain_float(null.z),
        "p": plain_float(null.p),
        "B": null.num_permutations,
        "stopped_early": null.stopped_early,
        "observed": plain_float(null.observed),
        "mean": plain_float(float(null.null.mean())),
        "sd": plain_float(float(null.null.std(correction=1))),
        "q05": plain_float(float(q[0])),
        "q95": plain_float(float(q[1])),
    }


def _distribution(values: Tensor) -> dict[str, Any]:
    """Count, mean and sd over the finite values (a diverged head gives NaN cosines: listed as None)."""
    finite = values[torch.isfinite(values)]
    return {
        "n": int(values.numel()),
        "mean": float(finite.mean()) if finite.numel() else None,
        "sd": float(finite.std(correction=1)) if finite.numel() > 1 else (0.0 if finite.numel() else None),
        "values": [plain_float(v) for v in values.tolist()],
    }


def task_seed(seed: int, name: str) -> int:
    """A per-task seed that depends on the task's name, not on its position (adding a task changes no other)."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def split_subset(n: int, holdout_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded ``(fit_idx, holdout_idx)`` (sorted, CPU int64) with ``round(n * holdout_fraction)`` held out."""
    n_hold = int(round(n * holdout_fraction))
    if n_hold < 2 or n - n_hold < 2:
        raise ValueError(
            f"a subset of {n} embeddings with holdout_fraction={holdout_fraction} leaves {n - n_hold} to fit and "
            f"{n_hold} to hold out; both need at least 2 (use a larger subset_size)"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_hold:].sort().values, perm[:n_hold].sort().values


def _quality(
    fit: ProbeFit, features: Tensor, labels: Tensor, n_fit: int, settings: AnalysisSettings, seed: int, split: str
) -> ProbeQuality:
    valid = labels >= 0
    x, y = features[valid], labels[valid]
    logits = x @ fit.weight[0].T + fit.bias[0]
    scores = torch.softmax(logits, dim=1)
    auroc = float(macro_auroc(scores, y)) if y.numel() else math.nan
    bacc = float(balanced_accuracy(scores, y)) if y.numel() else math.nan
    try:
        ci = bootstrap_auroc_ci(scores, y, num_bootstrap=settings.num_bootstrap, level=settings.ci_level, seed=seed)
    except ValueError:  # no resample with both positives and negatives of any class
        ci = (math.nan, math.nan)
    return ProbeQuality(auroc, ci, bacc, bool(fit.converged[0]), n_fit, int(y.numel()), split)


def _gate(quality: ProbeQuality, settings: AnalysisSettings) -> str | None:
    """Why a task's WSC is not interpretable, or None when its probe predicts the metadata above chance."""
    auroc, (low, high) = quality.auroc, quality.auroc_ci
    level = f"{100 * settings.ci_level:g}%"
    if math.isnan(auroc) or math.isnan(low):
        return (f"probe AUROC cannot be measured: the {quality.n_holdout} held-out rows lack a class with both "
                "positives and negatives (use a larger subset_size)")
    if low <= 0.5:
        return (f"probe AUROC {auroc:.3f} ({level} CI {low:.3f}-{high:.3f}) includes chance (0.5): the embedding "
                "does not encode this metadata linearly, so its WSC means nothing")
    if auroc <= settings.auroc_floor:
        return f"probe AUROC {auroc:.3f} is not above auroc_floor={settings.auroc_floor:g}"
    return None


def _empty_cells(metadata: Tensor, primary: Tensor) -> list[tuple[int, int]]:
    """(metadata class, primary class) cells with no row, among classes present on both sides."""
    valid = (metadata >= 0) & (primary >= 0)
    m, y = metadata[valid], primary[valid]
    cells = {(int(a), int(b)) for a, b in zip(m.tolist(), y.tolist())}
    return [(a, b) for a in sorted(set(m.tolist())) for b in sorted(set(y.tolist())) if (a, b) not in cells]


def _check_inputs(
    embeddings: Tensor,
    primary_weight: Tensor,
    labels: Mapping[str, Tensor],
    num_classes: Mapping[str, int],
    head_weights: Mapping[str, Tensor] | None,
    primary_labels: Tensor | None,
) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, d), got shape {tuple(embeddings.shape)}")
    n, d = embeddings.shape
    if primary_weight.ndim != 2 or primary_weight.shape[1] != d:
        raise ValueError(f"primary_weight must have shape (C, d={d}), got {tuple(primary_weight.shape)}")
    if not labels:
        raise ValueError("labels: at least one metadata task is needed")
    for name, y in labels.items():
        if tuple(y.shape) != (n,):
            raise ValueError(f"labels[{name!r}] must have shape ({n},) to match the embeddings, got {tuple(y.shape)}")
        if name not in num_classes:
            raise ValueError(f"num_classes has no entry for task {name!r}")
    for name, w in (head_weights or {}).items():
        if name not in labels:
            raise ValueError(f"head_weights[{name!r}] has no labels")
        if w.ndim != 2 or w.shape[1] != d:
            raise ValueError(f"head_weights[{name!r}] must have shape (C, d={d}), got {tuple(w.shape)}")
    if primary_labels is not None and tuple(primary_labels.shape) != (n,):
        raise ValueError(f"primary_labels must have shape ({n},), got {tuple(primary_labels.shape)}")


def analyze_embeddings(
    embeddings: Tensor,
    primary_weight: Tensor,
    labels: Mapping[str, Tensor],
    num_classes: Mapping[str, int],
    *,
    head_weights: Mapping[str, Tensor] | None = None,
    primary_labels: Tensor | None = None,
    class_names: Mapping[str, Sequence[str]] | None = None,
    settings: AnalysisSettings | None = None,
    holdout_embeddings: Tensor | None = None,
    holdout_labels: Mapping[str, Tensor] | None = None,
    holdout_split: str = "validation",
) -> WSCAnalysis:
    """Full WSC analysis of the primary head against each metadata task (steps in the module docstring).

    Args:
        embeddings: ``(N, d)`` embeddings of a fixed training subset.
        primary_weight: ``(C_A, d)`` the primary head's weight rows (bias ignored).
        labels: metadata task -> ``(N,)`` integer labels (``-1`` = missing).
        num_classes: metadata task -> number of classes.
        head_weights: task -> ``(C_m, d)`` trained head; tasks listed here are compared through their head
            (``source = "head"``), the others through their refitted probe (``source = "probe"``).
        primary_labels: ``(N,)`` primary labels; needed for the deconfounded probe.
        class_names: task (and the primary under ``"__primary__"``) -> class names, used in messages only.
        settings: :class:`AnalysisSettings`.
        holdout_embeddings, holdout_labels: ``(M, d)`` embeddings of data the backbone did *not* train on (e.g. the
            validation split) and each task's ``(M,)`` labels: the encodability gate measures the probe there
            (``probe.split = holdout_split``). Without them it uses the subset's held-out part
            (``probe.split = "subset_holdout"``), which a backbone that memorised a column through its head passes.
    """
    settings = settings or AnalysisSettings()
    problems = settings.problems()
    if problems:
        raise ValueError("invalid analysis settings:\n" + "\n".join(map(str, problems)))
    head_weights = dict(head_weights or {})
    _check_inputs(embeddings, primary_weight, labels, num_classes, head_weights, primary_labels)
    if (holdout_embeddings is None) != (holdout_labels is None):
        raise ValueError("holdout_embeddings and holdout_labels come together (or neither)")
    if holdout_embeddings is not None and holdout_labels is not None:
        if holdout_embeddings.ndim != 2 or holdout_embeddings.shape[1] != embeddings.shape[1]:
            raise ValueError(f"holdout_embeddings must have shape (M, d={embeddings.shape[1]}), got "
                             f"{tuple(holdout_embeddings.shape)}")
        for name in labels:
            y_hold = holdout_labels.get(name)
            if y_hold is None or tuple(y_hold.shape) != (holdout_embeddings.shape[0],):
                raise ValueError(f"holdout_labels[{name!r}] must have shape ({holdout_embeddings.shape[0]},)")
    projection = fit_pca_projection(embeddings, k_min=settings.k_min, var_threshold=settings.var_threshold)
    device = projection.components.device
    features = projection.project_embeddings(embeddings)
    centred = embeddings.detach().to(device=device, dtype=torch.float64) - projection.mean
    fit_idx, hold_idx = split_subset(embeddings.shape[0], settings.holdout_fraction, settings.seed)
    fit_idx, hold_idx = fit_idx.to(device), hold_idx.to(device)
    primary_d = primary_weight.detach().to(device=device, dtype=torch.float64)
    primary_k = projection.project_weights(primary_d)
    y_primary = None if primary_labels is None else primary_labels.detach().to(device=device, dtype=torch.int64)
    probe_kwargs = {"l2": settings.l2, "max_iter": settings.max_iter, "tol": settings.tol}
    names = class_names or {}
    gate_features = None if holdout_embeddings is None else projection.project_embeddings(holdout_embeddings)
    resampler = (_Resampler(embeddings, projection, fit_idx, features[fit_idx], settings)
                 if settings.num_permutations >= 2 else None)

    tasks: dict[str, TaskAnalysis] = {}
    raw_weights: dict[str, Tensor] = {}
    for name, raw_labels in labels.items():
        y = raw_labels.detach().to(device=device, dtype=torch.int64)
        c = int(num_classes[name])
        seed = task_seed(settings.seed, name)
        y_fit = y[fit_idx]
        head_k = head_d = None
        if name in head_weights:  # a trained head's direction is known before any probe is fitted
            head_d = head_weights[name].detach().to(device=device, dtype=torch.float64)
            head_k = projection.project_weights(head_d)
            head_max = summarize(cosine_matrix(primary_k, head_k)).max_abs
        try:
            if settings.num_permutations >= 2:
                null = permutation_null(features[fit_idx], y_fit, primary_k, c,
                                        num_permutations=settings.num_permutations, seed=seed,
                                        observed=None if head_k is None else head_max,
                                        stop_after=settings.stop_after_exceedances, **probe_kwargs)
                fit = null.fit
                assert fit is not None
            else:
                null = None
                fit = fit_linear_probes(features[fit_idx], y_fit, c, **probe_kwargs)
        except ValueError as err:
            raise ValueError(f"metadata task {name!r}: {err}") from err
        probe_k = fit.weight[0]
        if gate_features is not None and holdout_labels is not None:
            y_gate = holdout_labels[name].detach().to(device=device, dtype=torch.int64)
            quality = _quality(fit, gate_features, y_gate, int((y_fit >= 0).sum()), settings, seed, holdout_split)
        else:
            quality = _quality(fit, features[hold_idx], y[hold_idx], int((y_fit >= 0).sum()), settings, seed,
                               "subset_holdout")
        if head_k is not None and head_d is not None:
            source, task_k, task_d = "head", head_k, head_d
        else:
            source = "probe"
            task_k = probe_k
            # the "w/o PCA" reference of a probe is the probe fit on the raw (centred) embeddings
            task_d = fit_linear_probes(centred[fit_idx], y_fit, c, **probe_kwargs).weight[0]
        raw_weights[name] = task_d
        correlation = TaskCorrelation.between(primary_k, task_k, primary_d, task_d)
        diverged = not math.isfinite(correlation.summary.max_abs)
        if null is not None and diverged:  # NaN >= nothing: the +1 formula would call a diverged head significant
            null = replace(null, z=math.nan, p=math.nan)
        identifiable = None
        if primary_k.shape[0] == 2 or task_k.shape[0] == 2:
            identifiable = TaskCorrelation.between(identifiable_rows(primary_k), identifiable_rows(task_k),
                                                   identifiable_rows(primary_d), identifiable_rows(task_d))
        reason = _gate(quality, settings)
        if diverged:
            reason = ("the primary or the compared metadata head has non-finite weights (diverged training): its WSC "
                      "is undefined")
        deconfounded = None
        if settings.deconfound and y_primary is not None:
            deconfounded = _deconfounded(features[fit_idx], y_fit, y_primary[fit_idx], primary_k, c, name, names,
                                         settings, seed, probe_kwargs)
        test = None
        if null is not None and resampler is not None:
            blind: NullResult | str = "the primary labels were not given"
            if y_primary is not None and not diverged:
                try:
                    blind = blind_primary_null(null.observed, task_k, features[fit_idx], y_primary[fit_idx], y_fit,
                                               primary_k.shape[0], num_draws=settings.num_permutations,
                                               seed=seed + 4, stop_after=settings.stop_after_exceedances,
                                               **probe_kwargs)
                except ValueError as err:  # e.g. a resample without a rare primary class
                    blind = f"the blind primary probes cannot be fit: {err}"
            test = _shortcut_test(
                null, deconfounded, blind, diverged, settings,
                bootstrap=resampler.max_abs(primary_d, task_d if source == "head" else None, y_fit, c, probe_kwargs),
            )
        tasks[name] = TaskAnalysis(
            source=source,
            correlation=correlation,
            identifiable=identifiable,
            null=None if null is None else replace(null, fit=None),  # drop the B probes: memory
            probe=quality,
            interpretable=reason is None,
            reason=reason,
            deconfounded=deconfounded,
            probe_weight=probe_k,
            observed_weight=task_k,
            test=test,
        )
    heads_k = {"__primary__": primary_k, **{n: t.observed_weight for n, t in tasks.items()}}
    intra, inter = intra_inter_cosines(heads_k)
    k_sweep = None
    if settings.k_values:
        k_sweep = wsc_versus_k(embeddings, primary_d, raw_weights, settings.k_values)
    return WSCAnalysis(projection, tasks, intra, inter, int(fit_idx.numel()), int(hold_idx.numel()), settings,
                       k_sweep)


def wsc_versus_k(
    embeddings: Tensor, primary_weight: Tensor, task_weights: Mapping[str, Tensor], k_values: Sequence[int]
) -> dict[str, Any]:
    """max |WSC| of raw ``(C, d)`` head weights projected onto the top-``k`` principal components, for each ``k``.

    The paper's k-sensitivity study (§3.5, Fig. 4): small ``k`` keeps too few directions to be stable, ``k`` near ``d``
    lets directions the data never visits dilute the cosines. ``k`` values above ``min(d, N - 1)`` (the directions
    the embeddings span) are dropped. The heads are the ones the analysis compares in the raw space: a trained head,
    or for the probe protocol the probe fitted on the raw embeddings, so at the analysis's own ``k`` a trained head
    gives exactly its reported ``max_abs``.

    Returns ``{"k": [k, ...], "max_abs": {task: [value per k]}}`` (plain Python; NaN -> None).
    """
    full = fit_pca_projection(embeddings, k_min=embeddings.shape[1], var_threshold=1.0)
    ks = sorted({int(k) for k in k_values if int(k) <= full.k})
    primary = primary_weight.detach().to(device=full.components.device, dtype=torch.float64)
    out: dict[str, list[float | None]] = {name: [] for name in task_weights}
    for k in ks:
        components = full.components[:k]
        primary_k = primary @ components.T
        for name, weight in task_weights.items():
            task_k = weight.detach().to(device=components.device, dtype=torch.float64) @ components.T
            out[name].append(plain_float(summarize(cosine_matrix(primary_k, task_k)).max_abs))
    return {"k": ks, "max_abs": out}


def _deconfounded(
    features: Tensor,
    y: Tensor,
    y_primary: Tensor,
    primary_k: Tensor,
    num_classes: int,
    name: str,
    class_names: Mapping[str, Sequence[str]],
    settings: AnalysisSettings,
    seed: int,
    probe_kwargs: Mapping[str, Any],
) -> Deconfounded:
    empty = _empty_cells(y, y_primary)
    if empty:
        def label(task: str, i: int) -> str:
            names = class_names.get(task)
            return names[i] if names is not None and i < len(names) else str(i)

        shown = ", ".join(f"{name}={label(name, m)} & primary={label('__primary__', a)}" for m, a in empty[:3])
        more = f" and {len(empty) - 3} more" if len(empty) > 3 else ""
        return Deconfounded(None, reason=(
            f"{len(empty)} (metadata, primary) cell(s) have no sample in the fit subset ({shown}{more}): the "
            "metadata cannot be made independent of the primary label by reweighting"
        ))
    if not bool(torch.isfinite(primary_k).all()):
        return Deconfounded(None, reason="the primary head has non-finite weights (diverged training)")
    weights = independence_weights(y_primary, y)
    try:
        if settings.num_permutations >= 2:
            null = permutation_null(features, y, primary_k, num_classes, num_permutations=settings.num_permutations,
                                    seed=seed + 1, sample_weight=weights,
                                    stop_after=settings.stop_after_exceedances, **probe_kwargs)
            return Deconfounded(null.observed, replace(null, fit=None))
        fit = fit_linear_probes(features, y, num_classes, sample_weight=weights, **probe_kwargs)
    except ValueError as err:
        return Deconfounded(None, reason=f"deconfounded probe cannot be fit: {err}")
    return Deconfounded(summarize(cosine_matrix(primary_k, fit.weight[0])).max_abs)


def _shortcut_test(
    null: NullResult,
    deconfounded: Deconfounded | None,
    blind: NullResult | str,
    diverged: bool,
    settings: AnalysisSettings,
    *,
    bootstrap: Tensor,
) -> ShortcutTest:
    """Combine the parts into the verdict's p-value (:class:`ShortcutTest`) and add the effect size."""
    parts: dict[str, float | None] = {
        "permutation": null.p,
        "deconfounded": None if deconfounded is None or deconfounded.null is None else deconfounded.null.p,
        "blind": blind.p if isinstance(blind, NullResult) else None,
    }
    median = float(null.null.median())
    if diverged:
        return ShortcutTest(None, settings.decision, parts, None, (math.nan, math.nan), median,
                            ("the primary or the compared head diverged: no test",))
    notes: list[str] = []
    p = null.p
    if settings.decision == "calibrated":
        if isinstance(blind, NullResult):
            p = max(p, blind.p)
        else:
            notes.append(f"metadata-blind part not applied ({blind})")
        if parts["deconfounded"] is not None:
            p = max(p, parts["deconfounded"])
        else:
            why = (deconfounded.reason if deconfounded is not None and deconfounded.reason
                   else "the primary labels were not given or deconfound is false")
            notes.append(f"deconfounded part not applied ({why}); the verdict rests on the permutation part alone "
                         "and cannot tell use of the metadata from use of a label it is tied to")
    half = (1.0 - settings.ci_level) / 2
    finite = bootstrap[torch.isfinite(bootstrap)].cpu() - median
    ci = (math.nan, math.nan)
    if finite.numel() >= 2:
        q = torch.quantile(finite, torch.tensor([half, 1.0 - half], dtype=torch.float64))
        ci = (float(q[0]), float(q[1]))
    return ShortcutTest(p, settings.decision, parts, null.observed - median, ci, median, tuple(notes))


class _Resampler:
    """Bootstrap resamples of the subset for the effect size's interval: max |WSC| recomputed with the projection
    refitted on each resample (and, for a probe, the probe refitted on the resampled fit rows).

    The resampled rows lie in the span of the subset, so each resample's PCA is computed exactly in the subset's
    full eigenbasis (``K = min(d, N - 1)`` coordinates) instead of ``R^d``: cheap for any ``d``.
    """

    def __init__(self, embeddings: Tensor, projection: PCAProjection, fit_idx: Tensor, fit_features: Tensor,
                 settings: AnalysisSettings) -> None:
        self.projection = projection
        self.fit_features = fit_features  # the projected fit rows the probes are fitted on
        self.full = fit_pca_projection(embeddings, k_min=embeddings.shape[1], var_threshold=1.0)
        self.coords = self.full.project_embeddings(embeddings)  # (N, K)
        self.fit_idx = fit_idx
        self.num = settings.num_bootstrap
        n = embeddings.shape[0]
        gen = torch.Generator().manual_seed(int(settings.seed) + 7)
        self.rows = torch.randint(0, n, (self.num, n), generator=gen).to(self.coords.device)
        self._bases: Tensor | None = None

    def bases(self) -> Tensor:
        """``(num, K, k)``: each resample's top-``k`` principal axes in the full eigenbasis (computed once)."""
        if self._bases is None:
            k = self.projection.k
            out = []
            for chunk in self.rows.split(16):
                x = self.coords[chunk]  # (b, N, K)
                x = x - x.mean(dim=1, keepdim=True)
                _, vectors = torch.linalg.eigh(x.transpose(1, 2) @ x)
                out.append(vectors.flip(-1)[..., :k])
            self._bases = torch.cat(out)
        return self._bases

    def max_abs(self, primary_d: Tensor, head_d: Tensor | None, y_fit: Tensor, num_classes: int,
                probe_kwargs: Mapping[str, Any]) -> Tensor:
        """``(num,)`` max |WSC| per resample: of ``head_d`` ``(C, d)``, or of a probe refitted with bootstrap
        weights on the fit rows when ``head_d`` is None."""
        bases = self.bases()
        primary = primary_d @ self.full.components.T  # (C_A, K)
        if head_d is not None:
            task = (head_d @ self.full.components.T).expand(self.num, -1, -1)
        else:
            position = torch.full((self.coords.shape[0],), -1, dtype=torch.int64, device=self.coords.device)
            position[self.fit_idx] = torch.arange(self.fit_idx.numel(), device=self.coords.device)
            picked = position[self.rows]
            counts = torch.zeros(self.num, self.fit_idx.numel(), dtype=torch.float64, device=self.coords.device)
            counts.scatter_add_(1, picked.clamp_min(0), (picked >= 0).to(torch.float64))
            try:
                fit = fit_linear_probes(self.fit_features, y_fit.expand(self.num, -1), num_classes,
                                        sample_weight=counts, **probe_kwargs)
            except ValueError:  # a resample lost a whole class: no interval
                return torch.full((self.num,), math.nan, dtype=torch.float64)
            # the probe lives in the analysis's k axes: carry it into the full eigenbasis
            task = fit.weight @ (self.projection.components @ self.full.components.T)
        a = torch.einsum("ck,bkj->bcj", primary, bases)
        t = torch.einsum("bck,bkj->bcj", task, bases)
        a = a / a.norm(dim=2, keepdim=True).clamp_min(1e-12)
        t = t / t.norm(dim=2, keepdim=True).clamp_min(1e-12)
        return (t @ a.transpose(1, 2)).abs().flatten(1).amax(dim=1)
