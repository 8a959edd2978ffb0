"""Single-binary images built FROM scratch with buildah, for the real node.

No registry is reachable, so the sandbox ("pause") image and the probe image
the node test runs are built locally: ``buildah bud --isolation chroot``
with vfs storage (no overlay-in-overlay, no daemon) in a private storage root,
then ``buildah push IMG oci-archive:FILE:IMG``. The archive is cached by the
binary's sha256, so an unchanged program is neither rebuilt nor re-imported.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import build

IMAGE_REPO = "localhost/loraplane"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_ref(program: str, binary: Path) -> str:
    return f"{IMAGE_REPO}/{program}:{sha256_file(binary)[:12]}"


def containerfile(program: str, args: list[str] | None = None) -> str:
    entrypoint = ", ".join(f'"{a}"' for a in [f"/{program}", *(args or [])])
    return f"FROM scratch\nCOPY {program} /{program}\nENTRYPOINT [{entrypoint}]\n"


def _buildah(*args: str, root: Path) -> subprocess.CompletedProcess:
    cmd = ["buildah", "--storage-driver", "vfs", "--root", str(root / "storage"),
           "--runroot", str(root / "run"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def scratch_image(program: str, bin_dir: Path | None = None) -> tuple[str, Path]:
    """(image reference, OCI archive) of ``bin_dir/program`` as the only file
    of an image FROM scratch; built once per binary content."""
    binary = (bin_dir or build.bin_dir()) / program
    ref = image_ref(program, binary)
    images = build.cache_root() / "node-images"
    archive = images / f"{program}-{ref.rsplit(':', 1)[1]}.oci.tar"
    if archive.exists():
        return ref, archive
    images.mkdir(parents=True, exist_ok=True)
    root = images / "buildah"
    with tempfile.TemporaryDirectory(prefix=f"{program}-image-") as tmp:
        ctx = Path(tmp)
        shutil.copy2(binary, ctx / program)
        (ctx / "Containerfile").write_text(containerfile(program))
        _buildah("bud", "--isolation", "chroot", "-f", str(ctx / "Containerfile"), "-t", ref, str(ctx), root=root)
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        _buildah("push", ref, f"oci-archive:{partial}:{ref}", root=root)
        _buildah("rmi", ref, root=root)
        partial.replace(archive)
    return ref, archive
