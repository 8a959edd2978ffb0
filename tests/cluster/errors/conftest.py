"""Fixtures for the error-handling suite: a ModelStore with the tiny base,
the CRDs, GPU nodes private to one test, and the real operator as a
subprocess watching only the test's namespaces, with its metrics served so a
test can count reconcile passes."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from loraplane.demo import OperatorProcess
from loraplane.devcluster.cluster import free_port
from loraplane.modelstore import ModelStore

BASE_NAME, BASE_VERSION = "mistral-7b-instruct", "v0.3"


@pytest.fixture(scope="session")
def errors_store(tiny_base_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("errstore")
    ModelStore(root).publish(tiny_base_dir, kind="base", name=BASE_NAME, version=BASE_VERSION)
    return root


@pytest.fixture(scope="session")
def errors_crds(dev_cluster):
    root = Path(__file__).resolve().parents[3]
    dev_cluster.kubectl("apply", "-f", str(root / "crds"))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    return True


@pytest.fixture
def run_operator(dev_cluster, errors_crds, errors_store, tmp_path):
    """``run_operator(namespace)`` -> (process, metrics port); stopped after the test."""
    started = []

    def start(namespace: str):
        port = free_port()
        op = OperatorProcess(dev_cluster.kubeconfig, errors_store, tmp_path / "operator.log",
                             extra={"metrics_port": port, "namespace": namespace}).start()
        started.append(op)
        return op, port

    yield start
    for op in started:
        op.stop()
        print(op.tail(40))


@pytest.fixture
def gpu_node(dev_cluster):
    """One KWOK RTX 3090 node with 2 GPUs, private to the test: its selector label."""
    tag = uuid.uuid4().hex[:6]
    label = {"loraplane.io/test": tag}
    names = dev_cluster.create_gpu_nodes(1, gpus_per_node=2, prefix=f"rtx3090-{tag}", labels=label)
    yield label
    dev_cluster.delete_nodes(names)
