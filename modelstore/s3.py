"""The ModelStore on an S3-compatible bucket (``s3://bucket/prefix``).

Same layout, manifests and per-file sha256 as the local directory store
(store.py), under a key prefix instead of a root directory::

    <prefix>/<owner>/base_models|adapters/<name>/versions/<version>/{files..., manifest.json}
    <prefix>/<owner>/base_models|adapters/<name>/current          # object holding "<version>"
    <prefix>/<owner>/base_models|adapters/<name>/.staging/<version>.<id>/...   # never listed
    <prefix>/<owner>/base_models|adapters/<name>/versions/<version>/.claim     # publisher's claim

Client: the MinIO Python SDK (``minio``; why not boto3: docs/modelstore.md).

Publish (a reader never sees a half-published version; a version exists for
readers only once its ``manifest.json`` does):

1. every file is streamed to ``.staging/<version>.<id>/<rel>`` (multipart,
   parts uploaded in parallel, memory bounded by parts in flight), hashed
   with sha256 and with the S3 ETag algorithm in the same read pass;
2. verify: each staged object's size and ETag must equal what was sent;
3. claim: a conditional PUT (``If-None-Match: *``) of ``versions/<v>/.claim``
   — of two concurrent publishers exactly one gets it, the other a StoreError
   before it copies anything;
4. server-side copy staging -> ``versions/<v>/``; then ``manifest.json`` is
   PUT last, again with ``If-None-Match: *``; the staging objects are deleted.

A publisher killed before 4 leaves only staging objects (and perhaps its
claim; the error of the next publisher names it). Materialise (what a worker
or Job calls) downloads a version into a node-local cache keyed by its
manifest checksum, with parallel ranged GETs, checks every sha256, and
renames the directory into place: a second worker on the node reuses it
without downloading or re-hashing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import StoreError
from .hashing import BUFSIZE, sha256_file
from .layout import KIND_DIRS, MANIFEST, VERSIONS, validate_kind, validate_part, validate_relpath
from .manifest import Manifest, FileEntry, now, total_checksum

ENDPOINT_ENV = "AWS_ENDPOINT_URL"
ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
REGION_ENV = "AWS_REGION"
CLAIM = ".claim"
CURRENT_KEY = "current"
STAGING_DIR = ".staging"
MIB = 1 << 20
DEFAULT_PART_SIZE = 16 * MIB  # S3's minimum part is 5 MiB; 16 MiB parts: 900 parts for 14.5 GB
# Test-only: seconds to sleep after each uploaded file (a test SIGKILLs the publisher mid-upload).
UPLOAD_DELAY_ENV = "LORAPLANE_MODELSTORE_TEST_UPLOAD_DELAY"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise StoreError(f"{url!r} is not an s3://bucket[/prefix] URL")
    prefix = parts.path.strip("/")
    for comp in prefix.split("/") if prefix else []:
        if comp in ("", ".", ".."):
            raise StoreError(f"{url!r}: the prefix has an empty, '.' or '..' component")
    return parts.netloc, prefix


def is_s3_url(value: str | os.PathLike | None) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def client_from_env(env: dict | None = None):
    """A ``minio.Minio`` client from the usual AWS variables.

    ``AWS_ENDPOINT_URL`` (``http://host:port`` or ``https://...``; default AWS),
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``. The
    secret is never logged or put in an error message.
    """
    try:
        from minio import Minio
    except ImportError:
        raise StoreError("the S3 backend needs the 'minio' package: pip install 'loraplane[s3]'") from None
    env = os.environ if env is None else env
    endpoint = env.get(ENDPOINT_ENV) or "https://s3.amazonaws.com"
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise StoreError(f"{ENDPOINT_ENV}={endpoint!r} must be http(s)://host[:port]")
    access, secret = env.get(ACCESS_KEY_ENV), env.get(SECRET_KEY_ENV)
    if not access or not secret:
        raise StoreError(f"S3 credentials missing: set {ACCESS_KEY_ENV} and {SECRET_KEY_ENV}")
    return Minio(parts.netloc, access_key=access, secret_key=secret, secure=parts.scheme == "https",
                 region=env.get(REGION_ENV) or None)


def _s3_error(exc) -> str | None:
    return getattr(exc, "code", None)


class _PartHasher(io.RawIOBase):
    """File reader that computes sha256 and the S3 ETag (md5, or md5 of part md5s) while read."""

    def __init__(self, f, part_size: int, on_chunk=None):
        self.f, self.part_size, self.on_chunk = f, part_size, on_chunk
        self.sha = hashlib.sha256()
        self.part_md5 = hashlib.md5()
        self.in_part = 0
        self.part_digests: list[bytes] = []
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        view = memoryview(data)
        self.sha.update(view)
        pos = 0
        while pos < len(view):
            take = min(len(view) - pos, self.part_size - self.in_part)
            self.part_md5.update(view[pos:pos + take])
            self.in_part += take
            pos += take
            if self.in_part == self.part_size:
                self.part_digests.append(self.part_md5.digest())
                self.part_md5, self.in_part = hashlib.md5(), 0
        self.size += len(data)
        if self.on_chunk and data:
            self.on_chunk(len(data))
        return data

    def etag(self) -> str:
        """The ETag S3 servers without SSE-KMS return: md5 for one PUT, md5 of part md5s + "-N" for multipart."""
        digests = list(self.part_digests) + ([self.part_md5.digest()] if self.in_part else [])
        if len(digests) <= 1:
            return (digests[0] if digests else hashlib.md5().digest()).hex()
        return hashlib.md5(b"".join(digests)).hexdigest() + f"-{len(digests)}"


@dataclass(frozen=True)
class S3StoredVersion:
    owner: str
    kind: str
    name: str
    version: str
    path: str  # s3://bucket/prefix/.../versions/<v>
    manifest: Manifest


@dataclass(frozen=True)
class Materialised:
    path: Path
    manifest: Manifest
    cache_hit: bool
    bytes_downloaded: int
    seconds: float


@dataclass
class TransferStats:
    """What this store object sent and received, counted on the client side (the tests count on the server)."""

    puts: int = 0  # PutObject + UploadPart + CopyObject requests
    bytes_up: int = 0
    bytes_down: int = 0


class S3ModelStore:
    """The ModelStore API (the subset a bucket supports) on ``s3://bucket/prefix``."""

    def __init__(self, url: str, client=None, part_size: int = DEFAULT_PART_SIZE, workers: int = 4,
                 parallel_parts: int = 4):
        self.url = url.rstrip("/")
        self.bucket, self.prefix = parse_s3_url(url)
        self.client = client if client is not None else client_from_env()
        if part_size < 5 * MIB:
            raise StoreError("part_size must be at least 5 MiB (the S3 minimum)")
        self.part_size, self.workers, self.parallel_parts = part_size, max(1, workers), max(1, parallel_parts)
        self.stats = TransferStats()
        self._lock = threading.Lock()

    # -- keys ----------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def name_key(self, owner: str, kind: str, name: str) -> str:
        validate_part("owner", owner)
        return self._key(owner, KIND_DIRS[validate_kind(kind)], validate_part("name", name))

    def version_key(self, owner: str, kind: str, name: str, version: str) -> str:
        return f"{self.name_key(owner, kind, name)}/{VERSIONS}/{validate_part('version', version)}"

    def url_of(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # -- small objects ---------------------------------------------------------
    def _get_bytes(self, key: str) -> bytes | None:
        from minio.error import S3Error

        try:
            resp = self.client.get_object(self.bucket, key)
        except S3Error as e:
            if _s3_error(e) in ("NoSuchKey", "NoSuchObject"):
                return None
            raise StoreError(f"{self.url_of(key)}: {e.code}: {e.message}") from None
        try:
            data = resp.read()
        finally:
            resp.close()
            resp.release_conn()
        with self._lock:
            self.stats.bytes_down += len(data)
        return data

    def _put_bytes(self, key: str, data: bytes, if_none_match: bool = False) -> bool:
        """PUT a small object; with ``if_none_match`` only if absent. False when it existed."""
        from minio.error import S3Error

        headers = {"Content-Type": "application/octet-stream"}
        if if_none_match:
            headers["If-None-Match"] = "*"
        try:
            # minio 7.2's public put_object takes no precondition headers; its
            # single-request PutObject does (the pinned version is tested).
            self.client._put_object(self.bucket, key, data, headers)
        except S3Error as e:
            if if_none_match and _s3_error(e) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise StoreError(f"{self.url_of(key)}: {e.code}: {e.message}") from None
        with self._lock:
            self.stats.puts += 1
            self.stats.bytes_up += len(data)
        return True

    def _stat(self, key: str):
        from minio.error import S3Error

        try:
            return self.client.stat_object(self.bucket, key)
        except S3Error as e:
            if _s3_error(e) in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return None
            raise StoreError(f"{self.url_of(key)}: {e.code}: {e.message}") from None

    def _list(self, prefix: str, recursive: bool):
        return self.client.list_objects(self.bucket, prefix=prefix, recursive=recursive)

    def _delete_prefix(self, prefix: str) -> int:
        from minio.deleteobjects import DeleteObject

        keys = [DeleteObject(o.object_name) for o in self._list(prefix, True)]
        if keys:
            errors = list(self.client.remove_objects(self.bucket, keys))
            if errors:
                raise StoreError(f"deleting {self.url_of(prefix)}: {errors[0]}")
        return len(keys)

    # -- big objects: streaming, parallel ---------------------------------------
    def upload_file(self, path: Path, key: str, on_chunk=None) -> tuple[str, int, str]:
        """Stream ``path`` to ``key``; returns (sha256, size, etag the server must report).

        Multipart above ``part_size``: parts are read in order (hashed as read)
        and ``parallel_parts`` of them are in flight at once, so memory stays
        about ``(parallel_parts + 1) * part_size`` whatever the file size.
        """
        size = path.stat().st_size
        with open(path, "rb", buffering=0) as f:
            reader = _PartHasher(f, self.part_size, on_chunk)
            self.client.put_object(self.bucket, key, reader, size, part_size=self.part_size,
                                   num_parallel_uploads=self.parallel_parts)
        if reader.size != size:
            raise StoreError(f"{path} changed size during upload ({size} -> {reader.size})")
        parts = max(1, -(-size // self.part_size))
        with self._lock:
            self.stats.puts += parts  # one PutObject, or one UploadPart per part
            self.stats.bytes_up += size
        return reader.sha.hexdigest(), size, reader.etag()

    def download_ranges(self, jobs: list[tuple[str, Path, int]], on_chunk=None) -> None:
        """Download each (key, dest, size) with parallel ranged GETs written in place (pwrite).

        Every worker streams its range in 1 MiB chunks: memory stays about
        ``workers`` MiB whatever the sizes.
        """
        tasks = []
        fds: dict[Path, int] = {}
        try:
            for key, dest, size in jobs:
                dest.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.ftruncate(fd, size)
                fds[dest] = fd
                tasks += [(key, fd, off, min(self.part_size, size - off)) for off in range(0, size, self.part_size)]

            def one(task) -> None:
                key, fd, off, length = task
                resp = self.client.get_object(self.bucket, key, offset=off, length=length)
                pos = off
                try:
                    for chunk in resp.stream(BUFSIZE):
                        os.pwrite(fd, chunk, pos)
                        pos += len(chunk)
                        if on_chunk:
                            on_chunk(len(chunk))
                finally:
                    resp.close()
                    resp.release_conn()
                if pos != off + length:
                    raise StoreError(f"{self.url_of(key)}: short read at {pos} (expected {off + length})")

            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="s3get") as pool:
                list(pool.map(one, tasks))
            for fd in fds.values():
                os.fsync(fd)
        finally:
            for fd in fds.values():
                os.close(fd)
        with self._lock:
            self.stats.bytes_down += sum(size for _, _, size in jobs)

    # -- reading ---------------------------------------------------------------
    def current_version(self, owner: str, kind: str, name: str) -> str | None:
        data = self._get_bytes(f"{self.name_key(owner, kind, name)}/{CURRENT_KEY}")
        return None if data is None else validate_part("version", data.decode().strip())

    def _manifest(self, owner: str, kind: str, name: str, version: str) -> Manifest | None:
        key = f"{self.version_key(owner, kind, name, version)}/{MANIFEST}"
        raw = self._get_bytes(key)
        if raw is None:
            return None
        try:
            m = Manifest.model_validate_json(raw)
        except ValueError as e:
            raise StoreError(f"{self.url_of(key)}: invalid manifest: {e}") from None
        if (m.owner, m.kind, m.name, m.version) != (owner, kind, name, version):
            raise StoreError(f"{self.url_of(key)}: manifest describes {(m.owner, m.kind, m.name, m.version)}")
        return m

    def resolve(self, owner: str, kind: str, name: str, version: str | None = None) -> S3StoredVersion:
        if version is None:
            version = self.current_version(owner, kind, name)
            if version is None:
                raise StoreError(f"{owner}/{KIND_DIRS[validate_kind(kind)]}/{name} has no current version")
        m = self._manifest(owner, kind, name, version)
        if m is None:
            raise StoreError(f"{owner}/{KIND_DIRS[kind]}/{name} version {version!r} not found at "
                             f"{self.url_of(self.version_key(owner, kind, name, version))}")
        return S3StoredVersion(owner, kind, name, version, self.url_of(self.version_key(owner, kind, name, version)), m)

    def _subprefixes(self, prefix: str) -> list[str]:
        out = []
        for o in self._list(prefix.rstrip("/") + "/", False):
            if o.is_dir:
                leaf = o.object_name.rstrip("/").rsplit("/", 1)[-1]
                if not leaf.startswith("."):
                    out.append(leaf)
        return sorted(out)

    def owners(self) -> list[str]:
        return [o for o in self._subprefixes(self.prefix) if _valid(o)] if self.prefix else \
            [o.object_name.rstrip("/") for o in self._list("", False) if o.is_dir and _valid(o.object_name.rstrip("/"))]

    def names(self, owner: str, kind: str) -> list[str]:
        return [n for n in self._subprefixes(self._key(validate_part("owner", owner), KIND_DIRS[kind])) if _valid(n)]

    def versions(self, owner: str, kind: str, name: str) -> list[str]:
        """Committed versions only: a version exists once its manifest does."""
        base = f"{self.name_key(owner, kind, name)}/{VERSIONS}"
        return [v for v in self._subprefixes(base) if self._stat(f"{base}/{v}/{MANIFEST}") is not None]

    def list(self, owner: str | None = None, kind: str | None = None, name: str | None = None) -> list[dict]:
        rows = []
        for o in [owner] if owner else self.owners():
            for k in [kind] if kind else list(KIND_DIRS):
                for n in [name] if name else self.names(o, k):
                    cur = self.current_version(o, k, n)
                    for v in self.versions(o, k, n):
                        m = self._manifest(o, k, n, v)
                        rows.append({"owner": o, "kind": k, "name": n, "version": v, "current": v == cur,
                                     "path": self.url_of(self.version_key(o, k, n, v)),
                                     "checksum": m.checksum, "total_size": m.total_size,
                                     "created": m.created.isoformat()})
        return rows

    # -- writing ---------------------------------------------------------------
    def publish(self, src_dir: str | Path, owner: str = "default", kind: str = "base", name: str = "",
                version: str = "", force: bool = False, source: str | None = None, license: str | None = None,
                task: str | None = None, base_name: str | None = None, base_version: str | None = None,
                progress=None, set_current: bool = True, workers: int | None = None,
                base_owner: str | None = None) -> Manifest:
        """Stage, verify, claim, commit (module docstring): readers see the
        version only once its manifest exists; of two publishers one wins."""
        validate_kind(kind)
        vkey = self.version_key(owner, kind, name, version)
        if force:
            raise StoreError("force is not supported on an S3 store: versions on a bucket are immutable; "
                             "publish a new version and move current instead")
        src = Path(src_dir)
        files, extra = self._source(src, owner, kind, task, base_name, base_version, base_owner)
        if self._stat(f"{vkey}/{MANIFEST}") is not None:
            raise StoreError(f"{owner}/{kind}/{name} version {version!r} already exists at {self.url_of(vkey)}")
        publisher = f"{os.uname().nodename}.{os.getpid()}.{uuid.uuid4().hex[:12]}"
        staging = f"{self.name_key(owner, kind, name)}/{STAGING_DIR}/{version}.{publisher}"
        try:
            entries = self._stage(files, staging, progress, workers)
            manifest = Manifest(kind=kind, owner=owner, name=name, version=version,
                                checksum=total_checksum(entries), files=entries,
                                total_size=sum(e.size for e in entries.values()), created=now(),
                                source=source or f"local:{src.resolve()}", license=license, **extra)
        except BaseException:
            self._cleanup(staging + "/")  # nothing was claimed: only our staging objects exist
            raise
        self._claim(vkey, staging, publisher, f"{owner}/{kind}/{name} version {version!r}")
        self._commit(vkey, staging, manifest)
        self._delete_prefix(staging + "/")
        if set_current:
            self.set_current(owner, kind, name, version)
        return manifest

    def _source(self, src: Path, owner: str, kind: str, task: str | None, base_name: str | None,
                base_version: str | None, base_owner: str | None) -> tuple[dict[str, Path], dict]:
        """The files to publish and the kind's manifest fields (an adapter's base must be on the bucket)."""
        from .publish import adapter_metadata, base_metadata, source_files

        files = source_files(src)
        if kind == "base":
            return files, base_metadata(src)
        if not base_name:
            raise StoreError("publishing an adapter needs base_name (the base it was trained on)")
        base = self.resolve(base_owner or owner, "base", base_name, base_version).manifest
        return files, {"adapter": adapter_metadata(src, base, task, owner)}

    def _stage(self, files: dict[str, Path], staging: str, progress, workers: int | None) -> dict[str, FileEntry]:
        """Steps 1-2: stream every file to ``staging`` (hashed as read), then check
        that the server holds exactly what was sent (size and ETag)."""
        delay = float(os.environ.get(UPLOAD_DELAY_ENV) or 0)
        total = sum(p.stat().st_size for p in files.values())
        done = [0]
        lock = threading.Lock()

        def on_chunk(n: int) -> None:
            if progress is not None:
                with lock:
                    done[0] += n
                    progress("upload", done[0], total)

        def up(rel: str):
            sha, size, etag = self.upload_file(files[rel], f"{staging}/{rel}", on_chunk)
            if delay:
                time.sleep(delay)
            return rel, sha, size, etag

        order = sorted(files, key=lambda r: -files[r].stat().st_size)
        n = 1 if delay else (workers or min(self.workers, 4))
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="s3put") as pool:
            sent = list(pool.map(up, order))
        for rel, _sha, size, etag in sent:
            st = self._stat(f"{staging}/{rel}")
            got = (st.etag or "").strip('"') if st else None
            if st is None or st.size != size or (got and got != etag and _md5_like(got)):
                raise StoreError(f"staged {rel} does not match what was sent (size {getattr(st, 'size', None)} "
                                 f"vs {size}, etag {got} vs {etag}); nothing was committed")
        return {rel: FileEntry(sha256=sha, size=size) for rel, sha, size, _ in sent}

    def _claim(self, vkey: str, staging: str, publisher: str, what: str) -> None:
        """Step 3: a conditional PUT of the claim; the loser deletes its staging and is told why."""
        claim = json.dumps({"publisher": publisher, "claimed": now().isoformat(), "staging": staging}).encode()
        if self._put_bytes(f"{vkey}/{CLAIM}", claim, if_none_match=True):
            return
        self._delete_prefix(staging + "/")
        if self._stat(f"{vkey}/{MANIFEST}") is not None:
            raise StoreError(f"{what} already exists (published by another publisher or earlier)")
        held = (self._get_bytes(f"{vkey}/{CLAIM}") or b"{}").decode(errors="replace")
        raise StoreError(f"{what} is being published by another publisher "
                         f"(claim {self.url_of(vkey + '/' + CLAIM)}: {held}); if that publisher died, delete "
                         f"the claim object and publish again")

    def _commit(self, vkey: str, staging: str, manifest: Manifest) -> None:
        """Step 4: server-side copy into the version prefix, the manifest last.

        On failure we hold the claim and no manifest exists: nobody else writes
        under the version, so removing what we copied and the claim leaves the
        version publishable again."""
        try:
            self._copy_all([(f"{staging}/{rel}", f"{vkey}/{rel}", e.size) for rel, e in manifest.files.items()])
            body = (json.dumps(manifest.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True)
                    + "\n").encode()
            if not self._put_bytes(f"{vkey}/{MANIFEST}", body, if_none_match=True):
                raise StoreError(f"{self.url_of(vkey)}: manifest appeared while we held the claim; refusing to overwrite")
        except BaseException:
            try:
                committed = self._stat(f"{vkey}/{MANIFEST}") is not None
            except Exception:  # noqa: BLE001 - unknown: leave the version prefix alone
                committed = True
            self._cleanup(*([staging + "/"] if committed else [vkey + "/", staging + "/"]))
            raise

    def _cleanup(self, *prefixes: str) -> None:
        """Best effort after a failed publish; a failure here must not hide the original error."""
        for prefix in prefixes:
            try:
                self._delete_prefix(prefix)
            except Exception:  # noqa: BLE001 - gc of staging is the fallback
                pass

    def _copy_all(self, pairs: list[tuple[str, str, int]]) -> None:
        from minio.commonconfig import ComposeSource, CopySource

        def one(pair):
            src, dst, size = pair
            if size > 5 * 1024 * MIB:  # CopyObject's limit; compose does a multipart copy
                self.client.compose_object(self.bucket, dst, [ComposeSource(self.bucket, src)])
            else:
                self.client.copy_object(self.bucket, dst, CopySource(self.bucket, src))
            with self._lock:
                self.stats.puts += 1

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="s3copy") as pool:
            list(pool.map(one, pairs))

    def sweep_staging(self, stale_after_s: float = 86400.0, dry_run: bool = False) -> list[str]:
        """Delete staging uploads (left by killed publishers) whose newest object is older
        than ``stale_after_s``; returns their URLs. Committed versions are never touched."""
        from datetime import timedelta

        cutoff = now() - timedelta(seconds=stale_after_s)
        removed = []
        for o in self.owners():
            for k in KIND_DIRS:
                for n in self.names(o, k):
                    prefix = f"{self.name_key(o, k, n)}/{STAGING_DIR}/"
                    newest: dict[str, object] = {}
                    for obj in self._list(prefix, True):
                        upload = obj.object_name[len(prefix):].split("/", 1)[0]
                        t = obj.last_modified
                        if upload not in newest or (t and t > newest[upload]):
                            newest[upload] = t
                    for upload, t in sorted(newest.items()):
                        if t is None or t <= cutoff:
                            removed.append(self.url_of(prefix + upload))
                            if not dry_run:
                                self._delete_prefix(f"{prefix}{upload}/")
        return removed

    def set_current(self, owner: str, kind: str, name: str, version: str) -> None:
        """Point ``current`` at an existing version: one PUT replaces the pointer object atomically."""
        self.resolve(owner, kind, name, version)
        self._put_bytes(f"{self.name_key(owner, kind, name)}/{CURRENT_KEY}", f"{version}\n".encode())

    # -- checking and materialising ----------------------------------------------
    def verify(self, owner: str, kind: str, name: str, version: str | None = None, full: bool = True,
               workers: int | None = None, progress=None):
        """Quick: names and sizes from a listing; full: streams every object through sha256."""
        from .verify import VerifyReport

        sv = self.resolve(owner, kind, name, version)
        vkey = self.version_key(owner, kind, name, sv.version)
        rep = VerifyReport(path=sv.path, mode="full" if full else "quick", checksum=sv.manifest.checksum)
        start = time.perf_counter()
        present = {o.object_name[len(vkey) + 1:]: o.size for o in self._list(vkey + "/", True)}
        present.pop(MANIFEST, None)
        present.pop(CLAIM, None)
        to_hash = []
        for rel, entry in sorted(sv.manifest.files.items()):
            if rel not in present:
                rep.missing.append(rel)
            elif present[rel] != entry.size:
                rep.corrupt.append(rel)
                rep.reasons[rel] = f"size {present[rel]} != {entry.size}"
            else:
                rep.files_checked += 1
                rep.bytes_checked += entry.size
                to_hash.append(rel)
        rep.extra = sorted(set(present) - set(sv.manifest.files))
        if full:
            def digest(rel: str) -> tuple[str, str]:
                h = hashlib.sha256()
                resp = self.client.get_object(self.bucket, f"{vkey}/{rel}")
                try:
                    for chunk in resp.stream(BUFSIZE):
                        h.update(chunk)
                finally:
                    resp.close()
                    resp.release_conn()
                return rel, h.hexdigest()

            with ThreadPoolExecutor(max_workers=workers or self.workers) as pool:
                for rel, got in pool.map(digest, to_hash):
                    if got != sv.manifest.files[rel].sha256:
                        rep.corrupt.append(rel)
                        rep.reasons[rel] = f"sha256 {got[:12]}... != {sv.manifest.files[rel].sha256[:12]}..."
        rep.corrupt.sort()
        rep.ok = not (rep.missing or rep.extra or rep.corrupt)
        rep.seconds = time.perf_counter() - start
        return rep

    def materialise(self, owner: str, kind: str, name: str, version: str | None, cache_dir: str | Path,
                    expect_checksum: str | None = None) -> Materialised:
        """Download a version into ``cache_dir/<manifest checksum>/`` (verified), or reuse it.

        The cache entry appears by one rename only after every file's sha256
        matched the manifest, so its existence means "verified": a second
        worker on the node neither downloads nor re-hashes (a size check only).
        A flipped byte on the bucket is refused here, before anything loads it.
        """
        start = time.perf_counter()
        sv = self.resolve(owner, kind, name, version)
        m = sv.manifest
        if expect_checksum and m.checksum != expect_checksum:
            raise StoreError(f"{sv.path}: checksum {m.checksum[:12]} != expected {expect_checksum[:12]}")
        cache = Path(cache_dir)
        final = cache / m.checksum
        if (final / MANIFEST).is_file():
            from .verify import verify_dir

            rep = verify_dir(final, full=False, manifest=m)
            if rep.ok:
                return Materialised(final, m, True, 0, time.perf_counter() - start)
            shutil.rmtree(final, ignore_errors=True)  # damaged on the node: fetch again
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".tmp-{m.checksum[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            vkey = self.version_key(owner, kind, name, sv.version)
            jobs = [(f"{vkey}/{rel}", tmp / validate_relpath(rel), e.size) for rel, e in m.files.items()]
            self.download_ranges(jobs)
            bad = []
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                for (rel, e), (sha, size) in zip(m.files.items(), pool.map(lambda j: sha256_file(j[1]), jobs)):
                    if sha != e.sha256 or size != e.size:
                        bad.append(f"{rel} (sha256 {sha[:12]}... != {e.sha256[:12]}...)")
            if bad:
                raise StoreError(f"refusing {owner}/{kind}/{name}@{sv.version} from {sv.path}: corrupt: "
                                 + ", ".join(sorted(bad)))
            (tmp / MANIFEST).write_text(json.dumps(m.model_dump(mode="json", exclude_none=True), indent=2,
                                                   sort_keys=True) + "\n")
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / MANIFEST).is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another worker on the node won the race
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Materialised(final, m, False, m.total_size, time.perf_counter() - start)


    def fetch_object(self, url: str, cache_dir: str | Path) -> Path:
        """A plain object on this bucket (a training dataset: it has no manifest) into
        ``cache_dir/.objects/<key and ETag digest>/<name>``: reused while the object's ETag
        is unchanged, and appearing by one rename only once complete."""
        bucket, key = parse_s3_url(url)
        if bucket != self.bucket or not key:
            raise StoreError(f"{url}: not an object on this store's bucket s3://{self.bucket}")
        st = self._stat(key)
        if st is None:
            raise StoreError(f"{url}: no such object")
        tag = hashlib.sha256(f"{key}\0{(st.etag or '').strip(chr(34))}\0{st.size}".encode()).hexdigest()[:32]
        final = Path(cache_dir) / ".objects" / tag / key.rsplit("/", 1)[-1]
        if final.is_file() and final.stat().st_size == st.size:
            return final
        tmp = final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            self.download_ranges([(key, tmp, st.size)])
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final


