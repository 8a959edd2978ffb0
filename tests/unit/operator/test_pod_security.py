"""Every pod the operator creates passes Pod Security ``restricted``, keeps the
images' ENTRYPOINT (tini: ``args`` only), is offline except the publish Job,
has a writable HOME on /tmp, and carries the installation's pull settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("restricted", Path(__file__).with_name("restricted.py"))
restricted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(restricted)

WORKLOADS = restricted.operator_workloads()


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


@pytest.mark.parametrize("kind", sorted(WORKLOADS))
def test_operator_pods_pass_the_restricted_profile(kind):
    spec = restricted.pod_of(WORKLOADS[kind])["spec"]
    assert restricted.violations(spec) == []
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert (psc["runAsUser"], psc["runAsGroup"], psc["fsGroup"]) == (10001, 10001, 10001)
    (c,) = spec["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert {"name": "tmp", "emptyDir": {}} in spec["volumes"] and mounts["/tmp"] == "tmp"
    env = _env(c)
    assert env["HOME"] == "/tmp" and env["HF_HOME"].startswith("/tmp/")


@pytest.mark.parametrize("kind", sorted(WORKLOADS))
def test_operator_pods_keep_the_entrypoint_and_only_publish_goes_online(kind):
    spec = restricted.pod_of(WORKLOADS[kind])["spec"]
    (c,) = spec["containers"]
    assert "command" not in c and c["args"]  # the images' ENTRYPOINT is tini
    env = _env(c)
    if kind == "publish-job":
        assert "HF_HUB_OFFLINE" not in env and "TRANSFORMERS_OFFLINE" not in env
    else:
        assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert c["imagePullPolicy"] == "IfNotPresent" and spec["imagePullSecrets"] == [{"name": "regcred"}]


def test_default_args_per_kind():
    c = {k: restricted.pod_of(v)["spec"]["containers"][0]["args"] for k, v in WORKLOADS.items()}
    assert c["worker"] == ["loraplane", "worker"]
    assert c["verify-job"][:2] == ["sh", "-c"] and "loraplane modelstore verify" in c["verify-job"][2]
    assert c["training-job"][:2] == ["loraplane", "train"]


def test_no_pull_settings_leaves_the_cluster_defaults():
    plain = restricted.operator_workloads(pull_policy=None, pull_secrets=())
    for obj in plain.values():
        spec = restricted.pod_of(obj)["spec"]
        assert "imagePullSecrets" not in spec and "imagePullPolicy" not in spec["containers"][0]


def test_a_host_path_store_is_not_restricted():
    """The checker can fail: a hostPath store (dev clusters) breaks the profile;
    restricted namespaces need the store through a PVC (the chart's modelStore.shared)."""
    from loraplane.operator.api.common_types import StoreVolume
    from loraplane.operator.api.resources import WorkerPoolResource
    from loraplane.operator.core.manifests import worker_pod

    pool = WorkerPoolResource.model_validate({"apiVersion": "loraplane.io/v1alpha1", "kind": "WorkerPool",
                                              "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                                              "spec": {"baseModelRef": "m"}})
    pod = worker_pod(pool, 0, "n", 0, 1, "fp16", "img", StoreVolume.model_validate({"hostPath": {"path": "/srv/store"}}))
    assert restricted.violations(pod["spec"]) == ["volume model-store: hostPath"]


@pytest.mark.parametrize("mutate, expect", [
    (lambda s: s.update(hostNetwork=True), "hostNetwork=true"),
    (lambda s: s["securityContext"].pop("runAsNonRoot") and s["containers"][0]["securityContext"].pop(
        "runAsNonRoot"), "runAsNonRoot must be true"),
    (lambda s: s["containers"][0]["securityContext"].update(runAsNonRoot=False), "runAsNonRoot must be true"),
    (lambda s: s["securityContext"].pop("seccompProfile") and s["containers"][0]["securityContext"].pop(
        "seccompProfile"), "seccompProfile must be"),
    (lambda s: s["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
    (lambda s: s["containers"][0]["securityContext"].update(capabilities={"drop": ["NET_RAW"]}), "drop ALL"),
    (lambda s: s["containers"][0]["securityContext"].update(capabilities={"drop": ["ALL"], "add": ["CHOWN"]}),
     "only NET_BIND_SERVICE"),
    (lambda s: s["containers"][0]["securityContext"].update(privileged=True), "privileged"),
    (lambda s: s["containers"][0]["ports"].append({"containerPort": 1, "hostPort": 1}), "hostPort"),
    (lambda s: s["volumes"].append({"name": "x", "gitRepo": {"repository": "r"}}), "not allowed"),
    (lambda s: s["securityContext"].update(runAsUser=0), "runAsUser=0"),
])
def test_the_checker_catches_each_rule(mutate, expect):
    spec = restricted.pod_of(WORKLOADS["worker"])["spec"]
    mutate(spec)
    assert any(expect in v for v in restricted.violations(spec)), restricted.violations(spec)
