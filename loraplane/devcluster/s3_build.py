"""Build a real S3 server for the ModelStore's S3 tests: versitygw (the Versity
S3 Gateway, ``github.com/versity/versitygw``, Apache-2.0) from its Go module,
cached like the control plane (``build.py``) and Prometheus (``prom_build.py``):
a scratch module that requires the pinned version, ``GOTOOLCHAIN=local``, CGO
off, ``-trimpath``, and a stamp ``s3-build-info.json`` written last, so an
interrupted build is redone and a finished one is reused.

Why versitygw and not MinIO: both build from their modules and both honour
conditional ``PutObject`` with ``If-None-Match: *`` (checked by
``tests/cluster/modelstore_s3`` for versitygw, by hand for MinIO); versitygw
has semver releases (MinIO's module only pseudo-versions), builds in half
MinIO's time here (194 s vs 400 s cold), and its ``posix`` backend keeps
objects as plain files under a directory, which the tests use to flip a
byte "on the server". Figures: docs/testing.md.

``make s3-server`` builds it; ``make test`` depends on it. Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from . import build

MODULE = "github.com/versity/versitygw"
VERSION = "v1.8.0"
BINARY = "versitygw"
STAMP = "s3-build-info.json"


def s3_dir() -> Path:
    return build.cache_root() / "s3" / "versitygw" / VERSION


def bin_dir() -> Path:
    return s3_dir() / "bin"


def binary() -> Path:
    """The built versitygw (built first when missing: a cached build costs nothing)."""
    return build_s3_server(quiet=True) / BINARY


def missing(directory: Path | None = None) -> bool:
    directory = directory or bin_dir()
    stamp = directory / STAMP
    if not stamp.exists():
        return True
    if json.loads(stamp.read_text()).get("version") != VERSION:
        return True
    return not os.access(directory / BINARY, os.X_OK)


def build_s3_server(force: bool = False, quiet: bool = False) -> Path:
    out = bin_dir()
    if not force and not missing(out):
        if not quiet:
            print(f"versitygw {VERSION} cached in {out} (nothing to build)", flush=True)
        return out
    if shutil.which("go") is None:
        raise SystemExit("go is not on PATH: it is needed to build the S3 server (versitygw)")
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP).unlink(missing_ok=True)  # written again only once the binary is built
    src = s3_dir() / "src"
    build._write_scratch(src, f"module loraplane.local/s3build\n\ngo 1.25.0\n\nrequire {MODULE} {VERSION}\n")
    started = time.monotonic()
    build._run(["go", "mod", "download", MODULE], src)
    # The scratch go.mod names only versitygw; `go get` records its requirements
    # (go.sum and the indirect lines) so `go build` may use them.
    build._run(["go", "get", f"{MODULE}/cmd/{BINARY}@{VERSION}"], src)
    build._run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(out / BINARY), f"{MODULE}/cmd/{BINARY}"], src)
    seconds = round(time.monotonic() - started, 1)
    if not os.access(out / BINARY, os.X_OK):
        raise SystemExit(f"versitygw build finished but {out / BINARY} is missing")
    info = {"module": MODULE, "version": VERSION, "bin_dir": str(out), "built_seconds": seconds}
    (out / STAMP).write_text(json.dumps(info, indent=2))
    print(f"built versitygw {VERSION} in {seconds} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--print-bin-dir" in argv:
        print(bin_dir())
        return 0
    build_s3_server(force="--force" in argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
