"""Process-wide state the kopf handlers share: the clients and caches set up
by ``loraplane operator run``, and one wake-up event per object daemon.

Its own module so that every handler module imports it from below (the
training pod handler and the resource daemons both wake daemons) and no
handler module imports another.
"""

from __future__ import annotations

import asyncio


class State:
    kube = None
    cfg = None
    ledger = None  # LedgerCache
    applied = None  # reconcile.Applied
    wakeups: dict[tuple[str, str, str], asyncio.Event] = {}
    nodes: dict[str, object] = {}
    generations: dict[tuple[str, str], object] = {}
    #: (kind, namespace, name) -> metadata.generation last seen by a watch event
    spec_generations: dict[tuple[str, str, str], int | None] = {}
    #: namespaces whose API refused a create as "being terminated" (see failures.Guarded)
    terminating: set[str] = set()


def wake(kind: str, ns: str | None = None, name: str | None = None) -> None:
    for (k, n, nm), ev in list(State.wakeups.items()):
        if k == kind and (ns is None or n == ns) and (name is None or nm == name):
            ev.set()
