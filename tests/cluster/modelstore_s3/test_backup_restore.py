"""`loraplane modelstore backup/restore` against the real S3 server: incremental
by checksum (PUTs counted in the SERVER's access log), rotation, restore."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

from loraplane.modelstore import ModelStore
from loraplane.modelstore.backup import backup, list_snapshots
from loraplane.modelstore.manifest import now
from loraplane.modelstore.s3 import S3ModelStore


def cli(*args: str, env=None) -> dict:
    out = subprocess.run([sys.executable, "-m", "loraplane.cli", "modelstore", *args, "--json"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, **(env or {})))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def puts(lines: list[str], part: str = "") -> list[str]:
    return [ln for ln in lines if (" s3_PutObject " in ln or " s3_UploadPart " in ln or " s3_CopyObject " in ln)
            and part in ln]


def key_of(line: str) -> str:
    """The object key of an access-log line (after the bracketed time, ip, requester, id, operation)."""
    return line.split("]", 1)[1].split()[4]


def shas(store: ModelStore) -> set[str]:
    return {e.sha256 for r in store.list() for e in r.manifest.files.values()}


def test_backup_is_incremental_rotates_and_restores(s3_server, s3_url, tiny_base_dir, make_tiny_adapter, tmp_path):
    store = ModelStore(tmp_path / "store")
    store.publish(tiny_base_dir, kind="base", name="mistral", version="v1")
    store.publish(make_tiny_adapter(seed=1), kind="adapter", name="synth", version="v1", base_name="mistral")
    url = s3_url.replace("/store", "/backups")
    root = str(store.root)

    # 1. first backup (through the API, dated two days ago so daily rotation keeps it
    #    next to today's): every distinct file content once, then the snapshot index
    mark = s3_server.log_mark()
    rep = backup(store, url, keep_daily=7, keep_weekly=4, when=now() - timedelta(days=2))
    first = s3_server.requests_since(mark)
    distinct = shas(store)
    assert rep.uploaded_files == len(distinct) and rep.versions == 2
    assert len({key_of(ln) for ln in puts(first, "/blobs/")}) == len(distinct)
    assert len(puts(first, "/snapshots/")) == 1

    # 2. unchanged store: no blob is uploaded again, one PUT (the index) in all
    mark = s3_server.log_mark()
    rep = cli("backup", "--root", root, "--to", url)
    second = s3_server.requests_since(mark)
    assert rep["uploaded_files"] == 0 and rep["skipped_files"] == rep["files"]
    assert puts(second, "/blobs/") == [] and len(puts(second)) == 1

    # 3. a new adapter version: only its new contents go up
    store.publish(make_tiny_adapter(seed=2), kind="adapter", name="synth", version="v2", base_name="mistral")
    new = shas(store) - distinct
    mark = s3_server.log_mark()
    rep = cli("backup", "--root", root, "--to", url)
    third = s3_server.requests_since(mark)
    assert rep["uploaded_files"] == len(new) >= 1
    assert len({key_of(ln) for ln in puts(third, "/blobs/")}) == len(new)
    print(f"\nPUTs on the server: first backup {len(puts(first))}, unchanged {len(puts(second))}, "
          f"one new adapter version {len(puts(third))} ({len(new)} new blob(s) + index)")

    # 4. restore the newest snapshot into an empty store: same versions, checksums, current pointers
    target = ModelStore(tmp_path / "restored")
    rep = cli("restore", "--root", str(target.root), "--from", url)
    assert len(rep["restored"]) == 3 and rep["skipped"] == []
    got = {(r.kind, r.name, r.version, r.current, r.manifest.checksum, r.manifest.created) for r in target.list()}
    want = {(r.kind, r.name, r.version, r.current, r.manifest.checksum, r.manifest.created) for r in store.list()}
    assert got == want
    for r in target.list():
        assert target.verify(r.owner, r.kind, r.name, r.version).ok
    assert cli("restore", "--root", str(target.root), "--from", url)["restored"] == []  # incremental too

    # 5. restore an older snapshot: a previous model set (before synth v2), current pointers as then
    snaps = list_snapshots(S3ModelStore(url))
    assert len(snaps) == 2  # two days ago, and today's newest (today's earlier ones rotated out: one a day)
    older = snaps[0]
    previous = ModelStore(tmp_path / "previous")
    rep = cli("restore", "--root", str(previous.root), "--from", url, "--snapshot", older)
    assert sorted(rep["restored"]) == ["default/adapter/synth@v1", "default/base/mistral@v1"]
    assert previous.current_version("default", "adapter", "synth") == "v1"

    # 6. rotation: keep 1 daily, 0 weekly -> one snapshot left; blobs only the
    #    dropped adapter v1 used are deleted once v1 is gone from the store.
    store.gc(keep=1, kind="adapter", name="synth")
    assert store.versions("default", "adapter", "synth") == ["v2"]
    only_v1 = distinct - shas(store)
    rep = cli("backup", "--root", root, "--to", url, "--keep-daily", "1", "--keep-weekly", "0")
    assert len(rep["kept_snapshots"]) == 1 and rep["kept_snapshots"][0] == rep["snapshot"]
    assert older in rep["deleted_snapshots"]
    assert rep["deleted_blobs"] == len(only_v1) >= 1
    assert list_snapshots(S3ModelStore(url)) == rep["kept_snapshots"]
