"""Post-hoc WSC of a trained model: a ``wsca-train`` checkpoint, or any backbone + primary head (Python API).

* :func:`load_checkpoint_module` rebuilds a :class:`~wsca_lightning.models.MultiHeadModule` from a Lightning
  checkpoint loaded with ``torch.load(weights_only=True)`` (no code runs while loading), with an error naming what is
  wrong when the file is not such a checkpoint;
* :func:`analyze_model` analyses any ``torch.nn.Module`` backbone and linear primary head on batches of
  ``(images, labels)``: the paper's probe protocol after the fact (metadata probes refitted on the embeddings), or
  the given metadata heads;
* :func:`write_analysis` writes ``wsc_summary.json``, ``wsc_table.csv`` and ``wsc_heatmap.png``, the same files and
  format the training callback writes.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from wsca_lightning.epoch_analysis.evaluator import embed_batches
from wsca_lightning.problems import ConfigError, Problem
from wsca_lightning.summary import (
    HEATMAP_FILENAME,
    SUMMARY_FILENAME,
    TABLE_FILENAME,
    analysis_entry,
    summary_header,
    write_summary,
    write_table,
)
from wsca_lightning.wsc import AnalysisSettings, analyze_embeddings


class CheckpointError(ConfigError):
    """A checkpoint that cannot be analysed: a configuration problem keyed ``checkpoint``, with the reason and what
    to do (a ``ValueError``, as every :class:`~wsca_lightning.problems.ConfigError`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(Problem("checkpoint", reason))


def load_checkpoint_module(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """``(module, checkpoint)``: the :class:`MultiHeadModule` saved in ``path`` (eval mode, CPU) and the raw dict."""
    from wsca_lightning.models import MultiHeadModule

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no file at {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (torch.save's zip format); pass the "
                              "path of a .ckpt file written by wsca-train (checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise CheckpointError(
                f"{path} holds Python objects that torch.load(weights_only=True) refuses to build "
                "(unpickling them could run code); re-save it with plain tensors and values.\n  "
                + str(err).splitlines()[0]
            ) from err
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({err})") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint of a wsca_lightning MultiHeadModule (it needs "
            f"'state_dict' and 'hyper_parameters'; found {keys}). For another model use "
            "wsca_lightning.posthoc.analyze_model."
        )
    hparams = dict(ckpt["hyper_parameters"])
    if isinstance(hparams.get("backbone"), dict):
        # the checkpoint's weights replace any pretrained file the run started from (which may not exist here)
        hparams["backbone"] = {**hparams["backbone"], "pretrained": None}
    try:
        module = MultiHeadModule(**hparams)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: its hyper_parameters do not build a MultiHeadModule:\n  {err}"
        ) from err
    try:
        result = module.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        raise CheckpointError(f"{path}: its weights do not fit the model its hyper_parameters "
                              f"describe:\n  {str(err).strip()[:500]}") from err
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: its weights do not fit the model its hyper_parameters describe "
            f"(missing: {result.missing_keys[:5]}, unexpected: {result.unexpected_keys[:5]})"
        )
    module.eval()
    return module, ckpt


def _as_weight(head: nn.Module | Tensor, name: str) -> Tensor:
    weight = head.weight if isinstance(head, nn.Module) else head
    if not isinstance(weight, Tensor) or weight.ndim != 2:
        raise ValueError(f"{name} must be an nn.Linear-like module with a 2-D .weight or a (C, d) tensor")
    return weight.detach()


