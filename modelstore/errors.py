"""The one exception type the ModelStore raises for a refused operation.

Why one type: callers (operator, worker, trainer, CLI) need a single thing to
catch and a message that names the problem; the CLI maps it to exit code 2.
"""

from __future__ import annotations


class StoreError(Exception):
    """A refused or failed ModelStore operation; the message names the problem."""
