"""All-or-nothing file writes: what kga_fast writes (checkpoints, splits, results, reports) is
written to a temporary name beside its target and moved into place with os.replace, so a
failed or interrupted run never leaves a half-written file where finished work was."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it replaces `path`, on error it goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str | Path, data: dict) -> None:
    """JSON to `path`, all or nothing (Paths and other odd values written as strings)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """`data` to `path`, all or nothing."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
