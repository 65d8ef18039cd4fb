"""Rebuild report.md and report.png of a run folder from its results.json, and print the tables.

python scripts/report.py runs/fashion-mnist-resnet18
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kga_fast.errors import UserError, cli_main  # noqa: E402
from kga_fast.evaluation.report import write_report  # noqa: E402
from kga_fast.results import RESULTS_FILE  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help=f"run folder holding {RESULTS_FILE}")
    return parser.parse_args(argv)


@cli_main
def main(argv=None) -> None:
    args = parse_args(argv)
    if not (args.run_dir / RESULTS_FILE).is_file():
        raise UserError(
            f"{args.run_dir / RESULTS_FILE} not found: run scripts/unlearn.py on this run folder first"
        )
    md, png = write_report(args.run_dir)
    print(md.read_text(), end="")
    print(f"\nwrote {md} and {png}")


if __name__ == "__main__":
    main()
