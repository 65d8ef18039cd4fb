"""The paper's splits: D_f / D_r from the train set, D_n / D_t from the test set.

Drawn once per run folder from a seed and saved as `<run>/splits.json`, so that every later
step (pretraining, unlearning, evaluation, a resumed run) sees the very same indices. A rerun
on the same folder with other split options is refused instead of mixing two splits.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from kga_fast.errors import UserError
from kga_fast.files import write_json_atomic
from kga_fast.folder import read_forget_list

SPLITS_FILE = "splits.json"
# Independent random streams, so that e.g. changing new_fraction keeps the same D_f.
_TRAIN_SUBSET, _FORGET, _TEST_SUBSET, _NEW, _HELPERS = range(5)
# What the helper models A_f and A_n train on (the gaps KL(A* || A_f) on D_f and KL(A_d || A_n)
# on D_n are comparable only when A_f is to D_f what A_n is to D_n):
# - disjoint: A_f on D_f, A_n on D_n (the CNN paper);
# - shared: A_f on D_f + S, A_n on D_n + S, S a seeded slice of D_r of shared_fraction of the
#   train set (the original KGA code's sample_ratio, 0.05 in its README);
# - matched: A_f on a seeded subsample F of D_f of |D_n| images, so that A_f and A_n see sets
#   of one size under one schedule; KGA then aligns on F, the images A_f was trained on.
# - common: a base A_b trained on a seeded slice B of D_r (shared_fraction of the train set),
#   then A_f fine-tuned from it on F (as matched) and A_n on D_n, for the same steps: the gap
#   measures what each learned from its own images, not how well a model trained from scratch
#   on a few hundred images generalizes (issue 17's variant a; the original code fine-tunes
#   both from one pretrained DistilBERT).
HELPER_RECIPES = ("disjoint", "shared", "matched", "common")


@dataclass
class Splits:
    """Sorted indices into the original train set (forget, retain) and test set (new, test)."""

    dataset: str
    seed: int
    forget: list[int]  # D_f
    retain: list[int]  # D_r
    new: list[int]  # D_n
    test: list[int]  # D_t
    options: dict  # the split options that produced them, compared on reuse
    helper_forget: list[int] | None = None  # what A_f trains on from D_f (None: all of D_f)
    shared: list[int] = field(default_factory=list)  # S ⊂ D_r, in A_f's and A_n's sets
    base: list[int] = field(default_factory=list)  # B ⊂ D_r, A_b's set (helpers "common")


OPTIONAL = ("helper_forget", "shared", "base")
RECORD_ONLY = (
    "forget_index_file",
    "forget_list",
)  # where a request lay: its content decides  # absent from folders made before helper recipes


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _fraction(name: str, value: float) -> float:
    if not 0 < value < 1:
        raise UserError(f"{name} must be between 0 and 1 (exclusive), got {value}")
    return float(value)


def _subset(size: int, subset: int | None, name: str, rng: np.random.Generator) -> np.ndarray:
    """All indices 0..size-1, or a seeded random subset of `subset` of them."""
    if subset is None:
        return np.arange(size)
    if not 2 <= subset <= size:
        raise UserError(f"{name} must be between 2 and the set's size {size}, got {subset}")
    return np.sort(rng.choice(size, subset, replace=False))


def _split(pool: np.ndarray, fraction: float, rng: np.random.Generator, what: str):
    """A random `fraction` of pool, and the rest; both non-empty."""
    count = round(fraction * len(pool))
    if not 0 < count < len(pool):
        raise UserError(f"{what}: {fraction} of {len(pool)} items leaves one side empty")
    chosen = rng.permutation(pool)[:count]
    return chosen, np.setdiff1d(pool, chosen)


def read_index_file(path: str | Path, train_size: int) -> np.ndarray:
    """A deletion request: a .json list, a .npy array, or a text file with one index per line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"forget index file {path} does not exist")
    try:
        if path.suffix == ".json":
            values = json.loads(path.read_text())
        elif path.suffix == ".npy":
            values = np.load(path, allow_pickle=False).tolist()
        else:
            values = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            values = [int(v) for v in values]
    except (ValueError, OSError) as e:
        raise UserError(f"cannot read forget index file {path}: {e}") from None
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise UserError(f"forget index file {path} must hold a flat list of integer indices")
    if not values:
        raise UserError(f"forget index file {path} is empty")
    indices = np.asarray(values, dtype=np.int64)
    bad = indices[(indices < 0) | (indices >= train_size)]
    if len(bad):
        raise UserError(f"forget index {bad[0]} in {path} is outside the train set 0..{train_size - 1}")
    unique, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        raise UserError(f"forget index {unique[counts > 1][0]} appears twice in {path}")
    return unique


