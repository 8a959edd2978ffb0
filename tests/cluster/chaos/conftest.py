"""Fixtures for the kill suite: a ModelStore with the tiny base, two versions of
one adapter and the version a training Job "publishes" (KWOK completes the
training pod at once, so the published files are put there beforehand), and
GPU nodes private to the module."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from loraplane.modelstore import ModelStore

BASE_NAME, BASE_VERSION = "mistral-7b-instruct", "v0.3"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def chaos_store(tiny_base_dir, make_tiny_adapter, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chaosstore")
    store = ModelStore(root)
    store.publish(tiny_base_dir, kind="base", name=BASE_NAME, version=BASE_VERSION)
    for i, version in enumerate(("v1", "v2")):
        store.publish(make_tiny_adapter(seed=21 + i), kind="adapter", name="synthesizer", version=version,
                      task="synthesizer", base_name=BASE_NAME, base_version=BASE_VERSION)
    store.publish(make_tiny_adapter(seed=23), kind="adapter", name="trained", version="v1", task="synthesizer",
                  base_name=BASE_NAME, base_version=BASE_VERSION)
    return root


@pytest.fixture(scope="module")
def chaos_nodes(dev_cluster):
    dev_cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    tag = uuid.uuid4().hex[:6]
    label = {"loraplane.io/test": f"chaos-{tag}"}
    names = dev_cluster.create_gpu_nodes(2, gpus_per_node=2, prefix=f"chaos-{tag}", labels=label)
    yield label
    dev_cluster.delete_nodes(names)
