"""WorkerPool: warm inference workers for one BaseModel and a set of routes.

A route maps a task (the ``model`` clients ask for) to adapter backends with
integer weights; a canary is a weight. The pool places one Pod per worker on
a (node, GPU) with enough VRAM headroom, so several workers share a 24 GiB
card when they fit.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Iterable, Literal

from pydantic import ConfigDict, Field

from .common_types import (
    DNS_LABEL, IMAGE, QUANTITY, QUANTITY_RULES, ApiModel, Condition, NodeSelectorTerm, StoreVolume, Toleration, Variant, cel, condition_map_rules,
)
from .rollout_types import Backend, Revision, RolloutSpec, RolloutState, RouteStatus

TASK_KEY = r"^[a-z0-9]([-_a-z0-9]*[a-z0-9])?$"


class RouteBackend(ApiModel):
    adapter: str = Field(pattern=DNS_LABEL, max_length=63, description="Name of an Adapter in the pool's namespace.")
    weight: int = Field(ge=0, le=100, description="Share of the task's requests, 0..100; a route sums to 100.")


Route = Annotated[list[RouteBackend], Field(
    min_length=1, max_length=16,
    json_schema_extra={"x-kubernetes-validations": [
        cel("self.map(b, b.weight).sum() == 100", "route weights must sum to 100"),
        cel("self.all(b, self.exists_one(c, c.adapter == b.adapter))",
            "an adapter may appear only once in a route"),
        cel("self.exists(b, b.weight > 0)", "a route needs at least one backend with weight > 0"),
    ]},
)]


class GpuSelection(ApiModel):
    product: str | None = Field(default=None, min_length=1, max_length=128,
                                description="Required nvidia.com/gpu.product label value, e.g. NVIDIA-GeForce-RTX-3090.")
    min_memory_mib: int | None = Field(default=None, alias="minMemoryMiB", ge=1,
                                       description="Only GPUs with at least this much memory (nvidia.com/gpu.memory).")
    headroom_mib: int = Field(default=1024, alias="headroomMiB", ge=0, le=65536,
                              description="Slack kept free per worker for CUDA context and fragmentation.")
    kv_cache_mib: int = Field(default=2048, alias="kvCacheMiB", ge=0, le=262144,
                              description="KV-cache budget per worker (Mistral-7B fp16: 512 MiB per 4k tokens).")
    policy: Literal["binpack", "spread"] = Field(
        default="binpack", description="binpack: fill GPUs before opening new ones; spread: most free GPU first.")
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector",
                                          description="Node labels a worker's node must carry.")
    node_affinity: list[NodeSelectorTerm] = Field(
        default_factory=list, alias="nodeAffinity", max_length=8,
        description="Required node selector terms (ORed), as in requiredDuringSchedulingIgnoredDuringExecution.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    reschedule_after_seconds: int = Field(
        default=300, alias="rescheduleAfterSeconds", ge=5, le=86400,
        description="A worker whose pod stays Unschedulable, or whose node stays NotReady, this long is deleted "
                    "(its VRAM reservation released) and placed again elsewhere; a node it was Unschedulable on "
                    "is avoided by the pool for as long again.")


class Resources(ApiModel):
    cpu: str = Field(default="2", pattern=QUANTITY, max_length=64, description="CPU request of a worker.",
                     json_schema_extra={"x-kubernetes-validations": QUANTITY_RULES})
    memory: str = Field(default="16Gi", pattern=QUANTITY, max_length=64,
                        description="Memory request of a worker (base weights pass through RAM).",
                        json_schema_extra={"x-kubernetes-validations": QUANTITY_RULES})


class WorkerPoolSpec(ApiModel):
    base_model_ref: str = Field(alias="baseModelRef", pattern=DNS_LABEL, max_length=63,
                                description="Name of the BaseModel (same namespace).")
    variants: list[Variant] = Field(
        default_factory=lambda: ["bnb-int8", "fp16"], min_length=1, max_length=5,
        description="Variant preference: the first the BaseModel offers and that fits; later ones are fallbacks.",
        json_schema_extra={"x-kubernetes-list-type": "set", "default": ["bnb-int8", "fp16"]})
    replicas: int = Field(default=1, ge=0, le=1000, description="Number of workers.")
    gpu: GpuSelection = Field(default_factory=GpuSelection, json_schema_extra={"default": {}}, description="GPU selection and placement policy.")
    routes: dict[str, Route] = Field(
        default_factory=dict, max_length=256,
        description="task -> adapter backends with integer weights summing to 100.",
        json_schema_extra={"x-kubernetes-validations": [
            cel(f"self.all(t, t.matches('{TASK_KEY}'))", "routes keys must be task names (lowercase, digits, - and _)"),
        ]})
    image: str | None = Field(default=None, min_length=1, max_length=1024, pattern=IMAGE,
                              description="Worker image (default: the operator's).")
    store: StoreVolume | None = Field(default=None, description="Store volume (default: the BaseModel's).")
    resources: Resources = Field(default_factory=Resources, json_schema_extra={"default": {}})
    port: int = Field(default=8000, ge=1, le=65535, description="Worker HTTP port (OpenAI-compatible).")
    max_adapters: int | None = Field(default=None, alias="maxAdapters", ge=1, le=1024,
                                     description="Refuse pools routing to more distinct adapters than this.")
    max_loaded_adapters: int | None = Field(
        default=None, alias="maxLoadedAdapters", ge=1, le=1024,
        description="Adapters a worker keeps stacked on the GPU (least recently used beyond it wait in host RAM "
                    "and are loaded on demand; backends with weight > 0 always stay); unset: no cap. Passed to "
                    "each worker as --max-loaded-adapters; a change rolls the workers.")
    drain_seconds: int = Field(
        default=60, alias="drainSeconds", ge=0, le=86400,
        description="How long an adapter whose effective weight reached 0 stays loaded (requests routed just "
                    "before the workers saw the new routes may still be running).")
    rollouts: dict[str, RolloutSpec] = Field(
        default_factory=dict, max_length=256,
        description="task -> automated canary rollout of that task's route (docs/rollouts.md).",
        json_schema_extra={"x-kubernetes-validations": [
            cel("self.all(t, t.matches('" + TASK_KEY + "'))", "rollouts keys must be task names"),
        ]})

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!has(self.maxAdapters) || self.routes.map(t, size(self.routes[t])).sum() <= self.maxAdapters",
            "routes name more adapter backends than maxAdapters allows", field_path=".routes"),
        cel("!has(self.rollouts) || self.rollouts.all(t, has(self.routes) && t in self.routes)",
            "every rollouts key must be a task of routes", field_path=".rollouts"),
    ]})


class WorkerStatus(ApiModel):
    pod: str
    node: str | None = None
    gpu: int | None = None
    vram_mib: int | None = Field(default=None, alias="vramMiB")
    variant: str | None = None
    phase: str | None = None
    ready: bool = False
    loaded_set: str | None = Field(
        default=None, alias="loadedSet",
        description="Name of the status.loadedSets entry listing the adapters this worker has loaded "
                    "(absent: none).")
    failed: dict[str, str] = Field(default_factory=dict)
    fault: Literal["OOMKilled", "CrashLoopBackOff"] | None = Field(
        default=None, description="Why the worker keeps failing, while it is not Ready.")


# Each distinct set of loaded adapters is listed once and each worker names its set, so the
# status grows with the number of distinct sets (one or two during a rollout), not with
# workers x adapters (a 1,000-worker pool with 10 adapters: 161 KiB instead of 278 KiB).
class LoadedSet(ApiModel):
    """Adapters loaded together on one or more workers."""

    name: str = Field(description="Short hash of the sorted adapter names (what workers[].loadedSet holds).")
    adapters: list[str] = Field(description="Adapters loaded, sorted.")
    workers: int = Field(default=0, description="How many listed workers have exactly this set loaded.")


def group_loaded(loaded: dict[str, Iterable[str]]) -> tuple[dict[str, str], list[LoadedSet]]:
    """Worker -> its set's name (workers that loaded nothing have none), and the distinct sets,
    sorted by name. A name is the shortest prefix (8 hex digits at least) of the set's SHA-256
    that no other set of the pool shares, so it stays the same from pass to pass."""
    sets = {w: tuple(sorted(set(a))) for w, a in loaded.items() if a}
    digests = {s: hashlib.sha256("\n".join(s).encode()).hexdigest() for s in set(sets.values())}
    size = next(n for n in range(8, 65) if len({d[:n] for d in digests.values()}) == len(digests))
    names = {s: d[:size] for s, d in digests.items()}
    counts: dict[tuple[str, ...], int] = {}
    for s in sets.values():
        counts[s] = counts.get(s, 0) + 1
    listed = sorted((LoadedSet(name=names[s], adapters=list(s), workers=n) for s, n in counts.items()),
                    key=lambda x: x.name)
    return {w: names[s] for w, s in sets.items()}, listed


def loaded_by_worker(status: dict) -> dict[str, list[str] | None]:
    """Pod -> adapters loaded, read from a stored status (``workers`` and ``loadedSets``) for the
    readers that work on raw objects; None where a worker names a set that is not listed."""
    sets = {s.get("name"): sorted(s.get("adapters") or []) for s in status.get("loadedSets") or []}
    return {w.get("pod"): sets.get(w["loadedSet"]) if w.get("loadedSet") else []
            for w in status.get("workers") or []}


class AvoidedNode(ApiModel):
    node: str
    until: str = Field(description="RFC 3339 time until which no worker of the pool is placed on the node.")


class WorkerPoolStatus(ApiModel):
    replicas: int = 0
    ready_replicas: int = Field(default=0, alias="readyReplicas")
    unplaced: int = Field(default=0, description="Workers waiting for a GPU with enough free VRAM.")
    selector: str | None = Field(default=None, description="Label selector of the pool's pods (scale subresource).")
    variant: str | None = Field(default=None, description="Preferred variant in effect.")
    need_mib: int | None = Field(default=None, alias="needMiB", description="VRAM reserved per worker.")
    workers: list[WorkerStatus] = Field(default_factory=list,
                                        description="One entry per live worker; its loaded adapters are in the "
                                                    "loadedSets entry it names.")
    loaded_sets: list[LoadedSet] = Field(
        default_factory=list, alias="loadedSets",
        description="Distinct sets of loaded adapters, each listed once (workers[].loadedSet names one).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    avoided_nodes: list[AvoidedNode] = Field(
        default_factory=list, alias="avoidedNodes", max_length=1000,
        description="Nodes a worker stayed Unschedulable on (see spec.gpu.rescheduleAfterSeconds).")
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=condition_map_rules())
    routes: list[RouteStatus] = Field(default_factory=list,
                                      description="Per task: desired vs effective weight of each backend.")
    effective_routes: dict[str, list[Backend]] = Field(
        default_factory=dict, alias="effectiveRoutes",
        description="Weights the workers use now (load before route: a backend gets weight once all ready "
                    "workers have loaded it).")
    draining: dict[str, str] = Field(default_factory=dict,
                                     description="adapter -> time its effective weight became 0 (unloaded after "
                                                 "the drain period).")
    revisions: list[Revision] = Field(default_factory=list, max_length=10,
                                      description="Last effective route sets (rollback restores the previous).")
    rollouts: dict[str, RolloutState] = Field(default_factory=dict, description="task -> automated rollout state.")
    processed_commands: list[str] = Field(
        default_factory=list, alias="processedCommands",
        description="Ids of rollout-command.loraplane.io/<id> annotations already applied (removed with them).")
    analysis_baseline: str | None = Field(
        default=None, alias="analysisBaseline",
        description="Compact JSON, kept while a rollout progresses: the workers' counters summed per adapter at "
                    "the last pass, and per pod a reset mark (O(pods + adapters), not pods x series).")


PRINTER_COLUMNS = [
    {"name": "Base", "type": "string", "jsonPath": ".spec.baseModelRef"},
    {"name": "Variant", "type": "string", "jsonPath": ".status.variant"},
    {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Unplaced", "type": "integer", "jsonPath": ".status.unplaced"},
    {"name": "Status", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason"},
    {"name": "Rollout", "type": "string", "jsonPath": ".status.rollouts.*.phase", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
