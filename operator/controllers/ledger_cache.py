"""The cluster view placement reads: GPU nodes and pods holding GPU memory,
kept like an informer cache instead of listed on every pass.

Why: a pass that lists every Pod and Node of the cluster costs O(cluster)
per pool and made 100 pools on 200 nodes take tens of seconds to place (see
docs/perf.md). Correctness rules, so the cache never lets the ledger
overcommit:

- the first read, and any read after ``resync_seconds``, is a full list
  (after a restart the ledger is always rebuilt from the API first);
- pods the operator creates are written through at once, before the next
  placement (under the placement lock), so its own decisions are never
  missing from the ledger;
- watch events for pods and nodes update entries, newer resourceVersions
  winning; a deleted pod leaves the ledger only when its DELETED event (or
  the next list) says so, which can only make placement more conservative;
- the one staleness left is someone else's GPU pod created in the last
  moments before its event arrives, the same window the kube-scheduler's
  own cache has.
"""

from __future__ import annotations

import threading
import time

from ..core.inventory import node_info, reservations
from ..api.names import GPU_RESOURCE, RESERVATION_ANNOTATION


def _rv(obj: dict) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:
        return 0


def holds_gpu(pod: dict) -> bool:
    if RESERVATION_ANNOTATION in ((pod.get("metadata") or {}).get("annotations") or {}):
        return True
    return GPU_RESOURCE in str([c.get("resources") for c in (pod.get("spec") or {}).get("containers") or []])


class LedgerCache:
    def __init__(self, list_nodes, list_pods, resync_seconds: float = 30.0, clock=time.monotonic):
        self._list_nodes, self._list_pods = list_nodes, list_pods
        self.resync_seconds, self.clock = resync_seconds, clock
        self.nodes: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}  # "ns/name" -> pod holding GPU memory
        self.synced_at: float | None = None
        self.lock = threading.Lock()

    @staticmethod
    def _key(pod: dict) -> str:
        return f"{pod['metadata'].get('namespace')}/{pod['metadata']['name']}"

    def _relist(self) -> None:
        nodes = {n["metadata"]["name"]: n for n in self._list_nodes()}
        pods = {self._key(p): p for p in self._list_pods() if holds_gpu(p)}
        with self.lock:
            self.nodes, self.pods, self.synced_at = nodes, pods, self.clock()

    def view(self):
        """(NodeInfo list, Reservation list, {ns/name: pod}) for one pass."""
        if self.synced_at is None or self.clock() - self.synced_at > self.resync_seconds:
            self._relist()
        with self.lock:
            nodes = [node_info(n) for n in self.nodes.values()]
            pods = list(self.pods.values())
        return nodes, reservations(pods, nodes), {self._key(p): p for p in pods}

    # --- write-through and events ------------------------------------------
    def created(self, pod: dict) -> None:
        with self.lock:
            self.pods[self._key(pod)] = pod

    def pod_event(self, pod: dict, deleted: bool) -> None:
        key = self._key(pod)
        with self.lock:
            old = self.pods.get(key)
            if deleted:
                if old is not None and old["metadata"].get("uid") == pod["metadata"].get("uid"):
                    self.pods.pop(key, None)  # not a same-named successor we already created
                return
            if not holds_gpu(pod):
                return
            if old is not None and old["metadata"].get("uid") != pod["metadata"].get("uid"):
                # Another incarnation of the name: keep whichever is newer.
                if _rv(pod) < _rv(old):
                    return
            elif old is not None and _rv(pod) < _rv(old):
                return
            self.pods[key] = pod

    def node_event(self, node: dict, deleted: bool) -> None:
        name = node["metadata"]["name"]
        with self.lock:
            if deleted:
                self.nodes.pop(name, None)
            elif name not in self.nodes or _rv(node) >= _rv(self.nodes[name]):
                self.nodes[name] = node
