"""Build the operator and worker images: ``loraplane images build``.

With buildah (``bud --isolation chroot --layers``) on a machine without a
container engine, or with ``docker build`` where a Docker engine answers.

buildah keeps its own store under ``$LORAPLANE_CACHE/images/storage`` with the
``overlay`` driver (``$LORAPLANE_BUILDAH_DRIVER`` overrides it). ``vfs`` was
measured first and dropped: it stores every build step, ENV/ARG/USER included,
as a full copy of the filesystem (the 380 MB operator image took 15 copies,
4.4 GB); for the 6 GB worker that is tens of GB. overlay stores diffs. Where no registry is reachable the base image is made
locally: a Debian bookworm root filesystem by ``debootstrap --variant=minbase``
(the mirror is read from apt's own sources), imported with
``buildah from scratch`` / ``add`` / ``commit`` and passed as ``BASE_IMAGE``.

Every image is cached by a content hash over its Dockerfile, every file its
build context uses (COPY sources and ``RUN --mount=type=bind`` sources), the
base image's id and the build arguments: the tag is
``localhost/loraplane/<name>:<hash12>`` and the OCI archive
``$LORAPLANE_CACHE/images/<name>-<hash12>.oci.tar`` (written to a temporary
name, then renamed). An unchanged tree rebuilds nothing; a new hash prunes
the older tags and archives of the same name.

buildah 1.28 does not hash the files of ``RUN --mount=type=bind`` into its
layer cache, so the Dockerfiles declare ``ARG DEPS_HASH`` / ``ARG
SOURCE_HASH`` before the RUN steps that use them, and this module sets them:
a changed file changes the argument and so invalidates exactly the layers
that read it.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import build as k8s_build

ROOT = Path(__file__).resolve().parents[2]
# image name -> Dockerfile (relative to the repository root = build context)
IMAGES: dict[str, str] = {"operator": "Dockerfile", "worker": "worker_image/Dockerfile"}
REPO_PREFIX = "localhost/loraplane"

BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "tini")
# Bump when the recipe of the debootstrap base changes (part of its tag).
BASE_RECIPE = "1"
REGISTRY_BASE = "python:3.11-slim"  # the Dockerfiles' default BASE_IMAGE

HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA = "/run/host-ca.crt"  # where the host CA is mounted for pip; never the image's bundle

EXCLUDED_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
EXCLUDED_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    archive: Path
    size_bytes: int  # of the OCI archive
    seconds: float  # wall time of this call for the image (0-ish when cached)
    cached: bool


def images_dir() -> Path:
    return k8s_build.cache_root() / "images"


def default_ctr() -> Path:
    """Where the real node's build puts ctr: ~/.cache/loraplane/k8s/<cache_key>/bin/ctr."""
    return k8s_build.bin_dir() / "ctr"


DEFAULT_CONTAINERD_ADDRESS = "/run/loraplane-node/containerd/containerd.sock"


def log(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ apt mirror
def apt_mirror(sources: str, suite: str = BASE_SUITE) -> str | None:
    """The first ``deb`` URI serving ``suite`` (not -security/-updates) in apt sources text.

    Understands both the one-line format (``deb [opts] URI SUITE COMPONENTS``)
    and deb822 (``Types: / URIs: / Suites:`` stanzas).
    """
    for line in sources.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 3 and words[0] == "deb":
            rest = words[1:]
            if rest[0].startswith("["):
                while rest and not rest[0].endswith("]"):
                    rest = rest[1:]
                rest = rest[1:]
            if len(rest) >= 2 and rest[1] == suite:
                return rest[0].rstrip("/")
    for stanza in re.split(r"\n\s*\n", sources):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            line = line.split("#", 1)[0] if line.lstrip().startswith("#") else line
            m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
            if m:
                fields[m.group(1).lower()] = m.group(2)
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0].rstrip("/")
    return None


