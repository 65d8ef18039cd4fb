"""What the DDP test workers check last: no gloo thread is left once kga_fast.accel.shutdown
has run, so none can abort the interpreter's teardown."""

from __future__ import annotations

import os
from pathlib import Path


def gloo_threads() -> list[str]:
    """The names of this process's threads that gloo started (Linux: /proc/self/task)."""
    names = (Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))
    return sorted(n for n in names if "gloo" in n)
