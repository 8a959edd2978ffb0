"""Fake GPU nodes for KWOK, labelled the way NVIDIA GPU Feature Discovery
labels real ones, so placement code sees exactly what it would in a fleet."""

from __future__ import annotations

RTX_3090 = "NVIDIA-GeForce-RTX-3090"
RTX_3090_MIB = 24576
KWOK_ANNOTATION = "kwok.x-k8s.io/node"


def gpu_node_manifest(
    name: str,
    gpus: int = 1,
    memory_mib: int = RTX_3090_MIB,
    product: str = RTX_3090,
    labels: dict[str, str] | None = None,
    taints: list[dict] | None = None,
    unschedulable: bool = False,
) -> dict:
    """A v1 Node that KWOK manages, with GFD labels and ``nvidia.com/gpu`` capacity."""
    resources = {"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.memory": str(memory_mib),
        "nvidia.com/gpu.count": str(gpus),
    } | (labels or {})
    spec: dict = {}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": node_labels,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": spec,
        "status": {"capacity": resources, "allocatable": dict(resources)},
    }
