"""Revision history of a pool's effective route sets. Pure.

Why effective and not desired routes: a revision is what clients actually
got. Recording desired edits would list weights that never took effect
(e.g. a 5% canary whose load failed), and "roll back to the previous set"
must restore something that really served.

A revision is appended only when the effective set changes (so the
reconcile loop can call ``record`` every time), numbered monotonically, and
only the last ``keep`` are retained. ``stable`` marks sets recorded while no
rollout was progressing; ``last_stable`` skips canary steps.
"""

from __future__ import annotations

import datetime as dt
from typing import Sequence

from .routing_policy import Routes
from ..api.rollout_types import Backend, Revision

DEFAULT_KEEP = 10


def normalize(routes: Routes) -> dict[str, dict[str, int]]:
    """Drop zero weights and empty tasks: two sets that route identically compare equal."""
    out = {}
    for task in sorted(routes):
        r = {a: w for a, w in routes[task].items() if w > 0}
        if r:
            out[task] = r
    return out


def to_routes(rev: Revision) -> Routes:
    return {t: {b.adapter: b.weight for b in bs} for t, bs in rev.routes.items()}


def record(history: Sequence[Revision], effective: Routes, *, now: dt.datetime, cause: str,
           stable: bool = True, keep: int = DEFAULT_KEEP) -> list[Revision]:
    """History with ``effective`` appended if it differs from the newest entry."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    hist = list(history)
    norm = normalize(effective)
    if hist and normalize(to_routes(hist[-1])) == norm:
        return hist
    number = (hist[-1].revision + 1) if hist else 1
    rev = Revision(revision=number, time=now.isoformat(), cause=cause, stable=stable,
                   routes={t: [Backend(adapter=a, weight=w) for a, w in r.items()] for t, r in norm.items()})
    return (hist + [rev])[-keep:]


def previous(history: Sequence[Revision]) -> Revision | None:
    """The set before the current one: what a plain rollback restores, exactly."""
    return history[-2] if len(history) >= 2 else None


def find(history: Sequence[Revision], number: int) -> Revision:
    for rev in history:
        if rev.revision == number:
            return rev
    have = ", ".join(str(r.revision) for r in history) or "none"
    raise KeyError(f"revision {number} is not in the history (kept: {have})")


def last_stable(history: Sequence[Revision]) -> Revision | None:
    """Newest stable revision before the current one whose routes differ from
    the current routes (a canary step is not a place to roll back to)."""
    if not history:
        return None
    current = normalize(to_routes(history[-1]))
    for rev in reversed(history[:-1]):
        if rev.stable and normalize(to_routes(rev)) != current:
            return rev
    return None


def rollback_routes(history: Sequence[Revision], to: int | None = None) -> Routes:
    """Routes a rollback sets: revision ``to``, or the previous one. Tasks not
    in the target set are absent (the caller removes them from spec.routes)."""
    target = find(history, to) if to is not None else previous(history)
    if target is None:
        raise LookupError("no previous revision to roll back to")
    return to_routes(target)
