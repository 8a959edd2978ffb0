"""An Adapter with spec.training against the real control plane, KWOK GPU
nodes and the real operator: the Job is placed through the VRAM ledger next
to a worker, the real trainer runs the Job's own argv (HostRunner) and
publishes into the store, and the Adapter ends Ready (verified like a source
Adapter) or Failed with the trainer's reason; deleting the Adapter deletes
its Job."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict

from loraplane.devcluster.hostrunner import HostRunner
from loraplane.devcluster.waiting import wait_for
from loraplane.modelstore import load_manifest

BASE_NAME, BASE_VERSION = "mistral-7b-instruct", "v0.3"
GPU_MIB = 24576


def get_json(cluster, *args) -> dict:
    return cluster.get_json(*args)


def apply(cluster, ns, *docs):
    cluster.kubectl("apply", "-n", ns, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


def base_doc(store):
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "BaseModel", "metadata": {"name": "m"},
            "spec": {"storeName": BASE_NAME, "version": BASE_VERSION,
                     "store": {"hostPath": {"path": str(store)}, "mountPath": "/models"},
                     "variants": [{"name": "fp16", "vramMiB": 14336}, {"name": "bnb-int8", "vramMiB": 7680},
                                  {"name": "bnb-4bit", "vramMiB": 4352}]}}


def training_doc(name, selector, dataset="datasets/good.jsonl", vram=12000, backoff=1, version="v1"):
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "Adapter", "metadata": {"name": name},
            "spec": {"baseModelRef": "m", "task": "echo", "version": version, "training": {
                "method": "lora", "device": "cpu", "dataset": {"paths": [dataset]},
                "hyperparameters": {"maxSteps": 3, "batchSize": 2, "seqLen": 64, "evalSplit": 0,
                                    "loggingSteps": 1, "learningRate": 0.005, "r": 4, "alpha": 8},
                "resources": {"vramMiB": vram, "cpu": "1", "memory": "1Gi"},
                "gpu": {"nodeSelector": selector}, "backoffLimit": backoff}}}


def pool_doc(selector, routes=None):
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "p"},
            "spec": {"baseModelRef": "m", "replicas": 1, "variants": ["bnb-int8"], "gpu": {"nodeSelector": selector},
                     "routes": routes or {}}}


def adapter(cluster, ns, name) -> dict:
    return get_json(cluster, "adapter", name, "-n", ns)


def phase_is(cluster, ns, name, *phases):
    a = adapter(cluster, ns, name)
    return a if (a.get("status") or {}).get("phase") in phases else None


def reservations(cluster) -> dict:
    used = defaultdict(int)
    for p in get_json(cluster, "pods", "-A")["items"]:
        raw = (p["metadata"].get("annotations") or {}).get("loraplane.io/reservation")
        if raw and p["status"].get("phase") not in ("Succeeded", "Failed"):
            r = json.loads(raw)
            used[(r["node"], r["gpu"])] += r["vramMiB"]
    return used


def nodes(cluster, n=1):
    tag = uuid.uuid4().hex[:6]
    label = {"loraplane.io/test": tag}
    names = cluster.create_gpu_nodes(n, gpus_per_node=1, prefix=f"train-{tag}", memory_mib=GPU_MIB, labels=label)
    return names, label


def runner(cluster, ns, tmp_path, selector="loraplane.io/owner"):
    return HostRunner(cluster.kubeconfig, ns, tmp_path / "runner", selector=selector)


def test_training_job_shares_the_gpu_with_a_worker_and_ends_ready(dev_cluster, namespace, training_operator,
                                                                   train_store, tmp_path):
    names, sel = nodes(dev_cluster)
    try:
        with runner(dev_cluster, namespace, tmp_path):
            # The pool routes to the adapter that is about to be trained: it serves it once Ready.
            apply(dev_cluster, namespace, base_doc(train_store),
                  pool_doc(sel, {"echo": [{"adapter": "echo-v1", "weight": 100}]}))
            worker = wait_for(lambda: [p for p in get_json(dev_cluster, "pods", "-n", namespace, "-l",
                                                           "loraplane.io/pool=p")["items"]], 90, what="worker pod")
            worker_mib = json.loads(worker[0]["metadata"]["annotations"]["loraplane.io/reservation"])["vramMiB"]
            assert worker_mib + 12000 <= GPU_MIB  # both fit; a second trainer of 4000 MiB does not
            apply(dev_cluster, namespace, training_doc("echo-v1", sel))

            jobs = wait_for(lambda: get_json(dev_cluster, "jobs", "-n", namespace, "-l",
                                             "loraplane.io/owner=adapter.echo-v1,loraplane.io/generation")["items"],
                            60, what="training Job")
            job = jobs[0]
            tmpl = job["spec"]["template"]
            res = json.loads(tmpl["metadata"]["annotations"]["loraplane.io/reservation"])
            assert res["node"] == names[0] and res["gpu"] == 0 and res["vramMiB"] == 12000
            assert job["spec"]["backoffLimit"] == 1 and job["spec"]["activeDeadlineSeconds"] == 86400
            assert job["metadata"]["ownerReferences"][0]["kind"] == "Adapter"
            argv = tmpl["spec"]["containers"][0]["args"]
            assert argv[:2] == ["loraplane", "train"] and "--publish" in argv
            assert argv[argv.index("--version") + 1] == "v1"
            assert argv[argv.index("--dataset") + 1] == "/models/datasets/good.jsonl"

            # The ledger counts the training pod: a second trainer that would overcommit stays Pending.
            apply(dev_cluster, namespace, training_doc("echo-big", sel, vram=4000, version="v9"))
            big = wait_for(lambda: phase_is(dev_cluster, namespace, "echo-big", "Pending") and
                           "no GPU has room" in json.dumps(adapter(dev_cluster, namespace, "echo-big")["status"]),
                           60, what="echo-big unplaceable")
            assert big
            for gpu, mib in reservations(dev_cluster).items():
                assert mib <= GPU_MIB, f"{gpu} overcommitted: {mib} MiB"
            dev_cluster.kubectl("delete", "adapter", "echo-big", "-n", namespace)

            ready = wait_for(lambda: phase_is(dev_cluster, namespace, "echo-v1", "Ready", "Failed"), 300,
                             interval=1, what="echo-v1 Ready")
            st = ready["status"]
            assert st["phase"] == "Ready", st
            rel = "default/adapters/echo-v1/versions/v1"
            manifest = load_manifest(train_store / rel)
            assert st["storePath"] == rel and st["checksum"] == manifest.checksum
            assert st["training"]["trainedGeneration"] == 1 and st["training"]["progress"] == "3/3"
            assert st["training"]["loss"] is not None and st["training"]["node"] == names[0]
            assert manifest.adapter.training_summary == "training_summary.json" and manifest.adapter.r == 4
            summary = json.loads((train_store / rel / "training_summary.json").read_text())
            assert summary["steps"]["completed"] == 3 and summary["hyperparameters"]["r"] == 4
            assert summary["base"]["checksum"] == get_json(dev_cluster, "basemodel", "m", "-n", namespace)[
                "status"]["checksum"] == st["baseChecksum"]
            # The pool's workers are told to load the trained version (desired-state ConfigMap).
            desired = wait_for(lambda: [a for a in json.loads(get_json(dev_cluster, "configmap", "p-desired", "-n",
                                                                        namespace)["data"]["desired.json"])["adapters"]
                                        if a["name"] == "echo-v1" and a["checksum"] == st["checksum"]], 60,
                               what="trained adapter in the pool's desired state")
            assert desired[0]["storeName"] == "echo-v1" and desired[0]["version"] == "v1"
            # The trainer annotated its own pod (downward API identity); the operator copied it.
            pod = get_json(dev_cluster, "pods", "-n", namespace, "-l", "loraplane.io/training=echo-v1")["items"][0]
            progress = json.loads(pod["metadata"]["annotations"]["loraplane.io/training-progress"])
            assert progress["phase"] == "succeeded" and progress["step"] == 3
    finally:
        dev_cluster.delete_nodes(names)


def test_failed_training_ends_failed_with_the_trainers_reason(dev_cluster, namespace, training_operator,
                                                              train_store, tmp_path):
    names, sel = nodes(dev_cluster)
    try:
        with runner(dev_cluster, namespace, tmp_path):
            apply(dev_cluster, namespace, base_doc(train_store),
                  training_doc("bad-v1", sel, dataset="datasets/bad.jsonl", backoff=0))
            failed = wait_for(lambda: phase_is(dev_cluster, namespace, "bad-v1", "Failed", "Ready"), 240,
                              interval=1, what="bad-v1 Failed")
        st = failed["status"]
        assert st["phase"] == "Failed"
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "TrainingFailed"
        assert "bad.jsonl:2" in ready["message"], ready["message"]
        assert not (train_store / "default/adapters/bad-v1").exists()  # nothing published
    finally:
        dev_cluster.delete_nodes(names)


def test_deleting_the_adapter_deletes_its_training_job(dev_cluster, namespace, training_operator, train_store,
                                                       tmp_path):
    names, sel = nodes(dev_cluster)
    try:
        # Run the verify Jobs only: the training pod stays Running (KWOK) until the Adapter goes.
        with runner(dev_cluster, namespace, tmp_path, selector="loraplane.io/owner,!loraplane.io/training"):
            apply(dev_cluster, namespace, base_doc(train_store), training_doc("gone-v1", sel))
            wait_for(lambda: phase_is(dev_cluster, namespace, "gone-v1", "Training"), 120, what="Training")
            sel_job = "loraplane.io/owner=adapter.gone-v1,loraplane.io/generation"
            wait_for(lambda: get_json(dev_cluster, "pods", "-n", namespace, "-l",
                                      "loraplane.io/training=gone-v1")["items"], 60, what="training pod")
            dev_cluster.kubectl("delete", "adapter", "gone-v1", "-n", namespace)
            wait_for(lambda: not get_json(dev_cluster, "jobs", "-n", namespace, "-l", sel_job)["items"], 60,
                     what="Job garbage-collected")
            wait_for(lambda: not get_json(dev_cluster, "pods", "-n", namespace, "-l",
                                          "loraplane.io/training=gone-v1")["items"], 60, what="pod gone")
    finally:
        dev_cluster.delete_nodes(names)
