"""The paper's report of a run folder, built from its results.json (kga_fast.results).

report.md is assembled by the builders in SECTIONS (add one to add a section: it reads the
records, `runs`, and the whole results.json, `results`); report.png shows the same numbers.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

from kga_fast.errors import UserError
from kga_fast.evaluation.methods_report import methods_section, pool_section
from kga_fast.files import atomic_path, write_bytes_atomic
from kga_fast.freeze import freeze_label
from kga_fast.results import RESULTS_FILE, load_results

SPLITS = {"test": "test (D_t)", "forget": "forget (D_f)"}
COLUMNS = [  # (header, metric path in a summary row, decimals)
    ("JSD (Ad,A*)", "jsd/Ad,A*", 3),
    ("JSD (A*,Ar)", "jsd/A*,Ar", 3),
    ("JSD (Ad,Ar)", "jsd/Ad,Ar", 3),  # the reference: A* moved towards A_r where (A*,Ar) is below
    ("F1 Ad", "f1/Ad", 3),
    ("F1 A*", "f1/A*", 3),
    ("F1 Ar", "f1/Ar", 3),
    ("Acc Ad", "accuracy/Ad", 3),
    ("Acc A*", "accuracy/A*", 3),
    ("Acc Ar", "accuracy/Ar", 3),
]
STD_NOTE = "mean ± sample standard deviation (n - 1) over seeds (± 0.000 with one seed)"


def _leaves(tree: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict by path: {"test/jsd/Ad,A*": 0.03, ...}."""
    out: dict[str, float] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}/"))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def _variant(record: dict) -> str:
    """The config without the per-seed fields: runs that differ in it are separate rows."""
    config = {k: v for k, v in record["config"].items() if k not in ("seed", "freeze")}
    return json.dumps(config, sort_keys=True, default=str)


def _group_key(r: dict) -> tuple:
    method = r.get("method")
    return (
        r["dataset"],
        r["arch"],
        r["preset"],
        tuple(r["freeze"]),
        method is not None,
        str(method),
        _variant(r),
    )


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (dataset, arch, preset, freeze, method, config): mean and std over seeds
    of every numeric eval leaf ("test/f1/A*") and of "unlearn_seconds"."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(_group_key(r), []).append(r)
    rows = []
    for _, members in sorted(groups.items()):
        first = members[0]
        values: dict[str, list[float]] = {}
        for r in members:
            for path, v in {
                **_leaves(r["eval"]),
                "unlearn_seconds": float(r["unlearn_seconds"]),
            }.items():
                values.setdefault(path, []).append(v)
        rows.append(
            {
                "dataset": first["dataset"],
                "arch": first["arch"],
                "preset": first["preset"],
                "freeze": list(first["freeze"]),
                "method": first.get("method"),
                "config": json.loads(_variant(first)),
                "seeds": sorted(r["seed"] for r in members),
                "mean": {p: statistics.fmean(v) for p, v in values.items()},
                "std": {p: statistics.stdev(v) if len(v) > 1 else 0.0 for p, v in values.items()},
            }
        )
    _label_rows(rows)
    return rows


def _label_rows(rows: list[dict]) -> None:
    """`resnet18^(1,2)`, plus the method, plus the config fields that tell otherwise equal rows apart."""
    for row in rows:
        row["label"] = f"{row['arch']}^{freeze_label(tuple(row['freeze']))}"
        if row["method"] is not None:
            row["label"] += f" {row['method']}"
    bases = [(r["dataset"], r["preset"], r["label"]) for r in rows]
    for row, base in zip(rows, bases, strict=True):
        twins = [o for o, b in zip(rows, bases, strict=True) if b == base]
        keys = sorted({k for o in twins for k in o["config"]})
        differing = [k for k in keys if len({json.dumps(o["config"].get(k), default=str) for o in twins}) > 1]
        if differing:
            row["label"] += " [" + ", ".join(f"{k}={row['config'].get(k)}" for k in differing) + "]"


