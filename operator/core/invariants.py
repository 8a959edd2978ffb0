"""Invariants of a loraplane cluster, checked over one snapshot: a pure function.

Why: the operator can be killed at any instruction, two replicas can hand
over, nodes can vanish. Tests that assert one outcome each cannot say that
*nothing* was lost or doubled on the way. This checker states what must be
true of the whole cluster, whatever happened before, and names the objects
that break it; the chaos and HA suites (tests/cluster/chaos, tests/cluster/ha)
run it after every step.

Two strengths:

* ``ALWAYS``: must hold in every snapshot, even mid-pass (no GPU overcommitted,
  no live pod without a reservation, no duplicate Job, no weight on a version
  a ready worker has not loaded, observedGeneration never ahead of generation).
* ``SETTLED``: may be false for the length of a pass or of garbage collection,
  but must hold once the cluster has converged (no orphans, no reservation
  without its pod, status observed at the current generation).

A snapshot is plain API dicts (``Snapshot``), as list calls return them; the
reader lives with the tests (it is the only part that talks to a cluster).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field

from loraplane.contracts.desired import DESIRED_KEY, STATUS_ANNOTATION

from ..api.names import MANAGED_BY, OWNER_LABEL, POOL_LABEL, RESERVATION_ANNOTATION, ordinal_of
from ..api.observed_types import NodeView, PodView
from ..api.workerpool_types import loaded_by_worker
from .inventory import reservation_of, reservations
from .placement import Reservation

ALWAYS, SETTLED = "always", "settled"

GPU_OVERCOMMITTED = "gpu-overcommitted"
POD_WITHOUT_RESERVATION = "pod-without-reservation"
RESERVATION_WITHOUT_POD = "reservation-without-pod"
ORPHAN = "orphaned-object"
EXCESS_WORKERS = "excess-workers"
DUPLICATE_JOB = "duplicate-job"
ROUTE_TO_UNLOADED = "route-to-unloaded-version"
GENERATION = "observed-generation"
CONDITIONS = "conditions"
STALE_STATUS = "status-behind-pods"

TRAINING_LABEL = "loraplane.io/training"  # = core.training.TRAINING_LABEL (training imports pool: no cycle here)
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
CONDITION_TYPES = ("Ready", "Progressing", "Degraded")
_STEP = re.compile(r"-([a-z]+)(?:-g\d+-a\d+)?$")


@dataclass
class Snapshot:
    """Raw API objects, each list as the API returns it (items without ``kind``)."""

    nodes: list[dict] = field(default_factory=list)
    pods: list[dict] = field(default_factory=list)
    jobs: list[dict] = field(default_factory=list)
    configmaps: list[dict] = field(default_factory=list)
    services: list[dict] = field(default_factory=list)
    pools: list[dict] = field(default_factory=list)
    adapters: list[dict] = field(default_factory=list)
    basemodels: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Violation:
    invariant: str
    strength: str  # ALWAYS | SETTLED
    objects: tuple[str, ...]  # "Kind namespace/name"
    message: str

    def __str__(self) -> str:
        return f"[{self.invariant}/{self.strength}] {self.message} ({', '.join(self.objects)})"


def check(snap: Snapshot) -> list[Violation]:
    """Every invariant violated in ``snap`` (empty: all hold)."""
    out: list[Violation] = []
    for rule in (gpu_overcommit, pods_without_reservation, reservations_without_pod, orphans, excess_workers,
                 duplicate_jobs, routes_to_unloaded, generations, worker_status):
        out += rule(snap)
    return out


def always(violations: list[Violation]) -> list[Violation]:
    return [v for v in violations if v.strength == ALWAYS]


# --- helpers -------------------------------------------------------------------------------------

def ref(kind: str, obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{kind} {meta['namespace']}/{meta['name']}" if meta.get("namespace") else f"{kind} {meta.get('name')}"


def _labels(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("labels") or {}


def _annotations(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("annotations") or {}


def job_finished(job: dict) -> bool:
    conds = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conds)


def _job_of(pod: dict) -> str | None:
    labels = _labels(pod)
    return next((labels[k] for k in JOB_NAME_LABELS if k in labels), None)


def _holds_gpu(pod: dict) -> bool:
    """A loraplane worker (pool label and an ordinal name) or a training pod."""
    labels, name = _labels(pod), pod["metadata"]["name"]
    pool = labels.get(POOL_LABEL)
    return (pool is not None and ordinal_of(name, pool) is not None) or TRAINING_LABEL in labels


def _live(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def _job_stand_ins(snap: Snapshot) -> list[tuple[dict, Reservation]]:
    """Unfinished Jobs carrying a reservation whose pod is not there (yet or any more): the
    Job itself holds the VRAM (the operator counts it the same way, see training.py)."""
    with_pod = {(p["metadata"].get("namespace"), _job_of(p)) for p in snap.pods if _live(p) and _job_of(p)}
    out = []
    for job in snap.jobs:
        meta = job["metadata"]
        if job_finished(job) or RESERVATION_ANNOTATION not in _annotations(job):
            continue
        if (meta.get("namespace"), meta["name"]) in with_pod:
            continue
        r = reservation_of(PodView.from_api(job))  # the Job's reservation annotation, read as a pod's
        if r is not None:
            out.append((job, Reservation(r.node, r.gpu, r.mib, f"{meta.get('namespace')}/{meta['name']}")))
    return out


# --- the invariants ------------------------------------------------------------------------------

def gpu_overcommit(snap: Snapshot) -> list[Violation]:
    """No GPU holds more reserved VRAM than it has, and no reservation names a card the node lacks."""
    nodes = {n.name: n for n in (NodeView.from_api(n) for n in snap.nodes)}
    held = reservations([PodView.from_api(p) for p in snap.pods], list(nodes.values())) + [r for _, r in _job_stand_ins(snap)]
    per_gpu: dict[tuple[str, int], list[Reservation]] = defaultdict(list)
    for r in held:
        per_gpu[(r.node, r.gpu)].append(r)
    out = []
    for (node, gpu), rs in sorted(per_gpu.items()):
        info = nodes.get(node)
        if info is None:
            continue  # a node that is gone: node-loss handling, not a double booking
        objects = tuple(sorted(f"holder {r.holder}" for r in rs))
        total = sum(r.mib for r in rs)
        if info.gpu_count and gpu >= info.gpu_count:
            out.append(Violation(GPU_OVERCOMMITTED, ALWAYS, objects,
                                 f"{node}/gpu{gpu}: reserved on a GPU index the node does not have "
                                 f"({info.gpu_count} GPUs)"))
        elif info.gpu_memory_mib and total > info.gpu_memory_mib:
            out.append(Violation(GPU_OVERCOMMITTED, ALWAYS, objects,
                                 f"{node}/gpu{gpu}: {total} MiB reserved > {info.gpu_memory_mib} MiB"))
    return out


def pods_without_reservation(snap: Snapshot) -> list[Violation]:
    """Every live worker or training pod carries a readable reservation, on the node it runs on."""
    out = []
    for pod in snap.pods:
        if not _live(pod) or not _holds_gpu(pod):
            continue
        r = reservation_of(PodView.from_api(pod))
        node = (pod.get("spec") or {}).get("nodeName")
        if r is None:
            out.append(Violation(POD_WITHOUT_RESERVATION, ALWAYS, (ref("Pod", pod),),
                                 "a live GPU pod has no (readable) reservation annotation"))
        elif node and node != r.node:
            out.append(Violation(POD_WITHOUT_RESERVATION, ALWAYS, (ref("Pod", pod),),
                                 f"reserved on {r.node} but bound to {node}: its VRAM is charged to the wrong node"))
    return out


def reservations_without_pod(snap: Snapshot) -> list[Violation]:
    """Once settled, no VRAM is held for a pod that does not exist: a pool's status lists only
    existing workers, and an unfinished training Job has its pod."""
    live = {(p["metadata"].get("namespace"), p["metadata"]["name"]) for p in snap.pods if _live(p)}
    out = []
    for pool in snap.pools:
        ns = pool["metadata"].get("namespace")
        for w in (pool.get("status") or {}).get("workers") or []:
            if w.get("node") is not None and (ns, w.get("pod")) not in live:
                out.append(Violation(RESERVATION_WITHOUT_POD, SETTLED, (ref("WorkerPool", pool), f"Pod {ns}/{w.get('pod')}"),
                                     f"status lists worker {w.get('pod')} on {w.get('node')}/gpu{w.get('gpu')} "
                                     "but the pod does not exist"))
    for job, r in _job_stand_ins(snap):
        out.append(Violation(RESERVATION_WITHOUT_POD, SETTLED, (ref("Job", job),),
                             f"unfinished Job reserves {r.mib} MiB on {r.node}/gpu{r.gpu} and has no live pod"))
    return out


def _owners(snap: Snapshot) -> dict[tuple[str, str | None, str], str]:
    """(kind, namespace, name) -> uid of every object that may own a loraplane child."""
    out = {}
    for kind, objs in (("WorkerPool", snap.pools), ("Adapter", snap.adapters), ("BaseModel", snap.basemodels),
                       ("Job", snap.jobs)):
        for o in objs:
            m = o["metadata"]
            out[(kind, m.get("namespace"), m["name"])] = m.get("uid")
    return out


def _managed(obj: dict) -> bool:
    labels = _labels(obj)
    return all(labels.get(k) == v for k, v in MANAGED_BY.items()) or POOL_LABEL in labels


def orphans(snap: Snapshot) -> list[Violation]:
    """Every loraplane Job, ConfigMap, Service and Pod has a controller owner that exists (same uid)."""
    owners = _owners(snap)
    out = []
    for kind, objs in (("Job", snap.jobs), ("ConfigMap", snap.configmaps), ("Service", snap.services),
                       ("Pod", snap.pods)):
        for obj in objs:
            if not _managed(obj) or (kind == "Pod" and not _live(obj)):
                continue
            meta = obj["metadata"]
            ctl = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
            if ctl is None:
                out.append(Violation(ORPHAN, SETTLED, (ref(kind, obj),), "managed by loraplane but has no owner"))
                continue
            uid = owners.get((ctl.get("kind"), meta.get("namespace"), ctl.get("name")))
            if uid != ctl.get("uid"):
                gone = "does not exist" if uid is None else f"was replaced (uid {uid})"
                out.append(Violation(ORPHAN, SETTLED, (ref(kind, obj), f"{ctl.get('kind')} {ctl.get('name')}"),
                                     f"its owner {ctl.get('kind')}/{ctl.get('name')} {gone}"))
    return out


def excess_workers(snap: Snapshot) -> list[Violation]:
    """Once settled, a pool runs no more live workers than ``spec.replicas``."""
    out = []
    for pool in snap.pools:
        meta = pool["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        mine = [p for p in snap.pods if p["metadata"].get("namespace") == meta.get("namespace") and _live(p)
                and not p["metadata"].get("deletionTimestamp") and _labels(p).get(POOL_LABEL) == meta["name"]
                and ordinal_of(p["metadata"]["name"], meta["name"]) is not None]
        want = int((pool.get("spec") or {}).get("replicas", 1))
        if len(mine) > want:
            out.append(Violation(EXCESS_WORKERS, SETTLED, (ref("WorkerPool", pool), *sorted(ref("Pod", p) for p in mine)),
                                 f"{len(mine)} live workers for replicas={want}"))
    return out


def job_step(job: dict) -> str:
    """The step a loraplane Job runs (``publish``, ``verify``, ``train``), from its name
    (``names.job_name``: ``<kind>-<name>-<step>-g<gen>-a<attempt>`` or ``<name>-<hash>-<step>``)."""
    m = _STEP.search(job["metadata"]["name"])
    return m.group(1) if m else ""


def duplicate_jobs(snap: Snapshot) -> list[Violation]:
    """At most one unfinished Job per owner and step (two trainings of one Adapter would share
    its GPU budget twice; two verifies race on one status)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for job in snap.jobs:
        owner = _labels(job).get(OWNER_LABEL)
        if owner and not job_finished(job):
            groups[(job["metadata"].get("namespace"), owner, job_step(job))].append(job)
    return [Violation(DUPLICATE_JOB, ALWAYS, tuple(sorted(ref("Job", j) for j in jobs)),
                      f"{len(jobs)} unfinished {step or 'unknown-step'} Jobs for {owner}")
            for (ns, owner, step), jobs in sorted(groups.items()) if len(jobs) > 1]


