"""Build ``prometheus`` and ``promtool`` from the Go module
``github.com/prometheus/prometheus`` (pinned in ``versions.PROMETHEUS_MODULE_VERSION``),
cached like the control plane (``build.py``): a scratch module that requires
the pinned version, ``GOTOOLCHAIN=local``, CGO off, ``-trimpath``, and a stamp
``prom-build-info.json`` written last, so an interrupted build is redone and a
finished one is reused.

Prometheus publishes its Go module as ``v0.MMmPP.x`` for release ``vM.mm.PP``
(``v0.316.0`` is Prometheus 3.16.0). The web UI's assets are not embedded
(that needs ``npm`` and the ``builtinassets`` tag): the tests use the HTTP API,
not the UI. Service discovery is cut to file/HTTP/static (``BUILD_TAGS``).

Used by the promtool rule tests and the Prometheus cluster test
(``tests/unit/ops/``); ``make prometheus`` builds it, ``make test`` depends on it.
Standard library only.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import build, versions

MODULE = "github.com/prometheus/prometheus"
BINARIES = ("prometheus", "promtool")
# Only the file and HTTP service discovery (plugins/minimum.go) besides static
# configs: the cloud SD plugins (AWS, Azure, GCE, Kubernetes, ...) triple the
# compile and are not used by the tests, which scrape file-SD targets.
BUILD_TAGS = "remove_all_sd"
STAMP = "prom-build-info.json"


def prom_dir() -> Path:
    return build.cache_root() / "prometheus" / versions.PROMETHEUS_MODULE_VERSION


def bin_dir() -> Path:
    return prom_dir() / "bin"


def promtool() -> Path:
    """The built promtool (built first when missing: a cached build costs nothing)."""
    return build_prometheus(quiet=True) / "promtool"


def prometheus() -> Path:
    return build_prometheus(quiet=True) / "prometheus"


def release_version(module_version: str | None = None) -> str:
    """``v0.316.0`` -> ``3.16.0`` (the release the module version stands for)."""
    v = (module_version or versions.PROMETHEUS_MODULE_VERSION).lstrip("v").split("-")[0]
    _, mmm, patch = v.split(".")
    return f"{int(mmm) // 100}.{int(mmm) % 100}.{patch}"


def missing(directory: Path | None = None) -> list[str]:
    directory = directory or bin_dir()
    stamp = directory / STAMP
    if not stamp.exists():
        return list(BINARIES)
    have = json.loads(stamp.read_text())
    if have.get("module_version") != versions.PROMETHEUS_MODULE_VERSION or have.get("tags") != BUILD_TAGS:
        return list(BINARIES)
    return [b for b in BINARIES if not os.access(directory / b, os.X_OK)]


def ldflags() -> str:
    """Version stamps as Prometheus' promu sets them (``--version``)."""
    pkg = "github.com/prometheus/common/version"
    return (f"-s -w -X {pkg}.Version={release_version()} -X {pkg}.Revision=loraplane-module-build"
            f" -X {pkg}.Branch=module")


def build_prometheus(force: bool = False, quiet: bool = False) -> Path:
    out = bin_dir()
    if not force and not missing(out):
        if not quiet:
            print(f"prometheus and promtool cached in {out} (nothing to build)", flush=True)
        return out
    prom_dir().mkdir(parents=True, exist_ok=True)
    with open(prom_dir() / ".build.lock", "w") as lock:  # one build at a time (parallel test runs)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and not missing(out):  # another process built it while we waited
            return out
        return _build(out)


def _build(out: Path) -> Path:
    if shutil.which("go") is None:
        raise SystemExit("go is not on PATH: it is needed to build prometheus and promtool")
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP).unlink(missing_ok=True)  # written again only once both are built
    src = prom_dir() / "src"
    build._write_scratch(
        src, f"module loraplane.local/prombuild\n\ngo 1.24\n\nrequire {MODULE} {versions.PROMETHEUS_MODULE_VERSION}\n")
    started = time.monotonic()
    build._run(["go", "mod", "download", MODULE], src)
    build._run(["go", "build", "-trimpath", "-tags", BUILD_TAGS, f"-ldflags={ldflags()}", "-o", str(out) + "/"]
               + [f"{MODULE}/cmd/{b}" for b in BINARIES], src)
    seconds = round(time.monotonic() - started, 1)
    absent = [b for b in BINARIES if not os.access(out / b, os.X_OK)]
    if absent:
        raise SystemExit(f"prometheus build finished but these binaries are missing: {absent}")
    info = {"module_version": versions.PROMETHEUS_MODULE_VERSION, "release": release_version(), "tags": BUILD_TAGS,
            "bin_dir": str(out), "built_seconds": seconds}
    (out / STAMP).write_text(json.dumps(info, indent=2))
    print(f"built prometheus+promtool {release_version()} in {seconds} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--print-bin-dir" in argv:
        print(bin_dir())
        return 0
    build_prometheus(force="--force" in argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
