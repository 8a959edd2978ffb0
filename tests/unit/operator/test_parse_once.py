"""Parse once at the kube boundary: a WorkerPool reaches the cores as a typed
``WorkerPoolResource``; one that does not parse becomes a condition naming
the field, never a crash; and parsing changes nothing a running pool sees
(the spec hash of its pods stays the same)."""

from __future__ import annotations

import hashlib
import inspect
import json

from loraplane.operator.api.common_types import StoreVolume
from loraplane.operator.api.resources import InvalidObject, WorkerPoolResource, parse
from loraplane.operator.controllers.reconcile import reconcile_pool, reconcile_resolve
from loraplane.operator.core import manifests, pool, resolve, routing, training


def raw_pool(**spec):
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "generation": 3, "managedFields": []},
            "spec": {"baseModelRef": "m", **spec}, "status": {}}


class FakeKube:
    def __init__(self, objects):
        self.objects, self.patches, self.events = objects, [], []

    def get_custom(self, kind, ns, name):
        return self.objects.get((kind, name))

    def patch_status(self, kind, ns, name, status):
        self.patches.append((kind, name, status))
        self.objects[(kind, name)] = {**self.objects[(kind, name)], "status": status}

    def event(self, obj, type_, reason, message):
        self.events.append((type_, reason, message))


def test_parse_names_every_bad_field():
    bad = parse(WorkerPoolResource, raw_pool(replicas=-1, gpu={"headroomMiB": "lots"}))
    assert isinstance(bad, InvalidObject)
    assert bad.fields == ["spec.replicas", "spec.gpu.headroomMiB"]
    assert "spec.replicas: Input should be greater than or equal to 0" in bad.message


def test_an_invalid_pool_becomes_an_invalid_spec_condition_not_a_crash():
    kube = FakeKube({("WorkerPool", "p"): raw_pool(replicas="two")})
    assert reconcile_pool(kube, None, None, None, "ns", "p") is None
    (_, _, status), = kube.patches
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "InvalidSpec"
    assert "spec.replicas" in conds["Ready"]["message"] and conds["Degraded"]["status"] == "True"
    assert status["observedGeneration"] == 3
    assert [e[:2] for e in kube.events] == [("Warning", "InvalidSpec")]
    reconcile_pool(kube, None, None, None, "ns", "p")  # the next pass: nothing new to say
    assert len(kube.events) == 1 and len(kube.patches) == 1


def test_an_invalid_basemodel_is_reported_the_same_way():
    bm = {"apiVersion": "loraplane.io/v1alpha1", "kind": "BaseModel",
          "metadata": {"name": "m", "namespace": "ns", "generation": 1},
          "spec": {"storeName": "s", "version": "v1", "store": {"hostPath": {"path": "/s"}}, "variants": "fp16"}}
    kube = FakeKube({("BaseModel", "m"): bm})
    assert reconcile_resolve(kube, None, "BaseModel", "ns", "m") is None
    assert "spec.variants" in kube.events[0][2]


def test_the_spec_hash_of_running_pods_is_what_it_was_before_parsing():
    """Pods created by an operator that read raw dicts must not all roll: the
    hash is computed over the object as the API server stores it."""
    served = raw_pool()["spec"] | {"resources": {"cpu": "2", "memory": "16Gi"}, "port": 8000}
    store = {"persistentVolumeClaim": {"claimName": "c", "readOnly": True}, "mountPath": "/models"}
    before = hashlib.sha256(json.dumps({"image": "img", "store": store, "resources": served["resources"],
                                        "port": served["port"], "variant": "fp16", "template": 2},
                                       sort_keys=True).encode()).hexdigest()[:16]
    spec = parse(WorkerPoolResource, raw_pool(**served)).spec
    assert manifests.worker_spec_hash(spec, "img", StoreVolume.model_validate(store), "fp16") == before


def test_the_cores_take_parsed_objects():
    """The entry points of the cores take the parsed types: WorkerPool, BaseModel, Adapter (source and
    training)."""
    for fn, param in ((pool.plan_pool, "pool"), (pool.compose_desired, "pool"), (routing.plan_routing, "pool"),
                      (routing.adapters_named, "pool"), (routing.needs_metrics, "pool"),
                      (manifests.worker_pod, "pool"), (manifests.service, "pool"),
                      (manifests.desired_configmap_obj, "pool")):
        assert inspect.signature(fn).parameters[param].annotation == "WorkerPoolResource", fn.__name__
    assert "BaseModelResource" in inspect.signature(pool.plan_pool).parameters["base"].annotation
    assert "AdapterIn" in inspect.signature(pool.plan_pool).parameters["adapters"].annotation
    assert inspect.signature(resolve.plan_basemodel).parameters["obj"].annotation == "BaseModelResource"
    assert inspect.signature(resolve.plan_adapter).parameters["obj"].annotation == "AdapterResource"
    assert "BaseModelResource" in inspect.signature(manifests.verify_job).parameters["owner"].annotation
    for fn in (training.plan_training, training.training_job, training.placement_request, training.verify_view,
               training.placed, training.unplaced):
        assert inspect.signature(fn).parameters["adapter"].annotation == "AdapterResource", fn.__name__
    assert "TrainingSpec" in inspect.signature(training.derive_need).parameters["training"].annotation
