"""One WorkerPool with REAL worker processes for the canary suite.

The real control plane (session ``dev_cluster``), KWOK RTX 3090 nodes, the
real operator as a subprocess (restartable), a temp ModelStore with the tiny
base and two versions of the summarizer adapter, and ``HostRunner`` running
the pool's pods as host processes. Four Adapters point at the store:
``sum-v1`` (v1), ``sum-v2`` (v2), and ``sum-slow`` / ``sum-bad`` (v2 again)
which the workers' test-only fault settings make slow / failing — the faults
are keyed by adapter name, so only those two are affected.

Built once per module (starting two torch workers costs tens of seconds on
two cores); each test starts from ``reset()``: route 100% sum-v1, no rollout.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from kubernetes import client, config

from loraplane.demo import ADAPTER_STORE_NAME, BASE_NAME, BASE_VERSION, TASK, OperatorProcess, manifests, wait_for
from loraplane.devcluster.hostrunner import HostRunner
from loraplane.modelstore import ModelStore

POOL = "canary"
ADAPTERS = {"sum-v1": "v1", "sum-v2": "v2", "sum-slow": "v2", "sum-bad": "v2"}
FAULTS = {"LORAPLANE_FAULT_ADAPTER_DELAY_MS": "sum-slow=400", "LORAPLANE_FAULT_ADAPTER_ERROR_RATE": "sum-bad=0.5"}


@pytest.fixture(scope="module")
def canary(dev_cluster, tiny_base_dir, make_tiny_adapter, tmp_path_factory):
    work = tmp_path_factory.mktemp("canary")
    store = ModelStore(work / "store")
    store.publish(tiny_base_dir, kind="base", name=BASE_NAME, version=BASE_VERSION)
    for i, v in enumerate(("v1", "v2")):
        store.publish(make_tiny_adapter(seed=11 + i, r=8), kind="adapter", name=ADAPTER_STORE_NAME, version=v,
                      task=TASK, base_name=BASE_NAME, base_version=BASE_VERSION)
    ns = f"canary-{uuid.uuid4().hex[:6]}"
    dev_cluster.kubectl("create", "namespace", ns)
    wait_for(lambda: dev_cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
             what="default ServiceAccount")
    label = {"loraplane.io/test": ns}
    nodes = dev_cluster.create_gpu_nodes(2, gpus_per_node=1, prefix=f"rtx3090-{ns}", labels=label)
    root = Path(__file__).resolve().parents[3]
    dev_cluster.kubectl("apply", "-f", str(root / "crds"))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    env = SimpleNamespace(cluster=dev_cluster, ns=ns, kubeconfig=dev_cluster.kubeconfig, work=work,
                          custom=client.CustomObjectsApi(config.new_client_from_config(
                              config_file=str(dev_cluster.kubeconfig))))
    env.operator = OperatorProcess(dev_cluster.kubeconfig, work / "store", work / "operator.log",
                                   resync_seconds=3).start()
    runner = HostRunner(dev_cluster.kubeconfig, ns, work / "pods", selector=f"loraplane.io/pool={POOL}",
                        extra_env={"LORAPLANE_THREADS": "1", "OMP_NUM_THREADS": "1", **FAULTS},
                        grace_seconds=5).start()
    try:
        dev_cluster.kubectl("apply", "-n", ns, "-f", "-", input="\n---\n".join(
            json.dumps(d) for d in manifests(work / "store", label, replicas=2, adapters=ADAPTERS, pool=POOL)))
        env.pool = lambda: env.custom.get_namespaced_custom_object("loraplane.io", "v1alpha1", ns, "workerpools",
                                                                   POOL)
        env.patch = lambda body: env.custom.patch_namespaced_custom_object(
            "loraplane.io", "v1alpha1", ns, "workerpools", POOL, body)
        env.runner = runner
        env.reports = lambda: reports(env)
        wait_for(lambda: sum(1 for r in reports(env).values() if r.get("ready")) == 2, timeout=180,
                 what="2 ready workers")
        yield env
    finally:
        print(env.operator.tail(60))
        runner.stop()
        env.operator.stop()
        dev_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        dev_cluster.delete_nodes(nodes)


def reports(env) -> dict[str, dict]:
    pods = client.CoreV1Api(env.custom.api_client).list_namespaced_pod(
        env.ns, label_selector=f"loraplane.io/pool={POOL}").items
    out = {}
    for p in pods:
        raw = (p.metadata.annotations or {}).get("loraplane.io/worker-status")
        out[p.metadata.name] = json.loads(raw) if raw else {}
    return out
