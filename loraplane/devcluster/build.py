"""Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
KWOK from their official Go modules into a cache outside git.

Why from modules: this machine kind has no container engine and no
Kubernetes server packages, but it reaches the Go module proxy. The binaries
are cached under ``$LORAPLANE_CACHE`` (default ``~/.cache/loraplane``) in
``k8s/<pins>/bin`` and reused when present; Go's own module and build caches
make a rebuild after a pin change cheap.

Standard library only: this runs before the project's virtualenv exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from . import versions

STAMP = "build-info.json"
# kubectl too: tests drive the cluster with a client of the same version.
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
CONTROL_PLANE_BINARIES = ("etcd", *KUBE_BINARIES, "kwok")
ALL_BINARIES = (*CONTROL_PLANE_BINARIES, "helm")
# The real node (kubelet, kube-proxy, containerd, the pause program) has its
# own stamp next to the control plane's, so either can be rebuilt alone.
NODE_KUBE_BINARIES = ("kubelet", "kube-proxy")
CONTAINERD_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr")
# Tiny static Go programs whose source lives in this package: the sandbox
# ("pause") image's only file, and a probe server the node tests run in pods.
GO_PROGRAMS = ("pause", "nodeprobe")
NODE_BINARIES = (*NODE_KUBE_BINARIES, *CONTAINERD_BINARIES, *GO_PROGRAMS)
NODE_STAMP = "node-build-info.json"
CONTAINERD_BUILD_TAGS = "no_btrfs no_devmapper no_zfs"


def goproxy_url(setting: str | None = None) -> str:
    """The first URL in Go's own GOPROXY setting (``go env GOPROXY``).

    GOPROXY is a list separated by ``,`` or ``|`` whose entries may also be
    ``direct`` or ``off``; only a URL can serve ``/@v/VERSION.mod``.
    """
    if setting is None:
        setting = subprocess.run(["go", "env", "GOPROXY"], check=True, capture_output=True, text=True,
                                 env=_go_env()).stdout.strip()
    for entry in re.split(r"[,|]", setting):
        entry = entry.strip()
        if re.match(r"^(https?|file)://", entry):
            return entry.rstrip("/")
    raise SystemExit(f"`go env GOPROXY` has no proxy URL ({setting!r}); the build reads go.mod files from it")


def cache_root() -> Path:
    return Path(os.environ.get("LORAPLANE_CACHE", Path.home() / ".cache" / "loraplane"))


def bin_dir() -> Path:
    return cache_root() / "k8s" / versions.cache_key() / "bin"


def missing_binaries(directory: Path | None = None) -> list[str]:
    """What must be (re)built; everything when the last build did not finish."""
    directory = directory or bin_dir()
    stamp = directory / STAMP
    if not stamp.exists():
        return list(ALL_BINARIES)
    missing = _absent(directory)
    if json.loads(stamp.read_text()).get("helm") != versions.HELM_VERSION and "helm" not in missing:
        missing.append("helm")
    return missing


def _absent(directory: Path) -> list[str]:
    missing = [b for b in ALL_BINARIES if not os.access(directory / b, os.X_OK)]
    stages = directory.parent / "kwok-stages"
    if "kwok" not in missing and not all((stages / Path(f).name).exists() for f in KWOK_STAGE_FILES):
        missing.append("kwok")
    return missing


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Upstream release builds are static; the local toolchain must suffice
    # (a `toolchain` line in a dependency must not trigger a download).
    env.setdefault("CGO_ENABLED", "0")
    env.setdefault("GOTOOLCHAIN", "local")
    env.setdefault("GOFLAGS", "-mod=mod")
    return env


def _run(cmd: list[str], cwd: Path) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, env=_go_env(), check=True)


def _fetch_gomod(module: str, version: str) -> str:
    """go.mod of a published module version, straight from the proxy."""
    url = f"{goproxy_url()}/{module}/@v/{version}.mod"
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read().decode()


def staging_modules(kubernetes_gomod: str) -> list[str]:
    """Every k8s.io module that kubernetes' go.mod replaces with ./staging.

    The list changes between releases, so it is read from the pinned
    release rather than written down here.
    """
    return sorted(set(re.findall(r"(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", kubernetes_gomod)))


def kubernetes_scratch_gomod(kubernetes_gomod: str) -> str:
    staging = versions.staging_version()
    go_line = re.search(r"^go (\S+)$", kubernetes_gomod, re.M)
    lines = [
        "module loraplane.local/k8sbuild",
        "",
        f"go {go_line.group(1) if go_line else '1.24'}",
        "",
        f"require k8s.io/kubernetes {versions.KUBERNETES_VERSION}",
        "",
        "replace (",
    ]
    lines += [f"\t{m} => {m} {staging}" for m in staging_modules(kubernetes_gomod)]
    lines += [")", ""]
    return "\n".join(lines)


def _write_scratch(directory: Path, gomod: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "go.mod").write_text(gomod)
    # A main package so `go mod tidy`-like resolution has a home; never run.
    (directory / "doc.go").write_text("// Package k8sbuild only pins versions.\npackage k8sbuild\n")


def build_kubernetes(out: Path, work: Path) -> None:
    src = work / "kubernetes"
    gomod = _fetch_gomod("k8s.io/kubernetes", versions.KUBERNETES_VERSION)
    _write_scratch(src, kubernetes_scratch_gomod(gomod))
    _run(["go", "mod", "download", "k8s.io/kubernetes"], src)
    _run(
        ["go", "build", "-trimpath", f"-ldflags={kube_ldflags()}", "-o", str(out) + "/"]
        + [f"k8s.io/kubernetes/cmd/{b}" for b in KUBE_BINARIES],
        src,
    )


def kube_ldflags() -> str:
    """Stamp the version the way upstream's hack/lib/version.sh does, so
    `kubectl version` and version-skew checks see v1.X.Y, not v0.0.0-master."""
    version = versions.KUBERNETES_VERSION
    major, minor = version.lstrip("v").split(".")[:2]
    stamps = {"gitVersion": version, "gitMajor": major, "gitMinor": minor, "gitTreeState": "clean",
              "buildDate": "1970-01-01T00:00:00Z"}
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.{k}={v}" for k, v in stamps.items()]
    return " ".join(flags)


def build_etcd(out: Path, work: Path) -> None:
    # etcd's server module carries `replace ../api` lines, so `go install
    # module@version` refuses it; a scratch module requiring it works.
    src = work / "etcd"
    _write_scratch(
        src,
        "module loraplane.local/etcdbuild\n\ngo 1.24\n\n"
        f"require go.etcd.io/etcd/server/v3 {versions.ETCD_VERSION}\n",
    )
    _run(["go", "mod", "download", "go.etcd.io/etcd/server/v3"], src)
    _run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(out / "etcd"), "go.etcd.io/etcd/server/v3"], src)


# Upstream's default Stages (Apache-2.0), copied next to the binaries so the
# launcher can start KWOK even after `go clean -modcache`.
KWOK_STAGE_FILES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat/node-heartbeat.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)


def stages_dir() -> Path:
    return bin_dir().parent / "kwok-stages"


def build_kwok(out: Path, work: Path) -> None:
    module = f"sigs.k8s.io/kwok@{versions.KWOK_VERSION}"
    print(f"+ GOBIN={out} go install sigs.k8s.io/kwok/cmd/kwok@{versions.KWOK_VERSION}", flush=True)
    env = _go_env() | {"GOBIN": str(out), "GOFLAGS": ""}
    subprocess.run(
        ["go", "install", "-trimpath", "-ldflags=-s -w", f"sigs.k8s.io/kwok/cmd/kwok@{versions.KWOK_VERSION}"],
        cwd=work,
        env=env,
        check=True,
    )
    info = subprocess.run(
        ["go", "mod", "download", "-json", module], cwd=work, env=env, check=True, capture_output=True, text=True
    )
    module_dir = Path(json.loads(info.stdout)["Dir"])
    stages_dir().mkdir(parents=True, exist_ok=True)
    for rel in KWOK_STAGE_FILES:
        shutil.copyfile(module_dir / "kustomize" / "stage" / rel, stages_dir() / Path(rel).name)


def build_helm(out: Path, work: Path) -> None:
    print(f"+ GOBIN={out} go install helm.sh/helm/v3/cmd/helm@{versions.HELM_VERSION}", flush=True)
    env = _go_env() | {"GOBIN": str(out), "GOFLAGS": ""}
    subprocess.run(
        ["go", "install", "-trimpath", "-ldflags=-s -w", f"helm.sh/helm/v3/cmd/helm@{versions.HELM_VERSION}"],
        cwd=work, env=env, check=True,
    )


def build(force: bool = False) -> Path:
    """Build whatever is missing; return the directory holding the binaries."""
    out = bin_dir()
    todo = ALL_BINARIES if force else missing_binaries(out)
    if not todo:
        print(f"control plane binaries cached in {out} (nothing to build)", flush=True)
        return out
    if shutil.which("go") is None:
        raise SystemExit("go is not on PATH: it is needed to build the control plane")
    out.mkdir(parents=True, exist_ok=True)
    work = cache_root() / "k8s" / versions.cache_key() / "src"
    work.mkdir(parents=True, exist_ok=True)
    steps = []
    if "etcd" in todo:
        steps.append(("etcd " + versions.ETCD_VERSION, build_etcd))
    if any(b in todo for b in KUBE_BINARIES):
        steps.append(("kubernetes " + versions.KUBERNETES_VERSION, build_kubernetes))
    if "kwok" in todo:
        steps.append(("kwok " + versions.KWOK_VERSION, build_kwok))
    if "helm" in todo:
        steps.append(("helm " + versions.HELM_VERSION, build_helm))
    timings = {}
    for name, step in steps:
        started = time.monotonic()
        step(out, work)
        timings[name] = round(time.monotonic() - started, 1)
        print(f"built {name} in {timings[name]} s", flush=True)
    still_missing = _absent(out)
    if still_missing:
        raise SystemExit(f"build finished but these binaries are missing: {still_missing}")
    info = {"bin_dir": str(out), "built_seconds": timings, "kubernetes": versions.KUBERNETES_VERSION,
            "etcd": versions.ETCD_VERSION, "kwok": versions.KWOK_VERSION, "helm": versions.HELM_VERSION}
    (out / STAMP).write_text(json.dumps(info, indent=2))
    print(json.dumps(info), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--print-bin-dir" in argv:
        print(bin_dir())
        return 0
    build(force="--force" in argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
