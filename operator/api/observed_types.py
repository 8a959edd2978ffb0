"""Read-models of the built-in objects the operator observes: Pods and Nodes.

Why: the pure cores used to receive Pods and Nodes as the raw dicts the API
client returns and dug through them with ``.get(...)`` chains in a dozen
places. The controllers now call ``PodView.from_api`` / ``NodeView.from_api``
once, at the kube boundary, and the cores see only these small frozen
values: the fields the operator actually reads, already parsed (the
reservation and worker-status annotations, the Ready and PodScheduled
conditions, container faults). A field the cores need is added here, with
its parsing, in one place.

These are not the Kubernetes schema (the API server owns that); they are
projections, so unknown or malformed parts never raise: a malformed
annotation reads as absent.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from loraplane.contracts.desired import STATUS_ANNOTATION

from .names import GPU_COUNT, GPU_MEMORY, GPU_RESOURCE, POOL_LABEL, RESERVATION_ANNOTATION, SPEC_HASH_ANNOTATION


def _int(v, default: int = 0) -> int:
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return default


def parse_time(value: str | None) -> dt.datetime | None:
    """An RFC 3339 timestamp as the API server writes it (``...Z``), or None."""
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _true(conditions: list, type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions or [])


# --- nodes -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True)
class NodeView:
    """A GPU node as placement sees it (GFD labels, readiness, cordon, taints)."""

    name: str
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    gpu_count: int = 0
    gpu_memory_mib: int = 0
    ready: bool = True
    unschedulable: bool = False
    taints: tuple[Taint, ...] = ()
    not_ready_since: dt.datetime | None = None  # Ready's lastTransitionTime while not Ready

    @classmethod
    def from_api(cls, node: dict) -> "NodeView":
        meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
        labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        taints = tuple(Taint(t.get("key", ""), t.get("value") or "", t.get("effect", "NoSchedule"))
                       for t in spec.get("taints") or [])
        count = _int(labels.get(GPU_COUNT), 0)
        if not count:  # fall back on the device plugin's capacity
            count = _int((status.get("capacity") or {}).get(GPU_RESOURCE), 0)
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        is_ready = ready.get("status") == "True"
        return cls(name=meta["name"], labels=labels, gpu_count=count, gpu_memory_mib=_int(labels.get(GPU_MEMORY), 0),
                   ready=is_ready, unschedulable=bool(spec.get("unschedulable")), taints=taints,
                   not_ready_since=None if is_ready else parse_time(ready.get("lastTransitionTime")))


# --- pods --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReservationNote:
    """The ``loraplane.io/reservation`` annotation: where a pod was placed and with how much VRAM."""

    node: str
    gpu: int
    mib: int
    variant: str | None = None

    @classmethod
    def parse(cls, raw: str | None) -> "ReservationNote | None":
        if not raw:
            return None
        try:
            r = json.loads(raw)
            return cls(node=str(r["node"]), gpu=int(r["gpu"]), mib=int(r["vramMiB"]), variant=r.get("variant"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass(frozen=True)
class WorkerReport:
    """What a worker says about itself (``loraplane.io/worker-status`` annotation).

    ``ready`` is None while the worker has not reported (the pod's own Ready
    condition then decides; KWOK pods are Ready at once)."""

    ready: bool | None = None
    loaded: tuple[str, ...] = ()
    failed: dict[str, str] = field(default_factory=dict, hash=False)
    variant: str | None = None
    endpoint: str | None = None

    @classmethod
    def parse(cls, raw: str | None) -> "WorkerReport":
        try:
            r = json.loads(raw) if raw else {}
        except ValueError:
            r = {}
        if not isinstance(r, dict):
            r = {}
        ready = r.get("ready")
        return cls(ready=None if ready is None else bool(ready), loaded=tuple(str(x) for x in r.get("loaded") or []),
                   failed={str(k): str(v) for k, v in (r.get("failed") or {}).items()},
                   variant=r.get("variant") or None, endpoint=r.get("endpoint") or None)


@dataclass(frozen=True)
class ContainerFaults:
    """Why a pod's containers keep failing, from ``status.containerStatuses``."""

    restarts: int = 0
    waiting_reason: str = ""  # e.g. CrashLoopBackOff, ImagePullBackOff
    terminated_reason: str = ""  # last termination: OOMKilled, Error, ...
    terminated_exit_code: int | None = None

    @classmethod
    def from_statuses(cls, statuses: list) -> "ContainerFaults":
        restarts, waiting, term, code = 0, "", "", None
        for cs in statuses or []:
            restarts += _int(cs.get("restartCount"), 0)
            waiting = ((cs.get("state") or {}).get("waiting") or {}).get("reason") or waiting
            t = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
            if t:
                term, code = t.get("reason") or term, t.get("exitCode", code)
        return cls(restarts=restarts, waiting_reason=waiting, terminated_reason=term, terminated_exit_code=code)


