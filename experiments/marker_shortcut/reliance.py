"""Does a run's risk head rely on the burnt-in hospital marker? A counterfactual, beside the attribution measured by
``measure.py``: each analysed image's marker square is swapped with the (empty) marker square of every other
hospital, and the risk head's output is compared before and after.

    python experiments/marker_shortcut/reliance.py <sweep dir> [--measured <measure.py's out dir>]

Per run (``<sweep dir>/<n>/`` with ``checkpoints/last.ckpt``): the images are the ones ``measure.py`` attributed
(``<measured>/<n>/<method>/wsc/attribution/hospital.npz``'s ``indices`` in the run's training data, read
without augmentation), so both measures see the same images. It prints, per run, the mean absolute change of the
softmax probability of each image's true risk class and the share of predictions that change, and writes
``<measured>/marker_reliance.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from hydra.utils import instantiate

from measure import run_config, run_order  # this script's directory
from wsca_lightning.data.scanner import hospital_marker_masks
from wsca_lightning.epoch_analysis.evaluator import analysis_view
from wsca_lightning.posthoc import load_checkpoint_module


def swap_regions(images: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """``images`` ``(N, C, H, W)`` with the pixels of the two equally sized boolean regions ``(H, W)`` exchanged."""
    out = images.clone()
    out[:, :, first], out[:, :, second] = images[:, :, second], images[:, :, first]
    return out


def reliance(run: Path, indices: list[int]) -> dict:
    data = run_config(run).data
    datamodule = instantiate(data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = analysis_view(datamodule.train_dataset)
    module, _ = load_checkpoint_module(run / "checkpoints" / "last.ckpt")
    module.eval()
    items = [dataset[i] for i in indices]
    images = torch.stack([item["image"] for item in items]).float()
    risk = torch.stack([torch.as_tensor(item["targets"]["risk"]) for item in items]).long()
    hospital = torch.stack([torch.as_tensor(item["targets"]["hospital"]) for item in items]).long()
    masks = hospital_marker_masks(int(data.num_hospitals), *images.shape[-2:]).bool()
    changes, flips = [], []
    with torch.no_grad():
        before = module(images)["risk"].softmax(dim=1)
        for i in range(len(images)):
            for other in range(len(masks)):
                if other == int(hospital[i]):
                    continue
                after = module(swap_regions(images[i:i + 1], masks[hospital[i]], masks[other]))["risk"].softmax(dim=1)
                changes.append(float((after[0, risk[i]] - before[i, risk[i]]).abs()))
                flips.append(bool(after[0].argmax() != before[i].argmax()))
    return {"mean_abs_change_true_class_probability": float(np.mean(changes)), "flip_rate": float(np.mean(flips)),
            "n_images": len(images), "n_swaps": len(changes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--measured", type=Path, default=None,
                        help="measure.py's --out (default <sweep>/marker_measure)")
    args = parser.parse_args()
    measured = args.measured or args.sweep / "marker_measure"
    records = []
    for run_measure in sorted((p for p in measured.iterdir() if (p / "record.json").exists()), key=run_order):
        record = json.loads((run_measure / "record.json").read_text())
        method = next(iter(record["methods"]))  # every method attributed the same images
        maps = np.load(run_measure / method / "wsc" / "attribution" / "hospital.npz")
        result = {"run": record["run"], "mode": record["mode"], "seed": record["seed"],
                  **reliance(args.sweep / record["run"], maps["indices"].tolist())}
        records.append(result)
        print(f"| {result['mode']} | {result['seed']} | {result['mean_abs_change_true_class_probability']:.3f} | "
              f"{result['flip_rate']:.3f} |", flush=True)
    (measured / "marker_reliance.json").write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
