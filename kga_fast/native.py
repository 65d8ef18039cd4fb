"""The native extension kga_fast._C: whether it was built, and for which devices.

Importing kga_fast._C runs the TORCH_LIBRARY registrations of csrc/ (no pybind glue).
The build can be skipped (KGA_FAST_SKIP_NATIVE_BUILD=1); then `available()` is False and
everything runs on the pure-PyTorch reference path.
"""

from __future__ import annotations

import torch

try:
    from kga_fast import _C  # noqa: F401  (registers torch.ops.kga_fast.*)

    _IMPORT_ERROR: Exception | None = None
except ImportError as e:  # not built, or built against another torch
    _IMPORT_ERROR = e


def available() -> bool:
    """True when the extension imported (its CPU kernels are always part of it)."""
    return _IMPORT_ERROR is None


def has_device(device_type: str) -> bool:
    """True when the extension has kernels for this device type ("cpu" or "cuda")."""
    if not available():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("kga_fast::kl_rows", key)


def import_error() -> Exception | None:
    return _IMPORT_ERROR


def describe() -> str:
    if not available():
        return f"not built ({_IMPORT_ERROR})"
    devices = [d for d in ("cpu", "cuda") if has_device(d)]
    return "kernels for " + ", ".join(devices) if devices else "built, but no kernels registered"
