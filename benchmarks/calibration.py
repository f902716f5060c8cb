"""Calibration suite: the shortcut verdict's false-positive rate and power, measured over many small trainings.

Scenarios (each run is its own seed and its own data draw; see docs/method.md, "Calibration"):

- H0 runs, built-in data, ``shortcut_strength = 0``, 40 seeds. Three null hypotheses are tested in each run:
  H0a the scanner (strongly drawn into the image, independent of the label in training), H0b ``referral`` (drawn
  from the risk label, never rendered: associated with the label, unusable by any head), H0c the hospital marker
  (a few corner pixels, never associated with the label).
- H0d: Fashion-MNIST garments through the simulated scanners, ``shortcut_strength = 0``, 40 seeds (the scanner);
  skipped with a message when the Fashion-MNIST files are not installed.
- H1 runs, built-in data, ``shortcut_strength`` 0.5, 0.8 and 1.0, 20 seeds each: the scanner is associated with
  the label in training and the model takes it as a shortcut (its counterfactual dependence says how much).
  ``referral`` and the hospital stay null in these runs and add to H0b and H0c.

Each built-in scenario is trained twice, with ``model.head_mode=multitask`` (the default ``wsca-train``) and with
``model.head_mode=probe_online`` (the paper's probe protocol: the backbone learns the primary task alone); the
Fashion-MNIST runs are multitask only. Every run is read with both protocols (``heads``: the run's own metadata
heads; ``probe_refit``: probes refitted on its embeddings).
Every run is SonoNet-16 on 800 training images of 32x48 for 3 epochs (AdamW lr 2e-3, cosine), 300 validation
images; the analysis uses the callback's default settings (subset 512, B = 100, ...).

Usage: ``python benchmarks/calibration.py [--jobs 2] [--workdir DIR] [--quick]``. Trained runs are kept in
``--workdir`` (default ``benchmarks/.calibration_runs``, git-ignored) as one file each, so a rerun only recomputes the
verdicts. Writes ``benchmarks/results/calibration.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from calibration_runs import RUN_OVERRIDES, run_name  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "calibration.json"
DEFAULT_WORKDIR = Path(__file__).parent / ".calibration_runs"
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
HEAD_MODES = ("multitask", "probe_online")
#: (data, shortcut_strength, first seed, number of seeds, head modes)
PLAN: tuple[tuple[str, float, int, int, tuple[str, ...]], ...] = (
    ("synthetic", 0.0, 0, 40, HEAD_MODES),
    ("synthetic", 0.5, 1000, 20, HEAD_MODES),
    ("synthetic", 0.8, 2000, 20, HEAD_MODES),
    ("synthetic", 1.0, 3000, 20, HEAD_MODES),
    # multitask only (both protocols are read from each run): the suite's time budget
    ("fashion", 0.0, 5000, 40, ("multitask",)),
)


def fashion_available() -> bool:
    return os.path.isdir(FASHION_ROOT) and any(name.startswith("train-images") for name in os.listdir(FASHION_ROOT))


def planned_runs(quick: bool) -> list[tuple[str, float, str, int]]:
    """Every (data, strength, head mode, seed), seeds outermost so a partial suite covers every scenario."""
    plan = [p for p in PLAN if p[0] != "fashion" or fashion_available()]
    longest = max(p[3] for p in plan)
    runs = []
    for i in range(longest):
        for data, strength, first, count, modes in plan:
            if i < (min(count, 4) if quick else count):
                runs.extend((data, strength, mode, first + i) for mode in modes)
    return runs


def run_path(workdir: Path, data: str, strength: float, mode: str, seed: int) -> Path:
    """Where a trained run's artifact lives (:func:`calibration_runs.run_name`)."""
    return workdir / f"{run_name(data, strength, mode, seed)}.pt"


def _train_one(job: tuple[str, float, str, int, str]) -> str:
    import torch

    torch.set_num_threads(1)
    from calibration_runs import train_run

    data, strength, mode, seed, workdir = job
    train_run(data, strength, mode, seed, Path(workdir))
    return f"{data} s={strength:g} {mode} seed {seed}"


def train_all(runs: list[tuple[str, float, str, int]], workdir: Path, jobs: int) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    todo = [(*r, str(workdir)) for r in runs if not run_path(workdir, *r).exists()]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already trained in {workdir}", flush=True)
    start = time.perf_counter()
    # one fresh process per run (Hydra and Lightning keep global state), `jobs` at a time, one thread each
    with mp.get_context("spawn").Pool(jobs, maxtasksperchild=1) as pool:
        for done, name in enumerate(pool.imap_unordered(_train_one, todo), 1):
            print(f"[{done}/{len(todo)} {time.perf_counter() - start:7.0f} s] {name}", flush=True)


