"""Prometheus metrics of the operator (conventional names, base units).

Served on ``--metrics-port`` (``/metrics``); every metric is listed with its
type, unit and labels in docs/operator.md "Metrics". Labels follow the one
scheme shared with the workers: ``namespace``, ``pool``, ``task``, ``adapter``
(an Adapter's name, i.e. one version), ``variant``, ``node``, ``gpu``.

Pool depletion per variant is ``loraplane_pool_unplaced_workers``: workers a
pool wants but no GPU can hold, labelled with the variant they asked for.

No stale series: every label set written for a pool (or a training Adapter)
is remembered, and ``forget_pool`` / ``forget_adapter`` remove them when the
object goes; a pool whose variant changes drops the old variant's gauges,
and ``observe_ledger`` drops GPUs of nodes that left.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

MIB = 2**20

RECONCILE_SECONDS = Histogram(
    "loraplane_operator_reconcile_duration_seconds", "Time of one reconcile pass", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
RECONCILE_ERRORS = Counter("loraplane_operator_reconcile_errors_total", "Reconcile passes that raised", ["kind"])
PLACEMENT_FAILURES = Counter("loraplane_operator_placement_failures_total",
                             "FailedPlacement events: a pool's workers found no GPU with enough free VRAM",
                             ["namespace", "pool", "variant"])
PLACEMENTS = Counter("loraplane_operator_placements_total", "Workers placed on a GPU", ["namespace", "pool", "variant"])
VRAM_ALLOCATED = Gauge("loraplane_gpu_vram_allocated_bytes", "VRAM reserved on a GPU (VRAM ledger)", ["node", "gpu"])
VRAM_FREE = Gauge("loraplane_gpu_vram_free_bytes", "VRAM not reserved on a GPU (VRAM ledger)", ["node", "gpu"])
POOL_UNPLACED = Gauge("loraplane_pool_unplaced_workers", "Workers waiting for a GPU (pool depletion)",
                      ["namespace", "pool", "variant"])
ROLLOUT_TRANSITIONS = Counter("loraplane_operator_rollout_transitions_total",
                              "Rollout transitions (Event reasons: StepPromoted, AnalysisFailed, RolledBack, ...)",
                              ["namespace", "pool", "task", "reason"])
POOL_FAILING = Gauge("loraplane_pool_failing_workers",
                     "Workers of a pool that keep failing and are not Ready, by reason (OOMKilled, CrashLoopBackOff)",
                     ["namespace", "pool", "reason"])
#: every ``reason`` of ``POOL_FAILING``: each is written (0 when none) so an alert sees the series
FAULTS = ("OOMKilled", "CrashLoopBackOff")
POOL_READY = Gauge("loraplane_pool_ready_workers", "Ready workers of a pool", ["namespace", "pool", "variant"])
ROUTE_WEIGHT = Gauge("loraplane_route_weight_ratio", "Effective share of a task's traffic an adapter version gets (0-1)",
                     ["namespace", "pool", "task", "adapter"])
TRAINING_STEP = Gauge("loraplane_training_step", "Last optimizer step a training Job reported",
                      ["namespace", "adapter"])
TRAINING_TOTAL_STEPS = Gauge("loraplane_training_total_steps", "Optimizer steps a training Job will run",
                             ["namespace", "adapter"])
TRAINING_LOSS = Gauge("loraplane_training_loss", "Last training loss a training Job reported", ["namespace", "adapter"])
TRAINING_FAILURES = Counter("loraplane_training_failures_total", "Training Jobs that failed (TrainingFailed events)",
                            ["namespace", "adapter"])

_POOL_METRICS = (PLACEMENT_FAILURES, PLACEMENTS, POOL_UNPLACED, POOL_READY, POOL_FAILING, ROLLOUT_TRANSITIONS,
                 ROUTE_WEIGHT)
_ADAPTER_METRICS = (TRAINING_STEP, TRAINING_TOTAL_STEPS, TRAINING_LOSS, TRAINING_FAILURES)
_lock = threading.Lock()
#: (metric, (namespace, pool)) -> label tuples written; also for adapters
_written: dict[tuple[object, tuple[str, str]], set[tuple[str, ...]]] = {}
_gpus: set[tuple[str, str]] = set()


def _labels(metric, key: tuple[str, str], *rest: str):
    values = (*key, *rest)
    with _lock:
        _written.setdefault((metric, key), set()).add(values)
    return metric.labels(*values)


def _drop(metrics, key: tuple[str, str], keep=lambda values: False) -> None:
    with _lock:
        for metric in metrics:
            seen = _written.get((metric, key), set())
            for values in [v for v in seen if not keep(v)]:
                try:
                    metric.remove(*values)
                except KeyError:
                    pass
                seen.discard(values)


def observe_ledger(nodes, reservations) -> None:
    used: dict[tuple[str, int], int] = {}
    for r in reservations:
        used[(r.node, r.gpu)] = used.get((r.node, r.gpu), 0) + r.mib
    now = set()
    for n in nodes:
        for i in range(n.gpu_count):
            u = used.get((n.name, i), 0)
            now.add((n.name, str(i)))
            VRAM_ALLOCATED.labels(n.name, str(i)).set(u * MIB)
            VRAM_FREE.labels(n.name, str(i)).set(max(0, n.gpu_memory_mib - u) * MIB)
    with _lock:
        for gone in _gpus - now:
            for g in (VRAM_ALLOCATED, VRAM_FREE):
                try:
                    g.remove(*gone)
                except KeyError:
                    pass
        _gpus.clear()
        _gpus.update(now)


def placed(ns: str, pool: str, variant: str) -> None:
    _labels(PLACEMENTS, (ns, pool), variant).inc()


def observe_pool(ns: str, pool: str, variant: str, status: dict, events, transitions) -> None:
    """Gauges of one pass, the FailedPlacement events (one count each) and rollout transitions."""
    _drop((POOL_UNPLACED, POOL_READY), (ns, pool), keep=lambda v: v[2] == variant)
    _labels(POOL_UNPLACED, (ns, pool), variant).set(status.get("unplaced", 0))
    _labels(POOL_READY, (ns, pool), variant).set(status.get("readyReplicas", 0))
    for reason in FAULTS:
        _labels(POOL_FAILING, (ns, pool), reason).set(
            sum(1 for w in status.get("workers") or [] if w.get("fault") == reason))
    for e in events:
        if e[1] == "FailedPlacement":
            _labels(PLACEMENT_FAILURES, (ns, pool), variant).inc()
    for task, reason in transitions:
        _labels(ROLLOUT_TRANSITIONS, (ns, pool), task, reason).inc()
    weights = {(t, b["adapter"]): b["weight"] for t, bs in (status.get("effectiveRoutes") or {}).items() if bs
               for b in bs}
    _drop((ROUTE_WEIGHT,), (ns, pool), keep=lambda v: (v[2], v[3]) in weights)
    for (task, adapter), w in weights.items():
        _labels(ROUTE_WEIGHT, (ns, pool), task, adapter).set(w / 100)


def forget_pool(ns: str, pool: str) -> None:
    """Remove every series of a deleted pool."""
    _drop(_POOL_METRICS, (ns, pool))


def observe_training(ns: str, adapter: str, training: dict | None, events) -> None:
    t = training or {}
    for gauge, field in ((TRAINING_STEP, "step"), (TRAINING_TOTAL_STEPS, "totalSteps"), (TRAINING_LOSS, "loss")):
        if isinstance(t.get(field), (int, float)):
            _labels(gauge, (ns, adapter)).set(t[field])
    for e in events:
        if e[1] == "TrainingFailed":
            _labels(TRAINING_FAILURES, (ns, adapter)).inc()


def forget_adapter(ns: str, adapter: str) -> None:
    """Remove every series of a deleted (training) Adapter."""
    _drop(_ADAPTER_METRICS, (ns, adapter))


def serve(port: int) -> None:
    if port:
        start_http_server(port)
