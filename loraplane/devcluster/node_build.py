"""Build the real node's binaries from Go modules, cached next to the control
plane's (``build.bin_dir()``), with their own stamp ``node-build-info.json``
written last: an interrupted build is redone, a finished one is reused.

- kubelet and kube-proxy: the same scratch ``k8s.io/kubernetes`` module and
  the same flags and ldflags as the control plane (``build.py``).
- containerd, containerd-shim-runc-v2 and ctr: module
  ``github.com/containerd/containerd/v2`` at ``versions.CONTAINERD_VERSION``,
  CGO off, tags ``no_btrfs no_devmapper no_zfs`` (those snapshotters need C
  libraries and are not used: the node runs overlayfs).

  Why containerd v2 and not Debian 12's containerd 1.6.20 (which also ran
  pods here): 1.6 does not implement the CRI ``RuntimeConfig`` call (the
  kubelet logs ``unknown method RuntimeConfig``). kubelet v1.37.2 then falls
  back to its own cgroup driver setting but counts the runtime in its
  ``CRILosingSupport`` metric labelled "1.38.0" (cmd/kubelet/app/server.go,
  getCgroupDriverFromCRI): the next minor release drops that fallback.
  containerd 1.6 is also past its upstream end of life. A pinned v2 built
  from its module needs no apt package and moves with our pins.
- ``pause`` and ``nodeprobe``: tiny static Go programs whose source lives in
  ``goprograms/`` (the sandbox image's only file, and a probe the node test
  runs in pods). Their source hash is in the stamp, so an edit rebuilds them.

Standard library only, like ``build.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import build, versions

GO_PROGRAMS_DIR = Path(__file__).resolve().parent / "goprograms"


def programs_hash() -> str:
    """sha256 over every file of ``goprograms/`` (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in GO_PROGRAMS_DIR.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(GO_PROGRAMS_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def wanted_info() -> dict:
    return {"kubernetes": versions.KUBERNETES_VERSION, "containerd": versions.CONTAINERD_VERSION,
            "programs": programs_hash()}


def missing_node_binaries(directory: Path | None = None) -> list[str]:
    """What must be (re)built: everything without a stamp, else what is absent
    or was built from another pin / source."""
    directory = directory or build.bin_dir()
    stamp = directory / build.NODE_STAMP
    if not stamp.exists():
        return list(build.NODE_BINARIES)
    have = json.loads(stamp.read_text())
    want = wanted_info()
    todo = {b for b in build.NODE_BINARIES if not os.access(directory / b, os.X_OK)}
    if have.get("kubernetes") != want["kubernetes"]:
        todo |= set(build.NODE_KUBE_BINARIES)
    if have.get("containerd") != want["containerd"]:
        todo |= set(build.CONTAINERD_BINARIES)
    if have.get("programs") != want["programs"]:
        todo |= set(build.GO_PROGRAMS)
    return [b for b in build.NODE_BINARIES if b in todo]


def ctr_path() -> Path:
    """The ``ctr`` built with containerd (talks to ``CONTAINERD_SOCKET``)."""
    return build.bin_dir() / "ctr"


def build_node_kubernetes(out: Path, work: Path) -> None:
    src = work / "kubernetes"
    gomod = build._fetch_gomod("k8s.io/kubernetes", versions.KUBERNETES_VERSION)
    build._write_scratch(src, build.kubernetes_scratch_gomod(gomod))
    build._run(["go", "mod", "download", "k8s.io/kubernetes"], src)
    build._run(
        ["go", "build", "-trimpath", f"-ldflags={build.kube_ldflags()}", "-o", str(out) + "/"]
        + [f"k8s.io/kubernetes/cmd/{b}" for b in build.NODE_KUBE_BINARIES],
        src,
    )


def containerd_ldflags() -> str:
    """Version stamps as containerd's Makefile sets them (``containerd --version``)."""
    pkg = "github.com/containerd/containerd/v2/version"
    return f"-s -w -X {pkg}.Version={versions.CONTAINERD_VERSION} -X {pkg}.Revision=loraplane-module-build"


def build_containerd(out: Path, work: Path) -> None:
    src = work / "containerd"
    module = "github.com/containerd/containerd/v2"
    build._write_scratch(
        src, f"module loraplane.local/containerdbuild\n\ngo 1.24\n\nrequire {module} {versions.CONTAINERD_VERSION}\n")
    build._run(["go", "mod", "download", module], src)
    build._run(
        ["go", "build", "-trimpath", "-tags", build.CONTAINERD_BUILD_TAGS, f"-ldflags={containerd_ldflags()}",
         "-o", str(out) + "/"] + [f"{module}/cmd/{b}" for b in build.CONTAINERD_BINARIES],
        src,
    )


def build_programs(out: Path, work: Path) -> None:
    build._run(
        ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(out) + "/"]
        + [f"./{name}" for name in build.GO_PROGRAMS],
        GO_PROGRAMS_DIR,
    )


def build_node(force: bool = False) -> Path:
    """Build whatever of the node is missing; return the bin dir."""
    out = build.bin_dir()
    todo = list(build.NODE_BINARIES) if force else missing_node_binaries(out)
    if not todo:
        print(f"node binaries cached in {out} (nothing to build)", flush=True)
        return out
    if shutil.which("go") is None:
        raise SystemExit("go is not on PATH: it is needed to build the node binaries")
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / build.NODE_STAMP
    previous = json.loads(stamp.read_text()) if stamp.exists() else {}
    stamp.unlink(missing_ok=True)  # written again only once everything is built
    work = build.cache_root() / "k8s" / versions.cache_key() / "src"
    work.mkdir(parents=True, exist_ok=True)
    steps = []
    if any(b in todo for b in build.GO_PROGRAMS):
        steps.append(("pause+nodeprobe", build_programs))
    if any(b in todo for b in build.CONTAINERD_BINARIES):
        steps.append(("containerd " + versions.CONTAINERD_VERSION, build_containerd))
    if any(b in todo for b in build.NODE_KUBE_BINARIES):
        steps.append(("kubelet+kube-proxy " + versions.KUBERNETES_VERSION, build_node_kubernetes))
    timings = dict(previous.get("built_seconds", {}))
    for name, step in steps:
        started = time.monotonic()
        step(out, work)
        timings[name] = round(time.monotonic() - started, 1)
        print(f"built {name} in {timings[name]} s", flush=True)
    absent = [b for b in build.NODE_BINARIES if not os.access(out / b, os.X_OK)]
    if absent:
        raise SystemExit(f"node build finished but these binaries are missing: {absent}")
    info = wanted_info() | {"bin_dir": str(out), "built_seconds": timings}
    stamp.write_text(json.dumps(info, indent=2))
    print(json.dumps(info), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    build_node(force="--force" in argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
