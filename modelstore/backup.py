"""Backup a local ModelStore to S3 and restore it, incremental by checksum,
with rotation (N daily, M weekly snapshots).

Layout under ``s3://bucket/prefix``::

    blobs/<sha256>                       # one object per distinct file content
    snapshots/<YYYYmmddTHHMMSSffffffZ>.json   # the model set: every version's manifest + current pointers

A file whose sha256 is already a blob is not uploaded again (one listing of
``blobs/`` decides; no per-file HEAD), so a backup of an unchanged store PUTs
only its snapshot index. A snapshot index is written last: a backup killed
midway leaves blobs but no snapshot naming them, and the next run reuses them.
Rotation (``plan_rotation``, pure) keeps the newest snapshot of each of the N
most recent days and of each of the M most recent ISO weeks; blobs that no
kept snapshot references are deleted after the snapshot deletions.

Restore brings every version of a snapshot back into a local store through
the same stage -> verify -> atomic rename as publish (``publish.commit``),
with the original manifests (same ``created``, ``source``, checksum); a
version already present with the same checksum is skipped, one present with a
different checksum is an error. Then ``current`` pointers are set as recorded.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .errors import StoreError
from .layout import MANIFEST, validate_relpath
from .manifest import Manifest, now
from .s3 import S3ModelStore

SNAPSHOTS = "snapshots"
BLOBS = "blobs"
SNAPSHOT_FORMAT = 1
_ID_FORMAT = "%Y%m%dT%H%M%S%fZ"


def snapshot_id(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime(_ID_FORMAT)


def parse_snapshot_id(sid: str) -> datetime:
    try:
        return datetime.strptime(sid, _ID_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise StoreError(f"{sid!r} is not a snapshot id (expected like 20261202T080000000000Z)") from None


def plan_rotation(snapshots: list[datetime], keep_daily: int, keep_weekly: int) -> tuple[list[datetime], list[datetime]]:
    """Pure: (keep, delete), each oldest first.

    Daily: the newest snapshot of each of the ``keep_daily`` most recent
    calendar days (UTC) that have one. Weekly: the newest snapshot of each of
    the ``keep_weekly`` most recent ISO weeks that have one. The union is kept;
    the newest snapshot is always kept, whatever N and M are.
    """
    if keep_daily < 0 or keep_weekly < 0:
        raise StoreError("keep_daily and keep_weekly must be >= 0")
    ordered = sorted(set(snapshots), reverse=True)
    keep: set[datetime] = set(ordered[:1])

    def newest_per(bucket, n: int) -> None:
        seen: list = []
        for t in ordered:
            b = bucket(t.astimezone(timezone.utc))
            if b in seen:
                continue
            if len(seen) == n:
                break
            seen.append(b)
            keep.add(t)

    newest_per(lambda t: t.date(), keep_daily)
    newest_per(lambda t: t.isocalendar()[:2], keep_weekly)
    return sorted(keep), sorted(t for t in ordered if t not in keep)


@dataclass
class BackupReport:
    snapshot: str
    versions: int = 0
    files: int = 0
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    skipped_files: int = 0
    kept_snapshots: list[str] = field(default_factory=list)
    deleted_snapshots: list[str] = field(default_factory=list)
    deleted_blobs: int = 0
    puts: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"snapshot {self.snapshot}: {self.versions} versions, {self.files} files; uploaded "
                f"{self.uploaded_files} ({self.uploaded_bytes} bytes), unchanged {self.skipped_files}; "
                f"kept {len(self.kept_snapshots)} snapshots, deleted {len(self.deleted_snapshots)} "
                f"snapshots and {self.deleted_blobs} blobs")


@dataclass
class RestoreReport:
    snapshot: str
    restored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    current: dict[str, str] = field(default_factory=dict)
    downloaded_bytes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"restored snapshot {self.snapshot}: {len(self.restored)} versions restored "
                f"({self.downloaded_bytes} bytes), {len(self.skipped)} already present")


def _remote(url: str, client=None) -> S3ModelStore:
    return S3ModelStore(url, client=client)


def list_snapshots(remote: S3ModelStore) -> list[str]:
    prefix = remote._key(SNAPSHOTS) + "/"
    out = []
    for o in remote._list(prefix, True):
        leaf = o.object_name[len(prefix):]
        if leaf.endswith(".json"):
            out.append(leaf[:-len(".json")])
    return sorted(out)


def _existing_blobs(remote: S3ModelStore) -> dict[str, int]:
    prefix = remote._key(BLOBS) + "/"
    return {o.object_name[len(prefix):]: o.size for o in remote._list(prefix, True)}


def backup(store, url: str, keep_daily: int = 7, keep_weekly: int = 4, when: datetime | None = None,
           client=None, owner: str | None = None) -> BackupReport:
    """Snapshot every committed version of ``store`` (a local ModelStore) to ``url``."""
    import time

    start = time.perf_counter()
    remote = _remote(url, client)
    when = when or now()
    sid = snapshot_id(when)
    rep = BackupReport(snapshot=sid)
    entries, todo = _plan_uploads(store, remote, owner, rep)
    sizes = _upload_blobs(remote, todo)
    rep.uploaded_files, rep.uploaded_bytes = len(sizes), sum(sizes)
    index = {"format": SNAPSHOT_FORMAT, "id": sid, "created": when.isoformat(), "versions": entries}
    # the index last: a backup killed before this line leaves only reusable blobs
    if not remote._put_bytes(remote._key(SNAPSHOTS, f"{sid}.json"),
                             (json.dumps(index, indent=2, sort_keys=True) + "\n").encode(), if_none_match=True):
        raise StoreError(f"snapshot {sid} already exists at {url}")
    _rotate(remote, keep_daily, keep_weekly, rep)
    rep.puts = remote.stats.puts
    rep.seconds = time.perf_counter() - start
    return rep


def _plan_uploads(store, remote: S3ModelStore, owner: str | None, rep: BackupReport) -> tuple[list[dict], dict[str, Path]]:
    """(the snapshot's version entries, sha256 -> a file to upload): incremental by
    checksum, a content already under ``blobs/`` (or queued) is not sent again."""
    rows = [r for r in store.list(owner=owner) if r.manifest is not None]
    have = _existing_blobs(remote)
    todo: dict[str, Path] = {}
    entries = []
    for r in rows:
        entries.append({"owner": r.owner, "kind": r.kind, "name": r.name, "version": r.version,
                        "current": r.current, "manifest": json.loads((r.path / MANIFEST).read_text())})
        rep.versions += 1
        for rel, e in r.manifest.files.items():
            rep.files += 1
            if have.get(e.sha256) == e.size or e.sha256 in todo:
                rep.skipped_files += 1
                continue
            todo[e.sha256] = r.path / rel
    return entries, todo


def _upload_blobs(remote: S3ModelStore, todo: dict[str, Path]) -> list[int]:
    """Upload each file as ``blobs/<sha256>`` in parallel, refusing one whose
    content no longer has the sha256 its manifest recorded; their sizes."""
    from concurrent.futures import ThreadPoolExecutor

    def up(item):
        sha, path = item
        got, size, _etag = remote.upload_file(path, remote._key(BLOBS, sha))
        if got != sha:
            raise StoreError(f"{path} changed since it was published (sha256 {got[:12]}... != {sha[:12]}...); "
                             "run `loraplane modelstore verify` on it")
        return size

    with ThreadPoolExecutor(max_workers=remote.workers, thread_name_prefix="backup") as pool:
        return list(pool.map(up, sorted(todo.items())))


def _rotate(remote: S3ModelStore, keep_daily: int, keep_weekly: int, rep: BackupReport) -> None:
    """Delete the snapshots ``plan_rotation`` drops, then the blobs no kept snapshot references."""
    from minio.deleteobjects import DeleteObject

    ids = list_snapshots(remote)
    keep, delete = plan_rotation([parse_snapshot_id(s) for s in ids], keep_daily, keep_weekly)
    rep.kept_snapshots = [snapshot_id(t) for t in keep]
    rep.deleted_snapshots = [snapshot_id(t) for t in delete]
    if not delete:
        return
    errs = list(remote.client.remove_objects(remote.bucket, [DeleteObject(remote._key(SNAPSHOTS, f"{s}.json"))
                                                             for s in rep.deleted_snapshots]))
    if errs:
        raise StoreError(f"rotation: {errs[0]}")
    referenced = set()
    for s in rep.kept_snapshots:
        for v in _load_index(remote, s)["versions"]:
            referenced.update(f["sha256"] for f in v["manifest"]["files"].values())
    doomed = [sha for sha in _existing_blobs(remote) if sha not in referenced]
    if doomed:
        errs = list(remote.client.remove_objects(remote.bucket, [DeleteObject(remote._key(BLOBS, s)) for s in doomed]))
        if errs:
            raise StoreError(f"rotation: {errs[0]}")
    rep.deleted_blobs = len(doomed)


def _load_index(remote: S3ModelStore, sid: str) -> dict:
    raw = remote._get_bytes(remote._key(SNAPSHOTS, f"{sid}.json"))
    if raw is None:
        raise StoreError(f"no snapshot {sid!r} at {remote.url} (have: {', '.join(list_snapshots(remote)) or 'none'})")
    index = json.loads(raw)
    if index.get("format") != SNAPSHOT_FORMAT:
        raise StoreError(f"snapshot {sid}: unknown format {index.get('format')!r}")
    return index


def restore(store, url: str, snapshot: str | None = None, client=None) -> RestoreReport:
    """Bring the versions of ``snapshot`` (default: the newest) back into ``store`` (a local ModelStore)."""
    from .publish import commit, new_staging
    from .verify import verify_dir

    remote = _remote(url, client)
    if snapshot in (None, "latest"):
        ids = list_snapshots(remote)
        if not ids:
            raise StoreError(f"no snapshots at {url}")
        snapshot = ids[-1]
    parse_snapshot_id(snapshot)
    index = _load_index(remote, snapshot)
    rep = RestoreReport(snapshot=snapshot)
    # bases first: an adapter's base must exist when anything checks it
    for v in sorted(index["versions"], key=lambda v: (v["kind"] != "base", v["owner"], v["name"], v["version"])):
        m = Manifest.model_validate(v["manifest"])
        ref = f"{m.owner}/{m.kind}/{m.name}@{m.version}"
        try:
            have = store.resolve(m.owner, m.kind, m.name, m.version).manifest
        except StoreError:
            have = None
        if have is not None:
            if have.checksum != m.checksum:
                raise StoreError(f"{ref} exists locally with checksum {have.checksum[:12]}..., the snapshot has "
                                 f"{m.checksum[:12]}...; refusing to replace it")
            rep.skipped.append(ref)
        else:
            name_dir = store.layout.name_dir(m.owner, m.kind, m.name)
            name_dir.mkdir(parents=True, exist_ok=True)
            staging = new_staging(name_dir, m.version)
            try:
                remote.download_ranges([(remote._key(BLOBS, e.sha256), staging / validate_relpath(rel), e.size)
                                        for rel, e in m.files.items()])
                (staging / MANIFEST).write_text(json.dumps(v["manifest"], indent=2, sort_keys=True) + "\n")
                check = verify_dir(staging, workers=remote.workers)
                if not check.ok:
                    raise StoreError(f"restoring {ref}: " + check.summary().replace("\n", ";"))
                commit(staging, name_dir, m.version, force=False)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            rep.restored.append(ref)
            rep.downloaded_bytes += m.total_size
        if v.get("current"):
            store.set_current(m.owner, m.kind, m.name, m.version)
            rep.current[f"{m.owner}/{m.kind}/{m.name}"] = m.version
    return rep


__all__ = ["plan_rotation", "backup", "restore", "list_snapshots", "snapshot_id", "parse_snapshot_id",
           "BackupReport", "RestoreReport"]
