"""core.buildable: objects the schema accepts but whose children the API
server would refuse become an InvalidObject naming the field, before any
child is built (the issue's hostile objects)."""

from __future__ import annotations

import pytest

from loraplane.operator.api.resources import AdapterResource, BaseModelResource, InvalidObject, WorkerPoolResource, parse
from loraplane.operator.core import buildable
from loraplane.operator.core.manifests import service


def pool(name="p", **spec) -> dict:
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": name, "namespace": "ns", "uid": "u", "generation": 1},
            "spec": {"baseModelRef": "m", "replicas": 2, "routes": {}, **spec}}


def adapter(name="a", **spec) -> dict:
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "Adapter",
            "metadata": {"name": name, "namespace": "ns", "uid": "u", "generation": 1},
            "spec": {"baseModelRef": "m", "task": "t", "version": "v1", **spec}}


def base(name="m") -> dict:
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "BaseModel",
            "metadata": {"name": name, "namespace": "ns", "uid": "u", "generation": 1},
            "spec": {"storeName": "mistral", "version": "v1", "store": {"hostPath": {"path": "/s"}},
                     "variants": [{"name": "fp16", "vramMiB": 100}]}}


def test_valid_objects_pass():
    assert isinstance(buildable.checked(parse(WorkerPoolResource, pool())), WorkerPoolResource)
    assert isinstance(buildable.checked(parse(BaseModelResource, base())), BaseModelResource)
    assert isinstance(buildable.checked(parse(AdapterResource, adapter(source={"storeName": "s"}))), AdapterResource)


@pytest.mark.parametrize("raw,field", [
    (pool("pool.a"), "metadata.name"),  # a Pod name, not a Service name
    (pool("p" * 70), "metadata.name"),  # label value and Service name over 63
    (pool("7b-agents"), "metadata.name"),  # a Service name starts with a letter
    (pool(resources={"cpu": "lots"}), "spec.resources.cpu"),
    (pool(resources={"memory": "-1Gi"}), "spec.resources.memory"),
    (pool(resources={"memory": "16GB"}), "spec.resources.memory"),
    (base("b" * 60), "metadata.name"),  # basemodel.<name> label on its Jobs passes 63
    (adapter("a" * 60, source={"storeName": "s"}), "metadata.name"),
    (adapter(training={"dataset": {"paths": ["d.jsonl"]}, "resources": {"cpu": "1x"}}), "spec.training.resources.cpu"),
])
def test_refused_with_the_field(raw, field):
    model = {"WorkerPool": WorkerPoolResource, "BaseModel": BaseModelResource, "Adapter": AdapterResource}[raw["kind"]]
    got = buildable.checked(parse(model, raw))
    assert isinstance(got, InvalidObject), got
    assert field in got.fields and f"{field}: " in got.message


@pytest.mark.parametrize("q", ["2", "500m", "16Gi", "0.5", "1e3", "1.5Gi", "100k", ".5"])
def test_quantities_kubernetes_accepts(q):
    assert buildable.quantity_problem(q) is None


@pytest.mark.parametrize("q", ["lots", "-1Gi", "16GB", "1.2.3", "", "Gi", "1 Gi"])
def test_quantities_kubernetes_refuses(q):
    assert buildable.quantity_problem(q)


def test_manifest_backstop_sees_the_service_rule():
    p = WorkerPoolResource.model_validate(pool("p"))  # the types refuse "pool.a" too now: named after parsing
    p = p.model_copy(update={"metadata": p.metadata.model_copy(update={"name": "pool.a"})})
    assert any("Service name" in m for m in buildable.manifest_problems(service(p)))
