"""Publish from the Hugging Face hub: pinned revision -> local staging -> publish.

Why: the base checkpoint must come from a known commit, downloaded once,
then go through exactly the same stage/fsync/rename path as a local
directory. The download lands in ``<root>/.downloads/<unique>`` (same
filesystem as the store, removed afterwards); for a store on a bucket, in
``$LORAPLANE_MODEL_CACHE/.downloads`` (the Job's node-local cache volume),
else the temp dir. Network failures become a
StoreError quickly: a single ``model_info`` probe with a short timeout runs
before the (retrying) snapshot download, and ``HF_HUB_OFFLINE=1`` makes
huggingface_hub fail at once. The manifest's source records the resolved
commit sha, so ``main`` becomes a pinned revision in the store.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from .errors import StoreError
from .hashing import Progress

PINNED = re.compile(r"^[0-9a-f]{40}$")


def download_snapshot(repo_id: str, revision: str, token: str | None, dest: Path,
                      endpoint: str | None = None, timeout: float = 10.0) -> tuple[Path, str]:
    """snapshot_download into ``dest`` (plain files, no cache symlinks); (dir, commit sha)."""
    try:
        from huggingface_hub import HfApi, snapshot_download
    except ImportError as e:  # pragma: no cover - declared dependency
        raise StoreError(f"huggingface_hub is not installed: {e}") from None
    # One plain request first (no retry loop): fails in seconds when the hub is
    # unreachable, names 401/404 (gated repo, wrong revision) clearly, and
    # resolves a branch or tag to the commit sha that is then downloaded.
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, token=token, timeout=timeout)
    except Exception as e:
        raise StoreError(f"cannot download hf:{repo_id}@{revision}: {type(e).__name__}: {e}") from None
    sha = getattr(info, "sha", None) or revision
    try:
        path = snapshot_download(
            repo_id=repo_id, revision=sha, token=token, local_dir=str(dest),
            endpoint=endpoint, etag_timeout=timeout, max_workers=4,
        )
    except Exception as e:  # huggingface_hub raises many types; all mean "not fetched"
        raise StoreError(f"cannot download hf:{repo_id}@{sha}: {type(e).__name__}: {e}") from None
    return Path(path), sha


def publish_from_hub(store, repo_id: str, revision: str, token: str | None = None, *,
                     owner: str = "default", kind: str = "base", name: str, version: str,
                     endpoint: str | None = None, require_pinned: bool = False,
                     progress: Progress | None = None, **publish_kwargs):
    """Download ``repo_id`` at ``revision`` and publish it; returns the Manifest."""
    if not revision:
        raise StoreError("a hub publish needs an explicit revision (a commit sha pins it)")
    if require_pinned and not PINNED.match(revision):
        raise StoreError(f"revision {revision!r} is not a 40-hex commit sha; refusing an unpinned download")
    root = getattr(store, "root", None)  # an S3ModelStore has none: use the node-local cache
    scratch = Path(root) if root is not None else Path(os.environ.get("LORAPLANE_MODEL_CACHE") or tempfile.gettempdir())
    downloads = scratch / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    dest = downloads / f"{name}-{version}-{uuid.uuid4().hex[:12]}"
    try:
        src, sha = download_snapshot(repo_id, revision, token, dest, endpoint=endpoint)
        return store.publish(src, owner=owner, kind=kind, name=name, version=version,
                             source=f"hf:{repo_id}@{sha}", progress=progress, **publish_kwargs)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
