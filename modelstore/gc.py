"""Garbage collection: keep the newest N versions per name, never ``current``.

Why a pure planner: which versions go is a decision worth testing on its
own; deletion is just rename-to-trash then rmtree, so a reader never sees
a half-deleted version. The operator passes ``protect`` (a callable or a set
of ``"owner/kind/name/version"`` strings or tuples) for versions that live
Adapters still reference. Leftover staging dirs from killed publishes are
swept when older than ``stale_after`` seconds. Base versions that any stored
adapter references are always kept.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .fsops import remove_tree
from .layout import KIND_DIRS, STAGING, TRASH

Protect = Callable[[str, str, str, str], bool] | Iterable | None


def protector(protect: Protect) -> Callable[[str, str, str, str], bool]:
    if protect is None:
        return lambda *_: False
    if callable(protect):
        return protect
    keys = {tuple(p) if not isinstance(p, str) else tuple(p.split("/")) for p in protect}
    return lambda o, k, n, v: (o, k, n, v) in keys or (o, KIND_DIRS[k], n, v) in keys


def plan_gc(versions_oldest_first: list[str], current: str | None, keep: int, protected: Callable[[str], bool]) -> list[str]:
    """Pure: versions to delete, keeping the newest ``keep``, current and protected."""
    if keep < 0:
        raise ValueError("keep must be >= 0")
    keep_set = set(versions_oldest_first[-keep:]) if keep else set()
    return [v for v in versions_oldest_first if v not in keep_set and v != current and not protected(v)]


@dataclass
class GcReport:
    dry_run: bool
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    staging_removed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def collect_garbage(store, keep: int = 3, protect: Protect = None, dry_run: bool = False,
                    owner=None, kind=None, name=None, stale_after: float = 24 * 3600) -> GcReport:
    rep = GcReport(dry_run=dry_run)
    user_protected = protector(protect)
    # A base version that a stored adapter was trained against stays: deleting
    # it would make that adapter unloadable.
    used_bases = {
        (r.manifest.adapter.base_owner or r.owner, r.manifest.adapter.base_name, r.manifest.adapter.base_version)
        for r in store.list(kind="adapter") if r.manifest
    }

    def is_protected(o, k, n, v):
        return (k == "base" and (o, n, v) in used_bases) or user_protected(o, k, n, v)

    targets = []
    for o in [owner] if owner else store.owners():
        for k in [kind] if kind else list(KIND_DIRS):
            for n in [name] if name else store.names(o, k):
                targets.append((o, k, n))
    for o, k, n in targets:
        rows = store.list(owner=o, kind=k, name=n)
        cur = next((r.version for r in rows if r.current), None)
        doomed = set(plan_gc([r.version for r in rows], cur, keep, lambda v: is_protected(o, k, n, v)))
        name_dir = store.layout.name_dir(o, k, n)
        for r in rows:
            label = f"{o}/{KIND_DIRS[k]}/{n}/{r.version}"
            if r.version in doomed:
                rep.deleted.append(label)
                if not dry_run:
                    remove_tree(r.path, name_dir / TRASH)
            else:
                rep.kept.append(label)
        staging = name_dir / STAGING
        if staging.is_dir():
            for d in staging.iterdir():
                if time.time() - d.stat().st_mtime > stale_after:
                    rep.staging_removed.append(str(d))
                    if not dry_run:
                        shutil.rmtree(d, ignore_errors=True)
    return rep
