"""The kind suite: the same CRDs and samples against a real kind cluster.

Skipped unless ``KIND_KUBECONFIG`` names a kubeconfig for a reachable cluster
(``kind create cluster && export KIND_KUBECONFIG=$HOME/.kube/config``); the
cluster suite's assertions that only need an API server run here too.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def kubectl(*args, input=None, check=True):
    return subprocess.run(["kubectl", f"--kubeconfig={os.environ['KIND_KUBECONFIG']}", *args],
                          input=input, capture_output=True, text=True, check=check, timeout=120)


def test_cluster_is_reachable_and_has_a_node():
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert nodes, "kind cluster has no nodes"


def test_loraplane_crds_apply_server_side():
    crds = sorted((ROOT / "crds").glob("*.yaml"))
    if not crds:
        pytest.skip("no CRDs generated yet")
    for crd in crds:
        kubectl("apply", "--server-side", "-f", str(crd))
