"""Streaming sha256 of files, optionally copying while hashing, in parallel.

Why: base checkpoints are ~15 GB, so files are read once in large chunks
(1 MiB default: fewer syscalls, no whole-file buffering) into one reused
buffer. hashlib releases the GIL while it digests chunks larger than 2 KiB,
so a ThreadPoolExecutor hashes several files at once on several cores
without processes. Copy and hash happen in the same pass at publish time,
so publishing never reads a big file twice.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BUFSIZE = 1 << 20
Progress = Callable[[str, int, int], None]  # (phase, done_bytes, total_bytes)


def default_workers() -> int:
    """One thread per core, capped: more threads than cores only thrash disks."""
    return max(1, min(8, os.cpu_count() or 1))


def sha256_file(path: Path, bufsize: int = BUFSIZE, on_chunk: Callable[[int], None] | None = None) -> tuple[str, int]:
    """(hex sha256, size in bytes) of ``path``, streamed in ``bufsize`` chunks."""
    h = hashlib.sha256()
    buf = bytearray(bufsize)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as f:
        _advise_sequential(f.fileno())
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            size += n
            if on_chunk:
                on_chunk(n)
    return h.hexdigest(), size


def copy_and_hash(src: Path, dst: Path, bufsize: int = BUFSIZE, on_chunk: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Copy ``src`` to a new file ``dst`` (fsynced) and return its (sha256, size).

    The digest is of the bytes written, so the manifest describes exactly
    what landed in the store even if the source changes meanwhile.
    """
    h = hashlib.sha256()
    buf = bytearray(bufsize)
    view = memoryview(buf)
    size = 0
    with open(src, "rb", buffering=0) as fin, open(dst, "xb", buffering=0) as fout:
        _advise_sequential(fin.fileno())
        while True:
            n = fin.readinto(buf)
            if not n:
                break
            chunk = view[:n]
            h.update(chunk)
            written = 0
            while written < n:
                written += fout.write(chunk[written:])
            size += n
            if on_chunk:
                on_chunk(n)
        os.fsync(fout.fileno())
    return h.hexdigest(), size


def _advise_sequential(fd: int) -> None:
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError):
        pass


class ByteCounter:
    """Thread-safe running total reported to a progress callback."""

    def __init__(self, phase: str, total: int, progress: Progress | None):
        self.phase, self.total, self.progress = phase, total, progress
        self.done = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        if self.progress is None:
            return
        with self._lock:
            self.done += n
            done = self.done
        self.progress(self.phase, done, self.total)


def hash_files(
    paths: Iterable[Path],
    workers: int | None = None,
    progress: Progress | None = None,
    bufsize: int = BUFSIZE,
) -> dict[Path, tuple[str, int]]:
    """sha256 and size of each path, hashed ``workers`` files at a time.

    Biggest files are submitted first so one huge shard does not start last
    and leave the other threads idle at the end.
    """
    items = [Path(p) for p in paths]
    sizes = {p: p.stat().st_size for p in items}
    counter = ByteCounter("hash", sum(sizes.values()), progress)
    workers = workers or default_workers()
    order = sorted(items, key=lambda p: -sizes[p])
    if workers == 1 or len(order) <= 1:
        return {p: sha256_file(p, bufsize, counter.add) for p in order}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256") as pool:
        futures = {p: pool.submit(sha256_file, p, bufsize, counter.add) for p in order}
        return {p: f.result() for p, f in futures.items()}
