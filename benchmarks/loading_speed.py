"""Is image loading a bottleneck? DataLoader images/s of ``data=manifest`` vs the model's training images/s.

Writes ``--images`` ultrasound-sized 8-bit PNGs (default 300 x 400, a speckle pattern) and a manifest into a
temporary folder, then measures side by side in one run:

* ``loader``: images/s of the training DataLoader of :class:`ManifestDataModule` at ``--size`` (decode with Pillow,
  antialiased resize, augmentation, normalisation), for each ``--workers`` setting, one full pass after a warm-up
  batch; and with ``cache_images`` (0 workers), the second pass, where only augmentation and normalisation remain;
* ``model``: images/s of SonoNet training steps (forward, backward, AdamW step) of :class:`MultiHeadModule` at the
  same size and batch size, on random inputs, after a warm-up step.

The ratio loader / model says how much head-room decoding leaves: >= 2 means the model, not the loader, sets the
pace. Usage: ``python benchmarks/loading_speed.py [--images 256] [--size 224 288] [--workers 0 2]
[--backbone sononet16]``. Writes ``benchmarks/results/loading_speed.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsca_lightning.data import ManifestDataModule
from wsca_lightning.models import MultiHeadModule

RESULTS = Path(__file__).parent / "results" / "loading_speed.json"


def write_images(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` speckled 300 x 400 8-bit PNGs, 3 classes, 2 images per patient, and their manifest."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True)
    lines = ["image,label,patient,scanner"]
    for i in range(count):
        speckle = rng.rayleigh(40.0, size=(300, 400)).clip(0, 255).astype(np.uint8)
        Image.fromarray(speckle).save(folder / "img" / f"{i:05d}.png")
        lines.append(f"img/{i:05d}.png,{'abc'[i % 3]},p{i // 2},{'XYZ'[(i // 7) % 3]}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def loader_images_per_second(manifest: Path, root: Path, size: list[int], workers: int, batch: int,
                             cache: bool = False) -> float:
    """Training-loader images/s over one pass; with ``cache``, the second pass (images already decoded)."""
    datamodule = ManifestDataModule(
        manifest=str(manifest), root=str(root), target={"column": "label", "type": "categorical"},
        metadata={"scanner": {"column": "scanner", "type": "categorical"}}, group_column="patient",
        val_fraction=0.1, test_fraction=0.0, image_size=size, batch_size=batch, num_workers=workers, augment=True,
        check_images=False, cache_images=cache,
    )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    if cache:
        for _ in loader:  # the first pass fills the cache
            pass
    iterator = iter(loader)
    next(iterator)  # warm-up: worker start-up is paid once per run, not per image
    start, images = time.perf_counter(), 0
    for batch_data in iterator:
        images += batch_data["image"].shape[0]
    return images / (time.perf_counter() - start)


def model_images_per_second(backbone: str, size: list[int], batch: int, steps: int) -> float:
    tasks = [{"name": "label", "kind": "categorical", "class_names": ["a", "b", "c"]},
             {"name": "scanner", "kind": "categorical", "class_names": ["X", "Y", "Z"]}]
    module = MultiHeadModule({"name": backbone, "in_channels": 1}, tasks, [1, *size])
    optimizer = module.configure_optimizers()
    images = torch.randn(batch, 1, *size)
    targets = {"label": torch.randint(0, 3, (batch,)), "scanner": torch.randint(0, 3, (batch,))}

    def step() -> None:
        logits = module(images)
        loss = sum(torch.nn.functional.cross_entropy(logits[t], targets[t]) for t in targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    module.train()
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, nargs=2, default=[224, 288])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--backbone", default="sononet16")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="wsca_loading_"))
    try:
        manifest = write_images(folder, args.images)
        loader = {w: loader_images_per_second(manifest, folder, args.size, w, args.batch) for w in args.workers}
        cached = loader_images_per_second(manifest, folder, args.size, 0, args.batch, cache=True)
        model = model_images_per_second(args.backbone, args.size, args.batch, args.steps)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results = {
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/loading_speed.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "settings": {"images": args.images, "size": args.size, "batch": args.batch, "backbone": args.backbone,
                     "source_size": [300, 400]},
        "loader_images_per_second": {str(w): v for w, v in loader.items()},
        "loader_images_per_second_cached_0_workers": cached,
        "model_train_images_per_second": model,
        "ratio_loader_over_model": {str(w): v / model for w, v in loader.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"model ({args.backbone}, {args.size[0]}x{args.size[1]}, batch {args.batch}): {model:.1f} train images/s")
    for w, v in loader.items():
        print(f"loader, {w} workers: {v:.1f} images/s -> ratio {v / model:.1f}")
    print(f"loader, 0 workers, cache_images (second pass): {cached:.1f} images/s -> ratio {cached / model:.1f}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
