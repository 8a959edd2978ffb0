"""Prometheus metrics of the operator (conventional names, base units).

Served on ``--metrics-port`` (``/metrics``). Pool depletion per variant is
``loraplane_pool_unplaced_workers``: workers a pool wants but no GPU can
hold, labelled with the variant they asked for.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILE_SECONDS = Histogram(
    "loraplane_operator_reconcile_duration_seconds", "Time of one reconcile pass", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
RECONCILE_ERRORS = Counter("loraplane_operator_reconcile_errors_total", "Reconcile passes that raised", ["kind"])
PLACEMENT_FAILURES = Counter("loraplane_operator_placement_failures_total",
                             "Workers that found no GPU with enough free VRAM", ["namespace", "pool", "variant"])
PLACEMENTS = Counter("loraplane_operator_placements_total", "Workers placed on a GPU", ["namespace", "pool", "variant"])
VRAM_ALLOCATED = Gauge("loraplane_gpu_vram_allocated_mebibytes", "VRAM reserved on a GPU", ["node", "gpu"])
VRAM_FREE = Gauge("loraplane_gpu_vram_free_mebibytes", "VRAM not reserved on a GPU", ["node", "gpu"])
POOL_UNPLACED = Gauge("loraplane_pool_unplaced_workers", "Workers waiting for a GPU (pool depletion)",
                      ["namespace", "pool", "variant"])
ROLLOUT_TRANSITIONS = Counter("loraplane_operator_rollout_transitions_total",
                              "Rollout transitions (Event reasons: StepPromoted, AnalysisFailed, RolledBack, ...)",
                              ["namespace", "pool", "task", "reason"])
POOL_READY = Gauge("loraplane_pool_ready_workers", "Ready workers of a pool", ["namespace", "pool", "variant"])


def observe_ledger(nodes, reservations) -> None:
    used: dict[tuple[str, int], int] = {}
    for r in reservations:
        used[(r.node, r.gpu)] = used.get((r.node, r.gpu), 0) + r.mib
    for n in nodes:
        for i in range(n.gpu_count):
            u = used.get((n.name, i), 0)
            VRAM_ALLOCATED.labels(n.name, str(i)).set(u)
            VRAM_FREE.labels(n.name, str(i)).set(max(0, n.gpu_memory_mib - u))


def serve(port: int) -> None:
    if port:
        start_http_server(port)
