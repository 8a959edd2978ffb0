"""Values the API server used to accept but the operator could not build (the
hostile-input findings of issue 12): each is now refused by the operator's
types AND carries its twin in the generated CRD (a pattern or a CEL rule at
the same field). The real API server's verdict is checked in
tests/cluster/admission."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from pydantic import ValidationError

from loraplane.operator.api.adapter_types import AdapterSpec
from loraplane.operator.api.basemodel_types import BaseModelSpec
from loraplane.operator.api.common_types import QUANTITY, RESERVED_MOUNT_PATHS
from loraplane.operator.api.workerpool_types import WorkerPoolSpec
from loraplane.operator.core.manifests import TMP_MOUNT
from loraplane.operator.core.training import DATA_MOUNT

_spec = importlib.util.spec_from_file_location("schema_paths", Path(__file__).with_name("schema_paths.py"))
sp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sp)

POOL = {"baseModelRef": "m", "routes": {"t": [{"adapter": "a", "weight": 100}]}}
BASE = {"storeName": "m", "version": "v1", "store": {"hostPath": {"path": "/srv"}}}
ADP = {"baseModelRef": "m", "task": "t", "version": "v1", "training": {"dataset": {"paths": ["d.jsonl"]}}}


def _pool(**spec):
    return WorkerPoolSpec.model_validate({**POOL, **spec})


def _refused(fn, *args, needle: str):
    with pytest.raises(ValidationError) as e:
        fn(*args)
    assert needle in str(e.value), str(e.value)


@pytest.mark.parametrize("bad", ["lots", "-1Gi", "1.5.5", "16 Gi", "", "1Gb", "0x10", "1e", "Gi"])
def test_malformed_quantities_are_refused(bad):
    _refused(lambda: _pool(resources={"cpu": bad}), needle="resources.cpu")
    _refused(lambda: _pool(resources={"memory": bad}), needle="resources.memory")
    _refused(lambda: AdapterSpec.model_validate({**ADP, "training": {**ADP["training"], "resources": {"cpu": bad}}}),
             needle="training.resources.cpu")


@pytest.mark.parametrize("good", ["2", "500m", "16Gi", "1.5", ".5", "1e3", "2E", "+1", "100Mi", "0"])
def test_well_formed_quantities_parse(good):
    assert _pool(resources={"cpu": good, "memory": good}).resources.memory == good


@pytest.mark.parametrize("kind,path", [("WorkerPool", "spec.resources.cpu"), ("WorkerPool", "spec.resources.memory"),
                                       ("Adapter", "spec.training.resources.cpu"),
                                       ("Adapter", "spec.training.resources.memory")])
def test_quantity_twins_in_the_crd(kind, path):
    node = sp.node(kind, path)
    assert node["pattern"] == QUANTITY
    assert any("isQuantity(self)" in r["rule"] for r in node["x-kubernetes-validations"])


@pytest.mark.parametrize("steps", [[50, 25, 100], [25, 25, 100], [100, 100]])
def test_rollout_steps_out_of_order_are_refused_on_both_sides(steps):
    _refused(lambda: _pool(rollouts={"t": {"canary": "b", "steps": steps}}), needle="strictly increasing")
    assert "rollout steps must be strictly increasing" in sp.messages(sp.node("WorkerPool", "spec.rollouts.*.steps"))


TOLERATIONS = [
    ({"key": "", "value": "x"}, "empty key"),
    ({"operator": "Equal", "value": "x"}, "empty key"),
    ({"key": "k", "operator": "Exists", "value": "v"}, "Exists"),
    ({"key": "k", "tolerationSeconds": 30}, "NoExecute"),
    ({"key": "k", "effect": "NoSchedule", "tolerationSeconds": 30}, "NoExecute"),
    ({"key": "bad key!"}, "key"),
    ({"key": "k", "value": "not a label value"}, "value"),
    ({"key": "k", "value": "v" * 64}, "value"),
]


@pytest.mark.parametrize("tol,needle", TOLERATIONS)
def test_tolerations_a_pod_would_refuse_are_refused(tol, needle):
    _refused(lambda: _pool(gpu={"tolerations": [tol]}), needle=needle)


@pytest.mark.parametrize("tol", [{"operator": "Exists"}, {"key": "nvidia.com/gpu", "operator": "Exists",
                                 "effect": "NoSchedule"}, {"key": "k", "value": "v", "effect": "NoExecute",
                                                           "tolerationSeconds": 5}])
def test_valid_tolerations_parse(tol):
    _pool(gpu={"tolerations": [tol]})


def test_toleration_twins_in_the_crd():
    for kind, path in (("WorkerPool", "spec.gpu.tolerations.*"), ("Adapter", "spec.training.gpu.tolerations.*")):
        node = sp.node(kind, path)
        msgs = " ".join(sp.messages(node))
        assert "empty key" in msgs and "Exists" in msgs and "NoExecute" in msgs
        assert "pattern" in node["properties"]["key"] and "pattern" in node["properties"]["value"]


def test_store_paths_a_pod_would_refuse_are_refused():
    _refused(lambda: BaseModelSpec.model_validate({**BASE, "store": {"hostPath": {"path": "/srv/../etc"}}}),
             needle="hostPath.path")
    _refused(lambda: BaseModelSpec.model_validate({**BASE, "store": {"hostPath": {"path": "/srv"}, "mountPath": "/tmp"}}),
             needle="mountPath")
    _refused(lambda: BaseModelSpec.model_validate({**BASE, "store": {"hostPath": {"path": "/srv"}, "mountPath": "/data"}}),
             needle="mountPath")
    # the core mounts its scratch volume and a training dataset claim there
    assert TMP_MOUNT in RESERVED_MOUNT_PATHS and DATA_MOUNT in RESERVED_MOUNT_PATHS
    assert any("'..'" in m for m in sp.messages(sp.node("BaseModel", "spec.store.hostPath.path")))
    assert any("reserved" in m for m in sp.messages(sp.node("BaseModel", "spec.store.mountPath")))


def test_token_key_and_images_a_pod_would_refuse_are_refused():
    hub = {"huggingFace": {"repo": "o/r", "revision": "main", "tokenSecretRef": {"name": "hf", "key": "a key"}}}
    _refused(lambda: BaseModelSpec.model_validate({**BASE, "source": hub}), needle="tokenSecretRef.key")
    _refused(lambda: _pool(image=" worker:dev"), needle="image")
    assert "pattern" in sp.node("BaseModel", "spec.source.huggingFace.tokenSecretRef.key")
    assert "pattern" in sp.node("WorkerPool", "spec.image")
    assert "pattern" in sp.node("Adapter", "spec.training.image")


CROSS_FIELD = [
    (lambda: BaseModelSpec.model_validate({**BASE, "store": {}}), "exactly one of persistentVolumeClaim"),
    (lambda: BaseModelSpec.model_validate({**BASE, "store": {"hostPath": {"path": "/a"},
                                                             "persistentVolumeClaim": {"claimName": "c"}}}),
     "exactly one of persistentVolumeClaim"),
    (lambda: AdapterSpec.model_validate({k: v for k, v in ADP.items() if k != "training"}), "exactly one of spec.source"),
    (lambda: AdapterSpec.model_validate({**ADP, "source": {"storeName": "s"}}), "exactly one of spec.source"),
    (lambda: BaseModelSpec.model_validate({**BASE, "source": {"path": "a", "huggingFace": {"repo": "o/r",
                                                                                          "revision": "m"}}}),
     "exclusive"),
    (lambda: BaseModelSpec.model_validate({**BASE, "source": {"path": "a/../../etc"}}), "source.path"),
    (lambda: AdapterSpec.model_validate({**{k: v for k, v in ADP.items() if k != "training"},
                                         "source": {"storeName": "s", "path": "/etc"}}), "source.path"),
]


@pytest.mark.parametrize("make,needle", CROSS_FIELD, ids=range(len(CROSS_FIELD)))
def test_cel_cross_field_rules_also_hold_in_the_types(make, needle):
    """An object stored without these rules (an older CRD) becomes an InvalidSpec
    condition instead of an AttributeError deep in the core."""
    _refused(make, needle=needle)