class CachingS3Store:
    """What a worker or Job reads through: ``resolve`` materialises the version
    into the node-local ``cache_dir`` (see ``S3ModelStore.materialise``) and
    returns a ``StoredVersion`` whose ``path`` is that local, verified copy,
    so code written for the directory store loads it unchanged."""

    # ``resolve`` returns content whose sha256 was checked when it entered the
    # cache (a cache hit is checked by size): callers need not hash it again.
    verifies_content = True

    def __init__(self, url: str, cache_dir: str | Path, client=None):
        self.remote = S3ModelStore(url, client=client)
        self.cache_dir = Path(cache_dir)
        self.last: Materialised | None = None

    def current_version(self, owner: str, kind: str, name: str) -> str | None:
        return self.remote.current_version(owner, kind, name)

    def resolve(self, owner: str, kind: str, name: str, version: str | None = None):
        from .store import StoredVersion

        got = self.remote.materialise(owner, kind, name, version, self.cache_dir)
        self.last = got
        return StoredVersion(owner, kind, name, got.manifest.version, got.path, got.manifest)

    # What a training Job also needs (training_jobs/): same names as the directory store's.
    def verify(self, owner: str, kind: str, name: str, version: str | None = None, full: bool = True, **_kw):
        """The materialised copy against its manifest (a full check hashes it again)."""
        from .verify import verify_dir

        sv = self.resolve(owner, kind, name, version)
        return verify_dir(sv.path, full=full, manifest=sv.manifest)

    def publish(self, src_dir: str | Path, **kw) -> Manifest:
        """The bucket's atomic publish (``S3ModelStore.publish``): stage, verify, claim, commit."""
        return self.remote.publish(src_dir, **kw)

    def fetch_object(self, url: str) -> Path:
        return self.remote.fetch_object(url, self.cache_dir)


def _md5_like(etag: str) -> bool:
    head = etag.split("-", 1)[0]
    return len(head) == 32 and all(c in "0123456789abcdef" for c in head.lower())


def _valid(name: str) -> bool:
    try:
        validate_part("name", name)
        return True
    except StoreError:
        return False


def open_store(root: str | Path | None = None):
    """A ModelStore for a directory, an S3ModelStore for ``s3://bucket/prefix``."""
    from .store import ROOT_ENV, ModelStore

    root = root if root is not None else os.environ.get(ROOT_ENV)
    if is_s3_url(root):
        return S3ModelStore(str(root))
    return ModelStore(root)
