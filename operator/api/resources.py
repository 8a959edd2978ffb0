"""The three custom resources as whole objects, and parsing them once.

The controllers read an object from the API server, and call ``parse``
once. Every layer below that sees ``WorkerPoolResource``,
``BaseModelResource`` or ``AdapterResource``: typed spec (with the pydantic
defaults, which agree with the CRD's ``default:``s, see
tests/unit/operator/test_defaults.py), typed status, and the metadata the
operator uses. An object that does not parse becomes an ``InvalidObject``
naming the fields, which the controllers turn into a condition (reason
``InvalidSpec``) instead of a crash.
"""

from __future__ import annotations

from typing import ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .adapter_types import AdapterSpec, AdapterStatus
from .basemodel_types import BaseModelSpec, BaseModelStatus
from .common_types import API_VERSION, ApiModel
from .names import name_problem
from .workerpool_types import WorkerPoolSpec, WorkerPoolStatus


class ObjectMeta(BaseModel):
    """The part of ``metadata`` the operator reads (the rest is ignored, not refused)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str
    namespace: str = ""
    uid: str = ""
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    deletion_timestamp: str | None = Field(default=None, alias="deletionTimestamp")


class _NamedMeta(ObjectMeta):
    """``metadata`` of one kind: its name must become the names and label
    values the operator derives from it (``names.NAME_RULES``; the CRD's
    root CEL rule refuses the same names, this catches objects created
    before that rule)."""

    KIND: ClassVar[str] = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        problem = name_problem(cls.KIND, v)
        if problem:
            raise ValueError(problem)
        return v


class WorkerPoolMeta(_NamedMeta):
    KIND = "WorkerPool"


class BaseModelMeta(_NamedMeta):
    KIND = "BaseModel"


class AdapterMeta(_NamedMeta):
    KIND = "Adapter"


class _Resource(ApiModel):
    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    metadata: ObjectMeta

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def generation(self) -> int | None:
        return self.metadata.generation


class WorkerPoolResource(_Resource):
    kind: Literal["WorkerPool"] = "WorkerPool"
    metadata: WorkerPoolMeta
    spec: WorkerPoolSpec
    status: WorkerPoolStatus = Field(default_factory=WorkerPoolStatus)


class BaseModelResource(_Resource):
    kind: Literal["BaseModel"] = "BaseModel"
    metadata: BaseModelMeta
    spec: BaseModelSpec
    status: BaseModelStatus = Field(default_factory=BaseModelStatus)


class AdapterResource(_Resource):
    kind: Literal["Adapter"] = "Adapter"
    metadata: AdapterMeta
    spec: AdapterSpec
    status: AdapterStatus = Field(default_factory=AdapterStatus)


class InvalidObject(BaseModel):
    """An object the API server holds but the operator's types refuse."""

    kind: str
    name: str
    fields: list[str]  # dotted paths, camelCase as in the object
    message: str  # "spec.gpu.headroomMiB: Input should be ..."; ...


R = TypeVar("R", WorkerPoolResource, BaseModelResource, AdapterResource)


def parse(model: type[R], obj: dict) -> R | InvalidObject:
    """``obj`` (as the API client returns it) as ``model``, or what is wrong with it."""
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        fields, parts = [], []
        for err in e.errors():
            path = ".".join(str(x) for x in err["loc"])
            fields.append(path)
            parts.append(f"{path}: {err['msg']}")
        meta = obj.get("metadata") or {}
        return InvalidObject(kind=obj.get("kind") or model.model_fields["kind"].default,
                             name=meta.get("name", ""), fields=fields, message="; ".join(parts)[:1000])


def dump(model: BaseModel) -> dict:
    """The JSON form the API server stores (camelCase, no nulls)."""
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


def as_read(model: BaseModel) -> dict:
    """A parsed status back as it was read (only the keys it had): the
    starting point of the status a core computes, so a pass adds no keys of
    its own making and a key set to null still deletes it (merge patch)."""
    return model.model_dump(by_alias=True, mode="json", exclude_unset=True)
