"""User-facing errors: one clear line and a non-zero exit, never a deep traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Bad input from the user (arguments, files, data). Printed as one line, exit code 2."""


def cli_main(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a script's main(): a UserError becomes `error: <message>` on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
