"""kopf wiring: one daemon per object runs reconcile passes; watch events
only wake daemons. Handlers hold no logic (see ``reconcile`` and the cores).

Why daemons and wake-ups rather than on.create/on.update handlers: a pool's
outcome depends on other objects (its Pods, nodes, the BaseModel, Adapters,
other pools' reservations), so every change anywhere relevant must lead to
the same full, idempotent pass. A daemon per object serialises passes for
that object; kopf stops daemons when the object goes away and while peering
pauses this instance.
"""

from __future__ import annotations

import asyncio
import functools

import kopf

from . import metrics
from ..api.common_types import GROUP, VERSION
from ..api.observed_types import NodeView
from .failures import Guarded
from .state import State, wake as _wake
from .training_handlers import reconcile_adapter
from ..api.names import OWNER_LABEL, POOL_LABEL
from .reconcile import reconcile_pool, reconcile_resolve, timed


async def _loop(kind: str, namespace: str, name: str, stopped, fn) -> None:
    """Passes for one object: after each, wait for a wake-up or the requeue
    time. After a failed pass, wait the backoff (``Config.backoff``: 5 s
    doubling to 300 s), woken early only by a change of the object's spec."""
    key = (kind, namespace, name)
    ev = State.wakeups.setdefault(key, asyncio.Event())
    loop = asyncio.get_running_loop()
    guarded = Guarded(lambda: State.kube, kind, fn)
    try:
        while not stopped:
            ev.clear()
            guarded.retry_in = State.cfg.backoff(guarded.failures + 1)
            delay = await loop.run_in_executor(None, functools.partial(timed, kind, guarded, namespace, name))
            guarded.failures = guarded.failures + 1 if guarded.failed else 0
            if guarded.failed:
                await _hold(key, ev, guarded.retry_in, stopped)
                continue
            timeout = min(delay, State.cfg.resync_seconds) if delay else State.cfg.resync_seconds
            try:
                await asyncio.wait_for(ev.wait(), timeout=timeout)
            except asyncio.TimeoutError:
                pass
    finally:
        State.wakeups.pop(key, None)


async def _hold(key, ev: asyncio.Event, seconds: float, stopped) -> None:
    """Sleep ``seconds``, cut short only by a new generation of the object (or stopping)."""
    loop = asyncio.get_running_loop()
    deadline, generation = loop.time() + seconds, State.spec_generations.get(key)
    while not stopped and loop.time() < deadline:
        ev.clear()
        try:
            await asyncio.wait_for(ev.wait(), timeout=min(1.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            continue
        if State.spec_generations.get(key) != generation:
            return


@kopf.daemon(GROUP, VERSION, "workerpools", cancellation_timeout=10)
async def workerpool_daemon(name, namespace, stopped, **_):
    await _loop("WorkerPool", namespace, name, stopped,
                lambda ns, n: reconcile_pool(State.kube, State.cfg, State.ledger, State.applied, ns, n))


@kopf.daemon(GROUP, VERSION, "basemodels", cancellation_timeout=10)
async def basemodel_daemon(name, namespace, stopped, **_):
    await _loop("BaseModel", namespace, name, stopped,
                lambda ns, n: reconcile_resolve(State.kube, State.cfg, "BaseModel", ns, n))


@kopf.daemon(GROUP, VERSION, "adapters", cancellation_timeout=10)
async def adapter_daemon(name, namespace, stopped, **_):
    await _loop("Adapter", namespace, name, stopped,
                lambda ns, n: reconcile_adapter(State.kube, State.cfg, State.ledger, ns, n))


# --- wake-ups ------------------------------------------------------------

def _seen(kind: str, namespace: str, name: str, body, type_) -> None:
    """Record the generation a watch event shows (a failed object's hold ends on a new one)."""
    key = (kind, namespace, name)
    if type_ == "DELETED":
        State.spec_generations.pop(key, None)
    else:
        State.spec_generations[key] = ((body or {}).get("metadata") or {}).get("generation")


@kopf.on.event(GROUP, VERSION, "workerpools")
async def pool_changed(name, namespace, body, type, **_):
    """Wake on spec (generation) or metadata changes, not on our own status
    patches (each would cost one more pass)."""
    meta = body.get("metadata") or {}
    key = (namespace, name)
    _seen("WorkerPool", namespace, name, body, type)
    seen = (meta.get("generation"), meta.get("deletionTimestamp"), str(meta.get("annotations")))
    if type == "DELETED":
        State.generations.pop(key, None)
        metrics.forget_pool(namespace, name)
    elif State.generations.get(key) != seen:
        State.generations[key] = seen
        _wake("WorkerPool", namespace, name)


@kopf.on.event(GROUP, VERSION, "basemodels")
async def base_changed(name, namespace, body=None, type=None, **_):
    _seen("BaseModel", namespace, name, body, type)
    _wake("BaseModel", namespace, name)
    _wake("Adapter", namespace)
    _wake("WorkerPool", namespace)


@kopf.on.event(GROUP, VERSION, "adapters")
async def adapter_changed(name, namespace, body=None, type=None, **_):
    _seen("Adapter", namespace, name, body, type)
    if type == "DELETED":
        metrics.forget_adapter(namespace, name)
    _wake("Adapter", namespace, name)
    _wake("WorkerPool", namespace)


@kopf.on.event("", "v1", "pods", labels={POOL_LABEL: kopf.PRESENT})
async def worker_pod_changed(namespace, labels, body, type, **_):
    if State.ledger is not None:
        State.ledger.pod_event(dict(body), deleted=type == "DELETED")
    _wake("WorkerPool", namespace, labels[POOL_LABEL])


@kopf.on.event("batch", "v1", "jobs", labels={OWNER_LABEL: kopf.PRESENT})
async def job_changed(namespace, labels, **_):
    kind, _, name = labels[OWNER_LABEL].partition(".")
    _wake({"basemodel": "BaseModel", "adapter": "Adapter"}.get(kind, kind), namespace, name)


@kopf.on.event("", "v1", "nodes")
async def node_changed(name, body, type, **_):
    """Wake pools only when something placement looks at changed (KWOK and
    kubelets update nodes often; their heartbeats must not cause passes)."""
    if State.ledger is not None:
        State.ledger.node_event(dict(body), deleted=type == "DELETED")
    info = None if type == "DELETED" else NodeView.from_api(dict(body))
    if State.nodes.get(name) != info:
        State.nodes[name] = info
        _wake("WorkerPool")


@kopf.on.event("", "v1", "pods", labels={POOL_LABEL: kopf.ABSENT})
async def other_pod_changed(body, type, **_):
    """A non-loraplane pod taking or releasing whole GPUs changes the ledger."""
    spec = body.get("spec") or {}
    wants_gpu = any("nvidia.com/gpu" in str((c.get("resources") or {})) for c in spec.get("containers") or [])
    if wants_gpu:
        if State.ledger is not None:
            State.ledger.pod_event(dict(body), deleted=type == "DELETED")
        if type in ("DELETED", "ADDED") or spec.get("nodeName"):
            _wake("WorkerPool")


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_):
    settings.posting.level = 100  # we post our own Events; keep kopf's handler chatter out of them
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.loraplane.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.loraplane.io")
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 16
