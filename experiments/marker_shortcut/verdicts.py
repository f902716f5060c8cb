"""The hospital verdict of each run of the ``marker_shortcut`` sweep read a second way: with probes refitted on the
final embeddings (``wsca-analyze``'s default protocol, ``probe_refit``, and its default null), beside the training
callback's reading with the model's own (online probe) heads.

    python experiments/marker_shortcut/verdicts.py <sweep dir> [--out <dir>]

Per run (``<sweep dir>/<n>/`` with ``checkpoints/last.ckpt``) it runs ``wsca-analyze`` with the run's own data
config and seed (``measure.py``'s ``analyze_run``), no attribution, and prints the hospital task's p, the parts
of the shortcut test and max |WSC| under both readings. Writes ``<out>/marker_verdicts.json`` (default
``<sweep>/marker_measure``); each run's record is kept in ``<out>/<n>/verdicts.json``, so a rerun reads only the
runs not yet read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from measure import TASK, analyze_run, per_run_records, run_config
from wsca_lightning.summary import verdict


def reading(summary: dict) -> dict:
    task = summary["tasks"][TASK]
    return {"protocol": summary["protocol"], "verdict": verdict(task), "p": task["test"]["p"],
            "parts": task["test"]["parts"], "max_abs": task["max_abs"]}


def read_run(run: Path, out: Path) -> dict:
    trained = json.loads((run / "wsc" / "wsc_summary.json").read_text())
    refit = analyze_run(run, out / run.name / "probe_refit", ["wsc.attribution=null"])["summary"]
    run_cfg = run_config(run)
    return {"run": run.name, "mode": run_cfg.data.subset.mode, "seed": int(run_cfg.seed),
            "callback": reading(trained), "probe_refit": reading(refit)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: <sweep>/marker_measure")
    args = parser.parse_args()
    out = args.out or args.sweep / "marker_measure"
    records = per_run_records(args.sweep, out, "verdicts.json", lambda run: read_run(run, out))
    out.mkdir(parents=True, exist_ok=True)
    (out / "marker_verdicts.json").write_text(json.dumps(records, indent=2))
    print("| training set | seed | callback (its heads): verdict (p) | probe_refit: verdict (p) | probe_refit parts: "
          "permutation / deconfounded / blind | max abs WSC, callback / probe_refit |")
    print("|---|---|---|---|---|---|")
    for r in records:
        heads, refit = r["callback"], r["probe_refit"]
        parts = " / ".join(f"{refit['parts'][k]:.3f}" for k in ("permutation", "deconfounded", "blind"))
        print(f"| {r['mode']} | {r['seed']} | {heads['verdict']} ({heads['p']:.3f}) | {refit['verdict']} "
              f"({refit['p']:.3f}) | {parts} | {heads['max_abs']:.3f} / {refit['max_abs']:.3f} |")


if __name__ == "__main__":
    main()
