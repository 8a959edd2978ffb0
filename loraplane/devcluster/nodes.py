"""Fake GPU nodes for KWOK, labelled the way NVIDIA GPU Feature Discovery
labels real ones, so placement code sees exactly what it would in a fleet."""

from __future__ import annotations

import json
from typing import Callable

RTX_3090 = "NVIDIA-GeForce-RTX-3090"
RTX_3090_MIB = 24576
KWOK_ANNOTATION = "kwok.x-k8s.io/node"


def gpu_labels(gpus: int, memory_mib: int = RTX_3090_MIB, product: str = RTX_3090) -> dict[str, str]:
    """What GPU Feature Discovery labels a node with (the subset placement reads)."""
    return {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": product,
            "nvidia.com/gpu.memory": str(memory_mib), "nvidia.com/gpu.count": str(gpus)}


def advertise_fake_gpus(kubectl: Callable[..., object], node: str, gpus: int, memory_mib: int = RTX_3090_MIB,
                        product: str = RTX_3090, extra_labels: dict[str, str] | None = None) -> None:
    """Make a REAL node (kubelet, kind) look like a GPU node: GFD labels, and
    ``nvidia.com/gpu`` capacity through the status subresource, which is how
    an extended resource is advertised without a device plugin."""
    labels = gpu_labels(gpus, memory_mib, product) | (extra_labels or {})
    kubectl("label", "node", node, "--overwrite", *[f"{k}={v}" for k, v in labels.items()])
    patch = [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": str(gpus)}]
    kubectl("patch", "node", node, "--subresource=status", "--type=json", "-p", json.dumps(patch))


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
        **gpu_labels(gpus, memory_mib, product),
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
