"""The VRAM ledger's reservations, from observed Pods (``PodView``). Pure:
unit-tested without a cluster.

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

from ..api.observed_types import PodView
from .placement import NodeInfo, Reservation


def reservation_of(pod: PodView) -> Reservation | None:
    """A loraplane worker's (or training pod's) reservation, from its annotation."""
    r = pod.reservation
    if r is None:
        return None
    return Reservation(node=r.node, gpu=r.gpu, mib=r.mib, holder=pod.key,
                       pool=f"{pod.namespace}/{pod.pool}" if pod.pool else None)


def reservations(pods: list[PodView], nodes: list[NodeInfo]) -> list[Reservation]:
    out: list[Reservation] = []
    whole: list[tuple[str, int, str]] = []
    for p in pods:
        if p.done:
            continue
        r = reservation_of(p)
        if r is not None:
            out.append(r)
            continue
        if p.whole_gpus and p.node_name:
            whole.append((p.node_name, p.whole_gpus, p.key))
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
