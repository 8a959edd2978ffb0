"""Verify a stored version against its manifest: missing, extra, corrupt files.

Why: the worker must refuse a corrupted adapter before it serves it, and a
Job must be able to tell a damaged base from a healthy one by exit code.
Quick mode compares names and sizes (stat only: seconds even for 15 GB);
full mode streams every byte through sha256, several files at a time.
A symlink inside a version dir is reported as corrupt: the store only ever
writes regular files, so a link is either tampering or an escape attempt.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import StoreError
from .hashing import Progress, hash_files
from .layout import MANIFEST
from .manifest import Manifest, load_manifest


@dataclass
class VerifyReport:
    path: str
    mode: str  # "full" | "quick"
    ok: bool = True
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # manifest unreadable / invalid
    checksum: str | None = None
    files_checked: int = 0
    bytes_checked: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        if self.error:
            return f"FAILED {self.path}: {self.error}"
        head = f"{'OK' if self.ok else 'FAILED'} {self.path} ({self.mode}, {self.files_checked} files, {self.bytes_checked} bytes)"
        lines = [head]
        for label, names in (("missing", self.missing), ("extra", self.extra), ("corrupt", self.corrupt)):
            for n in names:
                why = self.reasons.get(n)
                lines.append(f"  {label}: {n}" + (f" ({why})" if why else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def _walk(version_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """Regular files under version_dir by relative path, plus symlinks found."""
    files: dict[str, Path] = {}
    links: list[str] = []
    for dirpath, dirnames, filenames in os.walk(version_dir):
        d = Path(dirpath)
        for dn in list(dirnames):
            if (d / dn).is_symlink():
                links.append((d / dn).relative_to(version_dir).as_posix())
                dirnames.remove(dn)
        for fn in filenames:
            p = d / fn
            rel = p.relative_to(version_dir).as_posix()
            if rel == MANIFEST:
                continue
            if p.is_symlink():
                links.append(rel)
            else:
                files[rel] = p
    return files, links


def verify_dir(
    version_dir: str | Path,
    full: bool = True,
    workers: int | None = None,
    progress: Progress | None = None,
    manifest: Manifest | None = None,
) -> VerifyReport:
    """Check ``version_dir`` against its manifest.json; never raises for damage."""
    vd = Path(version_dir)
    rep = VerifyReport(path=str(vd), mode="full" if full else "quick")
    start = time.perf_counter()
    if manifest is None:
        try:
            manifest = load_manifest(vd)
        except StoreError as e:
            rep.ok, rep.error = False, str(e)
            return rep
    rep.checksum = manifest.checksum
    present, links = _walk(vd)
    for rel in links:
        rep.corrupt.append(rel)
        rep.reasons[rel] = "symlink inside a stored version"
    link_set = set(links)
    to_hash: list[tuple[str, Path]] = []
    for rel, entry in sorted(manifest.files.items()):
        if rel in link_set:
            continue
        p = present.get(rel)
        if p is None:
            rep.missing.append(rel)
            continue
        size = p.stat().st_size
        if size != entry.size:
            rep.corrupt.append(rel)
            rep.reasons[rel] = f"size {size} != {entry.size}"
            continue
        rep.files_checked += 1
        rep.bytes_checked += size
        if full:
            to_hash.append((rel, p))
    rep.extra = sorted(set(present) - set(manifest.files))
    if to_hash:
        digests = hash_files([p for _, p in to_hash], workers=workers, progress=progress)
        for rel, p in to_hash:
            got = digests[p][0]
            if got != manifest.files[rel].sha256:
                rep.corrupt.append(rel)
                rep.reasons[rel] = f"sha256 {got[:12]}... != {manifest.files[rel].sha256[:12]}..."
    rep.corrupt.sort()
    rep.ok = not (rep.missing or rep.extra or rep.corrupt)
    rep.seconds = time.perf_counter() - start
    return rep