def analyze_model(
    backbone: nn.Module,
    primary_head: nn.Module | Tensor,
    batches: Iterable[tuple[Tensor, Mapping[str, Tensor]]],
    *,
    primary: str,
    class_names: Mapping[str, Sequence[str]],
    metadata_heads: Mapping[str, nn.Module | Tensor] | None = None,
    settings: AnalysisSettings | None = None,
    device: str | torch.device | None = None,
    holdout_batches: Iterable[tuple[Tensor, Mapping[str, Tensor]]] | None = None,
) -> dict[str, Any]:
    """WSC of any backbone + linear primary head; returns the summary (the ``wsc_summary.json`` format).

    Args:
        backbone: maps a batch of images to embeddings ``(B, d)`` (flattened if it returns more dimensions): the very
            vector ``primary_head`` takes as input.
        primary_head: an ``nn.Linear`` (or a ``(C, d)`` weight tensor) on that embedding.
        batches: an iterable of ``(images, labels)``, e.g. a DataLoader over (a subset of) the *training* images;
            ``labels`` maps the primary task and every metadata task to integer labels (``-1`` = missing).
        primary: the primary task's name (a key of ``labels`` and ``class_names``).
        class_names: every task's class names (primary included); the metadata tasks analysed are the other keys.
        metadata_heads: trained metadata heads to compare as they are (the ``heads`` protocol); tasks without one are
            compared through a probe refitted on the embeddings (the paper's probe protocol).
        settings: :class:`~wsca_lightning.wsc.AnalysisSettings`.
        device: where the backbone runs (default: where its parameters are).
        holdout_batches: ``(images, labels)`` batches of data the backbone did *not* train on (e.g. validation
            images): the encodability gate measures each probe there. Without them it uses a held-out part of
            ``batches``, which a backbone that memorised a metadata column through a trained head passes.
    """
    tasks = [t for t in class_names if t != primary]
    if primary not in class_names:
        raise ValueError(f"class_names has no entry for the primary task {primary!r}")
    if not tasks:
        raise ValueError("class_names names no metadata task besides the primary one")
    metadata_heads = dict(metadata_heads or {})
    unknown = sorted(set(metadata_heads) - set(tasks))
    if unknown:
        raise ValueError(f"metadata_heads {unknown} are not metadata tasks of class_names ({tasks})")
    if device is None:
        first = next(iter(backbone.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    names = [primary, *tasks]

    def labels_of(numbered: tuple[int, tuple[Tensor, Mapping[str, Tensor]]]) -> dict[str, Tensor]:
        i, (_, batch_labels) = numbered
        for t in names:
            if t not in batch_labels:
                raise ValueError(f"batch {i}: labels have no entry for task {t!r} (got {sorted(batch_labels)})")
        return {t: torch.as_tensor(batch_labels[t]).cpu() for t in names}

    def embed(source: Iterable[tuple[Tensor, Mapping[str, Tensor]]]) -> Any:
        return embed_batches(backbone, enumerate(source),
                             lambda numbered: backbone(numbered[1][0].to(device)).flatten(1).cpu(), labels_of)

    subset = embed(batches)
    holdout = None if holdout_batches is None else embed(holdout_batches)
    embeddings, stacked = subset.embeddings, subset.targets
    primary_weight = _as_weight(primary_head, "primary_head").cpu()
    analysis = analyze_embeddings(
        embeddings,
        primary_weight,
        {t: stacked[t] for t in tasks},
        {t: len(class_names[t]) for t in tasks},
        head_weights={t: _as_weight(h, f"metadata_heads[{t!r}]").cpu() for t, h in metadata_heads.items()},
        primary_labels=stacked[primary],
        class_names={**{t: list(class_names[t]) for t in tasks}, "__primary__": list(class_names[primary])},
        settings=settings,
        holdout_embeddings=None if holdout is None else holdout.embeddings,
        holdout_labels=None if holdout is None else {t: holdout.targets[t] for t in tasks},
    )
    entry = analysis_entry(analysis, list(class_names[primary]), {t: list(class_names[t]) for t in tasks})
    protocol = "probe_refit" if not metadata_heads else ("heads" if len(metadata_heads) == len(tasks) else "mixed")
    return {**summary_header(primary, protocol, None), **entry}


def write_analysis(summary: Mapping[str, Any], directory: str | os.PathLike[str], *, plots: bool = True,
                   title: str | None = None) -> dict[str, str]:
    """Write ``wsc_summary.json``, ``wsc_table.csv`` and (with ``plots``) ``wsc_heatmap.png``; returns their paths."""
    directory = os.fspath(directory)
    paths = {"summary": os.path.join(directory, SUMMARY_FILENAME), "table": os.path.join(directory, TABLE_FILENAME)}
    write_summary(summary, paths["summary"])
    write_table(summary, paths["table"])
    if plots:
        from wsca_lightning.figures import heatmap_figure, save_figure

        paths["heatmap"] = os.path.join(directory, HEATMAP_FILENAME)
        save_figure(heatmap_figure(summary["tasks"], summary["primary"], title=title), paths["heatmap"])
    return paths
