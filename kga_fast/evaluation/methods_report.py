"""The report's tables of methods: KGA against the baselines on one footing, with the MIA audit,
and (with a retrain pool, kga_fast.evaluation.pool) every method against the pool's band and floor.

    report.SECTIONS.append(methods_section)   # report.md gains "## Methods and membership inference"
    report.SECTIONS.append(pool_section)      # and "## Against the retrain pool"

Reads the records of results.json: "method" (absent: kga), "eval" ({split: {"accuracy": {Ad, A*,
Ar}, "jsd": {"A*,Ar"}}} with splits forget, retain, test), "mia" ({Ad, A*, Ar: {attack: value}},
kga_fast.evaluation.audit), "unlearn_seconds" and "retrain_seconds" (A_r's training time). One row per
(method, freeze, preset, config), mean ± sample std over seeds; two reference rows on top:
A_d before unlearning and A_r (the "retrain" method: records of that method fold into it).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable

from kga_fast.freeze import freeze_label
from kga_fast.results import POOL_KEY

# The same names as kga_fast.methods.METHODS and kga_fast.evaluation.audit.ATTACKS (checked by the tests),
# kept here so that building a report imports neither torch training code nor sklearn.
METHOD_ORDER = (
    "kga",
    "retrain",
    "finetune",
    "gradient_ascent",
    "random_label",
    "salun",
    "scrub",
    "neggrad_plus",
    "ct",
    "msg",
    "fcs",
    "shrink_perturb",
    "fresh_distill",
)
ATTACKS = ("loss_lr_cv_acc", "mia_efficacy_confidence", "entropy_lr_forget_member_rate")
MIN_MODELS = 16  # kga_fast.evaluation.forgetting.MIN_MODELS (checked by the tests): F is computed from N = 16

# A column's value for one record and model: "A*" in a method row, "Ad" / "Ar" in a reference row.
Getter = Callable[[dict, str], float | None]


def _get(record: dict, *path: str) -> float | None:
    node = record
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def _eval(split: str, metric: str) -> Getter:
    """A record's eval[split][metric][key]: key a model ("A*") or, for "jsd", a pair ("A*,Ar")."""
    return lambda r, key: _get(r, "eval", split, metric, key)


def _accuracy(split: str) -> Getter:
    return _eval(split, "accuracy")


def _attack(name: str) -> Getter:
    return lambda r, m: _get(r, "mia", m, name)


def _jsd_to_ar(split: str) -> Getter:
    # A_r to itself is 0; A_d's row shows the reference JSD(A_d, A_r) (records before it: "-").
    pairs = {"A*": "A*,Ar", "Ad": "Ad,Ar"}
    return lambda r, m: 0.0 if m == "Ar" else _get(r, "eval", split, "jsd", pairs[m])


def _seconds(r: dict, m: str) -> float | None:
    return {"A*": _get(r, "unlearn_seconds"), "Ar": _get(r, "retrain_seconds")}.get(m)


def _with_helpers(r: dict, m: str) -> float | None:
    """KGA's whole cost: unlearning plus training A_f and A_n (other methods need no helpers)."""
    t = _seconds(r, m)
    if t is None or m != "A*" or _method(r) != "kga":
        return t
    helpers = r.get("helper_seconds")  # None, or a value None, where a helper's time is unknown
    known = isinstance(helpers, dict) and all(isinstance(v, int | float) for v in helpers.values())
    return t + sum(helpers.values()) if known else None


def _relative(seconds: Getter) -> Getter:
    def ratio(r: dict, m: str) -> float | None:
        t, ref = seconds(r, m), _get(r, "retrain_seconds")
        return t / ref if t is not None and ref else None

    return ratio


COLUMNS: list[tuple[str, Getter, int]] = [  # (header, value, decimals)
    ("Acc D_f", _accuracy("forget"), 3),
    ("Acc D_r", _accuracy("retain"), 3),
    ("Acc D_t", _accuracy("test"), 3),
    ("JSD(·,A_r) D_f", _jsd_to_ar("forget"), 4),
    ("JSD(·,A_r) D_t", _jsd_to_ar("test"), 4),
    *[(name, _attack(name), 3) for name in ATTACKS],
    ("time (s)", _seconds, 1),
    ("time / retrain", _relative(_seconds), 3),
    ("time with helpers / retrain", _relative(_with_helpers), 3),
]


