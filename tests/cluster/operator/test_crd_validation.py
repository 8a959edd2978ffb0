"""The generated CRDs apply to a real API server, which refuses bad objects
with a message naming the field (OpenAPI and CEL rules)."""

import json

import pytest

POOL = {"apiVersion": "loraplane.io/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "p"},
        "spec": {"baseModelRef": "m", "routes": {"synthesizer": [{"adapter": "a", "weight": 100}]}}}
BASE = {"apiVersion": "loraplane.io/v1alpha1", "kind": "BaseModel", "metadata": {"name": "m"},
        "spec": {"storeName": "mistral", "version": "v1", "store": {"hostPath": {"path": "/srv/models"}}}}
ADP = {"apiVersion": "loraplane.io/v1alpha1", "kind": "Adapter", "metadata": {"name": "a"},
       "spec": {"baseModelRef": "m", "task": "synthesizer", "version": "v1", "source": {"storeName": "syn"}}}


def _with(doc, path, value):
    doc = json.loads(json.dumps(doc))
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return doc


INVALID = [
    ("weights do not sum to 100", _with(POOL, ["spec", "routes"], {"synthesizer": [
        {"adapter": "a", "weight": 60}, {"adapter": "b", "weight": 30}]}),
     ["spec.routes[synthesizer]", "route weights must sum to 100"]),
    ("weight above 100", _with(POOL, ["spec", "routes"], {"t": [{"adapter": "a", "weight": 120}]}),
     ["spec.routes.t[0].weight", "less than or equal to 100"]),
    ("no backend", _with(POOL, ["spec", "routes"], {"t": []}), ["spec.routes[t]"]),
    ("adapter twice in a route", _with(POOL, ["spec", "routes"], {"t": [
        {"adapter": "a", "weight": 50}, {"adapter": "a", "weight": 50}]}), ["spec.routes[t]", "only once"]),
    ("negative replicas", _with(POOL, ["spec", "replicas"], -1), ["spec.replicas", "0"]),
    ("unknown variant", _with(POOL, ["spec", "variants"], ["int3"]), ["spec.variants[0]", "Unsupported value"]),
    ("variant twice", _with(POOL, ["spec", "variants"], ["fp16", "fp16"]), ["spec.variants[1]", "Duplicate"]),
    ("bad task key", _with(POOL, ["spec", "routes"], {"Bad Task": [{"adapter": "a", "weight": 100}]}),
     ["spec.routes", "task names"]),
    ("unknown placement policy", _with(POOL, ["spec", "gpu"], {"policy": "random"}), ["spec.gpu.policy"]),
    ("maxAdapters exceeded", _with(_with(POOL, ["spec", "maxAdapters"], 1), ["spec", "routes"], {
        "t": [{"adapter": "a", "weight": 50}, {"adapter": "b", "weight": 50}]}), ["spec.routes", "maxAdapters"]),
    ("store path with ..", _with(BASE, ["spec", "source"], {"path": "default/../../etc"}),
     ["spec.source.path", ".."]),
    ("absolute store path", _with(ADP, ["spec", "source", "path"], "/etc/passwd"), ["spec.source.path", "relative"]),
    ("two store volumes", _with(BASE, ["spec", "store"], {"hostPath": {"path": "/a"},
                                                           "persistentVolumeClaim": {"claimName": "c"}}),
     ["spec.store", "exactly one"]),
    ("relative hostPath", _with(BASE, ["spec", "store"], {"hostPath": {"path": "models"}}),
     ["spec.store.hostPath.path", "absolute"]),
    ("hub and path together", _with(BASE, ["spec", "source"], {"path": "a/b", "huggingFace": {
        "repo": "a/b", "revision": "main"}}), ["spec.source", "exclusive"]),
    ("base variant VRAM zero", _with(BASE, ["spec", "variants"], [{"name": "fp16", "vramMiB": 0}]),
     ["spec.variants[0].vramMiB"]),
    ("adapter without source or training", _with(ADP, ["spec", "source"], None), ["spec", "exactly one"]),
    ("store name with slash", _with(BASE, ["spec", "storeName"], "a/b"), ["spec.storeName"]),
]


@pytest.mark.parametrize("what,doc,needles", INVALID, ids=[i[0] for i in INVALID])
def test_api_server_refuses(dev_cluster, crds_applied, namespace, what, doc, needles):
    proc = dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc), check=False)
    assert proc.returncode != 0, f"{what}: accepted"
    for needle in needles:
        assert needle in proc.stderr, f"{what}: {needle!r} not in {proc.stderr}"


def test_valid_objects_apply_with_defaults(dev_cluster, crds_applied, namespace):
    for doc in (BASE, ADP, POOL):
        dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
    pool = json.loads(dev_cluster.kubectl("get", "wp", "p", "-n", namespace, "-o", "json").stdout)
    assert pool["spec"]["variants"] == ["bnb-int8", "fp16"] and pool["spec"]["replicas"] == 1
    assert pool["spec"]["gpu"]["policy"] == "binpack" and pool["spec"]["gpu"]["kvCacheMiB"] == 2048
    names = dev_cluster.kubectl("get", "loraplane", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(n.split(".")[0] for n in names) == ["adapter", "basemodel", "workerpool"]
    assert dev_cluster.kubectl("get", "bm,adp,wp", "-n", namespace).returncode == 0
