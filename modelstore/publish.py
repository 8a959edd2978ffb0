"""Publish a local directory as a new version: stage, fsync, rename.

Why this shape: a reader must only ever see complete versions. Files are
copied (and hashed in the same pass) into ``<name>/.staging/<unique>`` on
the same filesystem, the manifest is written last, files and directories
are fsynced, and one ``rename`` makes the version appear. A publish killed
at any point leaves only a hidden staging dir (swept by gc) and ``current``
untouched. Two publishers of the same version both stage, then commit under
an flock: the second finds the version present and gets a StoreError.
``force`` swaps the new dir in with renameat2(RENAME_EXCHANGE), so readers
see the old or the new version, never neither.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import StoreError
from .fsops import exchange, fsync_dir, fsync_tree_dirs, locked, remove_tree
from .hashing import ByteCounter, Progress, copy_and_hash, default_workers
from .layout import LOCK, MANIFEST, STAGING, TRASH, VERSIONS, validate_relpath
from .manifest import AdapterInfo, FileEntry, Manifest, TokenizerInfo, now, total_checksum, write_manifest
from .vram import count_parameters, estimate_variants

# Test-only: seconds to sleep after each copied file, so a test can SIGKILL a
# publisher mid-copy deterministically. Unset (the default) means no sleep.
COPY_DELAY_ENV = "LORAPLANE_MODELSTORE_TEST_COPY_DELAY"
TRAINING_SUMMARY = "training_summary.json"
_SKIP_TOP = {MANIFEST, ".cache"}  # our own manifest; huggingface_hub's local_dir cache
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
)


def source_files(src: Path) -> dict[str, Path]:
    """Relative path -> file for everything to publish from ``src``.

    Symlinked files are copied by content (HF cache snapshots are symlinks
    into blobs); symlinked directories are refused (loops, escapes).
    """
    if not src.is_dir():
        raise StoreError(f"source {src} is not a directory")
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(src):
        d = Path(dirpath)
        if d == src:
            dirnames[:] = [n for n in dirnames if n not in _SKIP_TOP]
        for dn in dirnames:
            if (d / dn).is_symlink():
                raise StoreError(f"source {d / dn} is a symlinked directory; refusing to follow it")
        for fn in filenames:
            p = d / fn
            rel = p.relative_to(src).as_posix()
            if rel in _SKIP_TOP:
                continue
            if not p.is_file():
                raise StoreError(f"source {p} is not a regular file (dangling link or special file)")
            out[validate_relpath(rel)] = p
    if not out:
        raise StoreError(f"source {src} holds no files to publish")
    return out


def base_metadata(src: Path) -> dict:
    """parameters, variants, tokenizer and model_type, read without loading weights."""
    params, _how = count_parameters(src)
    cfg = {}
    if (src / "config.json").is_file():
        cfg = json.loads((src / "config.json").read_text())
    tok_cfg = {}
    if (src / "tokenizer_config.json").is_file():
        tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    tok_files = [f for f in TOKENIZER_FILES if (src / f).is_file()]
    tokenizer = TokenizerInfo(
        files=tok_files,
        tokenizer_class=tok_cfg.get("tokenizer_class"),
        vocab_size=cfg.get("vocab_size"),
        chat_template=bool(tok_cfg.get("chat_template")) or (src / "chat_template.jinja").is_file(),
    )
    return {
        "parameters": params,
        "variants": {v: {"vram_mib": mib} for v, mib in estimate_variants(params).items()},
        "tokenizer": tokenizer,
        "model_type": cfg.get("model_type"),
    }


def adapter_metadata(src: Path, base: Manifest, task: str | None, owner: str) -> AdapterInfo:
    """PEFT fields from adapter_config.json plus the base it must run on."""
    cfg_path = src / "adapter_config.json"
    if not cfg_path.is_file():
        raise StoreError(f"{src} has no adapter_config.json; not a PEFT adapter directory")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise StoreError(f"{cfg_path}: invalid JSON: {e}") from None
    for key in ("peft_type", "r"):
        if key not in cfg:
            raise StoreError(f"{cfg_path}: missing '{key}'")
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    return AdapterInfo(
        base_name=base.name,
        base_owner=None if base.owner == owner else base.owner,
        base_version=base.version,
        base_checksum=base.checksum,
        peft_type=str(cfg["peft_type"]),
        r=int(cfg["r"]),
        alpha=cfg.get("lora_alpha"),
        target_modules=sorted(targets),
        task=task,
        training_summary=TRAINING_SUMMARY if (src / TRAINING_SUMMARY).is_file() else None,
    )


def stage_copy(files: dict[str, Path], staging: Path, progress: Progress | None, workers: int | None) -> dict[str, FileEntry]:
    """Copy+hash every file into ``staging``; returns the manifest entries."""
    total = sum(p.stat().st_size for p in files.values())
    counter = ByteCounter("copy", total, progress)
    delay = float(os.environ.get(COPY_DELAY_ENV) or 0)
    for rel in files:
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)

    def one(rel: str) -> tuple[str, FileEntry]:
        sha, size = copy_and_hash(files[rel], staging / rel, on_chunk=counter.add)
        if delay:
            time.sleep(delay)
        return rel, FileEntry(sha256=sha, size=size)

    order = sorted(files, key=lambda r: -files[r].stat().st_size)
    n = 1 if delay else (workers or default_workers())
    if n == 1:
        return dict(map(one, order))
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="publish") as pool:
        return dict(pool.map(one, order))


def commit(staging: Path, name_dir: Path, version: str, force: bool) -> None:
    """Make ``staging`` visible as ``versions/<version>``; exactly one publisher wins."""
    versions = name_dir / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    target = versions / version
    with locked(name_dir / LOCK):
        if target.exists() or target.is_symlink():
            if not force:
                raise StoreError(
                    f"{name_dir.parent.name}/{name_dir.name} version {version!r} already exists "
                    f"(published by another publisher or earlier); use force to replace it"
                )
            if exchange(staging, target):
                fsync_dir(versions)
                fsync_dir(staging.parent)
                shutil.rmtree(staging, ignore_errors=True)  # now holds the old version
                return
            remove_tree(target, name_dir / TRASH)  # no renameat2: brief gap, still under lock
        try:
            os.rename(staging, target)
        except OSError as e:
            raise StoreError(f"cannot commit {target}: {e}") from None
        fsync_dir(versions)


def new_staging(name_dir: Path, version: str) -> Path:
    staging = name_dir / STAGING / f"{version}.{os.getpid()}.{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    return staging


def publish_dir(
    *,
    src: Path,
    name_dir: Path,
    owner: str,
    kind: str,
    name: str,
    version: str,
    force: bool,
    source: str,
    license: str | None,
    base: Manifest | None,
    task: str | None,
    progress: Progress | None,
    workers: int | None,
) -> Manifest:
    """Stage, hash, write the manifest, fsync and commit. Returns the manifest."""
    files = source_files(src)
    extra: dict = {}
    if kind == "base":
        extra = base_metadata(src)
    else:
        assert base is not None
        extra = {"adapter": adapter_metadata(src, base, task, owner)}
    if (name_dir / VERSIONS / version).exists() and not force:
        raise StoreError(f"{owner}/{kind} {name} version {version!r} already exists; use force to replace it")
    staging = new_staging(name_dir, version)
    try:
        entries = stage_copy(files, staging, progress, workers)
        manifest = Manifest(
            kind=kind, owner=owner, name=name, version=version,
            checksum=total_checksum(entries), files=entries,
            total_size=sum(e.size for e in entries.values()),
            created=now(), source=source, license=license, **extra,
        )
        write_manifest(manifest, staging)
        fsync_tree_dirs(staging)
        commit(staging, name_dir, version, force)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise StoreError(f"publishing {owner}/{kind}/{name}@{version} failed, nothing was committed: {e}") from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
