"""Measure where the attribution of the risk head's shared direction with the hospital, and of each image's own
risk decision (the control), falls, per run of the ``marker_shortcut`` sweep: the share of absolute attribution on
each analysed image's own burnt-in marker, against the marker's share of the image (its area), for each gradient
method.

    python experiments/marker_shortcut/measure.py <sweep dir> [--out <dir>] [--methods gradient_x_input ...]

For every run (``<sweep dir>/<n>/`` with ``checkpoints/last.ckpt``) and method it runs ``wsca-analyze`` in this
process on the run's last checkpoint, with the run's own data config and seed (so the analysis subset is the
callback's), the ``heads`` protocol (the trained hospital head, as in training), no null (the verdict is the
training callback's, read from the run's ``wsc_summary.json``) and ``wsc.attribution.tasks=[hospital]`` (attributed
whatever its verdict, so that runs trained without the shortcut are measured too). It prints a Markdown table and
writes ``<out>/marker_fraction.json``. Runs that have finished training (``wsc/wsc_over_epochs.png`` written) are
measured; each run's record is kept in ``<out>/<run>/record.json``, so a rerun measures only the runs not yet
measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from wsca_lightning.attribution import region_fraction, region_share
from wsca_lightning.cli.analyze import analyze
from wsca_lightning.cli.train import compose_train_config
from wsca_lightning.data.scanner import hospital_marker_masks
from wsca_lightning.summary import verdict

TASK = "hospital"


def run_config(run: Path) -> DictConfig:
    """The run's composed config, its ``data.seed`` resolved to the run's seed (the data node alone has no root to
    resolve ``${seed}`` against)."""
    run_cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    run_cfg.data.seed = int(run_cfg.seed)
    return run_cfg


def run_order(path: Path) -> int | str:
    """Sort key of a sweep's run directories: ``2`` before ``10``."""
    return int(path.name) if path.name.isdigit() else path.name


def analyze_run(run: Path, target: Path, overrides: list[str]) -> dict:
    """``wsca-analyze`` (in this process) on the run's last checkpoint with the run's own data config and seed, so
    that the analysis subset is the training callback's; ``overrides`` of the ``analyze`` config; output under
    ``target``."""
    run_cfg = run_config(run)
    cfg = compose_train_config(target, [f"checkpoint={run / 'checkpoints' / 'last.ckpt'}", f"seed={int(run_cfg.seed)}",
                                        *overrides], config_name="analyze")
    with open_dict(cfg):
        cfg.data = run_cfg.data
    return analyze(cfg)


def measure_run(run: Path, out: Path, methods: list[str], steps: int, max_images: int) -> dict:
    """One run's verdict (from training) and, per method, its marker fraction and timing."""
    run_cfg = run_config(run)
    data = run_cfg.data
    summary = json.loads((run / "wsc" / "wsc_summary.json").read_text())
    task = summary["tasks"][TASK]
    record = {"run": run.name, "mode": run_cfg.data.subset.mode, "seed": int(run_cfg.seed),
              "epoch": summary["epoch"], "verdict": verdict(task), "test_p": task["test"]["p"],
              "max_abs": task["max_abs"], "methods": {}}
    for method in methods:
        target = out / run.name / method
        start = time.perf_counter()
        analyze_run(run, target, [
            "wsc.protocol=heads", "wsc.num_permutations=0", f"wsc.attribution.tasks=[{TASK}]",
            f"wsc.attribution.method={method}", f"wsc.attribution.steps={steps}",
            f"wsc.attribution.max_images={max_images}"])
        wall = time.perf_counter() - start
        maps = np.load(target / "wsc" / "attribution" / f"{TASK}.npz")
        info = json.loads((target / "wsc" / "attribution" / f"{TASK}.json").read_text())
        labels = torch.from_numpy(maps["labels"])
        h, w = maps["attributions"].shape[1:]
        masks = hospital_marker_masks(int(data.num_hospitals), h, w)[labels]  # each image's own marker
        share = region_share(masks)
        record["methods"][method] = {"marker_area_share": float(share.mean()), "n_images": int(len(labels)),
                                     "seconds_per_image": info["seconds_per_image"],
                                     "decision_seconds_per_image": info["decision_seconds"] / len(labels),
                                     "direction_share": info["share"], "analyze_seconds": wall}
        for prefix, key in (("", "attributions"), ("decision_", "decision_attributions")):
            fraction = region_fraction(torch.from_numpy(maps[key]), masks)
            record["methods"][method].update({
                f"{prefix}fraction": float(fraction.mean()),
                f"{prefix}concentration": float(fraction.mean() / share.mean()),
                f"{prefix}concentration_per_image_median": float((fraction / share).median())})
    return record


def per_run_records(sweep: Path, out: Path, record_name: str, measure: Callable[[Path], dict]) -> list[dict]:
    """``measure(run)`` for every finished run of the sweep (``wsc/wsc_over_epochs.png`` written), in run order; each
    record is kept in ``<out>/<run>/<record_name>``, so a rerun measures only the runs not yet measured."""
    runs = sorted((p for p in sweep.iterdir() if (p / "wsc" / "wsc_over_epochs.png").exists()), key=run_order)
    records = []
    for run in runs:
        kept = out / run.name / record_name
        if not kept.exists():
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps(measure(run), indent=2))
        records.append(json.loads(kept.read_text()))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: <sweep>/marker_measure")
    parser.add_argument("--methods", nargs="+", default=["gradient_x_input", "integrated_gradients"])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--max-images", type=int, default=64)
    args = parser.parse_args()
    out = args.out or args.sweep / "marker_measure"
    records = per_run_records(args.sweep, out, "record.json",
                              lambda run: measure_run(run, out, args.methods, args.steps, args.max_images))
    out.mkdir(parents=True, exist_ok=True)
    (out / "marker_fraction.json").write_text(json.dumps(records, indent=2))
    print("concentration = mean fraction of |attribution| on the image's own marker / the marker's area share")
    head = "| training set | seed | hospital verdict (p) | " + " | ".join(
        f"{m}: shared direction | {m}: primary decision" for m in args.methods) + " |"
    print(head)
    print("|" + "---|" * (3 + 2 * len(args.methods)))
    for r in records:
        cells = [f"**{r['methods'][m][prefix + 'concentration']:.1f}x**" for m in args.methods
                 for prefix in ("", "decision_")]
        print(f"| {r['mode']} | {r['seed']} | {r['verdict']} ({r['test_p']:.3f}) | " + " | ".join(cells) + " |")
    for mode in sorted({r["mode"] for r in records}):
        group = [r for r in records if r["mode"] == mode]
        cells = [f"mean {np.mean([r['methods'][m][prefix + 'concentration'] for r in group]):.1f}x"
                 for m in args.methods for prefix in ("", "decision_")]
        print(f"| {mode} | mean of {len(group)} | | " + " | ".join(cells) + " |")
    for m in args.methods:
        per_image = [r["methods"][m]["seconds_per_image"] for r in records]
        print(f"{m}: {np.mean(per_image) * 1000:.1f} ms per image (mean over runs)")


if __name__ == "__main__":
    main()
