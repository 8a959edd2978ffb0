"""Proof that the cluster suite runs against a real control plane, not a mock:
the scheduler binds, CEL rules refuse, the Job controller and the garbage
collector act, and the scale subresource answers kubectl."""

from __future__ import annotations

import json
import subprocess

import pytest

from loraplane.devcluster.kwok_stages import RESULT_ANNOTATION
from loraplane.devcluster.waiting import wait_for


def get_json(cluster, *args) -> dict:
    return cluster.get_json(*args)


@pytest.fixture(scope="module")
def gpu_nodes(dev_cluster):
    names = dev_cluster.create_gpu_nodes(2, gpus_per_node=2, prefix="harness-gpu")
    yield names
    dev_cluster.delete_nodes(names)


def test_gpu_nodes_carry_gfd_labels_and_capacity(dev_cluster, gpu_nodes):
    node = get_json(dev_cluster, "node", gpu_nodes[0])
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-GeForce-RTX-3090"
    assert labels["nvidia.com/gpu.memory"] == "24576"
    assert labels["nvidia.com/gpu.count"] == "2"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"


def test_deployment_pod_is_scheduled_on_a_gpu_node_and_runs(dev_cluster, namespace, gpu_nodes):
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gpu-app", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "gpu-app"}},
            "template": {
                "metadata": {"labels": {"app": "gpu-app"}},
                "spec": {"containers": [{
                    "name": "main", "image": "example.invalid/gpu-app:1",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }]},
            },
        },
    }
    dev_cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment))

    def running_pod():
        pods = get_json(dev_cluster, "pods", "-n", namespace, "-l", "app=gpu-app")["items"]
        return next((p for p in pods if p["status"].get("phase") == "Running"), None)

    pod = wait_for(running_pod, what="a Running gpu-app pod")
    assert pod["spec"]["nodeName"] in gpu_nodes
    dev_cluster.kubectl("wait", "-n", namespace, "--for=condition=Available", "deployment/gpu-app", "--timeout=60s")


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending(dev_cluster, namespace, gpu_nodes):
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "too-big", "namespace": namespace},
        "spec": {"containers": [{"name": "main", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "3"}}}]},
    }
    dev_cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))

    def unschedulable():
        conds = get_json(dev_cluster, "pod", "too-big", "-n", namespace)["status"].get("conditions", [])
        return next((c for c in conds if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"), None)

    cond = wait_for(unschedulable, what="the scheduler to refuse the pod")
    assert "nvidia.com/gpu" in cond["message"]


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.harness.loraplane.io"},
    "spec": {
        "group": "harness.loraplane.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wdg"]},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {
                "status": {},
                "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"},
            },
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "properties": {
                            "replicas": {"type": "integer", "minimum": 0},
                            "weights": {"type": "array", "items": {"type": "integer"}},
                        },
                        "x-kubernetes-validations": [{
                            "rule": "!has(self.weights) || self.weights.sum() == 100",
                            "message": "spec.weights must sum to 100",
                        }],
                    },
                    "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}},
                },
            }},
        }],
    },
}


@pytest.fixture(scope="module")
def widget_crd(dev_cluster):
    dev_cluster.kubectl("apply", "-f", "-", input=json.dumps(CRD))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.harness.loraplane.io", "--timeout=30s")
    yield
    dev_cluster.kubectl("delete", "crd", "widgets.harness.loraplane.io", "--wait=false", check=False)


def widget(namespace, name, **spec):
    return {"apiVersion": "harness.loraplane.io/v1", "kind": "Widget",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def test_cel_rule_refuses_bad_object_with_its_message(dev_cluster, namespace, widget_crd):
    good = dev_cluster.kubectl("apply", "-f", "-", input=json.dumps(widget(namespace, "ok", weights=[95, 5])))
    assert "created" in good.stdout
    bad = dev_cluster.kubectl("apply", "-f", "-", input=json.dumps(widget(namespace, "bad", weights=[95, 10])),
                              check=False)
    assert bad.returncode != 0
    assert "spec.weights must sum to 100" in bad.stderr
    schema_bad = dev_cluster.kubectl("apply", "-f", "-", input=json.dumps(widget(namespace, "neg", replicas=-1)),
                                     check=False)
    assert schema_bad.returncode != 0 and "spec.replicas" in schema_bad.stderr


def test_kubectl_scale_goes_through_the_scale_subresource(dev_cluster, namespace, widget_crd):
    dev_cluster.kubectl("apply", "-f", "-", input=json.dumps(widget(namespace, "scalable", replicas=1)))
    dev_cluster.kubectl("scale", "-n", namespace, "widget/scalable", "--replicas=4")
    assert get_json(dev_cluster, "widget", "scalable", "-n", namespace)["spec"]["replicas"] == 4
    scale = json.loads(dev_cluster.kubectl(
        "get", "--raw", f"/apis/harness.loraplane.io/v1/namespaces/{namespace}/widgets/scalable/scale").stdout)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 4


def job(namespace, name, result=None):
    annotations = {RESULT_ANNOTATION: result} if result else {}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "x"}]},
            },
        },
    }