def host_apt_mirror(suite: str = BASE_SUITE, etc: Path = Path("/etc/apt")) -> str:
    files = [etc / "sources.list"] + sorted((etc / "sources.list.d").glob("*.list")) \
        + sorted((etc / "sources.list.d").glob("*.sources"))
    for f in files:
        if f.is_file():
            mirror = apt_mirror(f.read_text(errors="replace"), suite)
            if mirror:
                return mirror
    raise RuntimeError(f"no deb source for {suite} in {etc}/sources.list(.d); "
                       "debootstrap needs the mirror apt uses")


# ------------------------------------------------------------------ content hash
def dockerfile_sources(text: str) -> list[str]:
    """Context paths a Dockerfile reads: COPY/ADD sources (not --from) and RUN bind-mount sources."""
    joined = re.sub(r"\\\n", " ", text)
    sources: list[str] = []
    for line in joined.splitlines():
        words = line.strip().split()
        if not words:
            continue
        op = words[0].upper()
        if op in ("COPY", "ADD"):
            args = [w for w in words[1:]]
            if any(a.startswith("--from") for a in args):
                continue
            paths = [a for a in args if not a.startswith("--")]
            sources += paths[:-1]
        elif op == "RUN":
            for w in words[1:]:
                if w.startswith("--mount="):
                    opts = dict(kv.split("=", 1) for kv in w[len("--mount="):].split(",") if "=" in kv)
                    if opts.get("type", "bind") == "bind" and "from" not in opts:
                        sources.append(opts.get("source", opts.get("src", ".")))
    seen: list[str] = []
    for s in sources:
        s = s.strip("/") or "."
        if s not in seen:
            seen.append(s)
    return seen


def context_files(root: Path, sources: list[str]) -> list[Path]:
    """Every file under the given context paths, sorted, without bytecode caches."""
    out: set[Path] = set()
    for s in sources:
        p = root / s
        if p.is_file():
            out.add(p)
        elif p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS and not d.endswith(".egg-info")]
                for f in filenames:
                    if not f.endswith(EXCLUDED_SUFFIXES):
                        out.add(Path(dirpath) / f)
        else:
            raise FileNotFoundError(f"build context path {s!r} does not exist under {root}")
    return sorted(out)


def files_hash(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).hexdigest().encode() + b"\n")
    return h.hexdigest()


def deps_hash(root: Path) -> str:
    """What the dependency layer reads: the pins and the declared dependencies."""
    return files_hash(root, [root / "constraints.txt", root / "pyproject.toml"])