def _report(pod: dict) -> dict:
    try:
        return json.loads(_annotations(pod).get(STATUS_ANNOTATION) or "{}")
    except ValueError:
        return {}


def ready_workers(snap: Snapshot, pool: dict) -> list[tuple[dict, set[str] | None]]:
    """(pod, loaded adapters or None when it has not reported yet) of the pool's ready workers,
    as the operator counts them: pod Ready, not terminating, its own report not saying otherwise."""
    meta = pool["metadata"]
    out = []
    for p in snap.pods:
        if p["metadata"].get("namespace") != meta.get("namespace") or _labels(p).get(POOL_LABEL) != meta["name"]:
            continue
        if not _live(p) or p["metadata"].get("deletionTimestamp"):
            continue
        conds = (p.get("status") or {}).get("conditions") or []
        rep = _report(p) if STATUS_ANNOTATION in _annotations(p) else None
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds) and (rep or {}).get("ready", True):
            out.append((p, None if rep is None else set(rep.get("loaded") or [])))
    return out


def _weighted(pool: dict, snap: Snapshot) -> dict[str, set[str]]:
    """Where -> adapters with weight > 0: the pool's effectiveRoutes and its desired ConfigMap."""
    meta = pool["metadata"]
    out = {"status.effectiveRoutes": {b["adapter"] for bs in ((pool.get("status") or {}).get("effectiveRoutes")
                                                              or {}).values() for b in bs or [] if b.get("weight")}}
    for cm in snap.configmaps:
        m = cm["metadata"]
        if m.get("namespace") == meta.get("namespace") and m["name"] == f"{meta['name']}-desired":
            try:
                routes = json.loads((cm.get("data") or {}).get(DESIRED_KEY) or "{}").get("routes") or {}
            except ValueError:
                routes = {}
            out[f"ConfigMap {m['name']}"] = {b["adapter"] for bs in routes.values() for b in bs if b.get("weight")}
    return out


