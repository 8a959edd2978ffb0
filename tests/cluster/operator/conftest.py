"""Cluster-suite fixtures for the operator: a ModelStore holding the tiny
base and the samples' adapters, GPU nodes private to one test, and the real
operator as a subprocess (``loraplane operator run``) that tests can kill and
restart.

Store choice (see docs/operator.md): the operator runs with ``--store-root``
on the same directory the verify Jobs mount, so when KWOK "completes" a verify
Job (annotation ``loraplane.io/kwok-result: Succeeded`` on the Job's pod
template, via ``--job-pod-annotations``) the operator reads the real manifest
of the real published version.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from loraplane.demo import OperatorProcess
from loraplane.devcluster.waiting import wait_for
from loraplane.modelstore import ModelStore

BASE_NAME, BASE_VERSION = "mistral-7b-instruct", "v0.3"
SAMPLE_ADAPTERS = [("synthesizer", "v1"), ("synthesizer", "v2"), ("re-ranker", "v1"), ("fact-checker", "v1"),
                   ("critic", "v1"), ("journalist", "v1"), ("chief-editor", "v1"), ("reasoning", "v1"),
                   ("analyst", "v1")]


@pytest.fixture(scope="session")
def op_store(tiny_base_dir, make_tiny_adapter, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("opstore")
    store = ModelStore(root)
    store.publish(tiny_base_dir, kind="base", name=BASE_NAME, version=BASE_VERSION)
    store.publish(tiny_base_dir, kind="base", name=BASE_NAME, version="v0.3-hub")
    adapter = make_tiny_adapter(seed=3)
    for name, version in SAMPLE_ADAPTERS:
        store.publish(adapter, kind="adapter", name=name, version=version, task=name.replace("-", "_"),
                      base_name=BASE_NAME, base_version=BASE_VERSION)
    return root


@pytest.fixture(scope="session")
def crds_applied(dev_cluster):
    root = Path(__file__).resolve().parents[3]
    dev_cluster.kubectl("apply", "-f", str(root / "crds"))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    return True


@pytest.fixture
def operator(dev_cluster, crds_applied, op_store, tmp_path):
    """A factory: ``operator(**extra_flags)`` starts one; all are stopped after the test."""
    started = []

    def start(**extra) -> OperatorProcess:
        op = OperatorProcess(dev_cluster.kubeconfig, op_store, tmp_path / "operator.log", extra=extra).start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()
    for op in started[-1:]:
        print(op.tail(60))


@pytest.fixture
def gpu_nodes(dev_cluster):
    """``gpu_nodes(count, gpus)`` -> (names, selector label) for nodes private to this test."""
    made = []
    tag = uuid.uuid4().hex[:6]

    def make(count: int, gpus: int = 2, memory_mib: int = 24576, taints=None) -> tuple[list[str], dict]:
        label = {"loraplane.io/test": tag}
        names = dev_cluster.create_gpu_nodes(count, gpus_per_node=gpus, prefix=f"rtx3090-{tag}",
                                             memory_mib=memory_mib, labels=label, taints=taints)
        made.extend(names)
        return names, label

    yield make
    dev_cluster.delete_nodes(made)


def get_json(cluster, *args) -> dict:
    return cluster.get_json(*args)


@pytest.fixture(scope="session")
def helpers():
    """Helpers for test modules (``--import-mode=importlib`` cannot import conftest)."""
    from types import SimpleNamespace
    return SimpleNamespace(wait_for=wait_for, get_json=get_json, BASE_NAME=BASE_NAME, BASE_VERSION=BASE_VERSION)
