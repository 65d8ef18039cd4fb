"""Datasets (Fashion-MNIST IDX, CIFAR python batches), normalization, and the fast loader."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from kga_fast.data import (
    FASHION_MNIST_DIR,
    STATS,
    DeviceLoader,
    ImageSet,
    NormalizedImages,
    load_dataset,
    load_images,
    normalize,
)
from kga_fast.errors import UserError

have_fmnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (Debian package dataset-fashion-mnist)",
)


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _small_fmnist(folder: Path, n: int, compress: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for prefix in ("train", "t10k"):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return images, labels


@pytest.mark.parametrize("layout", ["flat-gz", "torchvision-raw"])
def test_fashion_mnist_from_idx_files(tmp_path, layout):
    if layout == "flat-gz":
        images, labels = _small_fmnist(tmp_path, 5, compress=True)
    else:  # what torchvision.datasets.FashionMNIST(root, download=True) leaves behind
        images, labels = _small_fmnist(tmp_path / "FashionMNIST" / "raw", 5, compress=False)
    s = load_images("fashion-mnist", root=tmp_path, train=False)
    assert s.images.shape == (5, 1, 32, 32) and s.images.dtype == torch.uint8
    assert s.in_channels == 1 and s.num_classes == 10
    assert torch.equal(s.images[:, 0, 2:30, 2:30], torch.from_numpy(images))
    border = s.images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.sum() == 0  # zero padding, 2 pixels on each side
    assert s.labels.dtype == torch.int64 and s.labels.tolist() == labels.tolist()


def test_bad_idx_file_is_a_user_error(tmp_path):
    _small_fmnist(tmp_path, 3, compress=True)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x03" + b"\0" * 20))
    with pytest.raises(UserError, match="truncated"):
        load_images("fashion-mnist", root=tmp_path)


@have_fmnist
def test_fashion_mnist_statistics():
    """The hard-coded mean/std are those of the padded train set (population std)."""
    s = load_images("fashion-mnist")
    assert (
        s.images.shape == (60000, 1, 32, 32)
        and len(load_images("fashion-mnist", train=False).labels) == 10000
    )
    counts = torch.bincount(s.images.flatten(), minlength=256).double()  # exact, little memory
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (counts * values).sum() / counts.sum()
    std = ((counts * (values - mean) ** 2).sum() / counts.sum()).sqrt()
    assert mean.item() == pytest.approx(STATS["fashion-mnist"][0][0], abs=1e-4)
    assert std.item() == pytest.approx(STATS["fashion-mnist"][1][0], abs=1e-4)
    assert sorted(s.labels.unique().tolist()) == list(range(10))


def _write_cifar(folder: Path, name: str, n: int) -> tuple[np.ndarray, list[int]]:
    """Small files in the real format: pickled dicts of (n, 3072) uint8 rows (R, G, B planes)."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10 if name == "cifar10" else 100, n).tolist()
    if name == "cifar10":
        base = folder / "cifar-10-batches-py"
        files, key, meta = (
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
            "labels",
            "batches.meta",
        )
        meta_entry = {"label_names": [str(i) for i in range(10)]}
    else:
        base = folder / "cifar-100-python"
        files, key, meta = ["train", "test"], "fine_labels", "meta"
        meta_entry = {"fine_label_names": [str(i) for i in range(100)]}
    base.mkdir(parents=True)
    for f in files:
        entry = {"data": data, key: labels, "coarse_labels": [0] * n, "filenames": ["x.png"] * n}
        (base / f).write_bytes(pickle.dumps(entry))
    (base / meta).write_bytes(pickle.dumps(meta_entry))
    return data, labels


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("point_at", ["parent", "batches-folder"])
def test_cifar_from_python_batches(tmp_path, name, point_at):
    data, labels = _write_cifar(tmp_path, name, 4)
    root = tmp_path if point_at == "parent" else next(tmp_path.iterdir())
    train, test = (
        load_images(name, root=root, train=True),
        load_images(name, root=root, train=False),
    )
    per_file = 5 if name == "cifar10" else 1
    assert train.images.shape == (4 * per_file, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert torch.equal(test.images, torch.from_numpy(data.reshape(4, 3, 32, 32)))
    assert test.labels.tolist() == labels and train.labels.tolist() == labels * per_file
    assert test.num_classes == (10 if name == "cifar10" else 100) and test.mean == STATS[name][0]


def test_missing_data_and_unknown_dataset(tmp_path):
    with pytest.raises(UserError, match="unknown dataset"):
        load_images("mnist")
    with pytest.raises(UserError, match=f"cifar-10-batches-py.*{tmp_path}.*--download"):
        load_images("cifar10", root=tmp_path)
    with pytest.raises(UserError, match=f"{tmp_path}.*dataset-fashion-mnist"):
        load_images("fashion-mnist", root=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written


def _synthetic(n: int, channels: int = 3, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageSet("synthetic", images, labels, 10, (0.5, 0.4, 0.3)[:channels], (0.2, 0.25, 0.3)[:channels])


def test_normalize_formula_and_dtypes():
    s = _synthetic(4)
    x = normalize(s.images, s.mean, s.std)  # (4, 3, 32, 32)
    expect = (s.images.double() / 255 - torch.tensor(s.mean).double().view(3, 1, 1)) / torch.tensor(
        s.std
    ).double().view(3, 1, 1)
    torch.testing.assert_close(x, expect.float())
    assert torch.equal(normalize(s.images[2], s.mean, s.std), x[2])  # single (C, H, W) image
    assert torch.equal(normalize(s.images, s.mean, s.std, torch.bfloat16), x.bfloat16())
    assert normalize(s.images, s.mean, s.std, torch.float64).dtype == torch.float64


def test_load_dataset_items_as_training_sees_them(tmp_path):
    _small_fmnist(tmp_path, 3, compress=True)
    ds = load_dataset("fashion-mnist", root=tmp_path)
    x, y = ds[1]
    assert len(ds) == 3 and x.shape == (1, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert torch.equal(x, normalize(ds.set.images[1], *STATS["fashion-mnist"]))


def _plain_batches(dataset, subset, batch_size, shuffle, seed, epoch, rank, world_size, drop_last):
    """The slow reference path: a DataLoader over the Dataset with DistributedSampler's order."""
    sampler = DistributedSampler(
        Subset(dataset, subset), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed
    )
    sampler.set_epoch(epoch)
    order = torch.tensor(list(sampler))
    loader = DataLoader(Subset(dataset, subset), batch_size, sampler=sampler, drop_last=drop_last)
    return order, list(loader)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world_size,drop_last", [(1, False), (1, True), (3, False), (3, True)])
def test_device_loader_matches_plain_dataloader(shuffle, world_size, drop_last):
    full = _synthetic(50)
    subset = torch.randperm(50, generator=torch.Generator().manual_seed(3))[:37]  # odd size: padding
    dataset = NormalizedImages(full)
    lengths = set()
    for rank in range(world_size):
        fast = DeviceLoader(
            full.images[subset],
            full.labels[subset],
            batch_size=5,
            mean=full.mean,
            std=full.std,
            shuffle=shuffle,
            seed=7,
            device="cpu",
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
        )
        for epoch in (0, 1):
            fast.set_epoch(epoch)
            order, plain = _plain_batches(dataset, subset, 5, shuffle, 7, epoch, rank, world_size, drop_last)
            batches = list(fast)
            assert len(batches) == len(fast) == len(plain)
            lengths.add(len(fast))
            for (x, y, idx), (px, py), i in zip(batches, plain, range(len(plain)), strict=True):
                assert torch.equal(idx, order[i * 5 : (i + 1) * 5])
                assert torch.equal(x, px) and torch.equal(y, py)
    assert len(lengths) == 1  # every rank the same number of batches


def test_device_loader_epochs_shards_and_layout():
    full = _synthetic(23, channels=1)
    kw = dict(batch_size=4, mean=full.mean, std=full.std, seed=0, device="cpu")
    one = DeviceLoader(full.images, full.labels, shuffle=True, **kw)
    first = torch.cat([idx for _, _, idx in one])
    one.set_epoch(1)
    second = torch.cat([idx for _, _, idx in one])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(23))
    assert not torch.equal(first, second)  # a new permutation each epoch
    shards = [
        DeviceLoader(full.images, full.labels, shuffle=False, rank=r, world_size=2, **kw) for r in (0, 1)
    ]
    seen = [torch.cat([idx for _, _, idx in s]).tolist() for s in shards]
    assert seen[0] == list(range(0, 23, 2)) and seen[1] == list(range(1, 23, 2)) + [0]
    last = DeviceLoader(
        full.images, full.labels, shuffle=True, channels_last=True, dtype=torch.bfloat16, **kw
    )
    x, _, idx = next(iter(last))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, normalize(full.images[idx], full.mean, full.std).bfloat16())
    with pytest.raises(UserError):
        DeviceLoader(full.images[:0], full.labels[:0], shuffle=False, **kw)


@have_fmnist
def test_device_loader_matches_plain_path_on_fashion_mnist():
    dataset = load_dataset("fashion-mnist", train=False)
    subset = torch.arange(0, 10000, 7)
    fast = DeviceLoader(
        dataset.set.images[subset],
        dataset.labels[subset],
        batch_size=256,
        mean=dataset.set.mean,
        std=dataset.set.std,
        shuffle=True,
        seed=1,
        device="cpu",
    )
    order, plain = _plain_batches(dataset, subset, 256, True, 1, 0, 0, 1, False)
    for (x, y, _), (px, py) in zip(fast, plain, strict=True):
        assert torch.equal(x, px) and torch.equal(y, py)
    assert torch.equal(torch.cat([idx for _, _, idx in fast]), order)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_loader_cuda_matches_cpu():
    full = _synthetic(40)
    kw = dict(batch_size=8, mean=full.mean, std=full.std, shuffle=True, seed=5, world_size=2, rank=1)
    cpu = list(DeviceLoader(full.images, full.labels, device="cpu", **kw))
    gpu = list(DeviceLoader(full.images, full.labels, device="cuda", channels_last=True, **kw))
    for (x, y, idx), (gx, gy, gidx) in zip(cpu, gpu, strict=True):
        assert gx.is_cuda and torch.equal(idx, gidx.cpu()) and torch.equal(y, gy.cpu())
        torch.testing.assert_close(x, gx.cpu(), rtol=1e-6, atol=1e-6)