def routes_to_unloaded(snap: Snapshot) -> list[Violation]:
    """Routes give weight only to versions loaded on every ready worker (load before route).

    A Ready pod that has not reported at all is held to the SETTLED strength: a real worker
    reports before its readiness probe passes (/readyz answers 200 only once it has loaded), so
    such a pod exists only where readiness is not the worker's (KWOK, a custom probe); the
    operator then counts it as having loaded nothing and withdraws the weight on its next pass.
    A worker whose own report lacks the version is ALWAYS a violation."""
    out = []
    for pool in snap.pools:
        workers = ready_workers(snap, pool)
        for where, adapters in _weighted(pool, snap).items():
            for adapter in sorted(adapters):
                lacking = [p for p, loaded in workers if loaded is not None and adapter not in loaded]
                silent = [p for p, loaded in workers if loaded is None]
                for pods, strength, why in ((lacking, ALWAYS, "not loaded on"), (silent, SETTLED, "not reported by")):
                    if pods:
                        out.append(Violation(ROUTE_TO_UNLOADED, strength,
                                             (ref("WorkerPool", pool), *sorted(ref("Pod", p) for p in pods)),
                                             f"{where} gives weight to {adapter}, {why} "
                                             f"{len(pods)}/{len(workers)} ready workers"))
    return out