@dataclass(frozen=True)
class PodView:
    """A Pod as the pool core and the VRAM ledger read it."""

    name: str
    namespace: str = ""
    uid: str = ""
    resource_version: int = 0
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    spec_hash: str | None = None
    created: dt.datetime | None = None
    deleting: bool = False
    phase: str = "Pending"
    ready: bool = False
    node_name: str | None = None
    pod_ip: str | None = None
    #: PodScheduled=False with reason Unschedulable: since when (None: not unschedulable)
    unschedulable_since: dt.datetime | None = None
    unschedulable_message: str = ""
    whole_gpus: int = 0  # nvidia.com/gpu requested (someone else's GPU pod)
    reservation: ReservationNote | None = None
    report: WorkerReport = field(default_factory=WorkerReport)
    faults: ContainerFaults = field(default_factory=ContainerFaults)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def done(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def pool(self) -> str | None:
        return self.labels.get(POOL_LABEL)

    @property
    def holds_gpu(self) -> bool:
        return self.reservation is not None or self.whole_gpus > 0

    @classmethod
    def from_api(cls, pod: dict) -> "PodView":
        meta, spec, st = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
        ann = meta.get("annotations") or {}
        conds = st.get("conditions") or []
        sched = next((c for c in conds if c.get("type") == "PodScheduled"), {})
        unsched = sched.get("status") == "False" and sched.get("reason") == "Unschedulable"
        return cls(
            name=meta["name"], namespace=meta.get("namespace") or "", uid=meta.get("uid") or "",
            resource_version=_int(meta.get("resourceVersion"), 0),
            labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
            spec_hash=ann.get(SPEC_HASH_ANNOTATION), created=parse_time(meta.get("creationTimestamp")),
            deleting=bool(meta.get("deletionTimestamp")), phase=st.get("phase") or "Pending",
            ready=_true(conds, "Ready"), node_name=spec.get("nodeName") or None, pod_ip=st.get("podIP") or None,
            unschedulable_since=(parse_time(sched.get("lastTransitionTime")) or parse_time(
                meta.get("creationTimestamp"))) if unsched else None,
            unschedulable_message=(sched.get("message") or "") if unsched else "",
            whole_gpus=_whole_gpus(spec), reservation=ReservationNote.parse(ann.get(RESERVATION_ANNOTATION)),
            report=WorkerReport.parse(ann.get(STATUS_ANNOTATION)),
            faults=ContainerFaults.from_statuses(st.get("containerStatuses")))


def _whole_gpus(spec: dict) -> int:
    n = 0
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        res = c.get("resources") or {}
        n = max(n, _int((res.get("limits") or {}).get(GPU_RESOURCE), 0),
                _int((res.get("requests") or {}).get(GPU_RESOURCE), 0))
    return n


# --- training Jobs -----------------------------------------------------------------------------------
PROGRESS_ANNOTATION = "loraplane.io/training-progress"  # = loraplane.training.progress.ANNOTATION
GENERATION_LABEL = "loraplane.io/generation"  # on training Jobs: the Adapter generation they train


@dataclass(frozen=True)
class TrainingPodView:
    """A training Job's pod: its progress annotation and how its trainer ended."""

    name: str
    phase: str  # Pending Running Succeeded Failed
    created: str = ""  # creationTimestamp as written (RFC 3339 sorts as text)
    progress: dict[str, object] | None = field(default=None, hash=False)  # the trainer's JSON, as it wrote it
    exit_code: int | None = None
    reason: str = ""  # terminated.reason (Error, OOMKilled, ...)
    message: str = ""  # terminated.message (the trainer's error, or the log tail)

    @classmethod
    def from_api(cls, pod: dict) -> "TrainingPodView":
        meta, st = pod.get("metadata") or {}, pod.get("status") or {}
        raw = (meta.get("annotations") or {}).get(PROGRESS_ANNOTATION)
        try:
            progress = json.loads(raw) if raw else None
        except ValueError:
            progress = None
        exit_code, reason, message = None, "", ""
        for cs in st.get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
            if term:
                exit_code, reason, message = term.get("exitCode"), term.get("reason") or "", term.get("message") or ""
        return cls(name=meta.get("name", ""), phase=st.get("phase") or "Pending",
                   created=meta.get("creationTimestamp") or "",
                   progress=progress if isinstance(progress, dict) or progress is None else None,
                   exit_code=exit_code, reason=reason, message=message)


@dataclass(frozen=True)
class JobView:
    """A training Job, with its pods oldest first."""

    name: str
    phase: str  # Running Succeeded Failed
    failed_pods: int = 0
    reason: str = ""  # Job condition reason (BackoffLimitExceeded, DeadlineExceeded, PodFailurePolicy)
    message: str = ""
    pods: tuple[TrainingPodView, ...] = ()
    generation: int | None = None  # the GENERATION_LABEL

    @classmethod
    def from_api(cls, job: dict, pods: list) -> "JobView":
        """``job`` and its pods (``job-name=`` selector) as the API client returns them."""
        st = job.get("status") or {}
        conds = [c for c in st.get("conditions") or [] if c.get("status") == "True"]
        failed = next((c for c in conds if c.get("type") == "Failed"), None)
        complete = next((c for c in conds if c.get("type") == "Complete"), None)
        phase = "Succeeded" if complete else "Failed" if failed else "Running"
        gen = ((job.get("metadata") or {}).get("labels") or {}).get(GENERATION_LABEL, "")
        return cls(name=job["metadata"]["name"], phase=phase, failed_pods=int(st.get("failed") or 0),
                   reason=(failed or {}).get("reason", ""), message=(failed or {}).get("message", ""),
                   pods=tuple(sorted((TrainingPodView.from_api(p) for p in pods), key=lambda p: (p.created, p.name))),
                   generation=int(gen) if gen.isdigit() else None)