#: Cached verdicts (``<run>.verdicts.json``) are reused only under this version: bump it with any change to the
#: analysis (``wsca_lightning.wsc``) or to ``calibration_runs.verdict_rows`` that can change a number.
VERDICT_VERSION = "2"


def _verdicts_one(path: str) -> list[dict[str, Any]]:
    """The verdict rows of one trained run, cached beside it (``<run>.verdicts.json``) per analysis version."""
    import torch

    torch.set_num_threads(1)
    from calibration_runs import verdict_rows

    cache = Path(path).with_suffix(".verdicts.json")
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("version") == VERDICT_VERSION:
            return saved["rows"]
    rows = verdict_rows(torch.load(path, weights_only=False))
    cache.write_text(json.dumps({"version": VERDICT_VERSION, "rows": rows}))
    return rows


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for ``k`` successes in ``n`` trials (bisection on the binomial tails)."""
    alpha = 1.0 - level

    def tail_at_least(p: float) -> float:  # P(X >= k | p)
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))

    def solve(f: Any, target: float, increasing: bool) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if (f(mid) < target) == increasing:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else solve(tail_at_least, alpha / 2, True)
    upper = 1.0 if k == n else solve(lambda p: 1 - tail_at_least(p) + math.comb(n, k) * p**k * (1 - p) ** (n - k),
                                      alpha / 2, False)
    return lower, upper


#: Scenario -> (data, strengths, task, hypothesis); every run holds all its tasks.
SCENARIOS: dict[str, tuple[str, tuple[float, ...], str, str]] = {
    "H0a scanner encoded, unassociated": ("synthetic", (0.0,), "scanner", "H0"),
    "H0b referral: label-associated, not in the image": ("synthetic", (0.0, 0.5, 0.8, 1.0), "referral", "H0"),
    "H0c hospital marker, never associated": ("synthetic", (0.0, 0.5, 0.8, 1.0), "hospital", "H0"),
    "H0d Fashion-MNIST scanner, unassociated": ("fashion", (0.0,), "scanner", "H0"),
    "H1 scanner shortcut 0.5": ("synthetic", (0.5,), "scanner", "H1"),
    "H1 scanner shortcut 0.8": ("synthetic", (0.8,), "scanner", "H1"),
    "H1 scanner shortcut 1.0": ("synthetic", (1.0,), "scanner", "H1"),
}
#: (head mode, protocol) read from the runs; the first two are the headline pairings.
READINGS: tuple[tuple[str, str], ...] = (("multitask", "heads"), ("probe_online", "probe_refit"),
                                          ("multitask", "probe_refit"), ("probe_online", "heads"))
#: Rules compared on the same runs: each is "significant" when every listed part's p is below 0.05 (parts that do
#: not apply, e.g. deconfounded with empty cells, are skipped). The first is the engine's calibrated rule.
CANDIDATE_RULES: dict[str, tuple[str, ...]] = {
    "calibrated": ("permutation", "deconfounded", "blind"),
    "permutation (the old rule)": ("permutation",),
    "deconfounded": ("deconfounded",),
    "blind": ("blind",),
    "permutation & deconfounded": ("permutation", "deconfounded"),
    "stratified permutation": ("stratified",),
    "covariance directions": ("covariance",),
    "score dependence": ("score_dependence",),
}


def _rule_significant(row: dict[str, Any], parts: tuple[str, ...]) -> bool:
    values = [row["candidates"][p] for p in parts if row["candidates"].get(p) is not None]
    return bool(row["interpretable"] and values and max(values) < 0.05)


def _spearman(x: list[float], y: list[float]) -> float | None:
    import torch

    if len(x) < 3:
        return None
    rx = torch.tensor(x, dtype=torch.float64).argsort().argsort().double()
    ry = torch.tensor(y, dtype=torch.float64).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates of "significant" per scenario and reading (with Clopper-Pearson 95 % intervals), for the calibrated
    verdict and every candidate rule, and the verdict's agreement with the counterfactual dependence."""
    table = []
    for scenario, (data, strengths, task, hypothesis) in SCENARIOS.items():
        for mode, protocol in READINGS:
            picked = [r for r in rows if r["data"] == data and r["shortcut_strength"] in strengths
                      and r["task"] == task and r["head_mode"] == mode and r["protocol"] == protocol]
            if not picked:
                continue
            k = sum(r["significant"] for r in picked)
            deps = [r["dependence"] for r in picked if r["dependence"] is not None]
            table.append({
                "scenario": scenario, "hypothesis": hypothesis, "head_mode": mode, "protocol": protocol,
                "n": len(picked), "significant": k, "rate": k / len(picked),
                "ci": list(clopper_pearson(k, len(picked))),
                "mean_max_abs": sum(r["max_abs"] for r in picked) / len(picked),
                "mean_effect": sum(r["effect"] for r in picked) / len(picked),
                "interpretable": sum(r["interpretable"] for r in picked),
                "mean_dependence": sum(deps) / len(deps) if deps else None,
                "candidates": {name: sum(_rule_significant(r, parts) for r in picked) / len(picked)
                               for name, parts in CANDIDATE_RULES.items()},
            })
    agreement = []
    for mode, protocol in READINGS:
        scanner = [r for r in rows if r["data"] == "synthetic" and r["task"] == "scanner" and r["head_mode"] == mode
                   and r["protocol"] == protocol and r["dependence"] is not None]
        if not scanner:
            continue
        balanced = sorted(r["dependence"] for r in scanner if r["shortcut_strength"] == 0.0)
        level = balanced[-1] if balanced else None  # the most dependent model trained without a shortcut
        low = [r for r in scanner if level is not None and r["dependence"] <= level]
        k = sum(r["significant"] for r in low)
        agreement.append({
            "head_mode": mode, "protocol": protocol, "n": len(scanner),
            "spearman_effect_vs_dependence": _spearman([r["effect"] for r in scanner],
                                                       [r["dependence"] for r in scanner]),
            "spearman_max_abs_vs_dependence": _spearman([r["max_abs"] for r in scanner],
                                                        [r["dependence"] for r in scanner]),
            "balanced_dependence_max": level,
            "n_at_balanced_level": len(low), "significant_at_balanced_level": k,
            "false_positive_rate_at_balanced_level": k / len(low) if low else None,
            "ci": list(clopper_pearson(k, len(low))) if low else None,
        })
    return {"table": table, "agreement": agreement}


