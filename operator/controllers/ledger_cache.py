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

from ..api.observed_types import NodeView, PodView
from ..core.inventory import reservations
from ..core.placement import Reservation


def _rv(obj: dict) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:
        return 0


class LedgerCache:
    """Nodes and GPU-holding pods, parsed once into ``NodeView``/``PodView`` as they arrive."""

    def __init__(self, list_nodes, list_pods, resync_seconds: float = 30.0, clock=time.monotonic):
        self._list_nodes, self._list_pods = list_nodes, list_pods
        self.resync_seconds, self.clock = resync_seconds, clock
        self.nodes: dict[str, tuple[int, NodeView]] = {}  # name -> (resourceVersion, node)
        self.pods: dict[str, PodView] = {}  # "ns/name" -> pod holding GPU memory
        self.synced_at: float | None = None
        self.lock = threading.Lock()

    def _relist(self) -> None:
        nodes = {n["metadata"]["name"]: (_rv(n), NodeView.from_api(n)) for n in self._list_nodes()}
        pods = {v.key: v for v in map(PodView.from_api, self._list_pods()) if v.holds_gpu}
        with self.lock:
            self.nodes, self.pods, self.synced_at = nodes, pods, self.clock()

    def view(self) -> tuple[list[NodeView], list[Reservation], dict[str, PodView]]:
        """(nodes, reservations, {ns/name: pod}) for one pass."""
        if self.synced_at is None or self.clock() - self.synced_at > self.resync_seconds:
            self._relist()
        with self.lock:
            nodes = [n for _, n in self.nodes.values()]
            pods = list(self.pods.values())
        return nodes, reservations(pods, nodes), {p.key: p for p in pods}

    # --- write-through and events ------------------------------------------
    def created(self, pod: dict) -> None:
        view = PodView.from_api(pod)
        with self.lock:
            self.pods[view.key] = view

    def pod_event(self, pod: dict, deleted: bool) -> None:
        new = PodView.from_api(pod)
        key = new.key
        with self.lock:
            old = self.pods.get(key)
            if deleted:
                if old is not None and old.uid == new.uid:
                    self.pods.pop(key, None)  # not a same-named successor we already created
                return
            if not new.holds_gpu:
                return
            if old is not None and new.resource_version < old.resource_version:
                return  # an older event (of this incarnation, or of a name's older incarnation)
            self.pods[key] = new

    def node_event(self, node: dict, deleted: bool) -> None:
        name = node["metadata"]["name"]
        with self.lock:
            if deleted:
                self.nodes.pop(name, None)
            elif name not in self.nodes or _rv(node) >= self.nodes[name][0]:
                self.nodes[name] = (_rv(node), NodeView.from_api(node))
