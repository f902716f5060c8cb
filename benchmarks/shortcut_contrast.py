"""WSC(primary, scanner) of the default run with and without the induced scanner shortcut, over seeds.

Runs the default `wsca-train` configuration (SonoNet-16, 64x80 built-in data, 5 epochs) for every
(shortcut_strength, seed) pair in-process and tabulates the last epoch's max |WSC| and mean |WSC| against the scanner
head, the scanner head's validation AUROC and the primary task's validation AUROC.

Usage: ``python benchmarks/shortcut_contrast.py [--seeds 0 1 2] [--strengths 0 1]``.
Writes ``benchmarks/results/shortcut_contrast.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from wsca_lightning.cli.train import train

RESULTS = Path(__file__).parent / "results" / "shortcut_contrast.json"


def run(strength: float, seed: int, workdir: Path) -> dict:
    out = workdir / f"s{strength}_seed{seed}"
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="wsca_lightning.conf"):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=[
            f"paths.output_dir={out}", f"hydra.run.dir={out}", f"seed={seed}",
            f"data.shortcut_strength={strength}", "trainer.enable_progress_bar=false"])
    HydraConfig().set_config(cfg)
    start = time.perf_counter()
    result = train(cfg)
    scanner = result["summary"]["tasks"]["scanner"]
    return {
        "shortcut_strength": strength,
        "seed": seed,
        "scanner_max_abs": scanner["max_abs"],
        "scanner_mean_abs": scanner["mean_abs"],
        "scanner_val_auroc": result["metrics"]["val/scanner/auroc"],
        "primary_val_auroc": result["metrics"]["val/risk/auroc"],
        "primary_val_balanced_accuracy": result["metrics"]["val/risk/balanced_accuracy"],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 1.0])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="wsca_shortcut_"))
    rows = [run(s, seed, workdir) for s in args.strengths for seed in args.seeds]
    shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"date": dt.date.today().isoformat(),
                                   "command": "python benchmarks/shortcut_contrast.py " + " ".join(sys.argv[1:]),
                                   "runs": rows}, indent=2) + "\n")
    print(f"{'strength':>8} {'seed':>4} {'max|WSC| scanner':>17} {'mean|WSC|':>10} {'scanner AUROC':>14} "
          f"{'risk AUROC':>11} {'risk bal.acc':>12}")
    for r in rows:
        print(f"{r['shortcut_strength']:>8.1f} {r['seed']:>4d} {r['scanner_max_abs']:>17.3f} "
              f"{r['scanner_mean_abs']:>10.3f} {r['scanner_val_auroc']:>14.3f} {r['primary_val_auroc']:>11.3f} "
              f"{r['primary_val_balanced_accuracy']:>12.3f}")
    for s in args.strengths:
        values = [r["scanner_max_abs"] for r in rows if r["shortcut_strength"] == s]
        print(f"strength {s}: max|WSC| mean {statistics.mean(values):.3f} over {len(values)} seeds")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
