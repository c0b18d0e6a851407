"""Ending a server process at once, as ``servegraph serve`` and its front-end workers do."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """``os._exit(code)``: model threads stuck past the drain must not keep the process alive.

    ``os._exit`` skips atexit handlers, so a process measured by coverage (the tests start
    servers as subprocesses) saves its data first; nothing else is flushed or waited for.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    coverage = sys.modules.get("coverage")
    current = getattr(getattr(coverage, "Coverage", None), "current", None)
    measured = current() if callable(current) else None
    if measured is not None:
        measured.stop()
        measured.save()
    os._exit(code)
