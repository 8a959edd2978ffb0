"""Label, annotation and object names shared by the operator's modules.

The reservation annotation is the ledger's durable record: every worker Pod
carries the (node, GPU, MiB, variant) it was placed with, so an operator that
restarts rebuilds the ledger by listing Pods, and no other state is needed.
"""

from __future__ import annotations

import hashlib

from .common_types import GROUP

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
