"""What the DDP test workers check last: no gloo thread is left once kga_fast.accel.shutdown
has run, so none can abort the interpreter's teardown."""

from __future__ import annotations

import os
from pathlib import Path


def _thread_name(task: str) -> str | None:
    try:
        return Path(f"/proc/self/task/{task}/comm").read_text().strip()
    except FileNotFoundError:  # the thread ended between the listing and the read: it is not left
        return None


def gloo_threads() -> list[str]:
    """The names of this process's threads that gloo started (Linux: /proc/self/task)."""
    names = (_thread_name(t) for t in os.listdir("/proc/self/task"))
    return sorted(n for n in names if n is not None and "gloo" in n)
