"""Your own images: an ImageFolder tree read once into uint8 tensors like the built-in sets.

    DIR/train/<class>/*.png|jpg|...    DIR/test/<class>/*

Class names are sorted as torchvision's ImageFolder sorts them (the test split uses the train
split's classes; a test class missing from train is an error). Images are RGB or grayscale of
any size: if every image of both splits is grayscale the set has one channel, otherwise every
image is converted to RGB; each is resized to `image_size` x `image_size` (bilinear, PIL)
once. Indices follow the sorted class folders, then the sorted file names, so `paths[i]` (the
path relative to DIR/train) names train image i: what a forget list refers to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from kga_fast.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _files(split_dir: Path, classes: list[str] | None) -> tuple[list[str], list[Path], list[int]]:
    if not split_dir.is_dir():
        raise UserError(
            f"image folder {split_dir} does not exist (expected DIR/train/<class>/ and DIR/test/<class>/)"
        )
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not found:
        raise UserError(f"{split_dir} has no class folders")
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise UserError(f"test class {extra[0]!r} in {split_dir} is missing from train")
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = split_dir / name
        images = (
            sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
            if folder.is_dir()
            else []
        )
        if not images and name in found:
            raise UserError(f"class folder {folder} has no images ({', '.join(EXTENSIONS)})")
        paths += images
        labels += [label] * len(images)
    return classes, paths, labels


def _read(path: Path, mode: str, size: int) -> np.ndarray:
    """(C, size, size) uint8."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later
            img = img.convert(mode).resize((size, size), Image.BILINEAR)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    array = np.asarray(img, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _is_gray(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            return img.mode in ("1", "L", "LA", "I", "I;16", "F")
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def read_image_folder(root: str | Path, image_size: int = 32):
    """{"train": (images (N, C, S, S) uint8, labels (N,) int64, relative paths), "test": ...,
    "classes": [...]} from root/train and root/test (see the module doc)."""
    root = Path(root).expanduser()
    if image_size < 8:
        raise UserError(f"--image-size must be at least 8, got {image_size}")
    classes, train_paths, train_labels = _files(root / "train", None)
    _, test_paths, test_labels = _files(root / "test", classes)
    if not test_paths:
        raise UserError(f"{root / 'test'} has no images")
    mode = "L" if all(_is_gray(p) for p in train_paths + test_paths) else "RGB"
    out = {"classes": classes}
    for split, paths, labels in (("train", train_paths, train_labels), ("test", test_paths, test_labels)):
        images = np.stack([_read(p, mode, image_size) for p in paths])
        relative = [p.relative_to(root / split).as_posix() for p in paths]
        out[split] = (images, np.asarray(labels, dtype=np.int64), relative)
    return out


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std at pixel scale [0, 1] of (N, C, H, W) uint8 images."""
    x = images.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(max(v, 1e-6)), 6) for v in std)


def read_forget_list(path: str | Path, train_paths: list[str]) -> np.ndarray:
    """A deletion request by file: one path per line, relative to DIR/train (e.g.
    `cat/0001.png`), blank lines and '#' comments ignored -> sorted train indices."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"forget list {path} does not exist")
    names = [line.strip() for line in path.read_text().splitlines()]
    names = [n.removeprefix("./") for n in names if n and not n.startswith("#")]
    if not names:
        raise UserError(f"forget list {path} names no image")
    position = {p: i for i, p in enumerate(train_paths)}
    missing = [n for n in names if n not in position]
    if missing:
        raise UserError(f"forget list {path}: {missing[0]!r} is not an image of the train folder")
    if len(set(names)) != len(names):
        raise UserError(f"forget list {path} names an image twice")
    if len(names) == len(train_paths):
        raise UserError(f"forget list {path} names every train image: nothing would be left to retain")
    return np.sort(np.asarray([position[n] for n in names], dtype=np.int64))
