"""The kind suite's ``e2e`` environment: the e2e story on a kind cluster
(``KindEnv``). Skipped unless ``KIND_KUBECONFIG`` is set (tests/conftest.py)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def e2e():
    if not os.environ.get("KIND_KUBECONFIG"):
        pytest.skip("kind suite: set KIND_KUBECONFIG")
    from loraplane.devcluster.e2e_env import kind_env

    with kind_env() as env:
        yield env
