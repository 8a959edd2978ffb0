"""BaseModel: the one approved base checkpoint, as stored in the ModelStore.

The operator resolves it with a Job that runs ``loraplane modelstore verify``
on the store volume (after a publish Job when the source is the Hugging Face
hub) and reports the store path, manifest checksum and per-variant VRAM.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, field_validator, model_validator

from .common_types import (
    RELATIVE_PATH_RULE, STORE_SEGMENT, ApiModel, Condition, SecretKeyRef, StoreVolume, Variant, cel,
    condition_map_rules, relative_store_path,
)

EXCLUSIVE = "source.huggingFace and source.path are exclusive"


class HuggingFaceSource(ApiModel):
    repo: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="Hub repository, e.g. mistralai/Mistral-7B-Instruct-v0.3.")
    revision: str = Field(min_length=1, description="Pinned revision (a commit sha pins it for good).")
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, alias="tokenSecretRef",
        description="Secret key holding the hub token; passed to the publish Job as an env var, never logged.")


class BaseModelSource(ApiModel):
    """Where the checkpoint comes from: already in the store, or the hub."""

    hugging_face: HuggingFaceSource | None = Field(
        default=None, alias="huggingFace", description="Publish from the hub into the store first.")
    path: str | None = Field(
        default=None, max_length=1024, description="A version directory already in the store, relative to its root "
        "(e.g. default/base_models/mistral-7b/versions/v0.3). Default: derived from owner/name/version.",
        json_schema_extra={"x-kubernetes-validations": [RELATIVE_PATH_RULE]})

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!(has(self.huggingFace) && has(self.path))", EXCLUSIVE),
    ]})

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str | None) -> str | None:
        return relative_store_path(v)

    @model_validator(mode="after")
    def _exclusive(self) -> "BaseModelSource":
        if self.hugging_face is not None and self.path is not None:
            raise ValueError(EXCLUSIVE)
        return self


class VariantSpec(ApiModel):
    name: Variant = Field(description="Variant name the worker loads.")
    vram_mib: int = Field(alias="vramMiB", ge=1, le=1048576,
                          description="Measured VRAM of the loaded weights in MiB (overrides the manifest).")


class BaseModelSpec(ApiModel):
    owner: str = Field(default="default", pattern=STORE_SEGMENT, max_length=63, description="ModelStore owner.")
    store_name: str = Field(alias="storeName", pattern=STORE_SEGMENT, max_length=128,
                            description="Name of the base in the ModelStore.")
    version: str = Field(pattern=STORE_SEGMENT, max_length=128, description="Version in the ModelStore.")
    source: BaseModelSource = Field(default_factory=BaseModelSource, json_schema_extra={"default": {}}, description="Where the checkpoint comes from.")
    store: StoreVolume = Field(description="Where the store lives: a volume (PVC or hostPath) that verify Jobs and "
                               "workers mount, or an S3 bucket they read through a node-local cache. The "
                               "BaseModel's Adapters live in the same store.")
    license: str | None = Field(default=None, max_length=256, description="License of the checkpoint.")
    variants: list[VariantSpec] = Field(
        default_factory=list, max_length=8,
        description="Variants offered, with VRAM. Empty: take them from the manifest.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})


class VariantStatus(ApiModel):
    name: str
    vram_mib: int = Field(alias="vramMiB")


class BaseModelStatus(ApiModel):
    phase: str | None = Field(default=None, description="Pending, Publishing, Verifying, Ready or Failed.")
    store_path: str | None = Field(default=None, alias="storePath", description="Version dir relative to the store root.")
    checksum: str | None = Field(default=None, description="Manifest total sha256.")
    size_bytes: int | None = Field(default=None, alias="sizeBytes")
    variants: list[VariantStatus] = Field(default_factory=list)
    job: str | None = Field(default=None, description="The current publish/verify Job.")
    published_generation: int | None = Field(default=None, alias="publishedGeneration",
                                             description="Generation whose hub publish Job succeeded.")
    attempts: int = Field(default=0, description="Failed attempts since the spec last changed (drives backoff).")
    next_retry: str | None = Field(default=None, alias="nextRetry")
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=condition_map_rules())


PRINTER_COLUMNS = [
    {"name": "Store", "type": "string", "jsonPath": ".spec.storeName"},
    {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
    {"name": "Checksum", "type": "string", "jsonPath": ".status.checksum", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