def _conditions_of(kind: str, obj: dict) -> list[Violation]:
    """Condition shape and agreement with the rest of the status (ALWAYS), and all three
    observed at the current generation once settled."""
    gen, st, me = obj["metadata"].get("generation"), obj.get("status") or {}, ref(kind, obj)
    conds = st.get("conditions") or []
    out = []
    types = [c.get("type") for c in conds]
    if len(types) != len(set(types)):
        out.append(Violation(CONDITIONS, ALWAYS, (me,), f"a condition type appears twice: {types}"))
    for c in conds:
        if c.get("status") not in ("True", "False", "Unknown"):
            out.append(Violation(CONDITIONS, ALWAYS, (me,), f"{c.get('type')} has status {c.get('status')!r}"))
        if gen is not None and (c.get("observedGeneration") or 0) > gen:
            out.append(Violation(GENERATION, ALWAYS, (me,), f"{c.get('type')} observed generation "
                                                            f"{c.get('observedGeneration')} > {gen}"))
    by = {c.get("type"): c for c in conds}
    missing = [t for t in CONDITION_TYPES if t not in by or by[t].get("observedGeneration") != gen]
    if missing:
        out.append(Violation(CONDITIONS, SETTLED, (me,), f"{', '.join(missing)} not observed at generation {gen}"))
    ready = by.get("Ready", {}).get("status") == "True"
    if kind != "WorkerPool" and "phase" in st and ready != (st["phase"] == "Ready") and \
            by.get("Ready", {}).get("observedGeneration") == st.get("observedGeneration"):
        out.append(Violation(CONDITIONS, ALWAYS, (me,), f"phase {st['phase']} but Ready={ready}"))
    if kind == "WorkerPool" and ready and st.get("observedGeneration") == gen and \
            int(st.get("readyReplicas") or 0) < int((obj.get("spec") or {}).get("replicas", 1)):
        out.append(Violation(CONDITIONS, ALWAYS, (me,), f"Ready=True with {st.get('readyReplicas')} ready workers "
                                                        f"of {obj['spec'].get('replicas')}"))
    return out


