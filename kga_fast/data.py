"""Datasets as whole uint8 tensors, their normalization, and the fast device-resident loader.

Every dataset is read once into one (N, C, 32, 32) uint8 tensor (CIFAR: 150 MB, Fashion-MNIST:
70 MB). Training batches by indexing that tensor on the device (`DeviceLoader`) instead of a
per-image DataLoader; `load_dataset` gives the same normalized images as a plain torch Dataset.
"""

from __future__ import annotations

import functools
import gzip
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from kga_fast.errors import UserError
from kga_fast.folder import channel_stats, read_image_folder

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "folder")  # folder: your ImageFolder tree
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
DEFAULT_DATA_DIR = Path.home() / ".cache" / "kga_fast" / "data"  # where --download puts data
NUM_CLASSES = {"fashion-mnist": 10, "cifar10": 10, "cifar100": 100}
# Per-channel mean and std of the train set at pixel scale [0, 1] (population std over all
# pixels of all images). Fashion-MNIST: of the zero-padded 32x32 images, computed by
# tests/test_data.py::test_fashion_mnist_statistics; CIFAR: the well-known values.
STATS = {
    "fashion-mnist": ((0.2190,), (0.3318,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass
class ImageSet:
    """One split (train or test) of a dataset, whole, on the CPU."""

    name: str
    images: torch.Tensor  # (N, C, 32, 32) uint8
    labels: torch.Tensor  # (N,) int64
    num_classes: int
    mean: tuple[float, ...]  # per channel, pixel scale [0, 1]
    std: tuple[float, ...]
    paths: list[str] | None = None  # folder datasets: each image's path relative to its split

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian header, then uint8 data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    if raw[:3] != b"\0\0\x08" or not 1 <= ndim <= 3:
        raise UserError(f"{path} is not a uint8 IDX file")
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise UserError(f"{path} is truncated: expected {math.prod(shape)} values, found {data.size}")
    return data.reshape(shape)


def _find_idx(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for path in (folder / f"{stem}.gz", folder / stem):
            if path.is_file():
                return path
    return None


def _fashion_mnist(root: Path | None, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, 32, 32) images and (N,) labels. The 28x28 images are zero-padded by 2 pixels on
    each side to 32x32, the size every arch accepts (VGG11's five 2x poolings need >= 32)."""
    base = root if root is not None else FASHION_MNIST_DIR
    # The four IDX files directly in the folder, or torchvision's FashionMNIST/raw layout.
    folders = [base, base / "raw", base / "FashionMNIST" / "raw"]
    if root is None:
        folders.append(DEFAULT_DATA_DIR / "FashionMNIST" / "raw")
    prefix = "train" if train else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    paths = [_find_idx(folders, s) for s in stems]
    if None in paths and download:
        from torchvision.datasets import FashionMNIST

        target = root if root is not None else DEFAULT_DATA_DIR
        try:
            FashionMNIST(str(target), train=train, download=True)
        except Exception as e:  # offline, proxy, disk: all end the same way for the user
            raise UserError(f"could not download Fashion-MNIST into {target}: {e}") from None
        paths = [_find_idx([target / "FashionMNIST" / "raw"], s) for s in stems]
    if None in paths:
        raise UserError(
            f"Fashion-MNIST {stems[0]}.gz not found in {base} (nor its raw/ or FashionMNIST/raw/): "
            "install the Debian package dataset-fashion-mnist, pass --data-dir, or --download when online"
        )
    images, labels = _read_idx(paths[0]), _read_idx(paths[1])
    padded = np.zeros((len(images), 1, 32, 32), dtype=np.uint8)
    padded[:, 0, 2:30, 2:30] = images
    return padded, labels


def _cifar(name: str, root: Path | None, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) images and (N,) labels from the standard pickled python batches."""
    from torchvision.datasets import CIFAR10, CIFAR100

    base = CIFAR10 if name == "cifar10" else CIFAR100
    folder = root if root is not None else DEFAULT_DATA_DIR
    if folder.name == base.base_folder:  # --data-dir may name cifar-10-batches-py itself
        folder = folder.parent
    files = base.train_list + base.test_list + [[base.meta["filename"], None]]
    present = all((folder / base.base_folder / f).is_file() for f, _ in files)

    class Local(base):
        # torchvision checks the md5 of every batch file; an existing folder is trusted as it
        # is (so small files in the real format load too), and only downloads are verified.
        def _check_integrity(self) -> bool:
            return present

        def _load_meta(self) -> None:
            pass

    if not present and not download:
        raise UserError(
            f"{name} not found: no {base.base_folder}/ with {', '.join(f for f, _ in files)} in {folder}; "
            "pass --data-dir (the folder holding it), or --download when online"
        )
    try:
        ds = (base if not present else Local)(str(folder), train=train, download=not present)
    except Exception as e:  # no network, or a damaged batch file
        raise UserError(f"could not load {name} from {folder / base.base_folder}: {e}") from None
    return np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets)


@functools.lru_cache(maxsize=1)  # the train and test sets of one folder are read in one pass
def _folder(root: Path, image_size: int) -> dict:
    tree = read_image_folder(root, image_size)
    tree["stats"] = channel_stats(tree["train"][0])  # the train split's, for both splits
    return tree


def _folder_set(root: Path | None, train: bool, image_size: int) -> ImageSet:
    if root is None:
        raise UserError(
            "--dataset folder needs --data-dir DIR (with DIR/train/<class>/ and DIR/test/<class>/)"
        )
    tree = _folder(root.resolve(), image_size)
    images, labels, paths = tree["train" if train else "test"]
    mean, std = tree["stats"]
    return ImageSet(
        "folder", torch.from_numpy(images), torch.from_numpy(labels), len(tree["classes"]), mean, std, paths
    )


def load_images(
    name: str,
    root: str | Path | None = None,
    train: bool = True,
    download: bool = False,
    image_size: int = 32,
) -> ImageSet:
    """The whole train (or test) set as uint8 tensors. `root` None means the dataset's default
    folder: /usr/share/datasets/fashion-mnist, or ~/.cache/kga_fast/data for CIFAR; "folder"
    reads root/train and root/test (kga_fast.folder), resized to `image_size`."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    root = Path(root).expanduser() if root is not None else None
    if name == "folder":
        return _folder_set(root, train, image_size)
    if name == "fashion-mnist":
        images, labels = _fashion_mnist(root, train, download)
    else:
        images, labels = _cifar(name, root, train, download)
    if len(images) != len(labels):
        raise UserError(f"{name}: {len(images)} images but {len(labels)} labels in {root}")
    labels_t = torch.from_numpy(labels.astype(np.int64))
    num_classes = NUM_CLASSES[name]
    if len(labels_t) and not 0 <= int(labels_t.min()) <= int(labels_t.max()) < num_classes:
        raise UserError(f"{name}: labels outside 0..{num_classes - 1} in {root}")
    mean, std = STATS[name]
    return ImageSet(name, torch.from_numpy(images), labels_t, num_classes, mean, std)


def normalize(
    images_uint8: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(x / 255 - mean) / std per channel, for (C, H, W) or (N, C, H, W) uint8 images.

    Computed in float32 (float64 if asked) and only then cast, so a bfloat16 batch is the
    rounded float32 result, identical however the images were batched.
    """
    compute = torch.promote_types(dtype, torch.float32)
    device = images_uint8.device
    mean = torch.as_tensor(mean, dtype=compute, device=device).view(-1, 1, 1)  # (C, 1, 1)
    std = torch.as_tensor(std, dtype=compute, device=device).view(-1, 1, 1)
    x = images_uint8.to(compute)  # one new buffer, then in place: same arithmetic, same order
    return x.div_(255).sub_(mean).div_(std).to(dtype)


class NormalizedImages(Dataset):
    """A torch Dataset of (normalized (C, 32, 32) float32 image, int label), as training sees them."""

    def __init__(self, images: ImageSet):
        self.set = images
        self.labels = images.labels
        self.num_classes = images.num_classes

    def __len__(self) -> int:
        return len(self.set.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return normalize(self.set.images[i], self.set.mean, self.set.std), int(self.set.labels[i])


def load_dataset(
    name: str, root: str | Path | None = None, train: bool = True, download: bool = False
) -> NormalizedImages:
    """The public loader: a torch Dataset of normalized image tensors and int labels."""
    return NormalizedImages(load_images(name, root, train, download))


class DeviceLoader:
    """Batches of a uint8 image tensor kept whole on `device`, normalized on the fly.

    The order matches torch's DistributedSampler exactly: a permutation of 0..n-1 drawn by a
    CPU torch.Generator seeded with seed + epoch (so CPU and CUDA runs agree), padded by
    wrapping around to a multiple of world_size, then rank::world_size. Every rank gets the
    same number of batches; drop_last drops each rank's last partial batch. Yields
    (x (B, C, H, W) in `dtype`, y (B,) int64, idx (B,) int64 positions in the given images).
    """

    def __init__(
        self,
        images_uint8: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool,
        seed: int,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        channels_last: bool = False,
    ):
        if len(images_uint8) == 0 or len(images_uint8) != len(labels):
            raise UserError(f"cannot batch {len(images_uint8)} images with {len(labels)} labels")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.device = torch.device(device)
        self.images = images_uint8.to(self.device)  # (N, C, H, W) uint8, resident
        self.labels = labels.to(self.device, torch.int64)  # (N,)
        self.mean = torch.as_tensor(mean, dtype=torch.float64, device=self.device)
        self.std = torch.as_tensor(std, dtype=torch.float64, device=self.device)
        self.batch_size, self.shuffle, self.seed, self.dtype = batch_size, shuffle, seed, dtype
        self.rank, self.world_size = rank, world_size
        self.drop_last, self.channels_last = drop_last, channels_last
        self.epoch = 0
        self.per_rank = math.ceil(len(self.images) / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def indices(self) -> torch.Tensor:
        """(per_rank,) int64 on the CPU: this rank's positions for the current epoch."""
        n = len(self.images)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        pad = self.per_rank * self.world_size - n
        if pad:
            order = torch.cat([order, order.repeat(math.ceil(pad / n))[:pad]])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = self.indices().to(self.device)
        compute = torch.promote_types(self.dtype, torch.float32)
        mean, std = self.mean.to(compute), self.std.to(compute)  # (C,) each, on the device
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]  # (B,)
            x = normalize(self.images[idx], mean, std, self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx], idx
