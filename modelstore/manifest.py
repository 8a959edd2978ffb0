"""The manifest: what a stored version holds, schema-validated and versioned.

Why pydantic with ``extra="forbid"``: a manifest is read by the operator,
the worker and ``check``; a typo'd or truncated field must fail loudly at
load, naming the field, rather than surface later as a wrong placement.
``schema_version`` lets a later format be read side by side with this one.
The total ``checksum`` is a sha256 over the sorted (path, sha256, size)
entries, so it changes when any file changes and is cheap to recompute.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import StoreError
from .layout import MANIFEST, validate_part, validate_relpath

SCHEMA_VERSION = 1
SHA256_HEX = r"^[0-9a-f]{64}$"
Variant = Literal["fp16", "bnb-int8", "bnb-4bit"]
VARIANTS: tuple[str, ...] = ("fp16", "bnb-int8", "bnb-4bit")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_Strict):
    sha256: str = Field(pattern=SHA256_HEX)
    size: int = Field(ge=0)


class VariantInfo(_Strict):
    vram_mib: int = Field(gt=0, description="approximate VRAM to hold the weights, MiB")


class TokenizerInfo(_Strict):
    files: list[str] = Field(default_factory=list)
    tokenizer_class: str | None = None
    vocab_size: int | None = None
    chat_template: bool = False


class AdapterInfo(_Strict):
    base_name: str
    base_owner: str | None = Field(default=None, description="owner of the base; None = the adapter's owner")
    base_version: str
    base_checksum: str = Field(pattern=SHA256_HEX)
    peft_type: str
    r: int = Field(gt=0)
    alpha: float | None = None
    target_modules: list[str] = Field(default_factory=list)
    task: str | None = None
    training_summary: str | None = Field(
        default=None, description="relative path of training_summary.json inside the version, when present"
    )


class Manifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["base", "adapter"]
    owner: str
    name: str
    version: str
    checksum: str = Field(pattern=SHA256_HEX)
    files: dict[str, FileEntry]
    total_size: int = Field(ge=0)
    created: datetime
    source: str
    license: str | None = None
    # base models
    parameters: int | None = Field(default=None, gt=0)
    variants: dict[Variant, VariantInfo] | None = None
    tokenizer: TokenizerInfo | None = None
    model_type: str | None = None
    # adapters
    adapter: AdapterInfo | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        for what, value in (("owner", self.owner), ("name", self.name), ("version", self.version)):
            try:
                validate_part(what, value)
            except StoreError as e:
                raise ValueError(str(e)) from None
        for rel in self.files:
            try:
                validate_relpath(rel)
            except StoreError as e:
                raise ValueError(str(e)) from None
        if MANIFEST in self.files:
            raise ValueError("files must not list manifest.json itself")
        if self.total_size != sum(f.size for f in self.files.values()):
            raise ValueError("total_size does not equal the sum of file sizes")
        if self.checksum != total_checksum(self.files):
            raise ValueError("checksum does not match the file entries")
        if self.kind == "base":
            if self.adapter is not None:
                raise ValueError("a base manifest must not have an 'adapter' block")
            if not self.variants or self.parameters is None:
                raise ValueError("a base manifest needs 'parameters' and 'variants'")
        else:
            if self.adapter is None:
                raise ValueError("an adapter manifest needs an 'adapter' block")
            if self.variants:
                raise ValueError("an adapter manifest must not have 'variants'")
        return self


def total_checksum(files: dict[str, FileEntry]) -> str:
    """sha256 over sorted ``path\\0sha256\\0size\\n`` lines: order-independent."""
    h = hashlib.sha256()
    for rel in sorted(files):
        e = files[rel]
        h.update(f"{rel}\0{e.sha256}\0{e.size}\n".encode())
    return h.hexdigest()


def now() -> datetime:
    return datetime.now(timezone.utc)


def manifest_json_schema() -> dict:
    """The JSON schema of the manifest (for docs and external validators)."""
    return Manifest.model_json_schema()


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate ``path`` (a manifest.json or a version dir containing one)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{p}: manifest missing") from None
    except OSError as e:
        raise StoreError(f"{p}: cannot read manifest: {e}") from None
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or '<root>'}: {err['msg']}" for err in e.errors()
        )
        raise StoreError(f"{p}: invalid manifest: {problems}") from None


def write_manifest(manifest: Manifest, version_dir: Path) -> Path:
    """Write ``manifest.json`` into ``version_dir`` and fsync it."""
    p = version_dir / MANIFEST
    data = json.dumps(manifest.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True) + "\n"
    with open(p, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return p
