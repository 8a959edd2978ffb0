"""Polling until the cluster shows what a test or the demo waits for.

One helper for the harness, every cluster suite and the demo: controllers
converge asynchronously, so everything that checks them polls with a
deadline and says what it waited for, and the last value seen, on timeout.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(fn: Callable[[], T], timeout: float = 60.0, interval: float = 0.3, what: str = "condition") -> T:
    """Call ``fn`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last={last!r}")
