"""Read a ``Snapshot`` for the invariant checker (operator/core/invariants.py)
from the real API server, and normalise one for run-to-run comparison.

Read order matters for the load-before-route invariant: the WorkerPools and
their desired ConfigMaps are read *before* the Pods. A weight seen first was
granted when every ready worker had the version loaded, and a worker unloads
a version only after its weight has been 0 for the drain period, so reading
the workers afterwards can not make a correct operator look wrong.
"""

from __future__ import annotations

import copy
import json

from kubernetes import client

from loraplane.operator.api.workerpool_types import loaded_by_worker
from loraplane.operator.core.invariants import Snapshot

GROUP, VERSION = "loraplane.io", "v1alpha1"


def _items(resp) -> list[dict]:
    return json.loads(resp.data)["items"]


def read(api_client, namespace: str, node_selector: str) -> Snapshot:
    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    raw = dict(_preload_content=False)

    def crs(plural: str) -> list[dict]:
        return custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]

    snap = Snapshot(pools=crs("workerpools"), adapters=crs("adapters"), basemodels=crs("basemodels"))
    snap.configmaps = _items(core.list_namespaced_config_map(namespace, **raw))
    snap.jobs = _items(batch.list_namespaced_job(namespace, **raw))
    snap.services = _items(core.list_namespaced_service(namespace, **raw))
    snap.pods = _items(core.list_namespaced_pod(namespace, **raw))
    snap.nodes = _items(core.list_node(label_selector=node_selector, **raw))
    return snap


# --- normalisation: what must be equal between a run with kills and one without ------------------

def _conditions(st: dict) -> list:
    return sorted((c["type"], c["status"], c.get("reason")) for c in st.get("conditions") or [])


def _weighted(routes: dict) -> dict:
    return {t: sorted((b["adapter"], b["weight"]) for b in bs if b["weight"]) for t, bs in (routes or {}).items()}


def _pool(p: dict) -> dict:
    st = p.get("status") or {}
    serving = {a for bs in _weighted(st.get("effectiveRoutes")).values() for a, _ in bs}
    loaded = loaded_by_worker(st)
    return {"name": p["metadata"]["name"], "generation": p["metadata"].get("generation"), "spec": p["spec"],
            "observedGeneration": st.get("observedGeneration"), "conditions": _conditions(st),
            **{k: st.get(k) for k in ("replicas", "readyReplicas", "unplaced", "variant", "needMiB", "selector")},
            "workers": sorted((w["pod"], w.get("node"), w.get("gpu"), w.get("vramMiB"), w.get("ready"),
                               sorted(set(loaded[w["pod"]] or []) & serving)) for w in st.get("workers") or []),
            "effectiveRoutes": _weighted(st.get("effectiveRoutes")),
            "rollouts": {t: (r.get("phase"), r.get("stepIndex"), r.get("canaryWeight"), r.get("reason"))
                         for t, r in (st.get("rollouts") or {}).items()},
            "revisions": [(r.get("revision"), _weighted(r.get("routes"))) for r in st.get("revisions") or []]}


def _resolved(o: dict) -> dict:
    st = o.get("status") or {}
    training = st.get("training") or {}
    return {"name": o["metadata"]["name"], "generation": o["metadata"].get("generation"),
            "phase": st.get("phase"), "observedGeneration": st.get("observedGeneration"),
            "conditions": _conditions(st), "storePath": st.get("storePath"), "checksum": st.get("checksum"),
            "training": {k: training.get(k) for k in ("node", "gpu", "needMiB", "trainedGeneration")}}


def _desired(cm: dict) -> dict:
    doc = json.loads((cm.get("data") or {}).get("desired.json") or "{}")
    routes = _weighted(doc.get("routes"))
    serving = {a for bs in routes.values() for a, _ in bs}
    return {"name": cm["metadata"]["name"], "routes": routes, "base": doc.get("base"),
            "adapters": sorted(a["name"] for a in doc.get("adapters") or [] if a["name"] in serving)}


def normalise(snap: Snapshot) -> dict:
    """The outcome, without names of the run (namespace, uids), times, messages, and without
    which draining versions are still loaded (the drain period is wall-clock time, and a
    run with kills takes longer)."""
    live = [p for p in snap.pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and not p["metadata"].get("deletionTimestamp")]
    return copy.deepcopy({
        "pools": sorted((_pool(p) for p in snap.pools), key=lambda d: d["name"]),
        "adapters": sorted((_resolved(a) for a in snap.adapters), key=lambda d: d["name"]),
        "basemodels": sorted((_resolved(b) for b in snap.basemodels), key=lambda d: d["name"]),
        "pods": sorted((p["metadata"]["name"], (p["metadata"].get("annotations") or {}).get("loraplane.io/reservation"),
                        (p["metadata"].get("annotations") or {}).get("loraplane.io/spec-hash")) for p in live
                       if "loraplane.io/pool" in (p["metadata"].get("labels") or {})),
        "jobs": sorted(j["metadata"]["name"] for j in snap.jobs),
        "configmaps": sorted((_desired(c) for c in snap.configmaps if c["metadata"]["name"].endswith("-desired")),
                             key=lambda d: d["name"]),
        "services": sorted((s["metadata"]["name"], json.dumps(s["spec"].get("selector"), sort_keys=True))
                           for s in snap.services if "loraplane.io/pool" in (s["metadata"].get("labels") or {})),
    })
