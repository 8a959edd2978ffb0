"""Pure reconcile core for a WorkerPool.

Given the pool, its BaseModel, the Adapters it routes to (all three parsed:
``api.resources``), its own Pods, the
GPU nodes and every reservation in the cluster, decide: the desired-state
document for the workers, the Pods to create (placed by ``placement``) and
to delete, and the status. The handler applies the plan; running it twice on
the same world gives the same plan, which is what makes an operator killed
mid-reconcile safe (stable Pod names turn a repeated create into a 409).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from loraplane.contracts.desired import AdapterRef, BaseRef, DesiredState, RouteBackend

from . import faults, placement as pl
from ..api.common_types import Condition, StoreVolume
from ..api.conditions import triple
from ..api.names import ordinal_of
from ..api.observed_types import PodView
from ..api.resources import AdapterResource, BaseModelResource, InvalidObject, WorkerPoolResource, as_read
from ..api.training_types import TrainingGpu
from ..api.workerpool_types import GpuSelection, WorkerPoolStatus, WorkerStatus, group_loaded
from .manifests import Manifest, selector, worker_pod, worker_spec_hash

#: An Adapter as the pool core gets it: parsed, or what is wrong with it.
AdapterIn = AdapterResource | InvalidObject


@dataclass
class PoolPlan:
    status: WorkerPoolStatus  # the controller dumps it (``as_read``) when it patches
    desired_json: str | None = None
    create: list[Manifest] = field(default_factory=list)  # desired Pods (wire format, see manifests)
    delete: list[str] = field(default_factory=list)
    force_delete: set[str] = field(default_factory=set)  # of ``delete``: on a node that is gone (no kubelet)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None


def request_for(gpu: GpuSelection | TrainingGpu, holder_pool: str, worker: str, needs: tuple,
                avoid: tuple[str, ...] = ()) -> pl.Request:
    """A placement request for ``worker`` (``<ns>/<pod>``) of ``holder_pool`` (``<ns>/<pool>``)
    under the eligibility rules of a pool's (or a training Job's) ``gpu`` block; ``avoid``:
    nodes a worker of this pool stayed Unschedulable on (``faults``)."""
    tolerations = tuple(pl.Toleration(t.key, t.operator, t.value, t.effect) for t in gpu.tolerations)
    affinity = tuple(tuple(pl.Requirement(r.key, r.operator, tuple(r.values)) for r in term.match_expressions)
                     for term in gpu.node_affinity)
    return pl.Request(worker=worker, needs=needs, pool=holder_pool, policy=gpu.policy, product=gpu.product,
                      min_memory_mib=gpu.min_memory_mib, node_selector=tuple(sorted(gpu.node_selector.items())),
                      affinity=affinity, tolerations=tolerations, avoid_nodes=tuple(sorted(avoid)))


def set_conditions(status: WorkerPoolStatus, generation: int | None, now: dt.datetime, *,
                   ready: tuple[bool, str, str], progressing: tuple[bool, str, str],
                   degraded: tuple[bool, str, str]) -> None:
    """Ready, Progressing and Degraded on a typed status (``lastTransitionTime`` moves on flips only)."""
    conds = triple([as_read(c) for c in status.conditions], ready=ready, progressing=progressing,
                   degraded=degraded, generation=generation, now=now)
    status.conditions = [Condition.model_validate(c) for c in conds]


#: VRAM reserved for a routed adapter that is not verified yet (its size is
#: unknown): a rank-16 all-linear Mistral-7B adapter is 84 MB, rank 64 ~336 MB.
PENDING_ADAPTER_MIB = 256


def _adapter_ref(name: str, a: AdapterResource) -> AdapterRef:
    # A trained Adapter names its store identity in spec.training (same keys, same defaults).
    src = a.spec.source or a.spec.training
    return AdapterRef(name=name, owner=src.owner if src else "default",
                      storeName=(src.store_name if src else None) or name,
                      version=a.spec.version, checksum=a.status.checksum or "", task=a.spec.task)


def _unservable(name: str, a: AdapterIn | None, base: BaseModelResource, where: str) -> str | None:
    """Why ``a`` cannot be in the desired document (None: it can)."""
    if a is None:
        return f"adapter {name} ({where}) not found"
    if isinstance(a, InvalidObject):
        return f"adapter {name} ({where}) is invalid: {a.message}"
    if a.status.phase != "Ready":
        return f"adapter {name} ({where}) is {a.status.phase or 'Pending'}"
    if a.spec.base_model_ref != base.name:
        return f"adapter {name} is for BaseModel {a.spec.base_model_ref}"
    return None


def compose_desired(pool: WorkerPoolResource, base: BaseModelResource, adapters: dict[str, AdapterIn],
                    variant: str, routing: tuple[dict[str, dict[str, int]], set[str]] | None = None):
    """(DesiredState, adapter VRAM MiB, problems) from the Ready adapters the
    routes name. The VRAM also counts routed adapters that exist but are not
    Ready yet (their ``vramMiB`` if known, else ``PENDING_ADAPTER_MIB``), so
    workers placed before an adapter is verified have room to load it. With
    ``maxLoadedAdapters`` only what a worker can hold at once is counted
    (``placement.resident_adapter_mib``).

    ``routing`` = (effective routes, adapters to keep) from ``routing``:
    the document then carries those weights (load before route) and holds
    every kept adapter (a canary before it gets weight, a drained one until
    its drain period ends) instead of the spec's routes as they are."""
    problems, refs, sizes = [], {}, {}  # sizes: adapter -> MiB it is reserved
    pending: set[str] = set()
    routes: dict[str, list[RouteBackend]] = {}
    for task, backends in sorted(pool.spec.routes.items()):
        kept = []
        for b in backends:
            a = adapters.get(b.adapter)
            why = _unservable(b.adapter, a, base, f"route {task}")
            if why and isinstance(a, AdapterResource) and a.status.phase != "Ready":
                if b.adapter not in pending:
                    pending.add(b.adapter)
                    sizes[b.adapter] = int(a.status.vram_mib or PENDING_ADAPTER_MIB)
            if why:
                problems.append(why)
                continue
            if b.adapter not in refs:
                refs[b.adapter] = _adapter_ref(b.adapter, a)
                sizes[b.adapter] = int(a.status.vram_mib or 0)
            kept.append(RouteBackend(adapter=b.adapter, weight=b.weight))
        if kept:
            routes[task] = kept
    if routing is not None:
        weights, keep = routing
        for name in sorted((set(keep) | {x for r in weights.values() for x in r}) - set(refs) - pending):
            a = adapters.get(name)
            if _unservable(name, a, base, "rollout") is not None:
                if isinstance(a, AdapterResource) and a.status.phase != "Ready":
                    problems.append(f"adapter {name} (rollout) is {a.status.phase or 'Pending'}")
                continue
            refs[name] = _adapter_ref(name, a)
            sizes[name] = int(a.status.vram_mib or 0)
        routes = {t: [RouteBackend(adapter=x, weight=w) for x, w in r.items() if x in refs and w > 0]
                  for t, r in sorted(weights.items())}
        routes = {t: r for t, r in routes.items() if r}
    desired = DesiredState(
        pool=pool.name, generation=pool.generation or 0,
        base=BaseRef(owner=base.spec.owner, name=base.spec.store_name, version=base.spec.version,
                     checksum=base.status.checksum or "", variant=variant),
        adapters=list(refs.values()), routes=routes)
    return desired, pl.resident_adapter_mib(sizes, _pinned(pool, routing), pool.spec.max_loaded_adapters), problems


