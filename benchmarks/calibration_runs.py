"""Training and capture for the calibration suite (benchmarks/calibration.py): one small run -> one artifact file.

A run trains the default module on a small built-in (or Fashion-MNIST) training set and keeps what every verdict
rule needs: the embeddings of the WSC callback's fixed training subset and of the validation split, every head's
weights, every task's labels, and the counterfactual dependence of the primary probabilities on the scanner and
the hospital (:mod:`wsca_lightning.data.counterfactual`). The verdicts are computed afterwards from these files,
so several candidate rules are compared on the very same trained models.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from wsca_lightning.callbacks import WeightSpaceCorrelation
from wsca_lightning.epoch_analysis import analysis_view, embed_dataset
from wsca_lightning.cli.train import compose_train_config, train
from wsca_lightning.data import SyntheticUltrasoundDataModule
from wsca_lightning.data.counterfactual import counterfactual_dependence
from wsca_lightning.models.module import class_probabilities

#: The run's training settings (small enough for hundreds of runs on a 2-core CPU; see docs/method.md, "Calibration").
RUN_OVERRIDES: tuple[str, ...] = (
    "data.num_train=800",
    "data.image_size=[32,48]",
    "data.num_val=300",
    "data.batch_size=32",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "+trainer.num_sanity_val_steps=0",
    "+trainer.check_val_every_n_epoch=3",
    "model.optimizer.lr=0.002",
    "model.optimizer.schedule=cosine",
    "~callbacks.wsc",
    "~callbacks.model_checkpoint",
    "logger=[]",
)
#: Metadata heads of a built-in run: the scanner (H0a / H1), the referral column drawn from the label and never
#: rendered (H0b), the hospital marker, never associated with the label (H0c), and bmi (not rendered: the gate).
SYNTHETIC_METADATA: tuple[str, ...] = (
    "+data.metadata.referral={column: referral, type: categorical}",
    "data.metadata.spacing=null",
    "data.metadata.cervical_length=null",
)
FASHION_METADATA: tuple[str, ...] = ("data=fashion_mnist", "data.metadata.spacing=null")


class Capture(L.Callback):
    """At fit end: subset and validation embeddings, head weights, labels and counterfactual dependence."""

    def __init__(self, seed: int, subset_size: int = 512, counterfactual_n: int = 256) -> None:
        self.seed = seed
        self.subset_size = subset_size
        self.counterfactual_n = counterfactual_n
        self.artifact: dict[str, Any] = {}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        picker = WeightSpaceCorrelation(subset_size=self.subset_size, seed=self.seed, save_plots=False)
        train_view = analysis_view(dm.train_dataset)
        train = embed_dataset(pl_module, train_view, picker.evaluator.subset_indices(len(train_view)), batch_size=128)
        val_view = analysis_view(dm.val_dataset)
        val = embed_dataset(pl_module, val_view, list(range(len(val_view))), batch_size=128)
        heads = pl_module.wsc_head_weights()
        primary = pl_module.wsc_primary_task
        dependence = {}
        if isinstance(dm, SyntheticUltrasoundDataModule):  # the counterfactual renders built-in anatomy only
            options = dm.dataset_options
            was_training = pl_module.training
            pl_module.eval()
            for column in ("scanner", "hospital"):
                dependence[column] = counterfactual_dependence(
                    lambda x: class_probabilities(pl_module(x)[primary]), column, n=self.counterfactual_n,
                    image_size=options["image_size"], num_scanners=options["num_scanners"],
                    num_hospitals=options["num_hospitals"], normalization=options["normalization"],
                    in_channels=options["in_channels"], seed=10_000 + self.seed)
            pl_module.train(was_training)
        self.artifact = {
            "primary": primary,
            "head_mode": str(pl_module.hparams.head_mode),
            "train_embeddings": train.embeddings.cpu(),
            "train_targets": {k: v.cpu() for k, v in train.targets.items()},
            "val_embeddings": val.embeddings.cpu(),
            "val_targets": {k: v.cpu() for k, v in val.targets.items()},
            "heads": {k: h.weight.detach().cpu().to(torch.float64) for k, h in heads.items()},
            "rows": {k: list(h.row_names) for k, h in heads.items()},
            "dependence": dependence,
        }


def run_name(data: str, strength: float, head_mode: str, seed: int) -> str:
    """The file stem of one run's artifact."""
    return f"{data}_s{strength:g}_{head_mode}_seed{seed}"


