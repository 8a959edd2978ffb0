"""``ModelStore``: the Python API the operator, worker and trainer call.

Why a thin class: each operation lives in its own module (publish, verify,
check, gc); this class binds them to one root and does the name → path
resolution with containment checks, so callers never build store paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import StoreError
from .fsops import replace_symlink
from .hashing import Progress
from .layout import DIR_KINDS, KIND_DIRS, VERSIONS, Layout, read_current, validate_kind, validate_part
from .manifest import Manifest, load_manifest
from .publish import publish_dir
from .verify import VerifyReport, verify_dir

ROOT_ENV = "MODEL_STORE_ROOT"


@dataclass(frozen=True)
class StoredVersion:
    owner: str
    kind: str
    name: str
    version: str
    path: Path
    manifest: Manifest


@dataclass(frozen=True)
class ListedVersion:
    """One version as listed: manifest summary, or the error reading it."""

    owner: str
    kind: str
    name: str
    version: str
    path: Path
    current: bool
    manifest: Manifest | None
    error: str | None

    def to_dict(self) -> dict:
        m = self.manifest
        return {
            "owner": self.owner, "kind": self.kind, "name": self.name, "version": self.version,
            "path": str(self.path), "current": self.current,
            "checksum": m.checksum if m else None,
            "total_size": m.total_size if m else None,
            "created": m.created.isoformat() if m else None,
            "error": self.error,
        }


def _subdirs(d: Path) -> list[str]:
    """Names of non-hidden subdirectories of ``d`` (none if ``d`` is absent)."""
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _valid(name: str) -> bool:
    try:
        validate_part("name", name)
        return True
    except StoreError:
        return False


class ModelStore:
    def __init__(self, root: str | Path | None = None):
        root = root if root is not None else os.environ.get(ROOT_ENV)
        if not root:
            raise StoreError(f"no store root given and {ROOT_ENV} is not set")
        self.root = Path(root).absolute()
        self.layout = Layout(self.root)

    # -- reading -----------------------------------------------------------
    def current_version(self, owner: str, kind: str, name: str) -> str | None:
        link = self.layout.current_link(owner, kind, name)
        return read_current(link)

    def resolve(self, owner: str, kind: str, name: str, version: str | None = None) -> StoredVersion:
        """The stored version (``None`` = ``current``), manifest loaded and matched."""
        if version is None:
            version = self.current_version(owner, kind, name)
            if version is None:
                raise StoreError(f"{owner}/{KIND_DIRS[validate_kind(kind)]}/{name} has no current version")
        vdir = self.layout.version_dir(owner, kind, name, version)
        if not vdir.is_dir():
            raise StoreError(f"{owner}/{KIND_DIRS[kind]}/{name} version {version!r} not found at {vdir}")
        self.layout.checked(vdir)
        m = load_manifest(vdir)
        got = (m.owner, m.kind, m.name, m.version)
        if got != (owner, kind, name, version):
            raise StoreError(f"{vdir}: manifest describes {got}, not {(owner, kind, name, version)}")
        return StoredVersion(owner, kind, name, version, vdir, m)

    def owners(self) -> list[str]:
        """Valid owner dirs; ``lost+found`` and other invalid names are skipped (see ``strays``)."""
        return [n for n in _subdirs(self.root) if _valid(n)]

    def names(self, owner: str, kind: str) -> list[str]:
        return [n for n in _subdirs(self.layout.kind_dir(owner, kind)) if _valid(n)]

    def strays(self, owner: str | None = None) -> list[Path]:
        """Directories whose names the layout does not allow (for ``check`` to report)."""
        out = [self.root / n for n in _subdirs(self.root) if not _valid(n) and n != "lost+found"] if not owner else []
        for o in [owner] if owner else self.owners():
            for k in KIND_DIRS:
                out += [self.layout.kind_dir(o, k) / n for n in _subdirs(self.layout.kind_dir(o, k)) if not _valid(n)]
        return out

    def versions(self, owner: str, kind: str, name: str) -> list[str]:
        d = self.layout.versions_dir(owner, kind, name)
        return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []

    def list(self, owner: str | None = None, kind: str | None = None, name: str | None = None) -> list[ListedVersion]:
        """Every committed version (staging dirs are never listed), oldest first per name."""
        out: list[ListedVersion] = []
        for o in [owner] if owner else self.owners():
            for k in [kind] if kind else list(KIND_DIRS):
                for n in [name] if name else self.names(o, k):
                    try:
                        cur = self.current_version(o, k, n)
                    except StoreError:
                        cur = None
                    rows = []
                    for v in self.versions(o, k, n):
                        path = self.layout.versions_dir(o, k, n) / v
                        m, err = None, None
                        try:
                            validate_part("version", v)
                            self.layout.checked(path)
                            m = load_manifest(path)
                        except StoreError as e:
                            err = str(e)
                        rows.append(ListedVersion(o, k, n, v, path, v == cur, m, err))
                    rows.sort(key=lambda r: (r.manifest.created.timestamp() if r.manifest else 0.0, r.version))
                    out.extend(rows)
        return out

    # -- writing -----------------------------------------------------------
    def publish(
        self,
        src_dir: str | Path,
        owner: str = "default",
        kind: str = "base",
        name: str = "",
        version: str = "",
        force: bool = False,
        source: str | None = None,
        license: str | None = None,
        task: str | None = None,
        base_name: str | None = None,
        base_version: str | None = None,
        progress: Progress | None = None,
        set_current: bool = True,
        workers: int | None = None,
        base_owner: str | None = None,
    ) -> Manifest:
        """Publish ``src_dir`` as ``owner/kind/name@version``; see publish.py for guarantees."""
        validate_kind(kind)
        name_dir = self.layout.name_dir(owner, kind, name)
        validate_part("version", version)
        src = Path(src_dir)
        base = None
        if kind == "adapter":
            if not base_name:
                raise StoreError("publishing an adapter needs base_name (the base it was trained on)")
            base = self.resolve(base_owner or owner, "base", base_name, base_version).manifest
        name_dir.mkdir(parents=True, exist_ok=True)
        self.layout.checked(name_dir)
        manifest = publish_dir(
            src=src, name_dir=name_dir, owner=owner, kind=kind, name=name, version=version,
            force=force, source=source or f"local:{src.resolve()}", license=license,
            base=base, task=task, progress=progress, workers=workers,
        )
        if set_current:
            self.set_current(owner, kind, name, version)
        return manifest

    def set_current(self, owner: str, kind: str, name: str, version: str) -> None:
        """Atomically point ``current`` at an existing version (also for rollback)."""
        self.resolve(owner, kind, name, version)
        replace_symlink(self.layout.current_link(owner, kind, name), f"{VERSIONS}/{version}")

    # -- checking ----------------------------------------------------------
    def verify(
        self, owner: str, kind: str, name: str, version: str | None = None, full: bool = True,
        workers: int | None = None, progress: Progress | None = None,
    ) -> VerifyReport:
        sv = self.resolve(owner, kind, name, version)
        return verify_dir(sv.path, full=full, workers=workers, progress=progress, manifest=sv.manifest)

    def resolve_verified(self, owner: str, kind: str, name: str, version: str | None = None,
                         full: bool = True, workers: int | None = None) -> StoredVersion:
        """``resolve`` then ``verify``; StoreError naming the damaged files if not ok.

        What the worker calls before loading: a corrupted adapter is refused.
        """
        sv = self.resolve(owner, kind, name, version)
        rep = verify_dir(sv.path, full=full, workers=workers, manifest=sv.manifest)
        if not rep.ok:
            raise StoreError(f"refusing {owner}/{kind}/{name}@{sv.version}: " + rep.summary().replace("\n", ";"))
        return sv

    def check(self, dry_run: bool | None = None, owner: str | None = None, workers: int | None = None):
        from .check import check_model_store

        return check_model_store(self, dry_run=dry_run, owner=owner, workers=workers)

    def gc(self, keep: int = 3, protect=None, dry_run: bool = False, owner: str | None = None,
           kind: str | None = None, name: str | None = None):
        from .gc import collect_garbage

        return collect_garbage(self, keep=keep, protect=protect, dry_run=dry_run, owner=owner, kind=kind, name=name)


__all__ = ["ModelStore", "StoredVersion", "ListedVersion", "ROOT_ENV", "DIR_KINDS"]
