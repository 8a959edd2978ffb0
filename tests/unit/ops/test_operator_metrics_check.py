"""`promtool check metrics` on a real scrape of the operator's /metrics
endpoint (served by operator/controllers/metrics.py serve(), as `loraplane operator run
--metrics-port` does), after the operator's metric paths have run."""

from __future__ import annotations

import socket
import subprocess
import urllib.request

import pytest

from loraplane.devcluster import prom_build
from loraplane.operator.controllers import metrics
from loraplane.operator.core import placement as pl
from loraplane.operator.controllers.reconcile import timed

pytestmark = pytest.mark.unit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_operator_scrape_passes_promtool_check_metrics():
    metrics.observe_ledger([pl.NodeInfo("gpu-a", {}, 1, 81920)], [pl.Reservation("gpu-a", 0, 20000, "ml/chat-0")])
    metrics.placed("ml", "chat", "bf16")
    metrics.observe_pool("ml", "chat", "bf16", {"unplaced": 1, "readyReplicas": 1, "effectiveRoutes": {
        "chat": [{"adapter": "chat-v1", "weight": 75}, {"adapter": "chat-v2", "weight": 25}]}},
        [("Warning", "FailedPlacement", "1 worker(s) unplaced")], [("chat", "AnalysisFailed")])
    metrics.observe_training("ml", "chat-v3", {"step": 3, "totalSteps": 10, "loss": 2.5},
                             [("Warning", "TrainingFailed", "x")])

    def boom(ns, name):
        raise RuntimeError("injected")
    assert timed("WorkerPool", boom, "ml", "chat") == 10.0

    port = free_port()
    metrics.serve(port)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    for name in ("loraplane_gpu_vram_free_bytes", "loraplane_route_weight_ratio", "loraplane_training_loss",
                 "loraplane_operator_reconcile_errors_total", "loraplane_operator_rollout_transitions_created"):
        assert name in text, name
    assert "mebibytes" not in text
    out = subprocess.run([str(prom_build.promtool()), "check", "metrics"], input=text, text=True,
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