def _cell(records: list[dict], get: Getter, model: str, decimals: int) -> str:
    values = [v for v in (get(r, model) for r in records) if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{decimals}f} ± {std:.{decimals}f}"


def _method(r: dict) -> str:
    return r.get("method") or "kga"


def _differences(config: dict, twins: list[dict]) -> str:
    """The fields of `config` on which rows of one label differ: "lr 0.0001, stop gap"."""
    fields = sorted({f for t in twins for f in t if any(t.get(f) != u.get(f) for u in twins)})
    return ", ".join(f"{f} {config.get(f, '-')}" for f in fields)


def _method_rows(runs: list[dict]) -> list[tuple[str, list[dict]]]:
    """(label, records) per (method, freeze, preset, config), in METHOD_ORDER; the records of
    the "retrain" method fold into the reference rows. Two rows of one label name the config
    fields they differ in."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if _method(r) != "retrain":
            config = json.dumps(r.get("config"), sort_keys=True, default=str)
            groups.setdefault((_method(r), tuple(r["freeze"]), r["preset"], config), []).append(r)
    keys = sorted(groups, key=lambda k: (_order(k[0]), *k))
    labels = [f"{m}^{freeze_label(f)} ({p})" for m, f, p, _ in keys]
    rows = []
    for key, label in zip(keys, labels, strict=True):
        twins = [json.loads(k[3]) or {} for k, lab in zip(keys, labels, strict=True) if lab == label]
        extra = f" [{_differences(json.loads(key[3]) or {}, twins)}]" if len(twins) > 1 else ""
        rows.append((label + extra, groups[key]))
    return rows


def _order(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def format_methods_table(results: dict | list[dict]) -> str:
    """One markdown table of methods for records of one dataset and arch (see the module doc)."""
    runs = results["runs"] if isinstance(results, dict) else results
    header = "| Method | " + " | ".join(h for h, _, _ in COLUMNS) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 1) + "|"]
    for label, model in (("original (A_d)", "Ad"), ("retrain (A_r)", "Ar")):
        cells = [_cell(runs, g, model, d) for _, g, d in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for label, records in _method_rows(runs):
        cells = [_cell(records, g, "A*", d) for _, g, d in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


NOTE = (
    "*Mean ± sample std over seeds. Accuracy on the forget (D_f), retain (D_r) and test (D_t) "
    "splits; JSD: mean per-sample Jensen-Shannon divergence to A_r (nats). Membership inference "
    "(kga_fast.evaluation.audit): loss_lr_cv_acc, the unlearning challenge kit's simple_mia (logistic "
    "regression on the loss, D_f vs D_t balanced, 10-fold shuffle-split CV accuracy; 0.5 = no "
    "membership signal); mia_efficacy_confidence, SalUn's MIA-efficacy (SVC on true-class "
    "confidence, D_r vs D_t, share of D_f called non-member); entropy_lr_forget_member_rate, the "
    "bad-teacher / SCRUB attack (logistic regression on the prediction entropy, D_r vs D_t, share "
    "of D_f called member). For each, the target is A_r's value. Time: unlearning wall-clock; "
    "A_r's is its training time, and time / retrain divides by it; time with helpers adds, for "
    "KGA, the training of its helper models A_f and A_n. The A_d row's JSD is JSD(A_d, A_r): "
    "a method moved towards A_r only where its JSD is below it.*"
)


def methods_section(runs: list[dict], results: dict | None = None) -> str:
    """A report.SECTIONS builder: the methods table per dataset and arch, or "" when no record
    has an MIA audit or a method other than KGA (the paper's tables already say it all)."""
    if not any("mia" in r or _method(r) != "kga" for r in runs):
        return ""
    parts = []
    by: dict[tuple, list[dict]] = {}
    for r in runs:
        by.setdefault((r["dataset"], r["arch"]), []).append(r)
    for (dataset, arch), members in sorted(by.items()):
        parts += [f"## Methods and membership inference: {dataset}, {arch}", ""]
        parts += [format_methods_table(members), "", NOTE, ""]
    return "\n".join(parts).rstrip()


# The pool table (results.json "retrains", kga_fast.evaluation.pool): (header, band path, value getter).
POOL_METRICS: list[tuple[str, tuple[str, ...], Getter]] = [
    *[
        (f"Acc {n}", (s, "accuracy"), _accuracy(s))
        for s, n in (("forget", "D_f"), ("retain", "D_r"), ("test", "D_t"))
    ],
    *[(f"F1 {n}", (s, "f1"), _eval(s, "f1")) for s, n in (("forget", "D_f"), ("test", "D_t"))],
    *[(name, ("mia", name), _attack(name)) for name in ATTACKS],
]
POOL_JSD = (("forget", "D_f"), ("test", "D_t"))


def verdict(value: float, band: dict) -> str:
    """Where `value` sits against a band {"min", "mean", "max"}: inside, above or below."""
    return "above" if value > band["max"] else "below" if value < band["min"] else "inside"


def _mean(records: list[dict], get: Getter, model: str) -> float | None:
    values = [v for v in (get(r, model) for r in records) if v is not None]
    return statistics.fmean(values) if values else None


def _pool_row(label: str, records: list[dict], model: str, pool: dict) -> str:
    cells = []
    for _, path, get in POOL_METRICS:
        value, band = _mean(records, get, model), pool["band"].get(path[0], {}).get(path[1])
        cells.append("-" if value is None or band is None else f"{value:.3f} {verdict(value, band)}")
    pair = "A*,retrains" if model == "A*" else "Ad,retrains"
    for split, _ in POOL_JSD:
        value = _mean(records, _eval(split, "jsd"), pair)
        floor = pool["floor"][split]
        cells.append(
            "-" if value is None else f"{value:.4f} ({value / floor:.2f}x)" if floor else f"{value:.4f}"
        )
    quality = records[0].get("forgetting_quality") if model == "A*" and records else None
    quality = quality if quality and quality["N"] >= MIN_MODELS else None  # (older records: any N)
    cells.append(f"{quality['F']:.3f} ({quality['ceiling']:.3f}), N {quality['N']}" if quality else "-")
    return f"| {label} | " + " | ".join(cells) + " |"


def pool_section(runs: list[dict], results: dict | None = None) -> str:
    """A report.SECTIONS builder: every method beside the band of the retrain pool, with a
    verdict, and its mean JSD to the pool against the floor; "" without a pool (--retrains 1)."""
    pool = (results or {}).get(POOL_KEY)
    if not pool:
        return ""
    k = pool["size"]
    header = [h for h, _, _ in POOL_METRICS] + [f"JSD to pool {n} (x floor)" for _, n in POOL_JSD]
    header.append("F (ceiling)")
    lines = ["| Method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    band_cells = []
    for _, path, _ in POOL_METRICS:
        band = pool["band"].get(path[0], {}).get(path[1])
        band_cells.append("-" if band is None else f"{band['min']:.3f}-{band['max']:.3f}")
    band_cells += [f"floor {pool['floor'][s]:.4f}" for s, _ in POOL_JSD] + ["-"]
    lines.append(f"| retrain band ({k} retrains) | " + " | ".join(band_cells) + " |")
    lines.append(_pool_row("original (A_d)", runs, "Ad", pool))
    for label, records in _method_rows(runs):
        lines.append(_pool_row(label, records, "A*", pool))
    floor = ", ".join(f"{pool['floor'][s]:.4f} on {n}" for s, n in POOL_JSD)
    return "\n".join(
        [
            f"## Against the retrain pool: {k} retrains of D_r",
            "",
            f"Two retrains of the same D_r (pretraining seeds {', '.join(map(str, pool['seeds']))}) differ by a "
            f"mean JSD of {floor}: the floor, the mean over all pairs. The band is the range over the "
            "retrains; each cell is a method's mean over seeds and where it sits against the band (inside, "
            "above, below). JSD to pool: the mean JSD to each retrain, and its ratio to the floor (a "
            "retrain outside the pool scores about 1x; A_d's row is the reference). Records made before the pool "
            "show `-`.",
            "",
            *lines,
            "",
            "F: the NeurIPS 2023 unlearning challenge's forgetting quality (kga_fast.evaluation.forgetting) of a row's N "
            "unlearning seeds against N retrains, and in brackets its ceiling, N other retrains against the "
            f"same N (1: indistinguishable from retraining at this N). It is computed from N = {MIN_MODELS} "
            "seeds (`--seeds`) with at least 2N retrains (`--retrains`), and shows `-` otherwise: with fewer "
            "models its scale moves too much with N.",
        ]
    )
