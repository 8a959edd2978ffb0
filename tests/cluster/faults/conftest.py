"""Node and pod faults against the real control plane with KWOK nodes (issue 12, item 4).

Built once per module to keep the suite short on two cores: a store with the
tiny base and one adapter, a namespace holding a Ready BaseModel ``m`` and
Adapter ``syn-v1``, and one operator (resync 3 s, metrics served) that every
test shares. Each test brings its own nodes (labelled, so only its pool uses
them) and its own WorkerPool, and deletes both.

How the faults are made (no kubelet; KWOK plays it):
- Unschedulable: a node's allocatable memory is patched below the workers'
  16Gi request, so the kube-scheduler refuses the pod the operator bound there.
- NotReady: KWOK stops managing the node (its annotation removed) and the node's
  Ready condition is patched to False, as a kubelet that stopped posting would.
- Node loss: the Node object is deleted.
- OOMKilled / CrashLoopBackOff: the pod's status is patched as a kubelet writes it.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from loraplane.demo import OperatorProcess
from loraplane.devcluster.nodes import KWOK_ANNOTATION
from loraplane.devcluster.waiting import wait_for
from loraplane.modelstore import ModelStore

BASE_NAME, BASE_VERSION = "mistral-7b-instruct", "v0.3"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _apply(cluster, ns, *docs):
    cluster.kubectl("apply", "-n", ns, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


def _ready(cluster, ns, kind, name):
    obj = cluster.get_json(kind, name, "-n", ns)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj.get("status", {}).get("conditions", []))


@pytest.fixture(scope="module")
def faults(dev_cluster, tiny_base_dir, make_tiny_adapter, tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    store = ModelStore(work / "store")
    store.publish(tiny_base_dir, kind="base", name=BASE_NAME, version=BASE_VERSION)
    store.publish(make_tiny_adapter(seed=3), kind="adapter", name="synthesizer", version="v1", task="synthesizer",
                  base_name=BASE_NAME, base_version=BASE_VERSION)
    ns = f"faults-{uuid.uuid4().hex[:6]}"
    dev_cluster.kubectl("create", "namespace", ns)
    wait_for(lambda: dev_cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
             timeout=10, interval=0.1, what="default ServiceAccount")
    root = Path(__file__).resolve().parents[3]
    dev_cluster.kubectl("apply", "-f", str(root / "crds"))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    jobs_node = dev_cluster.create_gpu_nodes(1, prefix=f"jobs-{ns}", labels={"loraplane.io/test": ns})
    port = _free_port()
    op = OperatorProcess(dev_cluster.kubeconfig, work / "store", work / "operator.log", resync_seconds=3,
                         extra={"metrics_port": port}).start()
    env = SimpleNamespace(cluster=dev_cluster, ns=ns, operator=op, metrics_port=port, made=[])
    try:
        _apply(dev_cluster, ns,
               {"apiVersion": "loraplane.io/v1alpha1", "kind": "BaseModel", "metadata": {"name": "m"},
                "spec": {"storeName": BASE_NAME, "version": BASE_VERSION,
                         "store": {"hostPath": {"path": str(work / "store")}, "mountPath": "/models"},
                         "variants": [{"name": "fp16", "vramMiB": 14336}]}},
               {"apiVersion": "loraplane.io/v1alpha1", "kind": "Adapter", "metadata": {"name": "syn-v1"},
                "spec": {"baseModelRef": "m", "task": "synthesizer", "version": "v1",
                         "source": {"storeName": "synthesizer"}}})
        for kind, name in (("bm", "m"), ("adapter", "syn-v1")):
            wait_for(lambda: _ready(dev_cluster, ns, kind, name), timeout=60, what=f"{kind}/{name} Ready")
        yield env
    finally:
        op.kill()  # standalone (no peering record to leave behind); SIGTERM costs kopf ~9 s here
        print(op.tail(40))
        dev_cluster.delete_nodes(jobs_node + env.made)
        dev_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def fx(faults):
    """Per-test helpers over the shared module environment."""
    c, ns = faults.cluster, faults.ns
    tag = uuid.uuid4().hex[:6]

    def nodes(count: int, gpus: int = 1) -> list[str]:
        names = c.create_gpu_nodes(count, gpus_per_node=gpus, prefix=f"f{tag}", labels={"loraplane.io/test": tag})
        faults.made.extend(names)
        return names

    def pool(name: str, replicas: int, **gpu) -> None:
        _apply(c, ns, {"apiVersion": "loraplane.io/v1alpha1", "kind": "WorkerPool", "metadata": {"name": name},
                       "spec": {"baseModelRef": "m", "replicas": replicas, "variants": ["fp16"],
                                "gpu": {"nodeSelector": {"loraplane.io/test": tag}, **gpu},
                                "routes": {"synthesizer": [{"adapter": "syn-v1", "weight": 100}]}}})

    def pods(name: str) -> list[dict]:
        return c.get_json("pods", "-n", ns, "-l", f"loraplane.io/pool={name}")["items"]

    def get(name: str) -> dict:
        return c.get_json("wp", name, "-n", ns)

    def events(reason: str) -> list[dict]:
        return c.get_json("events", "-n", ns, "--field-selector", f"reason={reason}")["items"]

    def metrics() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{faults.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def not_ready(node: str) -> None:
        c.kubectl("annotate", "node", node, f"{KWOK_ANNOTATION}-")  # KWOK stops posting Ready for it
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        c.kubectl("patch", "node", node, "--subresource=status", "--type=strategic", "-p", json.dumps(
            {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                                        "message": "fault injected by the test", "lastTransitionTime": now,
                                        "lastHeartbeatTime": now}]}}))

    def patch_pod_status(pod: str, status: dict) -> None:
        c.kubectl("patch", "pod", pod, "-n", ns, "--subresource=status", "--type=merge", "-p",
                  json.dumps({"status": status}))

    def delete_pool(name: str) -> None:
        c.kubectl("delete", "wp", name, "-n", ns, "--wait=false", check=False)

    return SimpleNamespace(cluster=c, ns=ns, nodes=nodes, pool=pool, pods=pods, get=get, events=events,
                           metrics=metrics, not_ready=not_ready, patch_pod_status=patch_pod_status,
                           delete_pool=delete_pool, wait_for=wait_for)
