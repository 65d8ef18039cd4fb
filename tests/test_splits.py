"""Splits: disjoint, complete, seeded, saved and reused; the three forget modes; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kga_fast.errors import UserError
from kga_fast.splits import Splits, load_or_create_splits

N_TRAIN, N_TEST = 600, 200
LABELS = torch.arange(N_TRAIN) % 10  # (N,) ten balanced classes


def _make(run_dir, seed=0, labels=LABELS, test_size=N_TEST, **options) -> Splits:
    return load_or_create_splits(run_dir, "fashion-mnist", labels, test_size, seed=seed, **options)


def test_default_split_is_disjoint_complete_sized_and_sorted(tmp_path):
    s = _make(tmp_path)
    assert sorted(s.forget + s.retain) == list(range(N_TRAIN))
    assert sorted(s.new + s.test) == list(range(N_TEST))
    assert len(s.forget) == N_TRAIN // 2 and len(s.new) == N_TEST // 10  # the paper's 0.5 and 10%
    for part in (s.forget, s.retain, s.new, s.test):
        assert part == sorted(part)


def test_saved_json_and_reload_identical(tmp_path):
    s = _make(tmp_path, seed=3)
    saved = json.loads((tmp_path / "splits.json").read_text())
    assert {"dataset", "seed", "forget", "retain", "new", "test", "options"} <= saved.keys()
    assert saved["forget"] == s.forget and saved["test"] == s.test and saved["seed"] == 3
    before = (tmp_path / "splits.json").read_bytes()
    assert _make(tmp_path, seed=3) == s
    assert (tmp_path / "splits.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name != "splits.json"]  # no temp files left


def test_deterministic_per_seed(tmp_path):
    a, b, c = (_make(tmp_path / name, seed=seed) for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    assert a == b
    assert a.forget != c.forget and a.new != c.new
    # independent streams: the test-set split does not move D_f
    d = _make(tmp_path / "d", seed=1, new_fraction=0.3)
    assert d.forget == a.forget and len(d.new) == 60


def test_rerun_with_other_options_is_refused(tmp_path):
    _make(tmp_path, seed=0)
    before = (tmp_path / "splits.json").read_bytes()
    for changed in (
        dict(seed=1),
        dict(forget_fraction=0.3),
        dict(new_fraction=0.2),
        dict(train_subset=100),
    ):
        with pytest.raises(UserError, match="other split options"):
            _make(tmp_path, **{"seed": 0, **changed})
    with pytest.raises(UserError, match="other split options"):
        load_or_create_splits(tmp_path, "cifar10", LABELS, N_TEST, seed=0)
    assert (tmp_path / "splits.json").read_bytes() == before


def test_damaged_splits_file_is_refused_and_kept(tmp_path):
    (tmp_path / "splits.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        _make(tmp_path)
    assert (tmp_path / "splits.json").read_text() == "{not json"
    _make(tmp_path / "ok")
    doc = json.loads((tmp_path / "ok" / "splits.json").read_text())
    doc["retain"].append(doc["forget"][0])  # hand-edited into an overlap
    (tmp_path / "ok" / "splits.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="overlap"):
        _make(tmp_path / "ok")


def test_subsets_draw_then_split_within(tmp_path):
    s = _make(tmp_path, train_subset=100, test_subset=50, forget_fraction=0.2)
    assert len(s.forget) == 20 and len(s.retain) == 80 and len(s.new) == 5 and len(s.test) == 45
    assert not set(s.forget) & set(s.retain) and not set(s.new) & set(s.test)
    assert max(s.forget + s.retain) < N_TRAIN and max(s.forget + s.retain) > 100  # original indices
    assert _make(tmp_path / "again", train_subset=100, test_subset=50, forget_fraction=0.2) == s


def test_forget_classes(tmp_path):
    s = _make(tmp_path, forget_classes=[7, 2])
    assert s.forget == [i for i in range(N_TRAIN) if LABELS[i] in (2, 7)]
    assert sorted(s.forget + s.retain) == list(range(N_TRAIN))
    assert s.options["forget_classes"] == [2, 7] and s.options["forget_fraction"] is None
    assert len(s.new) == N_TEST // 10  # D_n / D_t come from the test set as usual
    sub = _make(tmp_path / "sub", forget_classes=[2], train_subset=200)
    assert len(sub.forget + sub.retain) == 200 and all(LABELS[i] == 2 for i in sub.forget)
    assert all(LABELS[i] != 2 for i in sub.retain)


@pytest.mark.parametrize("fmt", ["json", "npy", "txt"])
def test_forget_index_file_formats(tmp_path, fmt):
    request = [5, 599, 0, 42, 17]
    path = tmp_path / f"forget.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(request))
    elif fmt == "npy":
        np.save(path, np.array(request))
    else:
        path.write_text("\n".join(map(str, request)) + "\n\n")
    s = _make(tmp_path / "run", forget_index_file=path)
    assert s.forget == sorted(request) and sorted(s.forget + s.retain) == list(range(N_TRAIN))
    moved = tmp_path / f"moved.{fmt}"
    moved.write_bytes(path.read_bytes())
    assert _make(tmp_path / "run", forget_index_file=moved).forget == s.forget  # same request


def test_forget_index_file_with_train_subset_keeps_the_whole_request(tmp_path):
    path = tmp_path / "forget.json"
    path.write_text(json.dumps(list(range(0, 600, 20))))  # 30 indices
    s = _make(tmp_path / "run", forget_index_file=path, train_subset=100)
    assert s.forget == list(range(0, 600, 20)) and len(s.retain) == 70
    path.write_text(json.dumps(list(range(0, 600, 10))))  # the request changed: refused
    with pytest.raises(UserError, match="forget_index_sha256"):
        _make(tmp_path / "run", forget_index_file=path, train_subset=100)


@pytest.mark.parametrize(
    "content,match",
    [
        ("[1, 2, 600]", "outside the train set"),
        ("[1, -1]", "outside the train set"),
        ("[3, 4, 3]", "appears twice"),
        ("[]", "is empty"),
        ("[1.5, 2]", "integer"),
        ('{"a": 1}', "integer"),
        ("[1, 2", "cannot read"),
    ],
)
def test_bad_forget_index_file(tmp_path, content, match):
    path = tmp_path / "forget.json"
    path.write_text(content)
    with pytest.raises(UserError, match=match):
        _make(tmp_path / "run", forget_index_file=path)
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(forget_fraction=0.0), "forget_fraction"),
        (dict(forget_fraction=1.0), "forget_fraction"),
        (dict(forget_fraction=-0.5), "forget_fraction"),
        (dict(new_fraction=1.5), "new_fraction"),
        (dict(new_fraction=0.001), "new_fraction"),  # rounds to an empty D_n
        (dict(train_subset=601), "train_subset"),
        (dict(test_subset=1), "test_subset"),
        (dict(forget_classes=[10]), "does not occur"),
        (dict(forget_classes=[1, 1]), "repeats"),
        (dict(forget_classes=list(range(10))), "empty retain"),
        (dict(forget_classes=[1], forget_index_file="x.json"), "choose one of"),
        (dict(forget_index_file="missing.json"), "does not exist"),
    ],
)
def test_bad_split_options(tmp_path, options, match):
    with pytest.raises(UserError, match=match):
        _make(tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()


def test_helper_recipes_draw_seeded_sets_of_the_right_size_inside_d_f_and_d_r(tmp_path):
    base = _make(tmp_path / "disjoint")
    assert base.helper_forget is None and base.shared == []
    matched = _make(tmp_path / "matched", helpers="matched")
    # The same D_f, D_r, D_n, D_t as the disjoint folder: helper sets have their own stream.
    assert (matched.forget, matched.retain, matched.new) == (base.forget, base.retain, base.new)
    assert len(matched.helper_forget) == len(matched.new) == N_TEST // 10
    assert set(matched.helper_forget) <= set(matched.forget) and matched.shared == []
    assert _make(tmp_path / "again", helpers="matched") == matched  # seeded
    assert _make(tmp_path / "other", seed=1, helpers="matched").helper_forget != matched.helper_forget
    shared = _make(tmp_path / "shared", helpers="shared", shared_fraction=0.1)
    assert shared.helper_forget is None and len(shared.shared) == N_TRAIN // 10
    assert set(shared.shared) <= set(shared.retain)
    saved = json.loads((tmp_path / "shared" / "splits.json").read_text())
    assert saved["options"]["helpers"] == "shared" and saved["options"]["shared_fraction"] == 0.1
    assert saved["shared"] == shared.shared
    common = _make(tmp_path / "common", helpers="common", shared_fraction=0.1)
    assert common.helper_forget == matched.helper_forget  # F drawn as matched draws it, then B
    assert (
        common.shared == [] and len(common.base) == N_TRAIN // 10 and set(common.base) <= set(common.retain)
    )
    assert json.loads((tmp_path / "common" / "splits.json").read_text())["base"] == common.base


def test_helper_recipe_is_part_of_the_split_and_old_folders_read_as_disjoint(tmp_path):
    _make(tmp_path, helpers="matched")
    with pytest.raises(UserError, match="other split options.*helpers"):
        _make(tmp_path)
    old = tmp_path / "old"
    _make(old)
    saved = json.loads((old / "splits.json").read_text())
    for key in ("helper_forget", "shared", "base"):
        del saved[key]
    del saved["options"]["helpers"]
    (old / "splits.json").write_text(json.dumps(saved))  # a folder from before helper recipes
    assert _make(old).helper_forget is None
    with pytest.raises(UserError, match="helpers"):
        _make(old, helpers="shared")
    with pytest.raises(UserError, match="unknown helper recipe"):
        _make(tmp_path / "bad", helpers="twins")
