"""Daemons without finalizers, so a namespace can always be deleted.

kopf puts its finalizer on every object that has a daemon, to stop the
daemon before the object goes, and never removes it when the operator exits
(nolar/kopf discussion 942). After ``helm uninstall``, ``kubectl delete
namespace`` would then hang forever on every BaseModel, Adapter and
WorkerPool in it. loraplane's daemons need no last word: everything they
create carries an ownerReference and is garbage-collected, and a daemon is
cancelled when kopf sees the object's deletion anyway. So the daemon
handlers are registered without the finalizer requirement; kopf then also
removes the finalizer it put on objects before (its "no handlers requiring
it" path).

This reaches into kopf's registry (``_spawning``), which has no public
switch for it; the kopf version is pinned, and tests/unit/operator/
test_daemon_finalizers.py fails if kopf changes the shape relied on here.
"""

from __future__ import annotations

import dataclasses

import kopf
from kopf._core.intents import handlers as kopf_handlers


def drop_daemon_finalizers(registry: kopf.OperatorRegistry | None = None) -> int:
    """Clear ``requires_finalizer`` on every daemon handler; returns how many changed."""
    registry = registry or kopf.get_default_registry()
    spawning = registry._spawning._handlers  # noqa: SLF001 - see the module docstring
    changed = 0
    for i, handler in enumerate(spawning):
        if isinstance(handler, kopf_handlers.DaemonHandler) and handler.requires_finalizer:
            spawning[i] = dataclasses.replace(handler, requires_finalizer=False)
            changed += 1
    return changed
