"""Paths inside the store, name/version validation and containment.

Layout::

    <root>/<owner>/base_models|adapters/<name>/versions/<version>/{files..., manifest.json}
    <root>/<owner>/base_models|adapters/<name>/current -> versions/<version>

Why this module exists: every path the store touches is built here from
validated parts, so nothing can resolve outside the root — not through
``..``, not through an absolute path, not through a symlink that points out.
Staging and trash directories start with ``.`` and are never listed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import StoreError

KIND_DIRS = {"base": "base_models", "adapter": "adapters"}
DIR_KINDS = {v: k for k, v in KIND_DIRS.items()}
MANIFEST = "manifest.json"
CURRENT = "current"
VERSIONS = "versions"
STAGING = ".staging"
TRASH = ".trash"
LOCK = ".lock"

# Names and versions: a letter or digit first (so never "." / ".." / hidden),
# then letters, digits, "_", "-", "."; at most 128 characters. ".." inside is
# refused separately so "a..b" cannot be mistaken for traversal by humans.
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def validate_part(what: str, value: str) -> str:
    """Return ``value`` if it is a safe single path component, else raise."""
    if not isinstance(value, str) or not value:
        raise StoreError(f"{what} must be a non-empty string, got {value!r}")
    if ".." in value:
        raise StoreError(f"{what} {value!r} contains '..' (path traversal refused)")
    if "/" in value or "\\" in value or os.path.isabs(value):
        raise StoreError(f"{what} {value!r} must be a single name, not a path")
    if not _PART.match(value):
        raise StoreError(
            f"{what} {value!r} is invalid: use letters, digits, '_', '-', '.', "
            "starting with a letter or digit, at most 128 characters"
        )
    return value


def validate_kind(kind: str) -> str:
    if kind not in KIND_DIRS:
        raise StoreError(f"kind {kind!r} is invalid: expected one of {sorted(KIND_DIRS)}")
    return kind


def validate_relpath(rel: str) -> str:
    """A file path inside a version dir: relative, '/'-separated, no '..'."""
    if not rel or rel.startswith("/") or "\\" in rel or os.path.isabs(rel):
        raise StoreError(f"file path {rel!r} must be relative")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"file path {rel!r} contains an empty, '.' or '..' component")
    return rel


def contained(root: Path, path: Path) -> Path:
    """``path`` with symlinks resolved, refused unless it lies inside ``root``."""
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and not real.is_relative_to(real_root):
        raise StoreError(f"{path} resolves to {real}, outside the store root {real_root}")
    return path


@dataclass(frozen=True)
class Layout:
    """Path arithmetic for one store root. Pure apart from ``contained`` checks."""

    root: Path

    def kind_dir(self, owner: str, kind: str) -> Path:
        validate_part("owner", owner)
        return self.root / owner / KIND_DIRS[validate_kind(kind)]

    def name_dir(self, owner: str, kind: str, name: str) -> Path:
        return self.kind_dir(owner, kind) / validate_part("name", name)

    def versions_dir(self, owner: str, kind: str, name: str) -> Path:
        return self.name_dir(owner, kind, name) / VERSIONS

    def version_dir(self, owner: str, kind: str, name: str, version: str) -> Path:
        return self.versions_dir(owner, kind, name) / validate_part("version", version)

    def current_link(self, owner: str, kind: str, name: str) -> Path:
        return self.name_dir(owner, kind, name) / CURRENT

    def checked(self, path: Path) -> Path:
        """Refuse ``path`` if it (or a symlink on the way) leads out of the root."""
        return contained(self.root, path)


def read_current(link: Path) -> str | None:
    """The version a ``current`` pointer names, or None when there is none.

    Accepts a symlink ``versions/<v>`` or a small file holding ``<v>`` (for
    filesystems without symlinks). Anything else is refused, so a pointer
    edited by hand to ``../../elsewhere`` cannot redirect readers.
    """
    if link.is_symlink():
        target = os.readlink(link)
        parts = target.split("/")
        if len(parts) != 2 or parts[0] != VERSIONS:
            raise StoreError(f"{link} points to {target!r}; expected 'versions/<version>'")
        return validate_part("version", parts[1])
    if link.is_file():
        return validate_part("version", link.read_text().strip())
    if link.exists():
        raise StoreError(f"{link} is neither a symlink nor a file")
    return None


def parse_version_relpath(rel: str) -> tuple[str, str, str, str]:
    """``owner/base_models|adapters/name/versions/version`` -> (owner, kind, name, version).

    A bucket has no directories to point at: a version is named by its place
    in the layout, and any other path is refused."""
    parts = rel.strip("/").split("/") if not rel.startswith("/") else []
    if len(parts) != 5 or parts[1] not in DIR_KINDS or parts[3] != VERSIONS:
        raise StoreError(f"{rel!r} is not a version in the store layout "
                         f"(owner/base_models|adapters/<name>/versions/<version>)")
    try:
        owner, name, version = (validate_part(w, parts[i]) for w, i in (("owner", 0), ("name", 2), ("version", 4)))
    except StoreError as e:
        raise StoreError(f"{rel!r} is not a version in the store layout "
                         f"(owner/base_models|adapters/<name>/versions/<version>): {e}") from None
    return owner, DIR_KINDS[parts[1]], name, version