def train_run(data: str, strength: float, head_mode: str, seed: int, workdir: Path) -> dict[str, Any]:
    """Train one calibration run and return its artifact (also saved as ``<workdir>/<name>.pt``)."""
    name = run_name(data, strength, head_mode, seed)
    path = workdir / f"{name}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    metadata = SYNTHETIC_METADATA if data == "synthetic" else FASHION_METADATA
    out = workdir / name
    # overwrite: a run interrupted before its artifact was saved left a partial directory; this run replaces it
    cfg = compose_train_config(out, [*metadata, *RUN_OVERRIDES, f"seed={seed}", f"data.shortcut_strength={strength}",
                                     f"model.head_mode={head_mode}", "overwrite=true"])
    capture = Capture(seed)
    start = time.perf_counter()
    result = train(cfg, extra_callbacks=[capture])
    del result
    artifact = {**capture.artifact, "data": data, "shortcut_strength": strength, "seed": seed,
                "train_seconds": time.perf_counter() - start}
    torch.save(artifact, path)
    shutil.rmtree(out, ignore_errors=True)
    return artifact


def verdict_rows(artifact: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (protocol, metadata task) of one run: the default analysis's verdict, its parts and the candidates.

    The analysis is the callback's (default :class:`AnalysisSettings`, the gate on the callback's fixed rows of the
    validation split); its parts (permutation, deconfounded, metadata-blind primary) are kept one by one. Candidate
    nulls compared beside them (``wsca_lightning.wsc.null``): the covariance null, the within-label (stratified)
    permutation null and the score dependence test.
    """
    from wsca_lightning.wsc import AnalysisSettings, analyze_embeddings, split_subset
    from wsca_lightning.wsc.engine import task_seed
    from wsca_lightning.wsc.null import covariance_null, permutation_null, score_dependence_test

    settings = AnalysisSettings(seed=artifact["seed"])
    picker = WeightSpaceCorrelation(seed=artifact["seed"], save_plots=False)
    primary = artifact["primary"]
    targets, heads = artifact["train_targets"], artifact["heads"]
    tasks = [t for t in heads if t not in (primary, "bmi")]  # bmi (the gate's negative control) is in no scenario
    gate_rows = torch.tensor(picker.evaluator.holdout_indices(artifact["val_embeddings"].shape[0]))
    embeddings = artifact["train_embeddings"]
    y = targets[primary]
    fit_idx, _ = split_subset(embeddings.shape[0], settings.holdout_fraction, settings.seed)
    scores = (embeddings.double() - embeddings.double().mean(0)) @ heads[primary].T
    scores = scores - scores.mean(dim=1, keepdim=True)
    out = []
    for protocol in ("heads", "probe_refit"):
        analysis = analyze_embeddings(
            embeddings, heads[primary], {t: targets[t] for t in tasks}, {t: heads[t].shape[0] for t in tasks},
            head_weights={t: heads[t] for t in tasks} if protocol == "heads" else None, primary_labels=y,
            settings=settings, holdout_embeddings=artifact["val_embeddings"][gate_rows],
            holdout_labels={t: artifact["val_targets"][t][gate_rows] for t in tasks})
        projection = analysis.projection
        features = projection.project_embeddings(embeddings)
        primary_k = projection.project_weights(heads[primary])
        for name, task in analysis.tasks.items():
            observed = task.correlation.summary.max_abs
            seed = task_seed(settings.seed, name)
            stratified = permutation_null(features[fit_idx], targets[name][fit_idx], primary_k, heads[name].shape[0],
                                          seed=seed, strata=y[fit_idx], l2=settings.l2, max_iter=settings.max_iter,
                                          tol=settings.tol)
            stratified_p = stratified.p if protocol == "probe_refit" else \
                (1 + int((stratified.null >= observed).sum())) / (stratified.null.numel() + 1)
            candidates = {
                **task.test.parts,
                "stratified": stratified_p,
                "covariance": covariance_null(observed, primary_k, projection.eigenvalues[:projection.k],
                                              task.observed_weight.shape[0], seed=seed + 2).p,
                "score_dependence": score_dependence_test(scores, targets[name], y, seed=seed + 5).p,
            }
            out.append({
                "data": artifact["data"], "shortcut_strength": artifact["shortcut_strength"],
                "head_mode": artifact["head_mode"], "protocol": protocol, "seed": artifact["seed"], "task": name,
                "max_abs": observed, "p": task.test.p, "effect": task.test.effect, "notes": list(task.test.notes),
                "effect_ci": list(task.test.effect_ci), "interpretable": task.interpretable,
                "probe_auroc": task.probe.auroc, "probe_split": task.probe.split,
                "significant": bool(task.interpretable and task.test.p is not None and task.test.p < 0.05),
                "candidates": candidates,
                "dependence": artifact["dependence"].get(name, {}).get("tv"),
                "flip_rate": artifact["dependence"].get(name, {}).get("flip_rate"),
            })
    return out