def print_table(result: dict[str, Any]) -> None:
    print(f"{'scenario':<50} {'head mode':<13} {'protocol':<12} {'n':>3} {'significant':>11} {'95% CI':>15} "
          f"{'old rule':>8} {'dependence':>10}")
    for row in result["table"]:
        dep = "-" if row["mean_dependence"] is None else f"{row['mean_dependence']:.3f}"
        print(f"{row['scenario']:<50} {row['head_mode']:<13} {row['protocol']:<12} {row['n']:>3} "
              f"{row['rate']:>11.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}] "
              f"{row['candidates']['permutation (the old rule)']:>8.3f} {dep:>10}")
    for a in result["agreement"]:
        rho = a["spearman_effect_vs_dependence"]
        level = a["balanced_dependence_max"]
        print(f"{a['head_mode']}/{a['protocol']}: Spearman(effect, dependence) "
              f"{'-' if rho is None else format(rho, '.2f')}; significant among runs at the balanced models' "
              f"dependence (<= {'-' if level is None else format(level, '.3f')}): "
              f"{a['significant_at_balanced_level']}/{a['n_at_balanced_level']}")


def markdown_table(result: dict[str, Any]) -> str:
    """The calibration table of docs/method.md: per scenario and reading, the rate of "significant" [Clopper-Pearson 95 %] (n), and the
    permutation part alone (the old rule) beside it."""
    readings = [r for r in READINGS if any((t["head_mode"], t["protocol"]) == r for t in result["table"])]
    head = "| scenario | " + " | ".join(f"{m} runs, `{p}`" for m, p in readings) + " |"
    lines = [head, "|---" * (len(readings) + 1) + "|"]
    for scenario in SCENARIOS:
        cells = []
        for mode, protocol in readings:
            row = next((t for t in result["table"] if t["scenario"] == scenario and t["head_mode"] == mode
                        and t["protocol"] == protocol), None)
            cells.append("-" if row is None else
                         f"**{row['rate']:.3f}** [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}] (n={row['n']}); "
                         f"old {row['candidates']['permutation (the old rule)']:.3f}")
        if any(c != "-" for c in cells):
            lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs trained side by side (one thread each)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--quick", action="store_true", help="4 seeds per scenario (a smoke test, not a result)")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--verdicts-only", action="store_true", help="compute verdicts of the runs trained so far")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not fashion_available():
        print(f"H0d skipped: no Fashion-MNIST files under {FASHION_ROOT} (apt-get install dataset-fashion-mnist)")
    runs = planned_runs(args.quick)
    if args.verdicts_only:
        runs = [r for r in runs if run_path(args.workdir, *r).exists()]
    else:
        train_all(runs, args.workdir, args.jobs)
    if args.train_only:
        return
    start = time.perf_counter()
    paths = [str(run_path(args.workdir, *r)) for r in runs]
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        rows = [row for part in pool.imap(_verdicts_one, paths) for row in part]
    result = aggregate(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/calibration.py " + " ".join(sys.argv[1:]),
        "runs": len(runs), "fashion_mnist": fashion_available(),
        "run_settings": list(RUN_OVERRIDES), "verdict_seconds": time.perf_counter() - start,
        **result, "markdown": markdown_table(result), "rows": rows,
    }, indent=1) + "\n")
    print_table(result)
    print(markdown_table(result))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