def _pinned(pool: WorkerPoolResource, routing: tuple[dict[str, dict[str, int]], set[str]] | None) -> set[str]:
    """Adapters a worker keeps stacked whatever its cap: weight > 0 in the spec's routes or in the
    effective ones (while the workers apply a change they pin both the old and the new routes)."""
    pinned = {b.adapter for backends in pool.spec.routes.values() for b in backends if b.weight > 0}
    if routing is not None:
        pinned |= {x for r in routing[0].values() for x, w in r.items() if w > 0}
    return pinned


def _worker_status(pod: PodView, loaded_set: str | None) -> WorkerStatus:
    rep, r = pod.report, pod.reservation
    out: dict = {"pod": pod.name, "phase": pod.phase, "ready": pod.ready and rep.ready is not False}
    if loaded_set:
        out["loadedSet"] = loaded_set
    if rep.failed:
        out["failed"] = dict(rep.failed)
    if r is not None:
        out.update(node=r.node, gpu=r.gpu, vramMiB=r.mib, variant=rep.variant or r.variant)
    fault = faults.fault_of(pod)
    if fault:
        out["fault"] = fault
    return WorkerStatus.model_validate(out)


@dataclass
class _Sizing:
    """What the pool's workers need, once its BaseModel is Ready."""

    prefs: list[str]  # offered variants in the pool's order of preference
    needs: tuple[tuple[str, int], ...]  # (variant, MiB per worker), preferred first
    desired: DesiredState
    problems: list[str]  # routed adapters that cannot be served
    notes: list[str] = field(default_factory=list)  # for the Ready message


