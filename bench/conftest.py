"""Prints each benchmark module's ratio table after pytest-benchmark's own report."""

from __future__ import annotations

import sys


def pytest_terminal_summary(terminalreporter) -> None:
    # Other suites can add themselves here: a module with RESULTS and table(device, dtype).
    module = sys.modules.get("bench_losses")
    if module is None or not module.RESULTS:
        return
    terminalreporter.write_sep("=", "KGA loss: ratios to the eager reference (same run)")
    terminalreporter.write_line(module.table(module.DEVICE, module.DTYPE_NAME))
