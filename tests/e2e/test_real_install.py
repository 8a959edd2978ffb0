"""A user's first install, end to end, on real containers.

The chart is installed with ``helm`` from the locally built images; the
operator runs as a pod with the chart's ServiceAccount; BaseModel, Adapters
and a WorkerPool written like docs/examples are applied with ``kubectl``;
verify Jobs, workers and a training Job run as real containers on a real
kubelet, in a namespace that enforces Pod Security ``restricted``; requests
go through the pool's Service; a canary is driven with ``kubectl
loraplane``; ``helm upgrade`` and ``helm uninstall`` are exercised last.

The tests are one story and run in file order: each stage needs the one
before (pytest keeps file order). The environment (local real node, or kind)
comes from the ``e2e`` fixture of the folder's conftest.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from loraplane.demo import ADAPTER_STORE_NAME, BASE_NAME, BASE_VERSION, TASK
from loraplane.devcluster.waiting import wait_for

SYSTEM_NS = "loraplane-system"
APPS_NS = "e2e-apps"
RELEASE = "lp"
FULLNAME = f"{RELEASE}-loraplane"
POOL = "agents"
STORE_CLAIM = "loraplane-store"  # the chart's per-namespace store claim
API = "loraplane.io/v1alpha1"
WORKER_LIMITS = {"cpu": "250m", "memory": "768Mi"}
ROUTE_V1 = [{"adapter": "sum-v1", "weight": 100}]
PSA = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest",
       "pod-security.kubernetes.io/warn": "restricted", "pod-security.kubernetes.io/audit": "restricted"}


# ---- helpers -------------------------------------------------------------------

def helm_values(e2e) -> list[str]:
    op_repo, op_tag = e2e.images["operator"].rsplit(":", 1)
    return ["--set", f"image.repository={op_repo}", "--set", f"image.tag={op_tag}",
            "--set", f"image.pullPolicy={e2e.pull_policy}",
            "--set", f"workerImage={e2e.images['worker']}",
            "--set", f"workloadImagePullPolicy={e2e.pull_policy}",
            "--set", "resyncSeconds=5",
            "--set", "peering.enabled=false",
            "--set-json", f"modelStore.shared.namespaces={json.dumps([APPS_NS])}",
            "--set", f"modelStore.shared.source.hostPath.path={e2e.store_node_path}",
            "--set", "modelStore.shared.keepOnUninstall=false"]


def resources(e2e) -> list[dict]:
    store = {"persistentVolumeClaim": {"claimName": STORE_CLAIM, "readOnly": True}, "mountPath": "/models"}
    docs = [{"apiVersion": API, "kind": "BaseModel", "metadata": {"name": "tiny"},
             "spec": {"storeName": BASE_NAME, "version": BASE_VERSION, "store": store,
                      "variants": [{"name": "fp16", "vramMiB": 2048}]}}]
    for name, version in (("sum-v1", "v1"), ("sum-v2", "v2")):
        docs.append({"apiVersion": API, "kind": "Adapter", "metadata": {"name": name},
                     "spec": {"baseModelRef": "tiny", "task": TASK, "version": version,
                              "source": {"storeName": ADAPTER_STORE_NAME}}})
    docs.append({"apiVersion": API, "kind": "WorkerPool", "metadata": {"name": POOL},
                 "spec": {"baseModelRef": "tiny", "replicas": 2, "variants": ["fp16"], "resources": WORKER_LIMITS,
                          "gpu": {"nodeSelector": {"kubernetes.io/hostname": e2e.gpu_node},
                                  "kvCacheMiB": 256, "headroomMiB": 256},
                          "routes": {TASK: ROUTE_V1}}})
    return docs


def training_adapter(e2e) -> dict:
    return {"apiVersion": API, "kind": "Adapter", "metadata": {"name": "echo-v1"},
            "spec": {"baseModelRef": "tiny", "task": "echo", "version": "v1", "training": {
                "method": "lora", "device": "cpu", "dataset": {"paths": ["datasets/echo.jsonl"]},
                "hyperparameters": {"maxSteps": 3, "batchSize": 2, "seqLen": 64, "evalSplit": 0,
                                    "loggingSteps": 1, "learningRate": 0.005, "r": 4, "alpha": 8},
                "resources": {"vramMiB": 4096, "cpu": "500m", "memory": "1Gi"},
                "gpu": {"nodeSelector": {"kubernetes.io/hostname": e2e.gpu_node}}, "backoffLimit": 1}}}


def pods(e2e, ns: str, selector: str) -> list[dict]:
    return e2e.get_json("pods", "-n", ns, "-l", selector)["items"]


def workers(e2e) -> list[dict]:
    return pods(e2e, APPS_NS, f"loraplane.io/pool={POOL}")


def ran_in_containerd(pod: dict) -> bool:
    statuses = pod["status"].get("containerStatuses") or []
    return bool(statuses) and all(s.get("containerID", "").startswith("containerd://") for s in statuses)


def complete(url: str, model: str, timeout: float = 60) -> tuple[int, str | None, dict]:
    body = json.dumps({"model": model, "prompt": "hello world", "max_tokens": 4}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("x-loraplane-adapter"), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("x-loraplane-adapter"), json.loads(e.read() or b"{}")


def served_by(e2e, model: str, n: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    with e2e.service_url(APPS_NS, POOL) as url:
        for _ in range(n):
            status, adapter, body = complete(url, model)
            assert status == 200, (status, body)
            counts[adapter] = counts.get(adapter, 0) + 1
    return counts


def effective(e2e, task: str = TASK) -> dict[str, int]:
    pool = e2e.get_json("wp", POOL, "-n", APPS_NS)
    return {b["adapter"]: b["weight"] for b in ((pool.get("status") or {}).get("effectiveRoutes") or {}).get(task, [])
            if b["weight"] > 0}


def plugin(e2e, *args: str) -> str:
    """``kubectl loraplane ...`` exactly as a user runs it (kubectl finds the plugin on PATH)."""
    return e2e.kubectl("loraplane", "-n", APPS_NS, *args).stdout


# ---- the story -----------------------------------------------------------------

@pytest.fixture(scope="module")
def story(e2e, tiny_base_dir, make_tiny_adapter):
    """Namespaces (restricted), the ModelStore's contents, then nothing else:
    the tests do the installing. Tears down whatever a failed test left."""
    from loraplane.modelstore import ModelStore

    store = ModelStore(e2e.store_dir)
    store.publish(tiny_base_dir, kind="base", name=BASE_NAME, version=BASE_VERSION)
    for i, v in enumerate(("v1", "v2")):
        store.publish(make_tiny_adapter(seed=21 + i, r=8), kind="adapter", name=ADAPTER_STORE_NAME, version=v,
                      task=TASK, base_name=BASE_NAME, base_version=BASE_VERSION)
    data = e2e.store_dir / "datasets"
    data.mkdir(exist_ok=True)
    words = ["alpha", "beta", "gamma", "delta"]
    (data / "echo.jsonl").write_text("".join(json.dumps({"instruction": f"repeat {w}", "output": f"{w} {w}"}) + "\n"
                                             for w in words * 3))
    e2e.prepare_store()
    for ns in (SYSTEM_NS, APPS_NS):
        e2e.apply("default", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": PSA}})
    yield e2e
    # A failed stage may leave the release or namespaces behind: remove them
    # (CRs first, while an operator may still run) so the next run starts clean.
    e2e.kubectl("delete", "wp,adapter,basemodel", "--all", "-n", APPS_NS, "--wait=true", "--timeout=60s",
                check=False)
    e2e.helm("uninstall", RELEASE, "-n", SYSTEM_NS, "--wait", check=False)
    e2e.kubectl("delete", "namespace", APPS_NS, SYSTEM_NS, "--ignore-not-found", "--timeout=120s", check=False)


def test_helm_install_runs_the_operator_as_a_pod(story):
    e2e = story
    e2e.helm("install", RELEASE, str(e2e.chart), "-n", SYSTEM_NS, *helm_values(e2e), "--wait", "--timeout=5m",
             timeout=330)
    e2e.kubectl("rollout", "status", f"deploy/{FULLNAME}", "-n", SYSTEM_NS, "--timeout=120s")
    (op,) = pods(e2e, SYSTEM_NS, "app.kubernetes.io/name=loraplane")
    assert op["spec"]["serviceAccountName"] == FULLNAME
    assert ran_in_containerd(op)
    container = op["spec"]["containers"][0]
    assert "command" not in container, "the image's tini entrypoint must stay PID 1"
    assert not [e for e in container.get("env", []) if e["name"] == "KUBECONFIG"]
    pid1 = e2e.kubectl("exec", "-n", SYSTEM_NS, op["metadata"]["name"], "--", "cat", "/proc/1/cmdline").stdout
    assert "tini" in pid1.split("\0")[0], pid1
    uid = e2e.kubectl("exec", "-n", SYSTEM_NS, op["metadata"]["name"], "--", "id", "-u").stdout.strip()
    assert uid == "10001"


def test_applied_resources_become_ready_on_real_containers(story):
    e2e = story
    e2e.apply(APPS_NS, *resources(e2e))
    e2e.kubectl("wait", "--for=condition=Ready", "basemodel/tiny", "adapter/sum-v1", "adapter/sum-v2",
                "-n", APPS_NS, "--timeout=300s", timeout=320)
    e2e.kubectl("wait", "--for=condition=Ready", f"wp/{POOL}", "-n", APPS_NS, "--timeout=300s", timeout=320)
    ws = workers(e2e)
    assert len(ws) == 2
    for pod in ws:
        assert ran_in_containerd(pod), pod["status"]
        assert pod["spec"]["nodeName"] == e2e.gpu_node
        assert pod["spec"]["serviceAccountName"] == "loraplane-workload"
        env = {e["name"] for e in pod["spec"]["containers"][0].get("env", [])}
        assert "KUBECONFIG" not in env
    # No kopf finalizer: deleting the namespace must not need a running operator.
    for kind in ("basemodels", "adapters", "workerpools"):
        for obj in e2e.get_json(kind, "-n", APPS_NS)["items"]:
            assert not obj["metadata"].get("finalizers"), obj["metadata"]
    # The verify Jobs ran the worker image as real containers too.
    verify = [p for p in e2e.get_json("pods", "-n", APPS_NS)["items"] if "job-name" in p["metadata"].get("labels", {})]
    assert verify and all(ran_in_containerd(p) and p["status"]["phase"] == "Succeeded" for p in verify), \
        [(p["metadata"]["name"], p["status"].get("phase")) for p in verify]


def test_the_pool_serves_through_its_service(story):
    assert served_by(story, TASK, 6) == {"sum-v1": 6}
    with story.service_url(APPS_NS, POOL) as url:
        status, _, body = complete(url, "no-such-task")
    assert status == 404, body


WORKER_PATCH = r"""
import json, ssl, sys, urllib.request, urllib.error
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(sa + "/token").read()
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
import os
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
for pod in sys.argv[1:]:
    req = urllib.request.Request(
        f"https://{host}:{port}/api/v1/namespaces/{os.environ['POD_NAMESPACE']}/pods/{pod}",
        data=json.dumps({"metadata": {"annotations": {"e2e/touched": "yes"}}}).encode(), method="PATCH",
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/merge-patch+json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
            print(pod, r.status)
    except urllib.error.HTTPError as e:
        print(pod, e.code, json.loads(e.read()).get("message", ""))
"""


def test_a_workers_token_may_patch_only_its_own_pod(story):
    e2e = story
    a, b = sorted(p["metadata"]["name"] for p in workers(e2e))
    out = e2e.kubectl("exec", "-n", APPS_NS, a, "--", "python", "-c", WORKER_PATCH, a, b).stdout
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert lines[a].startswith("200"), out
    assert lines[b].startswith("403"), out


def test_canary_with_kubectl_loraplane(story):
    e2e = story
    plugin(e2e, "canary", "set", f"wp/{POOL}", "--task", TASK, "--to", "sum-v2", "--weight", "50")
    wait_for(lambda: effective(e2e) == {"sum-v1": 50, "sum-v2": 50}, timeout=120, interval=1,
             what="the 50/50 canary in effect")
    counts = served_by(e2e, TASK, 40)
    assert set(counts) == {"sum-v1", "sum-v2"}, counts
    plugin(e2e, "promote", f"wp/{POOL}", "--task", TASK, "--to", "sum-v2")
    wait_for(lambda: effective(e2e) == {"sum-v2": 100}, timeout=120, interval=1, what="sum-v2 promoted")
    assert served_by(e2e, TASK, 6) == {"sum-v2": 6}
    plugin(e2e, "rollback", f"wp/{POOL}")
    wait_for(lambda: effective(e2e) == {"sum-v1": 100}, timeout=120, interval=1, what="rolled back to sum-v1")
    assert served_by(e2e, TASK, 6) == {"sum-v1": 6}
    assert "rollback" in plugin(e2e, "history", f"wp/{POOL}")


def test_a_training_job_publishes_an_adapter_the_pool_serves(story):
    e2e = story
    e2e.apply(APPS_NS, training_adapter(e2e))
    e2e.kubectl("wait", "--for=condition=Ready", "adapter/echo-v1", "-n", APPS_NS, "--timeout=600s", timeout=620)
    trainers = pods(e2e, APPS_NS, "loraplane.io/owner=adapter.echo-v1")
    assert any(ran_in_containerd(p) and p["status"]["phase"] == "Succeeded" for p in trainers), \
        [(p["metadata"]["name"], p["status"].get("phase")) for p in trainers]
    assert (e2e.store_dir / APPS_NS / "adapters" / "echo-v1" / "versions" / "v1").is_dir() or \
        any((e2e.store_dir).glob("*/adapters/echo-v1/versions/v1"))
    e2e.kubectl("patch", "wp", POOL, "-n", APPS_NS, "--type=merge", "-p",
                json.dumps({"spec": {"routes": {"echo": [{"adapter": "echo-v1", "weight": 100}]}}}))
    wait_for(lambda: effective(e2e, "echo") == {"echo-v1": 100}, timeout=180, interval=1,
             what="the trained adapter routed")
    assert served_by(e2e, "echo", 4) == {"echo-v1": 4}


def test_helm_upgrade_replaces_the_operator_and_keeps_serving(story):
    e2e = story
    (before,) = pods(e2e, SYSTEM_NS, "app.kubernetes.io/name=loraplane")
    e2e.helm("upgrade", RELEASE, str(e2e.chart), "-n", SYSTEM_NS, "--reuse-values", "--set", "resyncSeconds=7",
             "--wait", "--timeout=5m", timeout=330)
    e2e.kubectl("rollout", "status", f"deploy/{FULLNAME}", "-n", SYSTEM_NS, "--timeout=120s")
    wait_for(lambda: [p for p in pods(e2e, SYSTEM_NS, "app.kubernetes.io/name=loraplane")
                      if p["metadata"]["uid"] != before["metadata"]["uid"]], timeout=60, what="a new operator pod")
    env = {e["name"]: e.get("value") for e in e2e.get_json("deploy", FULLNAME, "-n", SYSTEM_NS)[
        "spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LORAPLANE_RESYNC_SECONDS"] == "7"
    e2e.kubectl("wait", "--for=condition=Ready", f"wp/{POOL}", "-n", APPS_NS, "--timeout=120s")
    assert served_by(e2e, TASK, 4) == {"sum-v1": 4}


def test_helm_uninstall_and_namespace_delete_leave_nothing(story):
    """The order a user takes: uninstall the release, then delete the
    namespaces. Nothing may block (no finalizer without an operator) and
    nothing may stay but the CRDs, which Helm never deletes."""
    e2e = story
    e2e.helm("uninstall", RELEASE, "-n", SYSTEM_NS, "--wait", "--timeout=2m", timeout=150)
    started = time.monotonic()
    e2e.kubectl("delete", "namespace", APPS_NS, SYSTEM_NS, "--timeout=180s", timeout=200)
    print(f"namespaces deleted in {time.monotonic() - started:.1f}s")
    assert not e2e.get_json("pods", "-A")["items"]
    managed = "app.kubernetes.io/managed-by in (loraplane,Helm)"
    for kind in ("clusterroles", "clusterrolebindings", "persistentvolumes",
                 "validatingadmissionpolicies", "validatingadmissionpolicybindings"):
        left = [o["metadata"]["name"] for o in e2e.get_json(kind, "-l", managed)["items"]
                if o["metadata"]["name"].startswith(RELEASE) or "loraplane" in o["metadata"]["name"]]
        assert not left, f"{kind} left behind: {left}"
    crds = [c["metadata"]["name"] for c in e2e.get_json("crd")["items"] if c["spec"]["group"] == "loraplane.io"]
    assert sorted(crds) == ["adapters.loraplane.io", "basemodels.loraplane.io", "workerpools.loraplane.io"]
    wait_for(lambda: not e2e.node_containers(), timeout=120, interval=2,
             what="no pod containers left on the node")