def plan_pool(pool: WorkerPoolResource, base: BaseModelResource | InvalidObject | None,
              adapters: dict[str, AdapterIn], pods: list[PodView], nodes: list[pl.NodeInfo],
              reservations: list[pl.Reservation], image: str, now: dt.datetime,
              routing: tuple[dict[str, dict[str, int]], set[str]] | None = None) -> PoolPlan:
    name = pool.name
    replicas = pool.spec.replicas
    mine = [p for p in pods if ordinal_of(p.name, name) is not None]
    live = [p for p in mine if not p.done and not p.deleting]
    status = _observed_status(pool, live)
    sizing = _size(pool, base, adapters, routing)
    if isinstance(sizing, tuple):
        return _blocked(pool, status, replicas - len(live), now, *sizing)
    status.variant, status.need_mib = sizing.prefs[0], sizing.needs[0][1]
    store = pool.spec.store or base.spec.store
    plan = PoolPlan(status=status, desired_json=sizing.desired.to_json())
    live = _drop_lost(plan, pool, mine, live, nodes, now)
    gone = {f"{pool.namespace}/{d}" for d in plan.delete}  # lost pods' VRAM is free for their replacements
    reservations = [r for r in reservations if r.holder not in gone]
    want = {p.name: _wanted_hash(pool, p, image, store, sizing.prefs[0]) for p in live}
    outdated = {p.name for p in live if p.spec_hash != want[p.name]}
    reservations = _scale_down(plan, pool, live, replicas, nodes, reservations, outdated)
    live = [p for p in live if p.name not in plan.delete]
    held = _replace_outdated(plan, pool, mine, live, replicas, nodes, reservations, sizing, image, store, outdated)
    unplaced = _scale_up(plan, pool, mine, live, replicas - held, nodes, reservations, sizing, image, store)
    _set_conditions(plan, pool, live, replicas, unplaced, sizing, now, rolling=bool(outdated))
    plan.events = _merge_events(plan.events)
    return plan


def _observed_status(pool: WorkerPoolResource, live: list[PodView]) -> WorkerPoolStatus:
    """The status fields that only describe what is there: selector, pods, workers and the
    distinct sets of adapters they loaded (``loadedSets``: each set once, not once per worker)."""
    name = pool.name
    set_of, sets = group_loaded({p.name: p.report.loaded for p in live})
    return WorkerPoolStatus.model_validate({
        "selector": selector(name), "observedGeneration": pool.generation,
        "conditions": [as_read(c) for c in pool.status.conditions],
        "replicas": len(live), "readyReplicas": sum(1 for p in live if p.ready),
        "workers": [as_read(w) for w in sorted((_worker_status(p, set_of.get(p.name)) for p in live),
                                               key=lambda w: ordinal_of(w.pod, name))],
        "loadedSets": [as_read(s) for s in sets]})


