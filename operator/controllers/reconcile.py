"""One reconcile pass per object: read the world, call the pure core, apply.

Runs in a worker thread (the kubernetes client is synchronous). Placement
and pod creation for all pools happen under one lock, and the ledger is
re-read from the API inside it: two pools reconciled at once can never both
take the last free VRAM of a GPU. With kopf peering only one operator
instance is active, so the lock is enough cluster-wide.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import time
from pathlib import Path

from . import metrics, prom_source
from ..core import analysis, inventory, routing as pool_routing, workload_identity
from ..api.common_types import Condition
from ..api.conditions import get_condition, kstatus_conditions, set_condition
from .config import Config
from .kube import Kube
from .ledger_cache import LedgerCache
from ..core.manifests import desired_configmap_obj, publish_job, service, verify_job, with_pull_settings
from ..api.names import OWNER_LABEL, POOL_LABEL
from ..api.observed_types import PodView
from ..core.buildable import checked
from ..core.pool import PoolPlan, plan_pool
from ..api.resources import R, AdapterResource, BaseModelResource, InvalidObject, WorkerPoolResource, as_read, parse
from .scrape import endpoint_of, scrape
from ..core.resolve import JobState, World, plan_adapter, plan_basemodel, relpath_of
from ..core.store_summary import summarize_dir

log = logging.getLogger("loraplane.operator")
PLACEMENT_LOCK = threading.Lock()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _job_state(kube: Kube, ns: str, job: dict) -> JobState:
    name = job["metadata"]["name"]
    st = job.get("status") or {}
    conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
    phase = "Succeeded" if conds.get("Complete") == "True" or st.get("succeeded") else \
        "Failed" if conds.get("Failed") == "True" or st.get("failed") else "Running"
    message = ""
    if phase != "Running":
        for pod in kube.list_pods(ns, f"job-name={name}"):
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated") or {}
                message = term.get("message") or term.get("reason") or message
    step = "publish" if "-publish-" in name else "verify"
    return JobState(name=name, step=step, phase=phase, message=message)


def _summary(cfg: Config, job: JobState | None, relpath: str) -> tuple[dict | None, str | None]:
    if job and job.message.strip().startswith("{"):
        try:
            return json.loads(job.message.strip().splitlines()[-1]), None
        except ValueError:
            pass
    if cfg.store_root:
        try:
            return summarize_dir(Path(cfg.store_root) / relpath), None
        except Exception as e:  # noqa: BLE001 - reported in status
            return None, f"cannot read manifest of {relpath} from the operator's store mount: {e}"
    return None, "the verify Job left no summary in its termination message and the operator has no --store-root"


def parse_checked(model: type[R], raw: dict) -> R | InvalidObject:
    """``raw`` parsed once (``api.resources.parse``) and checked buildable (``core.buildable``):
    the typed object, or an ``InvalidObject`` the caller reports as a condition."""
    return checked(parse(model, raw))


def _apply_status(kube: Kube, obj: dict, status: dict) -> None:
    status = kstatus_conditions(status, obj["metadata"].get("generation"))  # GitOps health (kstatus)
    if status != (obj.get("status") or {}):
        kube.patch_status(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"], status)


def reconcile_resolve(kube: Kube, cfg: Config, kind: str, ns: str, name: str) -> float | None:
    raw = kube.get_custom(kind, ns, name)
    if raw is None:
        return None
    obj = parse_checked(BaseModelResource if kind == "BaseModel" else AdapterResource, raw)
    if isinstance(obj, InvalidObject):
        return report_invalid(kube, raw, obj)
    store_kind = "base" if kind == "BaseModel" else "adapter"
    owner_label = f"{kind.lower()}.{name}"
    jobs = {j["metadata"]["name"]: _job_state(kube, ns, j) for j in kube.list_jobs(ns, f"{OWNER_LABEL}={owner_label}")}
    world = World(now=_now(), jobs=jobs)
    relpath, derived = relpath_of(obj.spec, store_kind) if (kind == "BaseModel" or obj.spec.source) else ("", True)
    done = jobs.get(obj.status.job) if obj.status.job else None
    if done and done.phase == "Succeeded" and done.step == "verify":
        world.summary, world.summary_error = _summary(cfg, done, relpath)
    if isinstance(obj, BaseModelResource):
        hf = obj.spec.source.hugging_face
        if hf and hf.token_secret_ref:
            ref = hf.token_secret_ref
            world.secret_missing = kube.secret_key_present(ns, ref.name, ref.key)
        plan = plan_basemodel(obj, world, cfg.backoff)
    else:
        world.base = _parsed(BaseModelResource, kube.get_custom("BaseModel", ns, obj.spec.base_model_ref))
        plan = plan_adapter(obj, world, cfg.backoff)
    if plan.create_job:
        job = _resolve_job(cfg, obj, world, plan, relpath, derived)
        job["metadata"]["labels"][OWNER_LABEL] = owner_label
        job["spec"]["template"]["metadata"]["labels"][OWNER_LABEL] = owner_label
        kube.create(with_pull_settings(job, cfg.image_pull_policy, cfg.image_pull_secrets))
    _apply_status(kube, raw, as_read(plan.status))  # typed in the core, a dict only for the API client
    for e in plan.events:
        kube.event(raw, *e)
    return plan.requeue_after


def _resolve_job(cfg: Config, obj: BaseModelResource | AdapterResource, world: World, plan, relpath: str,
                 derived: bool) -> dict:
    """The publish or verify Job the resolve plan asks for."""
    spec = obj.spec
    if isinstance(obj, BaseModelResource):
        store = spec.store
        if plan.create_job == "publish":
            hf = spec.source.hugging_face
            return publish_job(obj, plan.job_name, spec.owner, spec.store_name, spec.version, hf.repo, hf.revision,
                               hf.token_secret_ref, store, cfg.image_for_jobs, cfg.job_pod_annotations, spec.license)
        return verify_job(obj, plan.job_name, "base", spec.owner, spec.store_name, spec.version, relpath, derived,
                          store, cfg.image_for_jobs, cfg.job_pod_annotations)
    store = world.base.spec.store  # plan_adapter asks for a Job only once its BaseModel is Ready
    return verify_job(obj, plan.job_name, "adapter", spec.source.owner, spec.source.store_name, spec.version,
                      relpath, derived, store, cfg.image_for_jobs, cfg.job_pod_annotations)


class Applied:
    """Skips server-side applies of objects unchanged since the last apply
    (re-applied at least every ``ttl`` seconds, so a deleted ConfigMap comes
    back)."""

    def __init__(self, ttl: float = 30.0):
        self.ttl, self.seen, self.lock = ttl, {}, threading.Lock()

    def apply(self, kube: Kube, obj: dict) -> None:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
        with self.lock:
            last = self.seen.get(key)
        if last and last[0] == digest and time.monotonic() - last[1] < self.ttl:
            return
        kube.apply(obj)
        with self.lock:
            self.seen[key] = (digest, time.monotonic())


def reconcile_pool(kube: Kube, cfg: Config, ledger: LedgerCache, applied: Applied, ns: str,
                   name: str) -> float | None:
    raw = kube.get_custom("WorkerPool", ns, name)
    if raw is None:
        metrics.forget_pool(ns, name)
        return None
    pool = parse_checked(WorkerPoolResource, raw)  # children buildable, or InvalidSpec before any is made
    if isinstance(pool, InvalidObject):
        return report_invalid(kube, raw, pool)
    base = _parsed(BaseModelResource, kube.get_custom("BaseModel", ns, pool.spec.base_model_ref))
    image = pool.spec.image or cfg.worker_image
    mine = [PodView.from_api(p) for p in kube.list_pods(ns, f"{POOL_LABEL}={name}")]  # parsed once, here
    routing = _plan_routing(pool, mine)
    wanted = pool_routing.adapters_named(pool) | routing.keep
    adapters = {a["metadata"]["name"]: _parsed(AdapterResource, a) for a in kube.list_custom("Adapter", ns)
                if a["metadata"]["name"] in wanted}
    for obj in workload_identity.objects(ns, cfg.workload_cluster_role):
        applied.apply(kube, obj)  # pods name this ServiceAccount: it must exist first
    with PLACEMENT_LOCK:
        nodes, reservations, _ = ledger.view()
        plan = plan_pool(pool, base, adapters, mine, nodes, reservations, image, _now(),
                         routing=(routing.worker_routes, routing.keep))
        _create_pods(kube, cfg, ledger, pool, plan.create)
    created = [PodView.from_api(p) for p in plan.create]
    metrics.observe_ledger(nodes, reservations + inventory.reservations(created, nodes))
    if plan.desired_json is not None:
        applied.apply(kube, desired_configmap_obj(pool, plan.desired_json))
    applied.apply(kube, service(pool))
    for pod_name in plan.delete:
        kube.delete_pod(ns, pod_name, force=pod_name in plan.force_delete)
    status = as_read(plan.status)  # typed in the core, a dict only for the API client
    routing.problems += pool_routing.task_problems(pool, adapters)
    _merge_routing(pool, plan, status, routing)
    _apply_status(kube, raw, status)
    if routing.remove_annotations:  # acknowledged in the status just written: a kill here re-applies nothing
        kube.remove_annotations("WorkerPool", ns, name, routing.remove_annotations)
    for e in plan.events:
        kube.event(raw, *e)
    metrics.observe_pool(ns, name, status.get("variant") or "", status, plan.events, routing.transitions)
    return plan.requeue_after


def _parsed(model, raw: dict | None):
    """A related object (the pool's BaseModel, an Adapter) parsed, None when
    absent, or an ``InvalidObject`` the core reports on the pool."""
    return None if raw is None else parse(model, raw)


def report_invalid(kube: Kube, raw: dict, invalid: InvalidObject) -> None:
    """An object the API types refuse: conditions naming the fields (reason
    ``InvalidSpec``) and one Warning Event; no pass until it changes."""
    gen = raw["metadata"].get("generation")
    status = dict(raw.get("status") or {})
    before = get_condition(status.get("conditions"), "Ready") or {}
    message = f"{invalid.kind} {invalid.name} does not parse: {invalid.message}"
    conditions = status.get("conditions") or []
    for type_, value in (("Ready", False), ("Progressing", False), ("Degraded", True)):
        conditions = set_condition(conditions, type_, value, "InvalidSpec", message, gen)
    status.update(conditions=conditions, observedGeneration=gen)
    _apply_status(kube, raw, status)
    if before.get("reason") != "InvalidSpec" or before.get("message") != message:
        kube.event(raw, "Warning", "InvalidSpec", message)
    return None


def _create_pods(kube: Kube, cfg: Config, ledger: LedgerCache, pool: WorkerPoolResource, pods: list[dict]) -> None:
    """Create the placed workers (under the placement lock), writing each through to the ledger."""
    for pod in pods:
        created = kube.create(with_pull_settings(pod, cfg.image_pull_policy, cfg.image_pull_secrets))
        variant = json.loads(pod["metadata"]["annotations"]["loraplane.io/reservation"])["variant"]
        if created:
            ledger.created(created)  # write-through: the next placement sees it
            metrics.placed(pool.namespace, pool.name, variant)
        if cfg.create_delay_seconds:
            time.sleep(cfg.create_delay_seconds)


def _plan_routing(pool: WorkerPoolResource, pods: list[PodView]) -> pool_routing.RoutingPlan:
    """Rollout steps and load before route (pure core in ``core.routing``);
    scrapes the ready workers only while a rollout needs their metrics."""
    live = [p for p in pods if not p.deleting and not p.done]
    loaded = pool_routing.ready_loaded([p.report for p in live])
    snap = None
    if pool_routing.needs_metrics(pool):
        src = pool_routing.prometheus_source(pool)
        if src is not None:  # analysis.provider: prometheus; unreachable -> this pass scrapes directly
            try:
                snap = prom_source.snapshot(src.address, src.selector, pool.namespace, pool.name)
            except Exception as e:  # noqa: BLE001
                log.warning("prometheus %s for %s/%s failed (%s); scraping the workers directly",
                            src.address, pool.namespace, pool.name, e)
        if snap is None:
            targets = {p.name: url for p in live if p.report.ready
                       for url in [endpoint_of(p, pool.spec.port)] if url}
            snap = analysis.snapshot(scrape(targets))
    return pool_routing.plan_routing(pool, loaded, snap, _now())


def _merge_routing(pool: WorkerPoolResource, plan: PoolPlan, st: dict, routing: pool_routing.RoutingPlan) -> None:
    """Status fields (into the dumped status ``st``), conditions, Events and requeue of the routing plan."""
    st.update(routing.status)
    gen = pool.generation
    prog = get_condition(st.get("conditions"), "Progressing") or {}
    if routing.progressing and prog.get("status") != "True":  # placement/pod work reports first
        st["conditions"] = set_condition(st["conditions"], "Progressing", *routing.progressing, gen)
    if routing.unavailable:
        st["conditions"] = set_condition(st["conditions"], "Degraded", True, "NoLoadedBackend",
                                         routing.unavailable, gen)
    plan.events = plan.events + routing.events
    conditions, problem_event = pool_routing.report_problems(
        [Condition.model_validate(c) for c in st["conditions"]], routing.problems, generation=gen, now=_now(),
        stored=pool.status.conditions)
    st["conditions"] = [as_read(c) for c in conditions]
    if problem_event:
        plan.events.append(problem_event)
    if routing.requeue_after is not None:
        plan.requeue_after = min(plan.requeue_after or routing.requeue_after, routing.requeue_after)


def timed(kind: str, fn, *args) -> float | None:
    """Run one pass; errors are logged and counted, never raised (the caller
    retries after the resync period)."""
    start = time.perf_counter()
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001
        metrics.RECONCILE_ERRORS.labels(kind).inc()
        log.exception("reconcile %s %s failed", kind, args[-2:])
        return 10.0
    finally:
        metrics.RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - start)