def _runs(results: dict | list[dict]) -> list[dict]:
    return results["runs"] if isinstance(results, dict) else results


def _cell(row: dict, path: str, decimals: int) -> str:
    if path not in row["mean"]:
        return "-"
    return f"{row['mean'][path]:.{decimals}f} ± {row['std'][path]:.{decimals}f}"


def format_table(results: dict | list[dict], split: str = "test") -> str:
    """The paper's Tables 2-5 for one split: a markdown table, one row per configuration."""
    rows = summarize(_runs(results))
    several = len({(r["dataset"], r["preset"]) for r in rows}) > 1
    lines = [
        "| Model | " + " | ".join(h for h, _, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for row in rows:
        label = f"{row['dataset']} {row['preset']} {row['label']}" if several else row["label"]
        cells = [_cell(row, f"{split}/{path}", d) for _, path, d in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} sec"


def format_time_table(results: dict | list[dict]) -> str:
    """Table 6: mean unlearning time per configuration, one column per dataset."""
    rows = summarize(_runs(results))
    datasets = sorted({r["dataset"] for r in rows})
    labels = list(dict.fromkeys(f"{r['label']} ({r['preset']})" for r in rows))
    lines = ["| Model | " + " | ".join(datasets) + " |", "|---" * (len(datasets) + 1) + "|"]
    for label in labels:
        cells = []
        for d in datasets:
            row = next(
                (r for r in rows if r["dataset"] == d and f"{r['label']} ({r['preset']})" == label),
                None,
            )
            t, sd = (row["mean"]["unlearn_seconds"], row["std"]["unlearn_seconds"]) if row else (None, None)
            cells.append("-" if row is None else f"{_minutes(t)} ({t:.1f} ± {sd:.1f} s)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _title(runs: list[dict], results: dict | None = None) -> str:
    def values(key: str) -> str:
        return ", ".join(str(v) for v in sorted({r[key] for r in runs}, key=str))

    lines = [
        f"# KGA unlearning report: {values('dataset')}, {values('arch')}",
        "",
        f"Preset {values('preset')}; seeds {values('seed')}; {len(runs)} unlearning runs.",
        "",
    ]
    for (dataset, arch), members in sorted(_by(runs, ("dataset", "arch")).items()):
        accs = []
        for split in SPLITS:
            for model in ("Ad", "Ar"):
                v = [
                    r["eval"][split]["accuracy"][model]
                    for r in members
                    if model in r["eval"].get(split, {}).get("accuracy", {})
                ]
                if v:
                    accs.append(f"{model} {statistics.fmean(v):.3f} on {split}")
        lines.append(f"- {dataset} / {arch}: accuracy of the pretrained models: {', '.join(accs)}.")
    return "\n".join(lines)


def _by(runs: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


def _tables(runs: list[dict], results: dict | None = None) -> str:
    parts = []
    for (dataset,), members in sorted(_by(runs, ("dataset",)).items()):
        for split, name in SPLITS.items():
            caption = f"*{dataset}, {name}: {STD_NOTE}; JSD in nats.*"
            parts += [f"## {dataset}: {name}", "", format_table(members, split), "", caption, ""]
    return "\n".join(parts).rstrip()


def _times(runs: list[dict], results: dict | None = None) -> str:
    return (
        "## Unlearning time (Table 6)\n\n"
        + format_time_table(runs)
        + f"\n\n*Wall-clock time of unlearning (`unlearn_seconds`): {STD_NOTE}.*"
    )


def _how_to_read(runs: list[dict], results: dict | None = None) -> str:
    return (
        "## How to read these tables\n\n"
        "A_d is the original model (trained on D_f and D_r), A* the unlearned one, A_r the model retrained "
        "on D_r alone: the gold standard of unlearning. Good unlearning makes A* behave like A_r: on the "
        "forget split D_f its accuracy and F1 fall from A_d's towards A_r's (not to zero: A_r generalizes to "
        "D_f as it does to unseen data), and on the test split D_t they stay close to A_r's. JSD is the mean "
        "per-sample Jensen-Shannon divergence of the predicted distributions (nats, at most ln 2 = 0.693): "
        "JSD(A*, A_r) should be small, lower than JSD(A_d, A*), and lower than JSD(A_d, A_r) (the "
        "reference column: where JSD(A*, A_r) is above it, A* ended further from A_r than A_d was). "
        "The original paper's JSD values are "
        "not comparable: its code computed a different quantity (see the README)."
    )


def _without_retraining(runs: list[dict], results: dict | None = None) -> str:
    """A plain word where A_r was not trained (--no-retrain, a deletion request)."""
    if all(r.get("retrain", True) for r in runs):
        return ""
    return (
        "## Without retraining\n\n"
        "A_r was not trained for some of these runs (`--no-retrain`): their A_r columns, "
        "JSD (A*,Ar) and JSD (Ad,Ar) were not computed and show `-`. What can be known without "
        "A_r is here: A* against A_d (JSD (Ad,A*), accuracy and F1), A*'s accuracy on D_f against "
        "its accuracy on D_t (after good unlearning D_f looks like unseen data), the "
        "membership-inference attacks on A* and A_d, time and memory (results.json)."
    )


SECTIONS: list[Callable[..., str]] = [  # each: (runs, results) -> markdown, "" for nothing
    _title,
    _without_retraining,
    _tables,
    _times,
    methods_section,
    pool_section,
    _how_to_read,
]


def _figure(rows: list[dict], path: Path) -> None:
    """Grouped bars per configuration: accuracy of A_d, A*, A_r on D_t and D_f, and the two JSDs."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg to PNG

    datasets = sorted({r["dataset"] for r in rows})
    panels = [
        (f"accuracy, {n}", [(m, f"{s}/accuracy/{m}") for m in ("Ad", "A*", "Ar")]) for s, n in SPLITS.items()
    ]
    panels.append(("JSD (nats)", [(f"{p} {s}", f"{s}/jsd/{p}") for s in SPLITS for p in ("Ad,A*", "A*,Ar")]))
    fig = Figure(figsize=(5 * len(panels), 3.5 * len(datasets)))
    axes = fig.subplots(len(datasets), len(panels), squeeze=False)
    for i, dataset in enumerate(datasets):
        mine = [r for r in rows if r["dataset"] == dataset]
        for ax, (title, series) in zip(axes[i], panels, strict=True):
            width = 0.8 / len(series)
            for k, (name, metric) in enumerate(series):
                xs = [j + (k - (len(series) - 1) / 2) * width for j in range(len(mine))]
                means = [r["mean"].get(metric, float("nan")) for r in mine]
                stds = [r["std"].get(metric, 0.0) for r in mine]
                ax.bar(xs, means, width, yerr=stds, capsize=2, label=name)
            several = len({r["preset"] for r in mine}) > 1
            ticks = [f"{r['label']} {r['preset']}" if several else r["label"] for r in mine]
            ax.set_xticks(range(len(mine)), ticks, rotation=30, ha="right", fontsize=8)
            if title.startswith("accuracy"):
                ax.set_ylim(0, 1)
            ax.set_title(f"{dataset}: {title}", fontsize=10)
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """report.md and report.png of `run_dir` from its results.json (both replaced atomically)."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    runs = results["runs"]
    if not runs:
        raise UserError(
            f"no results in {run_dir / RESULTS_FILE}: run scripts/unlearn.py on this run folder first"
        )
    md, png = run_dir / "report.md", run_dir / "report.png"
    text = "\n\n".join(t for t in (section(runs, results) for section in SECTIONS) if t) + "\n"
    _figure(summarize(runs), png)
    write_bytes_atomic(md, text.encode())
    return md, png