def _blocked(pool: WorkerPoolResource, status: WorkerPoolStatus, missing: int, now: dt.datetime, reason: str,
             message: str) -> PoolPlan:
    """No workers can be planned (no BaseModel, not Ready, no variant): say why, once."""
    set_conditions(status, pool.generation, now, ready=(False, reason, message), progressing=(True, reason, message),
                   degraded=(True, reason, message))
    status.unplaced = max(0, missing)
    before = next((c for c in pool.status.conditions if c.type == "Ready"), None)
    events = [] if before and before.reason == reason else [("Warning", reason, message)]  # no event spam
    return PoolPlan(status=status, requeue_after=15, events=events)


def _size(pool: WorkerPoolResource, base: BaseModelResource | InvalidObject | None,
          adapters: dict[str, AdapterIn],
          routing: tuple[dict[str, dict[str, int]], set[str]] | None) -> _Sizing | tuple[str, str]:
    """Variant and VRAM per worker, and the desired document; or (reason,
    message) when the BaseModel does not allow any."""
    spec = pool.spec
    if base is None:
        return "BaseModelMissing", f"BaseModel {spec.base_model_ref} not found"
    if isinstance(base, InvalidObject):
        return "BaseModelInvalid", f"BaseModel {spec.base_model_ref} is invalid: {base.message}"
    if base.status.phase != "Ready":
        return "WaitingForBaseModel", f"BaseModel {spec.base_model_ref} is not Ready"
    offered = {v.name: int(v.vram_mib) for v in base.status.variants}
    prefs = [v for v in spec.variants if v in offered]
    if not prefs:
        return "NoVariant", (f"none of spec.variants {spec.variants} is offered by BaseModel "
                             f"{spec.base_model_ref} (offers {sorted(offered)})")
    desired, adapters_mib, problems = compose_desired(pool, base, adapters, prefs[0], routing)
    extra = adapters_mib + spec.gpu.kv_cache_mib + spec.gpu.headroom_mib
    sizing = _Sizing(prefs=prefs, needs=tuple((v, offered[v] + extra) for v in prefs), desired=desired,
                     problems=problems)
    declared_pref = spec.variants[0]
    if prefs[0] != declared_pref:
        sizing.notes.append(f"{declared_pref} not offered by the BaseModel; using {prefs[0]}")
    return sizing


def _drop_lost(plan: PoolPlan, pool: WorkerPoolResource, mine: list[PodView], live: list[PodView],
               nodes: list[pl.NodeInfo], now: dt.datetime) -> list[PodView]:
    """Delete finished workers and lost ones (``faults.lost``); the live rest. Nodes a worker
    stayed Unschedulable on join ``status.avoidedNodes``."""
    by_name = {n.name: n for n in nodes}
    bound = pool.spec.gpu.reschedule_after_seconds
    avoid = []
    for p in mine:
        if p.deleting:
            if faults.orphaned(p, by_name):  # Terminating on a node that is gone: nothing will finish it
                plan.delete.append(p.name)
                plan.force_delete.add(p.name)
            continue
        why = None if p.done else faults.lost(p, by_name, now, bound)
        if p.done or why is not None:
            plan.delete.append(p.name)
        elif (left := faults.wait_left(p, by_name, now, bound)) is not None:
            _sooner(plan, left + 1)
        if why is not None:
            plan.events.append(("Warning", why.reason, why.message))
            if why.force:
                plan.force_delete.add(p.name)
            if why.avoid:
                avoid.append(why.avoid)
    if avoid or pool.status.avoided_nodes:
        plan.status.avoided_nodes = faults.avoided_nodes(pool.status.avoided_nodes, avoid, now, bound)
    return [p for p in live if p.name not in plan.delete]


def _sooner(plan: PoolPlan, seconds: float) -> None:
    plan.requeue_after = seconds if plan.requeue_after is None else min(plan.requeue_after, seconds)


def _avoid(plan: PoolPlan) -> tuple[str, ...]:
    return tuple(a.node for a in plan.status.avoided_nodes)


def _wanted_hash(pool: WorkerPoolResource, pod: PodView, image: str, store: StoreVolume, variant: str) -> str:
    """The spec hash ``pod`` should carry (its own variant: a fallback worker is not outdated)."""
    own = pod.reservation.variant if pod.reservation and pod.reservation.variant else variant
    return worker_spec_hash(pool.spec, image, store, own)


