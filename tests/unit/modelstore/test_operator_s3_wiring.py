"""The operator's wiring of an S3 store (``spec.store.s3``) into the pods it
builds: pure manifest builders, no cluster.

What must hold: the store URL and a node-local cache reach every worker pod
and Job; the credentials come from the referenced Secret through
``secretKeyRef`` only (the operator never has the values, so no manifest can
carry them); the default cache is an emptyDir, so an S3 store passes Pod
Security ``restricted`` without the shared PVC; ``cache.hostPath`` lets a
second worker on the node reuse what the first downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from loraplane.operator.api import crdgen
from loraplane.operator.api.common_types import StoreVolume
from loraplane.operator.api.resources import AdapterResource, BaseModelResource, WorkerPoolResource
from loraplane.operator.core import manifests
from loraplane.operator.core.manifests import publish_job, verify_job, worker_pod, worker_spec_hash

_spec = importlib.util.spec_from_file_location(
    "restricted", Path(__file__).resolve().parents[1] / "operator" / "restricted.py")
restricted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(restricted)

URL = "s3://models/loraplane"
S3 = {"s3": {"url": URL, "credentialsSecretRef": {"name": "models-s3"}}}
SECRET_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"}


def _obj(kind: str, name: str, spec: dict, status: dict | None = None) -> dict:
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
            "spec": spec, "status": status or {}}


def base(store: dict = S3) -> BaseModelResource:
    return BaseModelResource.model_validate(_obj("BaseModel", "m", {"storeName": "tiny", "version": "v1",
                                                                    "store": store},
                                                     {"phase": "Ready", "variants": [{"name": "fp16", "vramMiB": 14336}]}))


def pool() -> WorkerPoolResource:
    return WorkerPoolResource.model_validate(_obj("WorkerPool", "p", {"baseModelRef": "m", "replicas": 1}))


def store(**cache) -> StoreVolume:
    return StoreVolume.model_validate({"s3": {**S3["s3"], **({"cache": cache} if cache else {})}})


def container(obj: dict) -> dict:
    (c,) = restricted.pod_of(obj)["spec"]["containers"]
    return c


def env_of(c: dict) -> dict:
    return {e["name"]: e for e in c["env"]}


KINDS = ["publish", "verify-adapter", "verify-base", "verify-by-path", "worker"]


def all_s3_pods(st: StoreVolume) -> dict[str, dict]:
    b = base(json.loads(st.model_dump_json(by_alias=True, exclude_none=True)))
    a = AdapterResource.model_validate(_obj("Adapter", "a", {"baseModelRef": "m", "task": "t", "version": "v1",
                                                             "source": {"storeName": "synth"}}))
    return {
        "worker": worker_pod(pool(), 0, "node-a", 0, 9000, "fp16", "img", st),
        "verify-base": verify_job(b, "bm-m-verify-g1-a0", "base", "default", "tiny", "v1",
                                  "default/base_models/tiny/versions/v1", True, st, "img", {}),
        "verify-adapter": verify_job(a, "adp-a-verify-g1-a0", "adapter", "default", "synth", "v1",
                                     "default/adapters/synth/versions/v1", True, st, "img", {}),
        "verify-by-path": verify_job(b, "bm-m-verify-g1-a1", "base", "default", "tiny", "v1",
                                     "default/base_models/tiny/versions/v1", False, st, "img", {}),
        "publish": publish_job(b, "bm-m-publish-g1-a0", "default", "tiny", "v1", "org/repo", "main", None, st,
                               "img", {}),
    }


@pytest.mark.parametrize("kind", KINDS)
def test_every_pod_gets_the_url_the_cache_and_the_credentials_by_secret_key_ref(kind):
    obj = all_s3_pods(store())[kind]
    c = container(obj)
    env = env_of(c)
    assert env["MODEL_STORE_ROOT"]["value"] == URL
    cache_mount = env["LORAPLANE_MODEL_CACHE"]["value"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts[cache_mount]["name"] == "model-cache" and not mounts[cache_mount].get("readOnly")
    volumes = {v["name"]: v for v in restricted.pod_of(obj)["spec"]["volumes"]}
    assert volumes["model-cache"] == {"name": "model-cache", "emptyDir": {}}
    assert "model-store" not in volumes  # nothing to mount: the store is the bucket
    for key in SECRET_KEYS:
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "models-s3" and ref["key"] == key and "value" not in env[key]
        # endpoint and region may be absent from the Secret (AWS defaults); the keys may not
        assert ref.get("optional", False) is (key in ("AWS_ENDPOINT_URL", "AWS_REGION"))
    assert "envFrom" not in c  # only the four keys, not whatever else the Secret holds


@pytest.mark.parametrize("kind", KINDS)
def test_an_s3_store_with_the_default_cache_passes_pod_security_restricted(kind):
    assert restricted.violations(restricted.pod_of(all_s3_pods(store())[kind])["spec"]) == []


def test_no_manifest_can_carry_a_secret_value():
    """The builders never see a value: every AWS_* env entry is a reference,
    whatever the Secret is called."""
    st = store(hostPath={"path": "/var/cache/loraplane"})
    for obj in all_s3_pods(st).values():
        for e in container(obj)["env"]:
            if e["name"].startswith("AWS_"):
                assert set(e) == {"name", "valueFrom"}, e


def test_a_host_path_cache_is_shared_on_the_node():
    pods = all_s3_pods(store(hostPath={"path": "/var/cache/loraplane"}))
    for obj in pods.values():
        volumes = {v["name"]: v for v in restricted.pod_of(obj)["spec"]["volumes"]}
        assert volumes["model-cache"]["hostPath"] == {"path": "/var/cache/loraplane", "type": "Directory"}
    spec = restricted.pod_of(pods["worker"])["spec"]
    assert restricted.violations(spec) == ["volume model-cache: hostPath"]


def test_the_emptydir_size_limit_is_passed():
    obj = worker_pod(pool(), 0, "n", 0, 1, "fp16", "img", store(sizeLimit="40Gi"))
    assert {"name": "model-cache", "emptyDir": {"sizeLimit": "40Gi"}} in obj["spec"]["volumes"]


def test_verify_jobs_materialise_through_the_cache_and_report_the_summary():
    """On a bucket the verify Job downloads into the cache, checking every
    sha256 (a flipped byte fails the Job), and prints the summary."""
    jobs = all_s3_pods(store())
    for kind in ("verify-base", "verify-adapter", "verify-by-path"):
        cmd = container(jobs[kind])["args"][2]
        assert "loraplane.operator.core.store_summary" in cmd and "--verify" in cmd
        assert "/dev/termination-log" in cmd
    assert "default/adapters/synth/versions/v1" in container(jobs["verify-adapter"])["args"][2]


def test_a_volume_store_is_unchanged():
    vol = StoreVolume.model_validate({"persistentVolumeClaim": {"claimName": "c"}})
    c = container(worker_pod(pool(), 0, "n", 0, 1, "fp16", "img", vol))
    env = env_of(c)
    assert env["MODEL_STORE_ROOT"]["value"] == "/models"
    assert not SECRET_KEYS & set(env) and "LORAPLANE_MODEL_CACHE" not in env
    assert {"name": "model-store", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]


def test_a_new_credentials_secret_or_url_rolls_the_workers():
    spec = pool().spec
    a = worker_spec_hash(spec, "img", store(), "fp16")
    other_secret = StoreVolume.model_validate({"s3": {"url": URL, "credentialsSecretRef": {"name": "rotated"}}})
    other_url = StoreVolume.model_validate({"s3": {"url": URL + "-2", "credentialsSecretRef": {"name": "models-s3"}}})
    assert len({a, worker_spec_hash(spec, "img", other_secret, "fp16"),
                worker_spec_hash(spec, "img", other_url, "fp16")}) == 3


def _store_schema() -> dict:
    crd = next(crdgen.crd(*r) for r in crdgen.RESOURCES if r[0] == "BaseModel")
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["store"]


def test_the_crd_asks_for_exactly_one_store_and_a_well_formed_url():
    schema = _store_schema()
    rules = [r["rule"] for r in schema["x-kubernetes-validations"]]
    assert any("has(self.s3)" in r and "has(self.hostPath)" in r and "== 1" in r for r in rules), rules
    s3 = schema["properties"]["s3"]
    assert set(s3["required"]) == {"url", "credentialsSecretRef"}
    assert s3["properties"]["credentialsSecretRef"]["required"] == ["name"]
    import re
    url = re.compile(s3["properties"]["url"]["pattern"])
    assert url.match("s3://models/loraplane") and url.match("s3://models")
    for bad in ("http://models/x", "s3://", "s3://Models/x", "s3://m/a b"):
        assert not url.match(bad), bad


def test_manifests_keep_the_store_details_in_one_place():
    """Volume and S3 stores differ only in ``store_pod_parts``: env, volumes, mounts."""
    env, volumes, mounts = manifests.store_pod_parts(store(), read_only=True)
    assert [e["name"] for e in env][:2] == ["MODEL_STORE_ROOT", "LORAPLANE_MODEL_CACHE"]
    assert [v["name"] for v in volumes] == ["model-cache"] and [m["name"] for m in mounts] == ["model-cache"]


def test_the_verify_jobs_summary_tool_refuses_what_a_bucket_cannot_hold(monkeypatch, capsys):
    """``store_summary`` on ``s3://``: a path outside the layout and absent
    credentials fail the Job (exit 1) with a reason, before any request."""
    from loraplane.operator.core import store_summary

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    assert store_summary.main([URL, "some/dir", "--verify"]) == 1
    assert "owner/base_models|adapters/<name>/versions/<version>" in capsys.readouterr().err
    assert store_summary.main([URL, "default/base_models/tiny/versions/v1", "--verify"]) == 1
    assert "S3 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in capsys.readouterr().err


@pytest.mark.parametrize("raw, message", [
    ({**S3, "hostPath": {"path": "/srv"}}, "exactly one of persistentVolumeClaim, hostPath or s3"),
    ({}, "exactly one of persistentVolumeClaim, hostPath or s3"),
    ({"s3": {**S3["s3"], "url": "s3://models/a/../b"}}, "must not have '.' or '..' components"),
    ({"s3": {**S3["s3"], "cache": {"hostPath": {"path": "/c"}, "sizeLimit": "1Gi"}}}, "applies to the default emptyDir"),
    ({"s3": {**S3["s3"], "cache": {"sizeLimit": "lots"}}}, "sizeLimit"),
    ({"s3": {"url": URL}}, "credentialsSecretRef"),
])
def test_the_operator_refuses_what_the_api_server_refuses(raw, message):
    """The pydantic twins of the CEL rules: an object stored before them is a condition, not a traceback."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape(message)):
        StoreVolume.model_validate(raw)
