"""The real operator (subprocess) against the real control plane with KWOK
RTX 3090 nodes: samples reach Ready, VRAM packing, cordon, recreation,
restart safety and kubectl scale."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from loraplane.operator.core.placement import vram_lower_bound

BASE_NAME, BASE_VERSION = "mistral-7b-instruct", "v0.3"  # as published by the op_store fixture
H = None  # the `helpers` fixture, set by the autouse fixture below


@pytest.fixture(autouse=True)
def _helpers(helpers):
    global H
    H = helpers


def wait_for(*a, **kw):
    return H.wait_for(*a, **kw)


def get_json(*a):
    return H.get_json(*a)


EXAMPLES = Path(__file__).resolve().parents[3] / "docs" / "examples"


def apply(cluster, ns, *docs):
    cluster.kubectl("apply", "-n", ns, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


def base_doc(store_root, name="m", **spec):
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "BaseModel", "metadata": {"name": name},
            "spec": {"storeName": BASE_NAME, "version": BASE_VERSION,
                     "store": {"hostPath": {"path": str(store_root)}, "mountPath": "/models"},
                     "variants": [{"name": "fp16", "vramMiB": 14336}, {"name": "bnb-int8", "vramMiB": 7680}],
                     **spec}}


def adapter_doc(name="syn-v1", store="synthesizer", version="v1"):
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "Adapter", "metadata": {"name": name},
            "spec": {"baseModelRef": "m", "task": "synthesizer", "version": version, "source": {"storeName": store}}}


def pool_doc(selector, replicas, variants=("bnb-int8", "fp16"), name="p", **gpu):
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "WorkerPool", "metadata": {"name": name},
            "spec": {"baseModelRef": "m", "replicas": replicas, "variants": list(variants),
                     "gpu": {"nodeSelector": selector, **gpu},
                     "routes": {"synthesizer": [{"adapter": "syn-v1", "weight": 100}]}}}


def pods(cluster, ns, pool="p"):
    return get_json(cluster, "pods", "-n", ns, "-l", f"loraplane.io/pool={pool}")["items"]


def reservations(cluster) -> dict:
    """(node, gpu) -> reserved MiB, over every pod in the cluster."""
    used = defaultdict(int)
    for p in get_json(cluster, "pods", "-A")["items"]:
        raw = (p["metadata"].get("annotations") or {}).get("loraplane.io/reservation")
        if raw and p["status"].get("phase") not in ("Succeeded", "Failed"):
            r = json.loads(raw)
            used[(r["node"], r["gpu"])] += r["vramMiB"]
    return used


def assert_no_overcommit(cluster, memory=24576):
    for gpu, mib in reservations(cluster).items():
        assert mib <= memory, f"{gpu} overcommitted: {mib} MiB"


def condition(obj, type_):
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def ready(cluster, ns, kind, name):
    obj = get_json(cluster, kind, name, "-n", ns)
    return condition(obj, "Ready").get("status") == "True" and obj


def test_samples_reach_ready(dev_cluster, namespace, operator, op_store, gpu_nodes):
    _, label = gpu_nodes(2, gpus=2)
    ns = namespace
    # The samples' PVC (the name the chart's modelStore.shared gives it), bound to a
    # hostPath PV holding the test store.
    pv = f"model-store-{ns}"
    apply(dev_cluster, ns, {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                                     "storageClassName": "", "hostPath": {"path": str(op_store)},
                                     "claimRef": {"namespace": ns, "name": "loraplane-store"}}},
          {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "loraplane-store"},
           "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                    "resources": {"requests": {"storage": "1Gi"}}}},
          {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token"}, "stringData": {"token": "x"}})
    operator()
    docs = []
    for f in ("basemodel.yaml", "adapters.yaml", "workerpool.yaml"):
        for d in yaml.safe_load_all((EXAMPLES / f).read_text()):
            if d and d["kind"] == "WorkerPool":
                d["spec"]["gpu"]["nodeSelector"] = label  # keep to this test's nodes
            if d:
                docs.append(d)
    apply(dev_cluster, ns, *docs)
    for d in docs:
        kind, name = d["kind"].lower(), d["metadata"]["name"]
        wait_for(lambda: ready(dev_cluster, ns, kind, name), timeout=90, what=f"{kind}/{name} Ready")
    bm = get_json(dev_cluster, "bm", "mistral-7b-hub", "-n", ns)
    jobs = [j["metadata"]["name"] for j in get_json(dev_cluster, "jobs", "-n", ns)["items"]]
    assert any("mistral-7b-hub-publish" in j for j in jobs), jobs  # the hub source ran a publish Job first
    assert bm["status"]["checksum"] and bm["status"]["storePath"].endswith("versions/v0.3-hub")
    pool = get_json(dev_cluster, "wp", "agents", "-n", ns)
    assert pool["status"]["readyReplicas"] == 6 and pool["status"]["variant"] == "bnb-int8"
    desired = json.loads(get_json(dev_cluster, "cm", "agents-desired", "-n", ns)["data"]["desired.json"])
    assert [b["weight"] for b in desired["routes"]["synthesizer"]] == [95, 5]
    assert len(desired["adapters"]) == 9
    assert get_json(dev_cluster, "svc", "agents", "-n", ns)["spec"]["selector"] == {"loraplane.io/pool": "agents"}
    events = dev_cluster.kubectl("get", "events", "-n", ns, "--field-selector", "reason=Placed").stdout
    assert "agents-0" in events


def _setup(cluster, ns, store, selector, replicas, **pool_kw):
    apply(cluster, ns, base_doc(store), adapter_doc(), pool_doc(selector, replicas, **pool_kw))


def test_six_int8_workers_use_no_more_gpus_than_the_vram_bound(dev_cluster, namespace, operator, op_store,
                                                               gpu_nodes):
    nodes, label = gpu_nodes(2, gpus=2)
    operator()
    _setup(dev_cluster, namespace, op_store, label, 6, variants=["bnb-int8"])
    pool = wait_for(lambda: ready(dev_cluster, namespace, "wp", "p"), timeout=90, what="pool Ready")
    workers = pool["status"]["workers"]
    need = pool["status"]["needMiB"]
    gpus = {(w["node"], w["gpu"]) for w in workers}
    assert len(workers) == 6 and all(w["variant"] == "bnb-int8" for w in workers)
    assert len(gpus) <= vram_lower_bound(6 * need, 24576) == 3
    assert {w["node"] for w in workers} <= set(nodes)
    assert_no_overcommit(dev_cluster)


def test_cordoned_node_gets_no_new_workers(dev_cluster, namespace, operator, op_store, gpu_nodes):
    (a, b), label = gpu_nodes(2, gpus=1)
    dev_cluster.kubectl("cordon", a)
    operator()
    # fp16 (14 GiB + cache + headroom) fits once per 24 GiB card.
    _setup(dev_cluster, namespace, op_store, label, 2, variants=["fp16"])

    def unplaced():
        pool = get_json(dev_cluster, "wp", "p", "-n", namespace)
        prog = condition(pool, "Progressing")
        return prog.get("reason") == "Unplaceable" and pool
    pool = wait_for(unplaced, timeout=90, what="Unplaceable")
    # 14 GiB fp16 + 2 GiB KV + 1 GiB headroom + the adapter (its size, or 256 MiB before it is verified)
    assert re.search(r"needs 17\.[0-2] GiB \(fp16\); the best GPU has \d+\.\d GiB free \(rtx3090-",
                     condition(pool, "Progressing")["message"])
    assert pool["status"]["unplaced"] == 1
    assert {p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchFields"][0]["values"][0] for p in pods(dev_cluster, namespace)} == {b}
    dev_cluster.kubectl("uncordon", a)  # a node change is a retry trigger
    pool = wait_for(lambda: ready(dev_cluster, namespace, "wp", "p"), timeout=60, what="placed after uncordon")
    assert sorted(w["node"] for w in pool["status"]["workers"]) == sorted([a, b])


def test_deleted_worker_is_recreated_on_a_gpu_that_fits(dev_cluster, namespace, operator, op_store, gpu_nodes):
    _, label = gpu_nodes(2, gpus=1)
    operator()
    _setup(dev_cluster, namespace, op_store, label, 3, variants=["bnb-int8"])
    wait_for(lambda: ready(dev_cluster, namespace, "wp", "p"), timeout=90, what="pool Ready")
    old = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(dev_cluster, namespace)}
    # A deleted worker stays Terminating for its grace period (a KWOK pod for a moment, which
    # made this test race the operator): a finalizer holds p-1 there. Its replacement does not
    # wait for it and cannot take its name while it exists, so it is p-3, placed where VRAM is
    # left with p-1's reservation still counted.
    hold = ["patch", "pod", "p-1", "-n", namespace, "--type=merge", "-p"]
    dev_cluster.kubectl(*hold, '{"metadata":{"finalizers":["loraplane.io/test-hold"]}}')
    try:
        dev_cluster.kubectl("delete", "pod", "p-1", "-n", namespace, "--wait=false")
        wait_for(lambda: {p["metadata"]["name"] for p in pods(dev_cluster, namespace)} == {*old, "p-3"},
                 timeout=60, what="p-3 created while p-1 is Terminating")
        assert_no_overcommit(dev_cluster)
    finally:
        dev_cluster.kubectl(*hold, '{"metadata":{"finalizers":null}}')

    def replaced():
        now = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(dev_cluster, namespace)}
        return set(now) == {"p-0", "p-2", "p-3"} and ready(dev_cluster, namespace, "wp", "p") and now
    now = wait_for(replaced, timeout=60, what="pool Ready again with p-3 in place of p-1")
    assert now["p-0"] == old["p-0"] and now["p-2"] == old["p-2"]  # the other workers stayed warm
    assert_no_overcommit(dev_cluster)


def test_operator_restart_mid_reconcile(dev_cluster, namespace, operator, op_store, gpu_nodes):
    _, label = gpu_nodes(4, gpus=2)
    op = operator(create_delay_seconds=0.7)  # slow pod creation so the kill lands mid-pass
    _setup(dev_cluster, namespace, op_store, label, 14, variants=["bnb-int8"])
    wait_for(lambda: len(pods(dev_cluster, namespace)) >= 3, timeout=90, what="first pods")
    op.kill()
    partial = len(pods(dev_cluster, namespace))
    assert 0 < partial < 14, partial  # really killed mid-pass
    operator()
    pool = wait_for(lambda: ready(dev_cluster, namespace, "wp", "p"), timeout=120, what="pool Ready after restart")
    names = sorted(p["metadata"]["name"] for p in pods(dev_cluster, namespace))
    assert names == sorted(f"p-{i}" for i in range(14))
    assert pool["status"]["readyReplicas"] == 14
    assert_no_overcommit(dev_cluster)


def test_kubectl_scale_up_and_down(dev_cluster, namespace, operator, op_store, gpu_nodes):
    _, label = gpu_nodes(2, gpus=2)
    operator()
    _setup(dev_cluster, namespace, op_store, label, 2, variants=["bnb-int8"])
    wait_for(lambda: ready(dev_cluster, namespace, "wp", "p"), timeout=90, what="pool Ready")
    dev_cluster.kubectl("scale", "wp/p", "--replicas=5", "-n", namespace)
    pool = wait_for(lambda: (p := ready(dev_cluster, namespace, "wp", "p")) and p["status"]["readyReplicas"] == 5
                    and p, timeout=60, what="5 ready")
    scale = get_json(dev_cluster, "wp", "p", "-n", namespace, "--subresource=scale")
    assert scale["status"]["replicas"] == 5 and scale["status"]["selector"] == "loraplane.io/pool=p"
    alone = [w["pod"] for w in pool["status"]["workers"]
             if sum(1 for v in pool["status"]["workers"] if (v["node"], v["gpu"]) == (w["node"], w["gpu"])) == 1]
    dev_cluster.kubectl("scale", "wp/p", "--replicas=4", "-n", namespace)
    wait_for(lambda: len(pods(dev_cluster, namespace)) == 4, timeout=60, what="4 pods")
    left = {p["metadata"]["name"] for p in pods(dev_cluster, namespace)}
    assert alone and not (set(alone) & left), (alone, left)  # the lone worker went: a whole GPU freed
    dev_cluster.kubectl("scale", "wp/p", "--replicas=0", "-n", namespace)
    wait_for(lambda: not pods(dev_cluster, namespace), timeout=60, what="0 pods")
    dev_cluster.kubectl("delete", "wp", "p", "-n", namespace, "--timeout=60s")
    wait_for(lambda: dev_cluster.kubectl("get", "svc,cm", "-n", namespace, "-l", "loraplane.io/pool=p",
                                         "-o", "name").stdout.strip() == "", timeout=60, what="owned objects gone")


def test_missing_secret_is_a_condition_with_backoff_not_a_crash(dev_cluster, namespace, operator, op_store,
                                                                 gpu_nodes):
    gpu_nodes(1)  # a node for the publish and verify Jobs' pods, whatever ran before
    op = operator()
    doc = base_doc(op_store, name="hub", source={"huggingFace": {
        "repo": "mistralai/Mistral-7B-Instruct-v0.3", "revision": "main", "tokenSecretRef": {"name": "absent"}}})
    doc["spec"]["version"] = "v0.3-hub"
    apply(dev_cluster, namespace, doc)

    def retried():
        bm = get_json(dev_cluster, "bm", "hub", "-n", namespace)
        st = bm.get("status") or {}
        return st.get("attempts", 0) >= 2 and bm
    bm = wait_for(retried, timeout=60, what="two attempts")
    ready_c = condition(bm, "Ready")
    assert ready_c["status"] == "False" and ready_c["reason"] == "SecretMissing"
    assert "Secret absent not found" in ready_c["message"] and bm["status"]["nextRetry"]
    assert not get_json(dev_cluster, "jobs", "-n", namespace)["items"]  # nothing started without the token
    assert op.proc.poll() is None  # still running
    # The Secret appears: the next retry publishes, then verifies (KWOK completes both Jobs).
    # No Secret watch (the operator reads only the Secrets it is pointed at), so
    # Ready waits for the next scheduled retry; passes woken early by events
    # do not count as attempts, so that retry is seconds away, not minutes.
    apply(dev_cluster, namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "absent"},
                                   "stringData": {"token": "hf_secret_value"}})
    wait_for(lambda: ready(dev_cluster, namespace, "bm", "hub"), timeout=90, what="Ready after the Secret")
    assert "hf_secret_value" not in op.log.read_text()
