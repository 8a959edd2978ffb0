"""Find the base model to train on: a verified ModelStore version or a local dir.

Why verify: an adapter is only valid for the exact base it was trained on,
and its summary records that base's checksum; training on a corrupt or
half-copied base would publish an adapter pinned to a checksum that lies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig, parse_base_ref


class BaseModelError(RuntimeError):
    pass


@dataclass
class BaseInfo:
    path: Path
    checksum: str
    checksum_source: str  # "store-manifest" | "dir-manifest" | "computed"
    ref: str  # "owner/name@version" or "local:<path>"
    owner: str | None = None
    name: str | None = None  # store name, used when publishing
    version: str | None = None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dir_checksum(path: Path) -> str:
    """sha256 over (relative path, file sha256) of every file, sorted.

    Used only for a local base without a manifest; store bases use the
    manifest's checksum so the summary matches what the store records.
    """
    total = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        total.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
    return total.hexdigest()


def resolve_base(cfg: TrainConfig, store=None) -> BaseInfo:
    """BaseInfo for ``cfg.base`` (via the ModelStore API) or ``cfg.base_dir``."""
    if cfg.base_dir is not None:
        path = Path(cfg.base_dir)
        if not (path / "config.json").is_file():
            raise BaseModelError(f"base dir {path}: no config.json (not a model directory)")
        manifest = path / "manifest.json"
        if manifest.is_file():
            try:
                checksum, src = json.loads(manifest.read_text())["checksum"], "dir-manifest"
            except (KeyError, ValueError):
                checksum, src = dir_checksum(path), "computed"
        else:
            checksum, src = dir_checksum(path), "computed"
        info = BaseInfo(path, checksum, src, f"local:{path}", name=cfg.base_name, version=cfg.base_version)
        if cfg.publish and store is not None:
            info = _match_store_base(info, cfg, store)
        return info

    from loraplane.modelstore import StoreError

    owner, name, version = parse_base_ref(cfg.base or "", cfg.owner)
    if store is None:
        raise BaseModelError("a ModelStore base needs a store (store_root or MODEL_STORE_ROOT)")
    try:
        sv = store.resolve(owner, "base", name, version)
        if cfg.verify_base != "none":
            # a bucket read through the node cache hashed every file as it entered the cache
            full = cfg.verify_base == "full" and not getattr(store, "verifies_content", False)
            report = store.verify(owner, "base", name, sv.version, full=full)
            if not report.ok:
                raise BaseModelError(f"base {owner}/{name}@{sv.version} failed verification: {report.summary()}")
    except StoreError as exc:
        raise BaseModelError(f"base {cfg.base}: {exc}") from exc
    return BaseInfo(Path(sv.path), sv.manifest.checksum, "store-manifest", f"{owner}/{name}@{sv.version}",
                    owner=owner, name=name, version=sv.version)


def _match_store_base(info: BaseInfo, cfg: TrainConfig, store) -> BaseInfo:
    """A local base used to publish under ``base_name`` must BE that store base:
    every file in its manifest present here with the same sha256. Then the
    summary records the store's checksum, the one the adapter's manifest pins."""
    from loraplane.modelstore import StoreError

    try:
        sv = store.resolve(cfg.owner, "base", cfg.base_name, cfg.base_version)
    except StoreError as exc:
        raise BaseModelError(f"base_name {cfg.base_name}: {exc}") from exc
    for rel, entry in sv.manifest.files.items():
        local = info.path / rel
        if not local.is_file() or local.stat().st_size != entry.size or file_sha256(local) != entry.sha256:
            raise BaseModelError(
                f"base dir {info.path} is not the store base {cfg.owner}/{cfg.base_name}@{sv.version}: "
                f"{rel} is {'missing' if not local.is_file() else 'different'}; train with --base instead"
            )
    return BaseInfo(info.path, sv.manifest.checksum, "store-manifest", f"local:{info.path}",
                    owner=cfg.owner, name=cfg.base_name, version=sv.version)
