"""The desired-state document the operator writes for a worker pool, and the
status the worker reports back on its own Pod.

Why a separate, torch-free module: the operator imports these models to
*write* the document (ConfigMap ``<pool>-desired``, key ``desired.json``) and
to *read* the worker's Pod annotation, and it must not pay for importing torch.
Both sides validating against one pydantic model means a field renamed on
one side fails loudly on the other.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: ConfigMap data key holding the JSON document.
DESIRED_KEY = "desired.json"
#: Pod annotation where a worker reports what it has loaded.
STATUS_ANNOTATION = "loraplane.io/worker-status"
#: Environment variable naming the ConfigMap as ``<namespace>/<name>``.
DESIRED_CONFIGMAP_ENV = "LORAPLANE_DESIRED_CONFIGMAP"
#: Environment variable with the URL the worker is reachable at when its pod IP
#: is not (a host process standing in for a KWOK pod, see devcluster/hostrunner.py).
ADVERTISE_URL_ENV = "LORAPLANE_ADVERTISE_URL"

Variant = Literal["fp16", "bnb-int8", "bnb-4bit", "fp32", "bf16"]


def desired_configmap_name(pool: str) -> str:
    """The ConfigMap name the operator writes for ``pool``."""
    return f"{pool}-desired"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class BaseRef(_Strict):
    owner: str = "default"
    name: str
    version: str
    checksum: str = ""
    variant: Variant = "fp16"


class AdapterRef(_Strict):
    """One adapter version the worker should hold, named as clients pin it."""

    name: str = Field(description="served name, e.g. synth-v2 (unique in the pool)")
    owner: str = "default"
    store_name: str = Field(alias="storeName", description="ModelStore adapter name")
    version: str
    checksum: str = ""
    task: str
    output_json_schema: dict | None = Field(
        default=None, alias="outputJsonSchema", exclude_if=lambda v: v is None,
        description="the version's output contract (Adapter spec.output.jsonSchema): applied to requests routed "
                    "to it that ask for no response_format or tools; else output_schema.json in the store, if any")


class RouteBackend(_Strict):
    adapter: str
    weight: int = Field(ge=0, le=100)


class DesiredState(_Strict):
    pool: str
    generation: int = 0
    base: BaseRef
    adapters: list[AdapterRef] = Field(default_factory=list)
    routes: dict[str, list[RouteBackend]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> "DesiredState":
        names = [a.name for a in self.adapters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"adapter names must be unique, repeated: {dupes}")
        known = set(names)
        for task, backends in self.routes.items():
            for b in backends:
                if b.adapter not in known:
                    raise ValueError(
                        f"route {task!r} names adapter {b.adapter!r} that is not in adapters {sorted(known)}"
                    )
        return self

    @classmethod
    def from_json(cls, text: str | bytes) -> "DesiredState":
        return cls.model_validate_json(text)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)

    def adapter(self, name: str) -> AdapterRef | None:
        return next((a for a in self.adapters if a.name == name), None)


class WorkerStatus(_Strict):
    """Value of the ``loraplane.io/worker-status`` Pod annotation."""

    variant: str | None = None
    loaded: list[str] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict)
    ready: bool = False
    generation: int = 0
    endpoint: str | None = Field(default=None, description="base URL to scrape/serve this worker when the pod IP "
                                                         "cannot be dialled (env LORAPLANE_ADVERTISE_URL)")
    updated: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat())

    def to_annotation(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_annotation(cls, text: str) -> "WorkerStatus":
        return cls.model_validate_json(text)
