"""``wsca-report DIR``: an HTML report, tables and figures comparing the WSC results of many runs.

A thin shell around :func:`wsca_lightning.report.build_report`; reads files only (no torch, no training code).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from wsca_lightning.report import ReportError, build_report, format_result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="wsca-report",
        description="Compare the WSC results of wsca-train runs: groups runs by their overrides (read as Hydra reads "
                    "them; seeds are replicates) and writes report.html, figures/*.png and tables/*.{csv,md}. Runs "
                    "that cannot be read are skipped, and values that cannot be used (NaN, a string where a number "
                    "belongs, ...) are left out; both are listed with the file and field, and every statistic "
                    "gives the number of runs it used.",
    )
    parser.add_argument("dir", help="a run directory, a multirun directory, or a directory of multiruns "
                                    "(every subdirectory holding wsc/wsc_summary.json is a run)")
    parser.add_argument("--out", default=None, help="output directory (default: DIR/report)")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="significance level of the permutation p-values (default: 0.05)")
    args = parser.parse_args(argv)
    if not 0.0 < args.alpha < 1.0:
        parser.error(f"--alpha must be in (0, 1), got {args.alpha}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 when at least one run was read; 2 for a missing directory or one without readable runs."""
    args = parse_args(argv)
    try:
        result = build_report(args.dir, args.out, alpha=args.alpha)
    except ReportError as err:
        print(f"wsca-report: error: {err}", file=sys.stderr)
        return 2
    print(format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
