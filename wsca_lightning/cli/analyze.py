"""``wsca-analyze``: post-hoc WSC of a ``wsca-train`` checkpoint on a data config (a thin Hydra shell).

Loads the checkpoint with ``torch.load(weights_only=True)``, rebuilds the data, checks that the data's label spaces
are the ones the model's heads were trained on, embeds the fixed subset of the chosen split and runs the same
analysis as the training callback (its settings live under ``wsc``). Writes ``wsc_summary.json``, ``wsc_table.csv``
and ``wsc_heatmap.png`` under ``wsc.dirpath`` (default ``<run dir>/wsc``), and, with ``wsc.attribution`` (on by
default here), ``attribution/<task>.{png,json,npz}`` for each significant task (or each of
``wsc.attribution.tasks``): which pixels carry the direction the primary head shares with it.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from wsca_lightning.cli.common import CONFIG_PATH, instantiate_node, launch, report_or_exit
from wsca_lightning.epoch_analysis.evaluator import EpochEvaluator, attribution_tasks
from wsca_lightning.epoch_analysis.outputs import write_attributions
from wsca_lightning.problems import ConfigError, Problem
from wsca_lightning.posthoc import load_checkpoint_module, write_analysis
from wsca_lightning.summary import format_summary, summary_header
from wsca_lightning.tasks import spec_differences

SPLITS = ("train", "val")


def analyze(cfg: DictConfig) -> dict[str, Any]:
    """Run the post-hoc analysis; returns ``{"summary", "paths"}``.

    Every problem is a ``ConfigError`` naming its key."""
    if cfg.get("split") not in SPLITS:
        raise ConfigError.at("split", f"must be one of {', '.join(SPLITS)}, got {cfg.get('split')!r}")
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError.at("checkpoint", "missing; pass checkpoint=<path to a wsca-train .ckpt>")
    # the cheap checks first: analysis settings, then the checkpoint, then the data (which may take a while). The
    # analysis settings are the training callback's (conf/callbacks/wsc.yaml): its constructor checks them all, and
    # its evaluator embeds and analyses here as it does at an epoch's end.
    callback = instantiate_node(cfg, "wsc", save_matrices=False)
    evaluator = getattr(callback, "evaluator", None)
    if not isinstance(evaluator, EpochEvaluator):
        raise ConfigError.at("wsc._target_", "must be wsca_lightning.callbacks.WeightSpaceCorrelation")
    module, ckpt = load_checkpoint_module(cfg.checkpoint)  # a CheckpointError is a ConfigError keyed checkpoint
    try:
        callback.check_module(module)
    except ConfigError as err:
        raise err.under("wsc") from err
    input_channels = module.hparams.input_shape[0]
    data_node = cfg.get("data")
    if OmegaConf.is_dict(data_node) and "in_channels" in data_node:
        with open_dict(cfg):
            cfg.data.in_channels = input_channels  # the data's channels are the ones the model was trained on
    datamodule = instantiate_node(cfg, "data")
    try:
        datamodule.setup("fit")
    except ConfigError as err:
        raise err.under("data") from err
    except ValueError as err:
        raise ConfigError.at("data", str(err)) from err
    problems = spec_differences(module.hparams.tasks, [s.to_dict() for s in datamodule.task_specs])
    if list(datamodule.input_shape) != list(module.hparams.input_shape):
        problems.append(f"input shape {list(datamodule.input_shape)} in the data, {list(module.hparams.input_shape)} "
                        "in the model (set data.image_size to the training size)")
    if problems:
        raise ConfigError(Problem("data", "does not match the checkpoint's heads; analyse with the data config the "
                                          "model was trained with:\n  " + "\n  ".join(problems)))
    dataset = datamodule.train_dataset if cfg.split == "train" else datamodule.val_dataset
    # the encodability gate needs data the backbone did not train on: the validation split (for split=val, the
    # subset's own held-out part already is)
    holdout = datamodule.val_dataset if cfg.split == "train" else None
    analysis, entry = evaluator.evaluate(module, dataset, holdout_dataset=holdout, progress=True)
    summary = {
        **summary_header(module.wsc_primary_task, evaluator.protocol, module.wsc_protocol),
        "checkpoint": str(cfg.checkpoint),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "split": cfg.split,
        **entry,
    }
    paths = write_analysis(summary, callback.dirpath or "wsc", plots=callback.save_plots,
                           title=f"WSC ({summary['protocol']}, k={summary['k']}), {cfg.split} split")
    settings = callback.attribution
    if settings is not None:
        primary = module.wsc_primary_task
        directions = evaluator.shared_directions(analysis, module.wsc_head_weights()[primary].weight,
                                                 attribution_tasks(entry, settings, callback.alarm.alpha))
        results = evaluator.attribute(module, dataset, directions, settings, progress=True)
        figures = write_attributions(results, callback.dirpath or "wsc", primary, examples=settings.examples,
                                     context={"checkpoint": str(cfg.checkpoint), "split": cfg.split,
                                              "classes": {t: list(entry["tasks"][t]["cols"]) for t in results}},
                                     plots=callback.save_plots)
        paths.update({f"attribution/{name}": path for name, path in figures.items()})
    return {"summary": summary, "paths": paths}


def format_result(result: dict[str, Any]) -> str:
    figures = [f"attribution figure: {path}" for key, path in result["paths"].items() if key.startswith("attribution/")]
    return "\n".join([f"WSC summary: {result['paths']['summary']}", *figures]) + "\n" + format_summary(
        result["summary"])


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="analyze")
def _hydra_main(cfg: DictConfig) -> None:
    report_or_exit(lambda: format_result(analyze(cfg)))


def main() -> None:
    launch(_hydra_main)


if __name__ == "__main__":
    main()