def _forget_retain(labels: np.ndarray, options: dict, seed: int, request: np.ndarray | None):
    """D_f and D_r as sorted arrays, following exactly one of the three forget modes."""
    pool = _subset(len(labels), options["train_subset"], "train_subset", _rng(seed, _TRAIN_SUBSET))
    if options["forget_classes"] is not None:
        missing = sorted(set(options["forget_classes"]) - set(np.unique(labels).tolist()))
        if missing:
            raise UserError(f"forget class {missing[0]} does not occur in the train set")
        in_classes = np.isin(labels[pool], options["forget_classes"])
        forget, retain = pool[in_classes], pool[~in_classes]
    elif request is not None:
        # A deletion request is honoured whole; train_subset then caps |D_f| + |D_r|.
        size = len(pool)
        if size <= len(request):
            raise UserError(f"train_subset {size} leaves no retain set beside {len(request)} forget indices")
        rest = np.setdiff1d(np.arange(len(labels)), request)
        forget, retain = request, _rng(seed, _TRAIN_SUBSET).permutation(rest)[: size - len(request)]
    else:
        forget, retain = _split(pool, options["forget_fraction"], _rng(seed, _FORGET), "forget_fraction")
    if len(retain) == 0:
        raise UserError("forgetting these classes leaves an empty retain set")
    if len(forget) == 0:
        raise UserError("none of the forget classes occurs in the train subset")
    return np.sort(forget), np.sort(retain)


def _check(splits: Splits, train_size: int, test_size: int) -> None:
    """Disjoint, in range, non-empty: what every user of the splits relies on."""
    for part, other, size in (("forget", "retain", train_size), ("new", "test", test_size)):
        a, b = getattr(splits, part), getattr(splits, other)
        if not a or not b or set(a) & set(b) or min(a + b) < 0 or max(a + b) >= size:
            raise UserError(f"splits {part}/{other} are empty, overlap or leave 0..{size - 1}")
    in_retain = set(splits.shared) | set(splits.base)
    if not set(splits.helper_forget or []) <= set(splits.forget) or not in_retain <= set(splits.retain):
        raise UserError(
            "splits: the helper models' sets must lie in D_f (helper_forget) and D_r (shared, base)"
        )