def generations(snap: Snapshot) -> list[Violation]:
    """status.observedGeneration never ahead of metadata.generation; equal once settled;
    conditions consistent (``_conditions_of``)."""
    out = []
    for kind, objs in (("WorkerPool", snap.pools), ("Adapter", snap.adapters), ("BaseModel", snap.basemodels)):
        for obj in objs:
            if obj["metadata"].get("deletionTimestamp"):
                continue
            gen, seen = obj["metadata"].get("generation"), (obj.get("status") or {}).get("observedGeneration")
            if gen is not None and seen is not None and seen > gen:
                out.append(Violation(GENERATION, ALWAYS, (ref(kind, obj),), f"observedGeneration {seen} > {gen}"))
            elif seen != gen:
                out.append(Violation(GENERATION, SETTLED, (ref(kind, obj),),
                                     f"observedGeneration {seen}, generation {gen}"))
            out += _conditions_of(kind, obj)
    return out


def _pod_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def worker_status(snap: Snapshot) -> list[Violation]:
    """Once settled, a pool's status describes its pods: every live worker is listed, with the
    readiness its pod and report show and a loadedSets entry holding the adapters its report
    lists, and readyReplicas counts them."""
    out = []
    for pool in snap.pools:
        meta, st = pool["metadata"], pool.get("status") or {}
        if meta.get("deletionTimestamp") or not st:
            continue
        listed = {w.get("pod"): w for w in st.get("workers") or []}
        loaded = loaded_by_worker(st)
        pods = [p for p in snap.pods if p["metadata"].get("namespace") == meta.get("namespace") and _live(p)
                and not p["metadata"].get("deletionTimestamp") and _labels(p).get(POOL_LABEL) == meta["name"]
                and ordinal_of(p["metadata"]["name"], meta["name"]) is not None]
        wrong = []
        for p in pods:
            rep, w = _report(p), listed.get(p["metadata"]["name"])
            ready = _pod_ready(p) and rep.get("ready", True) is not False
            if w is None or bool(w.get("ready")) != ready or loaded[w.get("pod")] != sorted(set(rep.get("loaded") or [])):
                wrong.append(ref("Pod", p))
        ready_n = sum(1 for p in pods if _pod_ready(p))
        if wrong or int(st.get("readyReplicas") or 0) != ready_n:
            out.append(Violation(STALE_STATUS, SETTLED, (ref("WorkerPool", pool), *wrong),
                                 f"status.workers/loadedSets/readyReplicas ({st.get('readyReplicas')}) do not describe the "
                                 f"pods ({ready_n} ready; differing: {len(wrong)})"))
    return out
