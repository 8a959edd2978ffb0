"""Build placement inputs from raw API objects (dicts as the API returns
them). Pure: unit-tested without a cluster.

Pods that hold GPU memory:
- loraplane workers: their ``loraplane.io/reservation`` annotation, whatever
  their phase until they are Succeeded/Failed (a Pending pod has a
  reservation too: that is what stops two placements racing for one card);
- anyone else's pod requesting ``nvidia.com/gpu: n`` on a node: n whole
  GPUs. Which card the device plugin gave it is not visible in the API, so we
  charge the n cards with the least loraplane VRAM on them (an empty card is
  the one the plugin could hand out); see docs/operator.md.
"""

from __future__ import annotations

import json

from ..api.names import GPU_RESOURCE, POOL_LABEL, RESERVATION_ANNOTATION
from .placement import GPU_COUNT, GPU_MEMORY, NodeInfo, Reservation, Taint


def _int(v, default=0) -> int:
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return default


def node_info(node: dict) -> NodeInfo:
    meta, spec, status = node.get("metadata", {}), node.get("spec", {}), node.get("status", {})
    labels = meta.get("labels") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    taints = tuple(Taint(t.get("key", ""), t.get("value") or "", t.get("effect", "NoSchedule"))
                   for t in spec.get("taints") or [])
    count = _int(labels.get(GPU_COUNT), 0)
    if not count:  # fall back on the device plugin's capacity
        count = _int((status.get("capacity") or {}).get(GPU_RESOURCE), 0)
    return NodeInfo(name=meta["name"], labels=dict(labels), gpu_count=count,
                    gpu_memory_mib=_int(labels.get(GPU_MEMORY), 0), ready=ready,
                    unschedulable=bool(spec.get("unschedulable")), taints=taints)


def pod_done(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def reservation_of(pod: dict) -> Reservation | None:
    """A loraplane worker's reservation, from its annotation."""
    meta = pod.get("metadata", {})
    raw = (meta.get("annotations") or {}).get(RESERVATION_ANNOTATION)
    if not raw:
        return None
    try:
        r = json.loads(raw)
        pool = (meta.get("labels") or {}).get(POOL_LABEL)
        return Reservation(node=r["node"], gpu=int(r["gpu"]), mib=int(r["vramMiB"]),
                           holder=f"{meta.get('namespace')}/{meta['name']}",
                           pool=f"{meta.get('namespace')}/{pool}" if pool else None)
    except (ValueError, KeyError, TypeError):
        return None


def whole_gpus(pod: dict) -> int:
    n = 0
    spec = pod.get("spec") or {}
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        res = c.get("resources") or {}
        n = max(n, _int((res.get("limits") or {}).get(GPU_RESOURCE), 0),
                _int((res.get("requests") or {}).get(GPU_RESOURCE), 0))
    return n


def reservations(pods: list[dict], nodes: list[NodeInfo]) -> list[Reservation]:
    out: list[Reservation] = []
    whole: list[tuple[str, int, str]] = []
    for p in pods:
        if pod_done(p):
            continue
        r = reservation_of(p)
        if r is not None:
            out.append(r)
            continue
        n, node = whole_gpus(p), (p.get("spec") or {}).get("nodeName")
        if n and node:
            meta = p.get("metadata", {})
            whole.append((node, n, f"{meta.get('namespace')}/{meta.get('name')}"))
    by_node = {n.name: n for n in nodes}
    for node, n, holder in sorted(whole):
        info = by_node.get(node)
        if info is None:
            continue
        used = {i: 0 for i in range(info.gpu_count)}
        for r in out:
            if r.node == node and r.gpu in used:
                used[r.gpu] += r.mib
        for gpu in sorted(used, key=lambda i: (used[i], i))[:n]:
            out.append(Reservation(node, gpu, info.gpu_memory_mib, holder))
    return out