def _scale_down(plan: PoolPlan, pool: WorkerPoolResource, live: list[PodView], replicas: int,
                nodes: list[pl.NodeInfo], reservations: list[pl.Reservation],
                outdated: set[str]) -> list[pl.Reservation]:
    """Remove surplus workers: outdated ones first (a make-before-break surge is Ready), then
    those whose removal leaves the least stranded VRAM; the reservations left."""
    ns = pool.namespace
    fresh_unready = any(not p.ready for p in live if p.name not in outdated)
    if outdated and len(live) == replicas + 1 and fresh_unready:
        return reservations  # a surge worker is starting: keep the old one until it is Ready
    while len(live) > replicas:
        pool_ = [p for p in live if p.name in outdated] or live
        victim = pl.choose_removal(nodes, reservations, [p.key for p in pool_]).split("/", 1)[1]
        plan.delete.append(victim)
        reservations = [r for r in reservations if r.holder != f"{ns}/{victim}"]
        live = [p for p in live if p.name != victim]
        plan.events.append(("Normal", "Replaced", f"worker {victim} replaced by a Ready worker with the new spec")
                           if victim in outdated else
                           ("Normal", "ScaledDown", f"removed worker {victim} (least fragmentation)"))
    return reservations


def _replace_outdated(plan: PoolPlan, pool: WorkerPoolResource, mine: list[PodView], live: list[PodView],
                      replicas: int, nodes: list[pl.NodeInfo], reservations: list[pl.Reservation], sizing: _Sizing,
                      image: str, store: StoreVolume, outdated: set[str]) -> int:
    """Rolling replacement of pods whose spec hash changed (image, store, variant, resources,
    port, ``gpu.*``), one at a time and only while every worker is Ready. Make-before-break
    when a GPU has room for one more worker: a surge worker is placed first and the old one
    goes once it is Ready (``_scale_down``); else break-before-make: the old one is deleted and
    its worker placed again once it is gone. Returns the workers held back for that."""
    name, ns = pool.name, pool.namespace
    outdated = outdated & {p.name for p in live}
    if not outdated or plan.delete or len(live) != replicas or not all(p.ready for p in live):
        return 0  # one change at a time, and only on a pool that is whole and Ready
    old = min(outdated, key=lambda n: ordinal_of(n, name))
    o = _free_ordinals(name, mine, 1)[0]
    d = pl.place(nodes, reservations, [request_for(pool.spec.gpu, f"{ns}/{name}", f"{ns}/{name}-{o}",
                                                   sizing.needs, _avoid(plan))])[0]
    if d.placed:
        plan.create.append(worker_pod(pool, o, d.node, d.gpu, d.need_mib, d.variant, image, store))
        plan.events.append(("Normal", "Replacing", f"worker {old} has an outdated spec; new worker {name}-{o} "
                            f"on {d.node}/gpu{d.gpu} first (make-before-break)"))
        return 0
    plan.delete.append(old)
    plan.events.append(("Normal", "Replacing", f"worker {old} has an outdated spec; no GPU has room for a "
                        "second copy, so it is replaced in place (break-before-make)"))
    return 1


def _free_ordinals(name: str, mine: list[PodView], count: int) -> list[int]:
    """The ``count`` lowest ordinals no pod of the pool holds (a pod deleted this pass still
    exists, so its replacement takes a new name instead of colliding with it)."""
    taken = {ordinal_of(p.name, name) for p in mine}
    ordinals, o = [], 0
    while len(ordinals) < count:
        if o not in taken:
            ordinals.append(o)
        o += 1
    return ordinals


