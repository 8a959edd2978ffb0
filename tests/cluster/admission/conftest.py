"""The generated CRDs on the session's real control plane, and API clients."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def crds_applied(dev_cluster):
    dev_cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    return True


@pytest.fixture(scope="session")
def api_client(dev_cluster):
    from kubernetes import config

    return config.new_client_from_config(config_file=str(dev_cluster.kubeconfig))
