"""Types shared by the three loraplane custom resources.

Why pydantic: the models are the single source of truth. The CRD schemas in
``crds/`` are generated from them (``crdgen``), and the operator parses the
objects it reads with the same models, so a field can never exist on one side
only. Field descriptions become the ``kubectl explain`` text.

CEL rules that span several fields live next to the type they constrain, in
``json_schema_extra={"x-kubernetes-validations": [...]}``; ``crdgen`` copies
them into the schema verbatim so the API server refuses bad input with a
message naming the field.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GROUP = "loraplane.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "loraplane"

#: Variants a worker can load (see ``loraplane.contracts.desired.Variant``).
KNOWN_VARIANTS = ("fp16", "bf16", "fp32", "bnb-int8", "bnb-4bit")
Variant = Literal["fp16", "bf16", "fp32", "bnb-int8", "bnb-4bit"]

#: A DNS-1123 label: names of Kubernetes objects we reference.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: Store names / versions / owners: the ModelStore's own path segments.
STORE_SEGMENT = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

#: A Kubernetes resource quantity, non-negative (k8s.io/apimachinery's
#: grammar: number, then a binary or decimal SI suffix or an exponent). The
#: API server also runs CEL ``isQuantity`` (QUANTITY_RULES), its own parser.
QUANTITY = r"^[+]?([0-9]+([.][0-9]*)?|[.][0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]{1,2})?$"
QUANTITY_RULES = [{"rule": "isQuantity(self)", "message": "must be a Kubernetes quantity such as 500m, 2 or 16Gi",
                   "reason": "FieldValueInvalid"}]
#: A label value (also what a toleration's value must be).
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
#: A label key / qualified name: optional DNS-subdomain prefix and '/', then a name of at most 63.
QUALIFIED_NAME = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
#: A key of a Secret or ConfigMap.
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
#: An image reference: the API server refuses surrounding whitespace; none inside makes sense either.
IMAGE = r"^[^\s]+$"
#: Mount paths the operator's pods already use: the scratch emptyDir (/tmp) and a
#: training Job's dataset claim (/data). A second mount at the same path is refused.
RESERVED_MOUNT_PATHS = ("/tmp", "/data")
RESERVED_MOUNT_MESSAGE = f"store.mountPath must not be a reserved path {list(RESERVED_MOUNT_PATHS)}"
_BACKSTEP = re.compile(r"(^|/)[.][.](/|$)")

#: CEL: a relative path inside the store, never escaping it.
RELATIVE_PATH_RULE = {
    "rule": "!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')",
    "message": "must be a relative path inside the store without '..' segments",
}


def relative_store_path(v: str | None) -> str | None:
    """The pydantic twin of RELATIVE_PATH_RULE."""
    if v is not None and (v.startswith("/") or _BACKSTEP.search(v)):
        raise ValueError(RELATIVE_PATH_RULE["message"])
    return v


def exactly_one(a, b, message: str) -> None:
    """Twin of a CEL ``has(self.a) != has(self.b)`` rule."""
    if (a is None) == (b is None):
        raise ValueError(message)


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict:
    """One ``x-kubernetes-validations`` entry; ``fieldPath`` makes the API
    server name the offending field in its error instead of the parent."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


class ApiModel(BaseModel):
    """Base for all API types: camelCase on the wire, unknown fields refused
    (the CRD schema is structural, so the API server prunes them anyway)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ConditionStatus(str, Enum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(ApiModel):
    """The Kubernetes condition convention, so ``kubectl wait
    --for=condition=Ready``, Argo CD and Flux health checks work."""

    type: str = Field(description="Ready, Progressing or Degraded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase machine-readable reason.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str | None = Field(
        default=None, alias="lastTransitionTime", description="RFC 3339 time the status last changed."
    )
    observed_generation: int | None = Field(
        default=None, alias="observedGeneration", description="metadata.generation this condition was computed for."
    )


class SecretKeyRef(ApiModel):
    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="Secret name in the resource's namespace.")
    key: str = Field(default="token", min_length=1, max_length=253, pattern=CONFIG_KEY,
                     description="Key inside the Secret.")


class PvcVolume(ApiModel):
    claim_name: str = Field(alias="claimName", min_length=1, description="PersistentVolumeClaim holding the store.")
    read_only: bool = Field(default=True, alias="readOnly", description="Mount read-only (workers never write).")


class HostPathVolume(ApiModel):
    path: str = Field(min_length=1, max_length=1024, description="Absolute directory on every GPU node holding the store.",
                      json_schema_extra={"x-kubernetes-validations": [
                          cel("self.startsWith('/')", "hostPath.path must be absolute"),
                          cel("!self.matches('(^|/)[.][.](/|$)')", "hostPath.path must not contain '..' segments")]})

    @field_validator("path")
    @classmethod
    def _no_backsteps(cls, v: str) -> str:
        """A Pod refuses a hostPath with '..' (the CEL twin is on the field)."""
        if _BACKSTEP.search(v):
            raise ValueError("hostPath.path must not contain '..' segments")
        return v


STORE_ONE_OF = "store needs exactly one of persistentVolumeClaim, hostPath or s3"


class LocalObjectReference(ApiModel):
    """A Secret (or other object) in the resource's own namespace, by name."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="Name of the object in this namespace.")


#: ``s3://bucket[/prefix]``: an S3 bucket name, then key-safe prefix components.
S3_URL = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._-]+)*/?$"
S3_DOT_SEGMENTS = "s3.url must not have '.' or '..' components"
CACHE_SIZE_WITH_HOSTPATH = "cache.sizeLimit applies to the default emptyDir, not to cache.hostPath"


