"""Thin edge for Adapters with ``spec.training``: read the world, call
``core.training``, apply. The Adapter daemon calls ``reconcile_adapter`` for
every Adapter; one without ``training`` goes to ``reconcile_resolve`` as before.

Placement runs under ``reconcile.PLACEMENT_LOCK`` on the same ledger view the
WorkerPools use, so a training Job and a worker can never both take the last
free VRAM of a card; the created Job is written through to the ledger cache
(as a stand-in pod) before the lock is released.
"""

from __future__ import annotations

import datetime as dt
import logging

import kopf

from . import metrics
from ..core import placement as pl
from ..core import workload_identity
from ..api.common_types import GROUP
from .state import State, wake as _wake
from .kube import Kube
from ..core.manifests import verify_job, with_pull_settings
from ..api.names import OWNER_LABEL
from .reconcile import (
    PLACEMENT_LOCK, _apply_status, _job_state, _summary, parse_checked, reconcile_resolve, report_invalid,
)
from ..api.adapter_types import AdapterStatus
from ..api.observed_types import JobView
from ..api.resources import AdapterResource, BaseModelResource, InvalidObject, as_read, parse
from ..core.resolve import World, plan_adapter
from ..core.training import (
    GENERATION_LABEL, TRAINING_LABEL, adapter_relpath, adapter_store_name, pending_reservation_pod,
    placed, placement_request, plan_training, train_job_name, training_job, unplaced, verify_view,
)

log = logging.getLogger("loraplane.operator.training")


def _delete_job(kube: Kube, ns: str, name: str) -> None:
    from kubernetes.client.rest import ApiException
    try:  # Background: the GC removes the Job's pods (the trainer gets SIGTERM and checkpoints)
        kube.batch.delete_namespaced_job(name, ns, propagation_policy="Background")
    except ApiException as e:
        if e.status != 404:
            raise


def reconcile_adapter(kube: Kube, cfg, ledger, ns: str, name: str) -> float | None:
    obj = kube.get_custom("Adapter", ns, name)
    if obj is None:
        metrics.forget_adapter(ns, name)
        return None
    parsed = parse_checked(AdapterResource, obj)
    if isinstance(parsed, InvalidObject):
        return report_invalid(kube, obj, parsed)
    if parsed.spec.training is None:
        return reconcile_resolve(kube, cfg, "Adapter", ns, name)
    now = dt.datetime.now(dt.timezone.utc)
    raw_base = kube.get_custom("BaseModel", ns, parsed.spec.base_model_ref)
    base = None if raw_base is None else parse(BaseModelResource, raw_base)
    owned = kube.list_jobs(ns, f"{OWNER_LABEL}=adapter.{name}")
    train = [j for j in owned if GENERATION_LABEL in (j["metadata"].get("labels") or {})]
    states = [JobView.from_api(j, kube.list_pods(ns, f"job-name={j['metadata']['name']}")) for j in train]
    plan = plan_training(parsed, base, states, now)
    for job in plan.delete_jobs:
        _delete_job(kube, ns, job)
    if plan.place:
        plan = _place_and_create(kube, cfg, ledger, parsed, base, plan, now)
    status, events, requeue = as_read(plan.status), list(plan.events), plan.requeue_after  # a dict for the client
    if plan.verify:
        status, more, requeue = _verify(kube, cfg, parsed, base, owned, plan.status, now)
        events += more
    _apply_status(kube, obj, status)
    for e in events:
        kube.event(obj, *e)
    metrics.observe_training(ns, name, status.get("training"), events)
    return requeue


def _place_and_create(kube: Kube, cfg, ledger, adapter: AdapterResource, base: BaseModelResource, plan, now):
    """Place the training Job on a GPU and create it, under the placement lock the pools use."""
    ns = adapter.namespace
    with PLACEMENT_LOCK:
        if ledger is not None:
            nodes, reservations, _ = ledger.view()
        else:  # no cache (a one-off pass): list, as the cache's first read does
            from ..api.observed_types import NodeView, PodView
            from ..core.inventory import reservations as res_of
            nodes = [NodeView.from_api(n) for n in kube.list_nodes()]
            reservations = res_of([PodView.from_api(p) for p in kube.list_pods()], nodes)
        decision = pl.place(nodes, reservations, [placement_request(adapter, plan.need.mib)])[0]
        if not decision.placed:
            return unplaced(adapter, plan, decision, now)
        for identity in workload_identity.objects(ns, cfg.workload_cluster_role):
            kube.apply(identity)  # the trainer patches its Pod with progress
        job = training_job(adapter, base, train_job_name(adapter), decision.node, decision.gpu, decision.need_mib,
                           cfg.image_for_jobs)
        # None on 409: a repeated pass after a restart
        kube.create(with_pull_settings(job, cfg.image_pull_policy, cfg.image_pull_secrets))
        if ledger is not None:
            ledger.created(pending_reservation_pod(job))
        return placed(adapter, plan, decision, now)


def _verify(kube: Kube, cfg, obj: AdapterResource, base: BaseModelResource | None, owned: list[dict],
            status: AdapterStatus, now):
    """Verify the published version with the same verify Job and checks as a source Adapter."""
    ns = obj.namespace
    verify_jobs = [j for j in owned if GENERATION_LABEL not in (j["metadata"].get("labels") or {})]
    world = World(now=now, jobs={j["metadata"]["name"]: _job_state(kube, ns, j) for j in verify_jobs})
    relpath = adapter_relpath(obj)
    done = world.jobs.get(status.job or "")
    if done and done.phase == "Succeeded":
        world.summary, world.summary_error = _summary(cfg, done, relpath)
    world.base = base
    adapter = verify_view(obj, status)
    vplan = plan_adapter(adapter, world, cfg.backoff)
    if vplan.create_job:
        job = verify_job(adapter, vplan.job_name, "adapter", adapter.spec.source.owner,
                         adapter.spec.source.store_name, adapter.spec.version, relpath, True, base.spec.store,
                         cfg.image_for_jobs, cfg.job_pod_annotations)
        label = f"adapter.{obj.name}"
        job["metadata"]["labels"][OWNER_LABEL] = label
        job["spec"]["template"]["metadata"]["labels"][OWNER_LABEL] = label
        kube.create(with_pull_settings(job, cfg.image_pull_policy, cfg.image_pull_secrets))
    out = as_read(vplan.status)  # typed in the core, a dict only for the API client
    out.setdefault("training", as_read(status.training) if status.training is not None else {})
    return out, vplan.events, vplan.requeue_after


@kopf.on.event("", "v1", "pods", labels={TRAINING_LABEL: kopf.PRESENT})
async def training_pod_changed(namespace, labels, body, type, **_):
    """Training pods hold VRAM (their reservation annotation): feed the ledger, wake the Adapter
    (progress annotation, exit), and wake pools when VRAM is taken or freed."""
    if State.ledger is not None:
        State.ledger.pod_event(dict(body), deleted=type == "DELETED")
    _wake("Adapter", namespace, labels[TRAINING_LABEL])
    if type in ("ADDED", "DELETED") or (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        _wake("WorkerPool")


__all__ = ["reconcile_adapter", "GROUP"]
