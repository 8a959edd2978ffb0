"""Adapter: one version of one task's LoRA adapter on one BaseModel.

An Adapter comes from the ModelStore (``source``) or from a training Job
(``training``, see ``training_types`` and ``core.training``). The operator verifies the stored manifest and
checks that the adapter was trained on exactly the BaseModel's checksum.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, field_validator, model_validator

from .common_types import (
    DNS_LABEL, RELATIVE_PATH_RULE, STORE_SEGMENT, ApiModel, Condition, cel, condition_map_rules, exactly_one,
    relative_store_path,
)
from .training_types import TrainingSpec, TrainingStatus


class AdapterSource(ApiModel):
    """A version in the store of the BaseModel (its ``spec.store``: a volume, or an S3 bucket and the
    credentials Secret), which the verify Job and the workers read it from."""

    owner: str = Field(default="default", pattern=STORE_SEGMENT, max_length=63, description="ModelStore owner.")
    store_name: str = Field(alias="storeName", pattern=STORE_SEGMENT, max_length=128,
                            description="Adapter name in the ModelStore.")
    path: str | None = Field(default=None, max_length=1024, description="Version dir relative to the store root (default: derived).",
                             json_schema_extra={"x-kubernetes-validations": [RELATIVE_PATH_RULE]})

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str | None) -> str | None:
        return relative_store_path(v)


ONE_OF = "adapter needs exactly one of spec.source or spec.training"


class AdapterSpec(ApiModel):
    base_model_ref: str = Field(alias="baseModelRef", pattern=DNS_LABEL, max_length=63,
                                description="Name of the BaseModel (same namespace) this adapter was trained on.")
    task: str = Field(pattern=r"^[a-z0-9]([-_a-z0-9]*[a-z0-9])?$", max_length=63,
                      description="Task name clients call, e.g. synthesizer.")
    version: str = Field(pattern=STORE_SEGMENT, max_length=128, description="Adapter version in the ModelStore.")
    source: AdapterSource | None = Field(default=None, description="Take the adapter from the ModelStore.")
    training: TrainingSpec | None = Field(
        default=None, description="Train the adapter with a Job on the GPU fleet and publish it (docs/training.md).")

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.source) != has(self.training)", ONE_OF),
    ]})

    @model_validator(mode="after")
    def _one_origin(self) -> "AdapterSpec":
        exactly_one(self.source, self.training, ONE_OF)
        return self


class AdapterStatus(ApiModel):
    phase: str | None = Field(default=None, description="Pending, Training, Verifying, Ready, Degraded or Failed.")
    store_path: str | None = Field(default=None, alias="storePath")
    checksum: str | None = Field(default=None)
    base_checksum: str | None = Field(default=None, alias="baseChecksum",
                                      description="Base checksum recorded in the adapter manifest.")
    size_bytes: int | None = Field(default=None, alias="sizeBytes")
    vram_mib: int | None = Field(default=None, alias="vramMiB", description="VRAM the loaded adapter takes (MiB).")
    rank: int | None = None
    job: str | None = None
    attempts: int = 0
    next_retry: str | None = Field(default=None, alias="nextRetry")
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=condition_map_rules())
    training: TrainingStatus | None = Field(default=None, description="Training Job progress (spec.training).")


PRINTER_COLUMNS = [
    {"name": "Task", "type": "string", "jsonPath": ".spec.task"},
    {"name": "Base", "type": "string", "jsonPath": ".spec.baseModelRef"},
    {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "VRAM-MiB", "type": "integer", "jsonPath": ".status.vramMiB"},
    {"name": "Training", "type": "string", "jsonPath": ".status.training.progress", "priority": 1},
    {"name": "Loss", "type": "number", "jsonPath": ".status.training.loss", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
