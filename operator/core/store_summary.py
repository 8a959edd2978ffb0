"""A compact summary of one stored version, for the operator.

Run inside the verify Job (``python -m loraplane.operator.core.store_summary ROOT
RELPATH [--verify]``), it prints one JSON line that the Job writes to its
termination message, which the operator reads from the Job's Pod status: the
operator then needs no access to the store volume. When the operator does
mount the store (``--store-root``), it calls ``summarize_dir`` itself.
Why not the whole manifest: a termination message is capped at 4 KiB.

On an S3 store (ROOT ``s3://bucket/prefix``, credentials from the ``AWS_*``
env) ``--verify`` materialises the version into ``$LORAPLANE_MODEL_CACHE``,
which checks every file's sha256 against the manifest before the entry
appears; RELPATH must then name a version in the layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MIB = 1 << 20


def store_relpath(owner: str, kind: str, name: str, version: str) -> str:
    folder = "base_models" if kind == "base" else "adapters"
    return f"{owner}/{folder}/{name}/versions/{version}"


def summarize_manifest(m) -> dict:
    out = {"kind": m.kind, "checksum": m.checksum, "sizeBytes": m.total_size}
    if m.variants:
        out["variants"] = {k: v.vram_mib for k, v in sorted(m.variants.items())}
    if m.adapter is not None:
        out["baseChecksum"] = m.adapter.base_checksum
        out["baseName"] = m.adapter.base_name
        out["rank"] = m.adapter.r
        # Loaded adapter weights take about their stored size (fp16/bf16 safetensors).
        out["vramMiB"] = max(1, -(-m.total_size // MIB))
    return out


def summarize_dir(version_dir: Path) -> dict:
    from loraplane.modelstore import load_manifest
    return summarize_manifest(load_manifest(version_dir))


def summarize_s3(url: str, relpath: str, verify: bool, cache_dir: str | None) -> dict:
    """The summary of a version on a bucket; with ``verify`` it is first
    materialised (downloaded and sha256-checked) into ``cache_dir``."""
    import os
    import tempfile

    from loraplane.modelstore.layout import parse_version_relpath
    from loraplane.modelstore.s3 import CachingS3Store, S3ModelStore

    owner, kind, name, version = parse_version_relpath(relpath)
    if verify:
        cache = cache_dir or os.path.join(tempfile.gettempdir(), "loraplane-model-cache")
        return summarize_manifest(CachingS3Store(url, cache).resolve(owner, kind, name, version).manifest)
    return summarize_manifest(S3ModelStore(url).resolve(owner, kind, name, version).manifest)


def _main_s3(args) -> int:
    import os

    try:
        out = summarize_s3(args.root, args.relpath, args.verify, os.environ.get("LORAPLANE_MODEL_CACHE"))
    except Exception as e:  # noqa: BLE001 - the message is the Job's failure reason (never holds a secret)
        print(f"cannot verify {args.relpath} on {args.root}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, separators=(",", ":")))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loraplane.operator.core.store_summary")
    ap.add_argument("root", help="store root: a directory or s3://bucket/prefix")
    ap.add_argument("relpath")
    ap.add_argument("--verify", action="store_true", help="hash every file against the manifest first")
    args = ap.parse_args(argv)
    if args.root.startswith("s3://"):
        return _main_s3(args)
    vd = Path(args.root) / args.relpath
    if args.verify:
        from loraplane.modelstore import verify_dir
        rep = verify_dir(vd, full=True)
        if not rep.ok:
            print(rep.summary(), file=sys.stderr)
            return 1
    try:
        print(json.dumps(summarize_dir(vd), separators=(",", ":")))
    except Exception as e:  # noqa: BLE001 - the message is the Job's failure reason
        print(f"cannot read manifest under {args.relpath}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