def _scale_up(plan: PoolPlan, pool: WorkerPoolResource, mine: list[PodView], live: list[PodView], replicas: int,
              nodes: list[pl.NodeInfo], reservations: list[pl.Reservation], sizing: _Sizing, image: str,
              store: StoreVolume) -> list[str]:
    """Create (placed one after another) the missing workers; the messages of those left unplaced."""
    name, ns = pool.name, pool.namespace
    missing = replicas - len([p for p in live if p.name not in plan.delete])
    ordinals = _free_ordinals(name, mine, missing)
    avoid = _avoid(plan)
    requests = [request_for(pool.spec.gpu, f"{ns}/{name}", f"{ns}/{name}-{o}", sizing.needs, avoid)
                for o in ordinals]
    unplaced = []
    fallbacks = 0
    for o, d in zip(ordinals, pl.place(nodes, reservations, requests)):
        if not d.placed:
            unplaced.append(d.message)
            continue
        fallbacks += d.fallback is not None
        plan.create.append(worker_pod(pool, o, d.node, d.gpu, d.need_mib, d.variant, image, store))
        plan.events.append(("Normal", "Placed", f"worker {name}-{o} on {d.node}/gpu{d.gpu} "
                            f"({pl.gib(d.need_mib)}, {d.variant})" + (f"; {d.fallback}" if d.fallback else "")))
    preferred = sizing.prefs[0]
    fallbacks += sum(1 for w in plan.status.workers if w.variant and w.variant != preferred)
    if fallbacks:
        sizing.notes.append(f"{fallbacks} worker(s) fell back from {preferred} to a later variant for lack of VRAM")
    plan.status.unplaced = len(unplaced)
    return unplaced


def _set_conditions(plan: PoolPlan, pool: WorkerPoolResource, live: list[PodView], replicas: int,
                    unplaced: list[str], sizing: _Sizing, now: dt.datetime, rolling: bool = False) -> None:
    """Ready, Progressing and Degraded from what this pass planned, and when to look again."""
    status = plan.status
    ready_n = status.ready_replicas
    if unplaced:
        prev = next((c for c in status.conditions if c.type == "Progressing"), None)
        if prev is None or prev.reason != "Unplaceable" or str(len(unplaced)) not in prev.message[:4]:
            plan.events.append(("Warning", "FailedPlacement", f"{len(unplaced)} worker(s) unplaced: {unplaced[0]}"))
        _sooner(plan, 15)
        progressing = (True, "Unplaceable", f"{len(unplaced)} of {replicas} worker(s) unplaced: {unplaced[0]}")
    elif plan.create or plan.delete or ready_n < replicas or len(live) != replicas or rolling:
        progressing = (True, "Reconciling", f"{ready_n}/{replicas} workers ready")
        _sooner(plan, 5)
    else:
        progressing = (False, "Stable", f"{ready_n}/{replicas} workers ready")
    failed_adapters = sorted({f"{w.pod}: {k}: {v}" for w in status.workers for k, v in w.failed.items()})
    degraded_msgs = sizing.problems + failed_adapters
    degraded = (True, "AdaptersUnavailable", "; ".join(degraded_msgs)[:1000]) if degraded_msgs else \
        (False, "AsExpected", "")
    crash = faults.crash_report(status.workers)
    if crash:
        degraded = (True, crash[0], "; ".join([crash[1]] + degraded_msgs)[:1000])
        prev = next((c for c in pool.status.conditions if c.type == "Degraded"), None)
        if prev is None or prev.reason != crash[0] or not prev.message.startswith(crash[1]):
            plan.events.append(("Warning", crash[0], crash[1]))
        _sooner(plan, 15)
    is_ready = not unplaced and ready_n >= replicas and not plan.create and not degraded_msgs and \
        len(live) == replicas
    ready_msg = "; ".join([f"{ready_n}/{replicas} workers ready"] + sizing.notes)
    ready = (is_ready, "AllWorkersReady" if is_ready else crash[0] if crash else
             progressing[1] if progressing[0] else degraded[1], ready_msg)
    set_conditions(status, pool.generation, now, ready=ready, progressing=progressing, degraded=degraded)


def _merge_events(events: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """One Event per (type, reason) per pass: a 20-worker scale-up posts one
    ``Placed`` Event listing the workers, not 20 API writes."""
    merged: dict[tuple[str, str], list[str]] = {}
    for type_, reason, message in events:
        merged.setdefault((type_, reason), []).append(message)
    return [(t, r, msgs[0] if len(msgs) == 1 else f"{len(msgs)}: " + "; ".join(msgs))
            for (t, r), msgs in merged.items()]