def _options(train_size: int, test_size: int, **given) -> dict:
    """The split options as saved in splits.json (validated, JSON-ready)."""
    classes, index_file = given["forget_classes"], given["forget_index_file"]
    forget_list = given.get("forget_list")
    if sum(x is not None for x in (classes, index_file, forget_list)) > 1:
        raise UserError("choose one of forget classes, a forget index file and a forget list")
    if classes is not None and (not classes or len(set(classes)) != len(classes)):
        raise UserError(f"forget classes {classes} must be a non-empty list without repeats")
    subsets = {}
    for name in ("train_subset", "test_subset"):
        value = given[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise UserError(f"{name} must be a whole number, got {value!r}")
        subsets[name] = int(value) if value is not None else None
    helpers = given.get("helpers", "disjoint")
    if helpers not in HELPER_RECIPES:
        raise UserError(f"unknown helper recipe {helpers!r}; choose one of {', '.join(HELPER_RECIPES)}")
    by_fraction = classes is None and index_file is None and forget_list is None
    fraction = _fraction("forget_fraction", given["forget_fraction"]) if by_fraction else None
    options = {
        "train_size": int(train_size),
        "test_size": int(test_size),
        "forget_fraction": fraction,
        "forget_classes": sorted(int(c) for c in classes) if classes is not None else None,
        # The request's content decides, not where the file lies: path kept for the record only.
        "forget_index_file": str(index_file) if index_file is not None else None,
        "forget_list": str(forget_list) if forget_list is not None else None,  # record only
        "forget_index_sha256": None,  # of the sorted indices, set by load_or_create_splits
        "new_fraction": _fraction("new_fraction", given["new_fraction"]),
        **subsets,
        "helpers": helpers,
        # The normalization asked for (None: the dataset's): every model of a folder uses one.
        "normalize": [list(v) for v in given["normalize"]] if given.get("normalize") else None,
    }
    if helpers in ("shared", "common"):
        options["shared_fraction"] = _fraction("shared_fraction", given.get("shared_fraction", 0.05))
    return options


def _helper_sets(
    forget: np.ndarray, retain: np.ndarray, n_new: int, train_size: int, options: dict, seed: int
) -> tuple[list[int] | None, list[int], list[int]]:
    """(F, S, B) for the helper recipe in options (see HELPER_RECIPES): sorted train indices."""
    rng = _rng(seed, _HELPERS)
    recipe = options["helpers"]
    helper_forget = None
    if recipe in ("matched", "common"):
        if len(forget) < n_new:
            raise UserError(f"helpers {recipe!r} needs |D_f| >= |D_n|, got {len(forget)} < {n_new}")
        helper_forget = np.sort(rng.choice(forget, n_new, replace=False)).tolist()
    if recipe not in ("shared", "common"):
        return helper_forget, [], []
    size = max(1, round(options["shared_fraction"] * train_size))
    if size >= len(retain):
        raise UserError(f"shared_fraction {options['shared_fraction']} takes all of D_r")
    drawn = np.sort(rng.choice(retain, size, replace=False)).tolist()
    return (helper_forget, drawn, []) if recipe == "shared" else (helper_forget, [], drawn)


def _reuse(path: Path, dataset: str, seed: int, options: dict) -> Splits:
    try:
        saved = json.loads(path.read_text())
        fields = [k for k in Splits.__dataclass_fields__ if k in saved or k not in OPTIONAL]
        splits = Splits(**{k: saved[k] for k in fields})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {path} ({e}); move it away or use a new run folder") from None
    wanted = {"dataset": dataset, "seed": seed, **options}
    # Folders made before helper recipes existed trained A_f and A_n the disjoint way.
    have = {"dataset": splits.dataset, "seed": splits.seed, "helpers": "disjoint", **splits.options}
    differ = [k for k in wanted if k not in RECORD_ONLY and wanted[k] != have.get(k)]
    if differ:
        change = ", ".join(f"{k}={have.get(k)!r} there, {wanted[k]!r} now" for k in differ)
        raise UserError(
            f"{path} was made with other split options ({change}); "
            "rerun with the same options or use a new run folder"
        )
    return splits


def load_or_create_splits(
    run_dir: str | Path,
    dataset: str,
    train_labels: torch.Tensor,
    test_size: int,
    *,
    seed: int,
    forget_fraction: float = 0.5,
    forget_classes: list[int] | None = None,
    forget_index_file: str | Path | None = None,
    new_fraction: float = 0.1,
    train_subset: int | None = None,
    test_subset: int | None = None,
    helpers: str = "disjoint",
    shared_fraction: float = 0.05,
    forget_list: str | Path | None = None,
    normalize=None,
    train_paths: list[str] | None = None,
) -> Splits:
    """The run folder's splits: read from `<run_dir>/splits.json`, or drawn and saved there.

    D_f is one of: a random `forget_fraction` of the train set; every train image of
    `forget_classes`; the indices in `forget_index_file` (a deletion request, honoured whole:
    `train_subset` then caps the size of D_f + D_r). D_r is the rest. D_n is a random
    `new_fraction` of the test set, D_t the rest. With `train_subset`/`test_subset`, a seeded
    random subset of that size is drawn first and split within; indices always refer to the
    original sets. `forget_list` is a deletion request by file name (a folder dataset's
    `train_paths`, kga_fast.folder). `normalize` is only recorded. `helpers` chooses what A_f and A_n train on (HELPER_RECIPES; with "shared",
    S is `shared_fraction` of the train set, drawn from D_r; with "common", so is A_b's B).
    """
    labels = np.asarray(train_labels.cpu() if isinstance(train_labels, torch.Tensor) else train_labels)
    options = _options(
        len(labels),
        test_size,
        forget_fraction=forget_fraction,
        forget_classes=forget_classes,
        forget_index_file=forget_index_file,
        new_fraction=new_fraction,
        train_subset=train_subset,
        test_subset=test_subset,
        helpers=helpers,
        shared_fraction=shared_fraction,
        forget_list=forget_list,
        normalize=normalize,
    )
    request = None
    if forget_index_file is not None:
        request = read_index_file(forget_index_file, len(labels))  # (F,) sorted int64
    elif forget_list is not None:
        if train_paths is None:
            raise UserError("a forget list names files: it needs --dataset folder")
        request = read_forget_list(forget_list, train_paths)
    if request is not None:
        options["forget_index_sha256"] = hashlib.sha256(request.tobytes()).hexdigest()
    path = Path(run_dir) / SPLITS_FILE
    if path.exists():
        splits = _reuse(path, dataset, seed, options)
        _check(splits, len(labels), test_size)
        return splits
    forget, retain = _forget_retain(labels, options, seed, request)
    test_pool = _subset(test_size, options["test_subset"], "test_subset", _rng(seed, _TEST_SUBSET))
    new, test = _split(test_pool, options["new_fraction"], _rng(seed, _NEW), "new_fraction")
    helper_forget, shared, base = _helper_sets(
        forget, retain, len(new), len(forget) + len(retain), options, seed
    )
    splits = Splits(
        dataset,
        int(seed),
        forget.tolist(),
        retain.tolist(),
        np.sort(new).tolist(),
        test.tolist(),
        options,
        helper_forget,
        shared,
        base,
    )
    _check(splits, len(labels), test_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, asdict(splits))
    return splits
