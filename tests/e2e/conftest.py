"""The e2e suite on this machine: its own control plane (built from Go
modules), a REAL node (kubelet + containerd + runc, ``RealNode``) and the
project's images built locally and imported into that node's containerd.

It needs root (the kubelet, iptables, mounts), which CI and the dev
machines have; ``make test`` builds everything it needs first. The kind
suite runs the same tests with ``KindEnv`` (tests/kind/conftest.py).
"""

from __future__ import annotations

import pytest

from loraplane.devcluster.e2e_env import local_env


@pytest.fixture(scope="session")
def e2e(tmp_path_factory):
    with local_env(tmp_path_factory.mktemp("e2e")) as env:
        yield env