def job_condition(cluster, namespace, name):
    conds = get_json(cluster, "job", name, "-n", namespace).get("status", {}).get("conditions", [])
    return {c["type"] for c in conds if c["status"] == "True"} & {"Complete", "Failed"}


def test_job_completes_or_fails_only_when_asked(dev_cluster, namespace, gpu_nodes):
    for name, result in (("ok", "Succeeded"), ("boom", "Failed"), ("waits", None)):
        dev_cluster.kubectl("apply", "-f", "-", input=json.dumps(job(namespace, name, result)))
    dev_cluster.kubectl("wait", "-n", namespace, "--for=condition=Complete", "job/ok", "--timeout=60s")
    dev_cluster.kubectl("wait", "-n", namespace, "--for=condition=Failed", "job/boom", "--timeout=60s")
    assert job_condition(dev_cluster, namespace, "ok") == {"Complete"}
    # The unannotated Job's pod runs and stays running: nothing finishes it.
    wait_for(lambda: any(p["status"].get("phase") == "Running" for p in
                         get_json(dev_cluster, "pods", "-n", namespace, "-l", "job-name=waits")["items"]),
             what="the waiting Job's pod to run")
    assert job_condition(dev_cluster, namespace, "waits") == set()
    # ...until a test asks, by annotating the live pod.
    pod = get_json(dev_cluster, "pods", "-n", namespace, "-l", "job-name=waits")["items"][0]["metadata"]["name"]
    dev_cluster.kubectl("annotate", "-n", namespace, f"pod/{pod}", f"{RESULT_ANNOTATION}=Succeeded")
    dev_cluster.kubectl("wait", "-n", namespace, "--for=condition=Complete", "job/waits", "--timeout=60s")


def test_deleting_an_owner_garbage_collects_its_dependents(dev_cluster, namespace):
    owner = json.loads(dev_cluster.kubectl(
        "create", "configmap", "owner", "-n", namespace, "-o", "json").stdout)
    dependent = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "dependent", "namespace": namespace, "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"],
        }]},
    }
    dev_cluster.kubectl("apply", "-f", "-", input=json.dumps(dependent))
    dev_cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(lambda: dev_cluster.kubectl("get", "configmap", "dependent", "-n", namespace,
                                         check=False).returncode != 0,
             what="the garbage collector to delete the dependent")


def test_server_is_a_real_kube_apiserver(dev_cluster):
    version = json.loads(dev_cluster.kubectl("version", "-o", "json").stdout)
    from loraplane.devcluster import versions

    assert version["serverVersion"]["gitVersion"].startswith(versions.KUBERNETES_VERSION)
    with pytest.raises(subprocess.CalledProcessError):
        dev_cluster.kubectl("get", "nosuchkind")


def test_failed_pod_carries_the_injected_termination_message(dev_cluster, namespace, gpu_nodes):
    from loraplane.devcluster.kwok_stages import MESSAGE_ANNOTATION

    spec = job(namespace, "explains", "Failed")
    spec["spec"]["template"]["metadata"]["annotations"][MESSAGE_ANNOTATION] = "dataset.jsonl:3: not JSON"
    dev_cluster.kubectl("apply", "-f", "-", input=json.dumps(spec))
    dev_cluster.kubectl("wait", "-n", namespace, "--for=condition=Failed", "job/explains", "--timeout=60s")
    pod = get_json(dev_cluster, "pods", "-n", namespace, "-l", "job-name=explains")["items"][0]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 1
    assert terminated["message"] == "dataset.jsonl:3: not JSON"