def content_hash(root: Path, dockerfile: str, base_id: str, build_args: dict[str, str]) -> str:
    text = (root / dockerfile).read_text()
    h = hashlib.sha256()
    h.update(b"dockerfile\0" + text.encode())
    h.update(b"constraints\0" + (root / "constraints.txt").read_bytes())
    h.update(b"context\0" + files_hash(root, context_files(root, dockerfile_sources(text))).encode())
    h.update(b"base\0" + base_id.encode())
    for k in sorted(build_args):
        h.update(f"arg\0{k}={build_args[k]}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------ builders
def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command; its output goes to stderr (stdout is for the image references)."""
    log("$ " + shlex.join(str(c) for c in cmd))
    kw.setdefault("stdout", sys.stderr)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def docker_engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    r = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                       capture_output=True, text=True, timeout=30)
    return r.returncode == 0 and bool(r.stdout.strip())


class Buildah:
    name = "buildah"

    def __init__(self, driver: str | None = None, root: Path | None = None) -> None:
        if not shutil.which("buildah"):
            raise RuntimeError("neither a Docker engine nor buildah is available (apt-get install buildah)")
        driver = driver or os.environ.get("LORAPLANE_BUILDAH_DRIVER", "overlay")
        root = root or images_dir() / "storage" / driver
        root.mkdir(parents=True, exist_ok=True)
        self.base = ["buildah", "--storage-driver", driver, "--root", str(root),
                     "--runroot", f"/run/loraplane-buildah-{driver}"]

    def image_id(self, ref: str) -> str | None:
        r = subprocess.run(self.base + ["inspect", "--type", "image", "--format", "{{.FromImageID}}", ref],
                           capture_output=True, text=True)
        return r.stdout.strip() or None if r.returncode == 0 else None

    def image_size(self, ref: str) -> int | None:
        r = subprocess.run(self.base + ["images", "--json", ref], capture_output=True, text=True)
        if r.returncode != 0:
            return None
        try:
            return int(json.loads(r.stdout)[0]["size"])
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    def pull(self, ref: str) -> None:
        _run(self.base + ["pull", ref])

    def build(self, dockerfile: Path, tag: str, args: dict[str, str], volumes: list[str], context: Path) -> None:
        cmd = self.base + ["bud", "--isolation", "chroot", "--layers", "--pull=never" if args.get("BASE_IMAGE", "").startswith("localhost/") else "--pull=missing",
                           "-f", dockerfile, "-t", tag]
        for k, v in args.items():
            cmd += ["--build-arg", f"{k}={v}"]
        for v in volumes:
            cmd += ["--volume", v]
        _run(cmd + [context])

    def save(self, tag: str, dest: Path) -> None:
        _run(self.base + ["push", tag, f"oci-archive:{dest}:{tag}"])

    def tags(self, repo: str) -> list[str]:
        r = subprocess.run(self.base + ["images", "--format", "{{.Name}}:{{.Tag}}"],
                           capture_output=True, text=True, check=True)
        return [t for t in r.stdout.split() if t.rsplit(":", 1)[0] == repo]

    def remove(self, ref: str) -> None:
        subprocess.run(self.base + ["rmi", ref], capture_output=True)

    def import_rootfs(self, tar: Path, ref: str) -> None:
        ctr = subprocess.run(self.base + ["from", "scratch"], capture_output=True, text=True, check=True).stdout.strip()
        try:
            _run(self.base + ["add", ctr, tar, "/"])
            _run(self.base + ["config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                              "--env", "LANG=C.UTF-8", "--cmd", "/bin/bash", ctr])
            _run(self.base + ["commit", "--quiet", ctr, ref], stdout=subprocess.DEVNULL)
        finally:
            subprocess.run(self.base + ["rm", ctr], capture_output=True)


class Docker:
    name = "docker"

    def image_id(self, ref: str) -> str | None:
        r = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True)
        return r.stdout.strip() or None if r.returncode == 0 else None

    def image_size(self, ref: str) -> int | None:
        r = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", ref], capture_output=True, text=True)
        return int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip().isdigit() else None

    def pull(self, ref: str) -> None:
        _run(["docker", "pull", ref])

    def build(self, dockerfile: Path, tag: str, args: dict[str, str], volumes: list[str], context: Path) -> None:
        cmd = ["docker", "build", "-f", dockerfile, "-t", tag]
        for k, v in args.items():
            cmd += ["--build-arg", f"{k}={v}"]
        _run(cmd + [context])  # docker build has no --volume; BuildKit caches its own layers

    def save(self, tag: str, dest: Path) -> None:
        _run(["docker", "save", "-o", dest, tag])

    def tags(self, repo: str) -> list[str]:
        r = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", repo],
                           capture_output=True, text=True, check=True)
        return r.stdout.split()

    def remove(self, ref: str) -> None:
        subprocess.run(["docker", "rmi", ref], capture_output=True)

    def import_rootfs(self, tar: Path, ref: str) -> None:
        _run(["docker", "import", "--change", "CMD [\"/bin/bash\"]", tar, ref])


def choose_builder() -> Buildah | Docker:
    return Docker() if docker_engine_answers() else Buildah()


# ------------------------------------------------------------------ base image
def base_tag(suite: str = BASE_SUITE, packages: tuple[str, ...] = BASE_PACKAGES) -> str:
    key = hashlib.sha256(f"{suite}\n{' '.join(sorted(packages))}\n{BASE_RECIPE}".encode()).hexdigest()[:12]
    return f"{REPO_PREFIX}/base:{suite}-{key}"


def rootfs_tar(rootfs: Path, dest: Path) -> None:
    """Tar a debootstrap tree without dev/proc/sys contents, apt lists and downloaded .debs."""
    excludes = ["./dev/*", "./proc/*", "./sys/*", "./var/lib/apt/lists/*", "./var/cache/apt/archives/*.deb",
                "./var/cache/apt/*.bin", "./debootstrap"]
    cmd = ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs)]
    for e in excludes:
        cmd.append(f"--exclude={e}")
    _run(cmd + ["-cf", str(dest), "."])


def ensure_debootstrap_base(builder: Buildah | Docker) -> tuple[str, float, bool]:
    """The local bookworm base: (ref, seconds, cached)."""
    ref = base_tag()
    if builder.image_id(ref):
        return ref, 0.0, True
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
    mirror = host_apt_mirror()
    t0 = time.monotonic()
    images_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=images_dir(), prefix="base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
              BASE_SUITE, rootfs, mirror], stdout=subprocess.DEVNULL)
        tar = Path(tmp) / "rootfs.tar"
        rootfs_tar(rootfs, tar)
        shutil.rmtree(rootfs)
        builder.import_rootfs(tar, ref)
    for old in builder.tags(f"{REPO_PREFIX}/base"):
        if old != ref:
            builder.remove(old)
    return ref, time.monotonic() - t0, False


# ------------------------------------------------------------------ pip settings
def _pip_setting(name: str) -> str | None:
    env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
    if env:
        return env
    r = subprocess.run([sys.executable, "-m", "pip", "config", "get", f"global.{name}"],
                       capture_output=True, text=True)
    return r.stdout.strip() or None if r.returncode == 0 else None


def build_volumes_and_args() -> tuple[list[str], dict[str, str]]:
    """Volumes and build args that only help pip during the build (not part of the content hash)."""
    volumes: list[str] = []
    args: dict[str, str] = {}
    pip_cache = Path(os.environ.get("PIP_CACHE_DIR") or Path.home() / ".cache" / "pip")
    pip_cache.mkdir(parents=True, exist_ok=True)
    volumes.append(f"{pip_cache}:/root/.cache/pip")
    ca = _pip_setting("cert")
    ca_path = Path(ca) if ca else HOST_CA
    if ca_path.is_file():
        volumes.append(f"{ca_path}:{BUILD_CA}:ro")
        args["PIP_CERT"] = BUILD_CA
    index = _pip_setting("index-url")
    if index:
        args["PIP_INDEX_URL"] = index
    return volumes, args


# ------------------------------------------------------------------ build
@contextmanager
def _lock(name: str):
    images_dir().mkdir(parents=True, exist_ok=True)
    with open(images_dir() / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def archive_path(name: str, digest: str) -> Path:
    return images_dir() / f"{name}-{digest[:12]}.oci.tar"


def resolve_base(builder: Buildah | Docker, base: str) -> tuple[str, float, bool]:
    """base: 'debootstrap', 'registry' or 'auto' -> (BASE_IMAGE ref, seconds, cached)."""
    if base == "auto":
        base = "registry" if isinstance(builder, Docker) and _probe_pull(builder) else "debootstrap"
        log(f"base: {base} (builder {builder.name})")
    if base == "debootstrap":
        return ensure_debootstrap_base(builder)
    if base == "registry":
        t0 = time.monotonic()
        cached = builder.image_id(REGISTRY_BASE) is not None
        if not cached:
            builder.pull(REGISTRY_BASE)
        return REGISTRY_BASE, time.monotonic() - t0, cached
    raise ValueError(f"unknown base {base!r}")


def _probe_pull(builder: Docker) -> bool:
    if builder.image_id(REGISTRY_BASE):
        return True
    r = subprocess.run(["docker", "pull", REGISTRY_BASE], capture_output=True, text=True, timeout=300)
    return r.returncode == 0


def build_images(names: tuple[str, ...] | list[str] = ("operator", "worker"), *, base: str = "auto",
                 root: Path = ROOT, builder: Buildah | Docker | None = None) -> dict[str, BuiltImage]:
    for n in names:
        if n not in IMAGES:
            raise ValueError(f"unknown image {n!r}; known: {', '.join(IMAGES)}")
    builder = builder or choose_builder()
    # One build at a time per cache: the store is pruned after each new image.
    with _lock("store"):
        return _build_locked(names, base, root, builder)


def _build_locked(names, base: str, root: Path, builder: Buildah | Docker) -> dict[str, BuiltImage]:
    base_ref, base_seconds, base_cached = resolve_base(builder, base)
    base_id = builder.image_id(base_ref) or base_ref
    log(f"base image {base_ref} ({'cached' if base_cached else f'built in {base_seconds:.0f} s'})")
    volumes, pip_args = build_volumes_and_args()
    out: dict[str, BuiltImage] = {}
    for name in names:
        t0 = time.monotonic()
        dockerfile = IMAGES[name]
        text = (root / dockerfile).read_text()
        hashed_args = {"BASE_IMAGE": base_ref,
                       "DEPS_HASH": deps_hash(root),
                       "SOURCE_HASH": files_hash(root, context_files(root, dockerfile_sources(text)))}
        digest = content_hash(root, dockerfile, base_id, hashed_args)
        tag = f"{REPO_PREFIX}/{name}:{digest[:12]}"
        archive = archive_path(name, digest)
        cached = archive.is_file()
        if not cached:
            if not builder.image_id(tag):
                builder.build(root / dockerfile, tag, {**hashed_args, **pip_args}, volumes, root)
                log(f"{name}: built {tag} in {time.monotonic() - t0:.0f} s")
            t1 = time.monotonic()
            tmp = archive.with_name(archive.name + f".tmp{os.getpid()}")
            tmp.unlink(missing_ok=True)
            try:
                builder.save(tag, tmp)
                os.replace(tmp, archive)
            finally:
                tmp.unlink(missing_ok=True)
            log(f"{name}: archive written in {time.monotonic() - t1:.0f} s")
            _prune(builder, name, tag, archive)
        out[name] = BuiltImage(ref=tag, archive=archive, size_bytes=archive.stat().st_size,
                               seconds=time.monotonic() - t0, cached=cached)
    return out


def _prune(builder: Buildah | Docker, name: str, keep_tag: str, keep_archive: Path) -> None:
    for t in builder.tags(f"{REPO_PREFIX}/{name}"):
        if t != keep_tag:
            log(f"prune {t}")
            builder.remove(t)
    for a in images_dir().glob(f"{name}-*.oci.tar"):
        if a != keep_archive:
            log(f"prune {a}")
            a.unlink(missing_ok=True)
    if isinstance(builder, Buildah):  # its store is ours alone: drop layers no image uses any more
        subprocess.run(builder.base + ["rmi", "--prune"], capture_output=True)


def load_into_containerd(archive: Path, ctr: Path, address: str) -> None:
    """Import an image archive into a containerd's k8s.io namespace (pods use imagePullPolicy: Never)."""
    _run([ctr, "--address", address, "-n", "k8s.io", "images", "import", archive], stdout=subprocess.DEVNULL)


# ------------------------------------------------------------------ CLI
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["build"])
    parser.add_argument("--only", choices=sorted(IMAGES), action="append",
                        help="build only this image (repeatable; default: all)")
    parser.add_argument("--base", choices=["auto", "debootstrap", "registry"], default="auto",
                        help="base image: a local debootstrap bookworm, or the Dockerfiles' registry default "
                             "(auto: registry only where a Docker engine answers and can pull it)")
    parser.add_argument("--load", action="store_true", help="import the archives into the real node's containerd")
    parser.add_argument("--ctr", type=Path, default=None, help="ctr binary (default: the one built into the k8s cache)")
    parser.add_argument("--containerd-address", default=DEFAULT_CONTAINERD_ADDRESS)


def run(args: argparse.Namespace) -> int:
    names = tuple(args.only or IMAGES)
    built = build_images(names, base=args.base)
    if args.load:
        ctr = args.ctr or default_ctr()
        for b in built.values():
            t0 = time.monotonic()
            load_into_containerd(b.archive, ctr, args.containerd_address)
            log(f"loaded {b.ref} into {args.containerd_address} in {time.monotonic() - t0:.0f} s")
    for name, b in built.items():
        log(f"{name}: {b.ref} archive {b.archive} {b.size_bytes / 1e6:.0f} MB "
            f"{'cached' if b.cached else f'built in {b.seconds:.0f} s'}")
        print(b.ref)
    return 0