class ModelCache(ApiModel):
    """The node-local directory an S3 store is materialised into (keyed by manifest checksum)."""

    host_path: HostPathVolume | None = Field(
        default=None, alias="hostPath",
        description="A directory on the node (writable by uid 10001), shared by every worker and Job there: a "
                    "second worker on the node skips the download. Default: an emptyDir per pod (Pod Security "
                    "restricted admits only that).")
    size_limit: str | None = Field(
        default=None, alias="sizeLimit", pattern=QUANTITY, max_length=64,
        description="sizeLimit of the default emptyDir (a quantity, e.g. 40Gi).",
        json_schema_extra={"x-kubernetes-validations": QUANTITY_RULES})

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!(has(self.hostPath) && has(self.sizeLimit))", CACHE_SIZE_WITH_HOSTPATH, field_path=".sizeLimit"),
    ]})

    @model_validator(mode="after")
    def _size_only_for_empty_dir(self) -> "ModelCache":
        """The twin of the CEL rule above."""
        if self.host_path is not None and self.size_limit is not None:
            raise ValueError(CACHE_SIZE_WITH_HOSTPATH)
        return self


class S3Store(ApiModel):
    """The ModelStore on an S3-compatible bucket (docs/modelstore.md, "On object storage")."""

    url: str = Field(max_length=1024, pattern=S3_URL,
                     description="s3://bucket/prefix of the store (same layout as the directory store).",
                     json_schema_extra={"x-kubernetes-validations": [
                         cel("!self.matches('/[.]{1,2}(/|$)')", S3_DOT_SEGMENTS)]})
    credentials_secret_ref: LocalObjectReference = Field(
        alias="credentialsSecretRef",
        description="Secret in this namespace with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and "
                    "optionally AWS_ENDPOINT_URL (http(s)://host:port of MinIO, Ceph, versitygw; default AWS) and "
                    "AWS_REGION. Pods get them as env through secretKeyRef; the operator never reads it.")
    cache: ModelCache = Field(default_factory=ModelCache, json_schema_extra={"default": {}},
                              description="Node-local cache the pods materialise versions into.")

    @field_validator("url")
    @classmethod
    def _no_dot_segments(cls, v: str) -> str:
        """The twin of the CEL rule on the field."""
        if re.search(r"/[.]{1,2}(/|$)", v):
            raise ValueError(S3_DOT_SEGMENTS)
        return v


class StoreVolume(ApiModel):
    """Where the ModelStore lives for pods: exactly one of a PVC, a host path or an S3 bucket."""

    persistent_volume_claim: PvcVolume | None = Field(default=None, alias="persistentVolumeClaim")
    host_path: HostPathVolume | None = Field(default=None, alias="hostPath")
    s3: S3Store | None = Field(default=None, description="Read (and publish) through an S3-compatible bucket.")
    mount_path: str = Field(default="/models", alias="mountPath", max_length=1024,
                            description="Where a volume store is mounted in pods (MODEL_STORE_ROOT); "
                                        "unused with s3.",
                            json_schema_extra={"x-kubernetes-validations": [
                                cel("self.startsWith('/')", "store.mountPath must be absolute"),
                                cel("!(self in " + str(list(RESERVED_MOUNT_PATHS)) + ")",
                                    RESERVED_MOUNT_MESSAGE)]})

    @field_validator("mount_path")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        """The pods mount their scratch volume there: a second mount at the same path is refused."""
        if v in RESERVED_MOUNT_PATHS:
            raise ValueError(RESERVED_MOUNT_MESSAGE)
        return v

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("(has(self.persistentVolumeClaim) ? 1 : 0) + (has(self.hostPath) ? 1 : 0) + (has(self.s3) ? 1 : 0) == 1",
            STORE_ONE_OF),
    ]})

    @model_validator(mode="after")
    def _one_volume(self) -> "StoreVolume":
        """The twin of the CEL rule above."""
        if sum(x is not None for x in (self.persistent_volume_claim, self.host_path, self.s3)) != 1:
            raise ValueError(STORE_ONE_OF)
        return self


TOLERATION_RULES = [
    cel("(has(self.key) && self.key != '') || self.operator == 'Exists'",
        "a toleration with an empty key needs operator Exists", field_path=".operator"),
    cel("self.operator != 'Exists' || !has(self.value) || self.value == ''",
        "a toleration with operator Exists must not have a value", field_path=".value"),
    cel("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        "tolerationSeconds needs effect NoExecute", field_path=".tolerationSeconds"),
]


class Toleration(ApiModel):
    """A core/v1 Toleration, copied into the pods and validated as a Pod validates it."""

    key: str | None = Field(default=None, pattern="^(" + QUALIFIED_NAME.strip("^$") + ")?$", max_length=253,
                            description="Taint key (a qualified name); empty with operator Exists tolerates all.")
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(default=None, pattern=LABEL_VALUE, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, alias="tolerationSeconds")

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": TOLERATION_RULES})

    @model_validator(mode="after")
    def _as_a_pod_would(self) -> "Toleration":
        """The twin of TOLERATION_RULES."""
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration with an empty key needs operator Exists")
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists must not have a value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


class NodeSelectorRequirement(ApiModel):
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: list[str] = Field(default_factory=list)

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("(self.operator in ['Exists', 'DoesNotExist']) == (size(self.values) == 0)",
            "values must be empty for Exists/DoesNotExist and non-empty otherwise"),
    ]})


class NodeSelectorTerm(ApiModel):
    match_expressions: list[NodeSelectorRequirement] = Field(default_factory=list, alias="matchExpressions")


def condition_map_rules() -> dict:
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
