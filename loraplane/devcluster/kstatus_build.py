"""Build ``kstatus``, a small program over the real kstatus library
(``sigs.k8s.io/cli-utils/pkg/kstatus/status``, what Argo CD's and Flux's
kstatus health checks compute), from ``goprograms/kstatus`` and the pinned
module in its ``go.mod``.

Why a Go program: GitOps tools read an object's health with this library,
so the tests ask the library itself rather than a re-implementation of its
rules. Built like the control plane (``build.py``: a scratch module under
the cache, ``GOTOOLCHAIN=local``, CGO off, ``-trimpath``, the same Go module
proxy) and cached: a stamp written last records the hash of the program's
source, so an interrupted build is redone, a finished one reused, and a
changed ``main.go`` or pin rebuilt.

``make kstatus`` builds it, ``make test`` depends on it; ``kstatus()`` builds
it on first use. Standard library only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from . import build

SOURCE = Path(__file__).resolve().parent / "goprograms" / "kstatus"
MODULE = "sigs.k8s.io/cli-utils"
STAMP = "kstatus-build-info.json"


def module_version() -> str:
    """The cli-utils version pinned in ``goprograms/kstatus/go.mod``."""
    found = re.search(rf"^require {re.escape(MODULE)} (\S+)$", (SOURCE / "go.mod").read_text(), re.M)
    if not found:
        raise SystemExit(f"{SOURCE / 'go.mod'} pins no {MODULE} version")
    return found.group(1)


def source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def out_dir() -> Path:
    return build.cache_root() / "kstatus"


def missing(directory: Path | None = None) -> bool:
    directory = directory or out_dir() / "bin"
    stamp = directory / STAMP
    if not stamp.exists() or not os.access(directory / "kstatus", os.X_OK):
        return True
    return json.loads(stamp.read_text()).get("source") != source_hash()


def kstatus(force: bool = False, quiet: bool = True) -> Path:
    """The built program (built first when missing or stale)."""
    out = out_dir() / "bin"
    if force or missing(out):
        out_dir().mkdir(parents=True, exist_ok=True)
        with open(out_dir() / ".build.lock", "w") as lock:  # one build at a time (parallel test runs)
            fcntl.flock(lock, fcntl.LOCK_EX)
            if force or missing(out):  # another process may have built it while we waited
                _build(out)
    elif not quiet:
        print(f"kstatus cached in {out} (nothing to build)", flush=True)
    return out / "kstatus"


def _build(out: Path) -> None:
    if shutil.which("go") is None:
        raise SystemExit("go is not on PATH: it is needed to build kstatus")
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP).unlink(missing_ok=True)  # written again only once the program is built
    src = out_dir() / "src"
    gomod = (SOURCE / "go.mod").read_text().replace("module loraplane.local/kstatus", "module loraplane.local/kbuild")
    build._write_scratch(src, gomod)
    (src / "cmd" / "kstatus").mkdir(parents=True, exist_ok=True)
    shutil.copy(SOURCE / "main.go", src / "cmd" / "kstatus" / "main.go")
    build._run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(out / "kstatus"), "./cmd/kstatus"], src)
    info = {"module": MODULE, "version": module_version(), "source": source_hash()}
    (out / STAMP).write_text(json.dumps(info, indent=2))
    print(f"built kstatus ({MODULE} {module_version()}) in {out}", flush=True)


def compute(objects: list[dict]) -> list[dict]:
    """kstatus' verdict for each object: dicts with kind, namespace, name,
    generation, status (Current, InProgress, Failed, ...), message, error."""
    run = subprocess.run([str(kstatus())], input=json.dumps(objects), capture_output=True, text=True, check=True,
                         timeout=60)
    return [json.loads(line) for line in run.stdout.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(kstatus(force="--force" in argv, quiet=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
