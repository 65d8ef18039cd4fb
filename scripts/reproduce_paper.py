"""The paper's grid: {resnet18, vgg11} x {cifar10, cifar100} x freeze (0), (1), (1,2), (1,2,3) x
2 seeds, on the whole datasets, with the paper's pretraining and unlearning recipes.

    accelerate launch scripts/reproduce_paper.py --data-dir ~/data
    accelerate launch scripts/reproduce_paper.py --data-dir ~/data --preset default   # ours
    python scripts/reproduce_paper.py --data-dir ~/data --dry-run    # print the commands only

One run folder per (dataset, arch) under --runs-dir (runs/paper/cifar10-resnet18, ...), each
filled by scripts/unlearn.py (called in this process, one after the other): it pretrains
what is missing, skips finished (configuration, seed) pairs and resumes an interrupted one, so
rerunning this command after a failure or a kill continues where it stopped. Options after
`--` go to every scripts/unlearn.py call unchanged (e.g. -- --mixed-precision bf16).
"""

# ruff: noqa: E402  (imports follow the sys.path line that finds kga_fast from a checkout)
from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from accelerate import PartialState

from kga_fast.errors import UserError, cli_main
from kga_fast.evaluation.report import format_table
from kga_fast.results import load_results

DATASETS = ("cifar10", "cifar100")
ARCHS = ("resnet18", "vgg11")
FREEZES = ("0", "1", "1,2", "1,2,3")


def _unlearn_main():
    """scripts/unlearn.py's main(), loaded from its file (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "kga_unlearn_script", Path(__file__).with_name("unlearn.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", required=True, help="folder holding cifar-10-batches-py/ and cifar-100-python/"
    )
    parser.add_argument("--download", action="store_true", help="download CIFAR into --data-dir (online)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/paper"), help="where the run folders go")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset of the grid")
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated subset of the grid")
    parser.add_argument("--seeds", default="0,1", help="unlearning seeds")
    parser.add_argument("--preset", default="paper", help="unlearning preset (paper or default)")
    parser.add_argument("--pretrain-preset", default="paper", help="pretraining preset (paper or default)")
    parser.add_argument("--dry-run", action="store_true", help="print the scripts/unlearn.py commands only")
    return parser.parse_args(argv), extra


def commands(args: argparse.Namespace, extra: list[str]) -> list[list[str]]:
    """One scripts/unlearn.py argument list per (dataset, arch)."""
    datasets, archs = args.datasets.split(","), args.archs.split(",")
    for name, chosen, allowed in (("dataset", datasets, DATASETS), ("arch", archs, ARCHS)):
        bad = [c for c in chosen if c not in allowed]
        if bad:
            raise UserError(f"{name} {bad[0]!r} is not in the paper's grid ({', '.join(allowed)})")
    out = []
    for dataset in datasets:
        for arch in archs:
            out.append(
                [
                    "--dataset",
                    dataset,
                    "--arch",
                    arch,
                    "--data-dir",
                    args.data_dir,
                    "--full",
                    "--run-dir",
                    str(args.runs_dir / f"{dataset}-{arch}"),
                    "--preset",
                    args.preset,
                    "--pretrain-preset",
                    args.pretrain_preset,
                    "--seeds",
                    args.seeds,
                    "--freeze",
                    *FREEZES,
                    *(["--download"] if args.download else []),
                    *extra,
                ]
            )
    return out


@cli_main
def main(argv=None) -> None:
    args, extra = parse_args(argv)
    grid = commands(args, extra)
    if args.dry_run:
        for argv_one in grid:
            print(shlex.join(["accelerate", "launch", "scripts/unlearn.py", *argv_one]))
        return
    unlearn_main = _unlearn_main()
    for i, argv_one in enumerate(grid, 1):
        print(f"\n=== [{i}/{len(grid)}] scripts/unlearn.py {shlex.join(argv_one)}", flush=True)
        try:
            unlearn_main(argv_one)
        except SystemExit as e:  # unlearn.py's cli_main exits 2 on a user error: stop here too
            if e.code:
                raise
    if not PartialState().is_main_process:
        return
    print("\n=== the paper's grid (test split D_t; forget split in each report.md)")
    for argv_one in grid:
        run_dir = Path(argv_one[argv_one.index("--run-dir") + 1])
        print(f"\n{run_dir}:\n{format_table(load_results(run_dir), 'test')}\nreport: {run_dir / 'report.md'}")


if __name__ == "__main__":
    main()
