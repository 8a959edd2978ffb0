"""Label, annotation and object names shared by the operator's modules.

The reservation annotation is the ledger's durable record: every worker Pod
carries the (node, GPU, MiB, variant) it was placed with, so an operator that
restarts rebuilds the ledger by listing Pods, and no other state is needed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .common_types import DNS_LABEL, GROUP

POOL_LABEL = f"{GROUP}/pool"
ORDINAL_LABEL = f"{GROUP}/ordinal"
OWNER_LABEL = f"{GROUP}/owner"  # "<kind>.<name>" on Jobs
MANAGED_BY = {"app.kubernetes.io/managed-by": "loraplane"}
RESERVATION_ANNOTATION = f"{GROUP}/reservation"
GPU_ANNOTATION = f"{GROUP}/gpu-index"
SPEC_HASH_ANNOTATION = f"{GROUP}/spec-hash"
FIELD_MANAGER = "loraplane-operator"
#: ServiceAccount of worker and training pods (see workload_identity.py)
WORKLOAD_SERVICE_ACCOUNT = "loraplane-workload"
GPU_RESOURCE = "nvidia.com/gpu"
#: GPU feature discovery labels placement reads on nodes
GPU_PRODUCT = "nvidia.com/gpu.product"
GPU_MEMORY = "nvidia.com/gpu.memory"
GPU_COUNT = "nvidia.com/gpu.count"


def worker_name(pool: str, ordinal: int) -> str:
    return f"{pool}-{ordinal}"


def ordinal_of(pod_name: str, pool: str) -> int | None:
    tail = pod_name[len(pool) + 1:] if pod_name.startswith(pool + "-") else ""
    return int(tail) if tail.isdigit() else None


def desired_configmap(pool: str) -> str:
    return f"{pool}-desired"


def job_name(kind: str, name: str, step: str, generation: int, attempt: int) -> str:
    """Deterministic: a restarted operator finds the Job it already created
    instead of creating a second one. Kept within 63 chars (Job pods' labels)."""
    base = f"{kind}-{name}-{step}-g{generation}-a{attempt}"
    return base if len(base) <= 52 else f"{name[:30]}-{hashlib.sha256(base.encode()).hexdigest()[:8]}-{step}"


#: A DNS-1035 label: what a Service name must be (starts with a letter).
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: Kubernetes label values are at most this long.
LABEL_VALUE_MAX = 63


def owner_label_value(kind: str, name: str) -> str:
    """``loraplane.io/owner`` on the Jobs of a BaseModel or Adapter."""
    return f"{kind.lower()}.{name}"


@dataclass(frozen=True)
class NameRule:
    """What ``metadata.name`` of one kind must be, and why: the operator
    derives names and label values from it that Kubernetes validates."""

    pattern: str
    max_length: int
    why: str


NAME_RULES = {
    "WorkerPool": NameRule(DNS_1035_LABEL, LABEL_VALUE_MAX,
                           "it is the pool's Service name (a DNS-1035 label: lowercase letters, digits and '-', "
                           "starting with a letter) and its pods' loraplane.io/pool label"),
    "BaseModel": NameRule(DNS_LABEL, LABEL_VALUE_MAX - len(owner_label_value("BaseModel", "")),
                          "spec.baseModelRef names it as a DNS label, and its Jobs carry the label "
                          "loraplane.io/owner=basemodel.<name> (at most 63 characters)"),
    "Adapter": NameRule(DNS_LABEL, LABEL_VALUE_MAX - len(owner_label_value("Adapter", "")),
                        "routes and rollouts name it as a DNS label, and its Jobs carry the label "
                        "loraplane.io/owner=adapter.<name> (at most 63 characters)"),
}


def name_message(kind: str) -> str:
    rule = NAME_RULES[kind]
    return (f"metadata.name of a {kind} must match {rule.pattern} and have at most {rule.max_length} "
            f"characters: {rule.why}")


def name_problem(kind: str, name: str) -> str | None:
    """Why ``name`` cannot name a ``kind``, or None when it can."""
    rule = NAME_RULES[kind]
    if len(name) > rule.max_length or not re.fullmatch(rule.pattern.strip("^$"), name):
        return name_message(kind)
    return None


def name_cel_rules(kind: str) -> list[dict]:
    """The same rule for the API server: CEL at the schema root may read
    ``self.metadata.name`` (and only that part of metadata)."""
    rule = NAME_RULES[kind]
    message = name_message(kind)
    return [{"rule": f"size(self.metadata.name) <= {rule.max_length}", "message": message,
             "reason": "FieldValueInvalid"},
            {"rule": f"self.metadata.name.matches('{rule.pattern}')", "message": message,
             "reason": "FieldValueInvalid"}]
