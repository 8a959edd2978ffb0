"""Operator metrics: base units, one label scheme, no stale series, one
placement-failure count per FailedPlacement event (docs/operator.md "Metrics")."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from loraplane.operator.controllers import metrics
from loraplane.operator.core import placement as pl

pytestmark = pytest.mark.unit


def val(name, **labels):
    return REGISTRY.get_sample_value(name, labels)


def test_vram_gauges_are_bytes_and_gpus_of_departed_nodes_go():
    metrics.observe_ledger([pl.NodeInfo("m1", {}, 2, 24576), pl.NodeInfo("m2", {}, 1, 1024)],
                           [pl.Reservation("m1", 1, 10000, "ns/p-0")])
    assert val("loraplane_gpu_vram_allocated_bytes", node="m1", gpu="1") == 10000 * 2**20
    assert val("loraplane_gpu_vram_free_bytes", node="m1", gpu="0") == 24576 * 2**20
    assert val("loraplane_gpu_vram_free_bytes", node="m2", gpu="0") == 1024 * 2**20
    metrics.observe_ledger([pl.NodeInfo("m1", {}, 2, 24576)], [])
    assert val("loraplane_gpu_vram_free_bytes", node="m2", gpu="0") is None
    assert val("loraplane_gpu_vram_allocated_bytes", node="m2", gpu="0") is None
    assert val("loraplane_gpu_vram_allocated_bytes", node="m1", gpu="1") == 0


def test_placement_failures_count_events_not_unplaced_workers_per_pass():
    ev = [("Warning", "FailedPlacement", "3 worker(s) unplaced: no GPU")]
    metrics.observe_pool("nsf", "pf", "bf16", {"unplaced": 3}, ev, [])
    for _ in range(4):  # later passes: still 3 unplaced, no new event
        metrics.observe_pool("nsf", "pf", "bf16", {"unplaced": 3}, [], [])
    assert val("loraplane_operator_placement_failures_total", namespace="nsf", pool="pf", variant="bf16") == 1
    assert val("loraplane_pool_unplaced_workers", namespace="nsf", pool="pf", variant="bf16") == 3


def test_deleted_pool_leaves_no_series():
    status = {"unplaced": 2, "readyReplicas": 1,
              "effectiveRoutes": {"chat": [{"adapter": "a-v1", "weight": 90}, {"adapter": "a-v2", "weight": 10}]}}
    metrics.placed("nsd", "pd", "nf4")
    metrics.observe_pool("nsd", "pd", "nf4", status, [("Warning", "FailedPlacement", "x")],
                         [("chat", "StepPromoted")])
    assert val("loraplane_route_weight_ratio", namespace="nsd", pool="pd", task="chat", adapter="a-v2") == 0.1
    assert val("loraplane_operator_rollout_transitions_total", namespace="nsd", pool="pd", task="chat",
               reason="StepPromoted") == 1
    metrics.forget_pool("nsd", "pd")
    left = [s for m in REGISTRY.collect() for s in m.samples if s.labels.get("pool") == "pd"
            and s.labels.get("namespace") == "nsd"]
    assert left == []


def test_variant_change_and_dropped_route_leave_no_series():
    routes = {"chat": [{"adapter": "a-v1", "weight": 100}]}
    metrics.observe_pool("nsv", "pv", "bf16", {"unplaced": 1, "effectiveRoutes": {
        "chat": [{"adapter": "a-v1", "weight": 50}, {"adapter": "a-v2", "weight": 50}]}}, [], [])
    metrics.observe_pool("nsv", "pv", "nf4", {"unplaced": 0, "effectiveRoutes": routes}, [], [])
    assert val("loraplane_pool_unplaced_workers", namespace="nsv", pool="pv", variant="bf16") is None
    assert val("loraplane_pool_unplaced_workers", namespace="nsv", pool="pv", variant="nf4") == 0
    assert val("loraplane_route_weight_ratio", namespace="nsv", pool="pv", task="chat", adapter="a-v2") is None
    assert val("loraplane_route_weight_ratio", namespace="nsv", pool="pv", task="chat", adapter="a-v1") == 1.0


def test_pool_deleted_event_and_missing_pool_forget_its_series():
    from loraplane.operator.controllers import handlers
    from loraplane.operator.controllers.reconcile import reconcile_pool

    metrics.observe_pool("nse", "pe", "bf16", {"unplaced": 1}, [], [])
    asyncio.run(handlers.pool_changed(name="pe", namespace="nse", body={"metadata": {}}, type="DELETED"))
    assert val("loraplane_pool_unplaced_workers", namespace="nse", pool="pe", variant="bf16") is None

    class NoPool:
        def get_custom(self, kind, ns, name):
            return None

    metrics.observe_pool("nse", "pg", "bf16", {"unplaced": 1}, [], [])
    assert reconcile_pool(NoPool(), None, None, None, "nse", "pg") is None
    assert val("loraplane_pool_unplaced_workers", namespace="nse", pool="pg", variant="bf16") is None


def test_training_series_follow_the_adapter():
    from loraplane.operator.controllers import handlers

    metrics.observe_training("nst", "tr-v1", {"step": 5, "totalSteps": 20, "loss": 1.25},
                             [("Warning", "TrainingFailed", "Job x failed")])
    assert val("loraplane_training_step", namespace="nst", adapter="tr-v1") == 5
    assert val("loraplane_training_total_steps", namespace="nst", adapter="tr-v1") == 20
    assert val("loraplane_training_loss", namespace="nst", adapter="tr-v1") == 1.25
    assert val("loraplane_training_failures_total", namespace="nst", adapter="tr-v1") == 1
    asyncio.run(handlers.adapter_changed(name="tr-v1", namespace="nst", type="DELETED"))
    assert val("loraplane_training_step", namespace="nst", adapter="tr-v1") is None
    assert val("loraplane_training_failures_total", namespace="nst", adapter="tr-v1") is None


def test_failing_workers_gauge_counts_by_reason_and_goes_with_the_pool():
    workers = [{"pod": "pc-0", "fault": "OOMKilled"}, {"pod": "pc-1", "fault": "CrashLoopBackOff"},
               {"pod": "pc-2", "fault": "CrashLoopBackOff"}, {"pod": "pc-3"}]
    metrics.observe_pool("nsc", "pc", "fp16", {"workers": workers}, [], [])
    assert val("loraplane_pool_failing_workers", namespace="nsc", pool="pc", reason="OOMKilled") == 1
    assert val("loraplane_pool_failing_workers", namespace="nsc", pool="pc", reason="CrashLoopBackOff") == 2
    metrics.observe_pool("nsc", "pc", "fp16", {"workers": workers[3:]}, [], [])  # recovered: 0, still exported
    assert val("loraplane_pool_failing_workers", namespace="nsc", pool="pc", reason="CrashLoopBackOff") == 0
    metrics.forget_pool("nsc", "pc")
    assert val("loraplane_pool_failing_workers", namespace="nsc", pool="pc", reason="OOMKilled") is None
