"""The real control plane for the cluster suite, started once per session.

Set ``LORAPLANE_DEVCLUSTER_DIR`` to the directory of a cluster that
``loraplane dev-cluster up`` left running to reuse it instead of starting
one (fast iteration).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from loraplane.devcluster.cluster import DevCluster
from loraplane.devcluster.waiting import wait_for


@pytest.fixture(scope="session")
def dev_cluster(tmp_path_factory):
    existing = os.environ.get("LORAPLANE_DEVCLUSTER_DIR")  # a dir left by `dev-cluster up`
    if existing:
        yield DevCluster.attach(Path(existing))
        return
    cluster = DevCluster(workdir=tmp_path_factory.mktemp("devcluster"))
    with cluster:
        yield cluster


@pytest.fixture
def namespace(dev_cluster):
    """A fresh namespace per test, deleted (without waiting) afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    dev_cluster.kubectl("create", "namespace", name)
    # Pods are refused until the namespace's default ServiceAccount exists.
    wait_for(lambda: dev_cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
             timeout=10, interval=0.1, what=f"the default ServiceAccount of {name}")
    yield name
    dev_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
