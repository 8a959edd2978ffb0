"""A training Job for a BaseModel on a bucket (``spec.store.s3``): pure builders, no cluster.

What must hold: the trainer gets the bucket URL as its store, the credentials
from the referenced Secret by ``secretKeyRef`` only (no value can be in the
manifest), and the node-local cache volume, exactly as verify Jobs do; the
dataset paths are keys under the same bucket prefix; the Adapter is no longer
refused (the old ``StoreUnsupported``) but placed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
from pathlib import Path

from loraplane.operator.api.resources import AdapterResource, BaseModelResource
from loraplane.operator.core import manifests
from loraplane.operator.core.training import plan_training, train_args, train_job_name, training_job
from loraplane.training.cli import configure, overrides_from_args
from loraplane.training.config import build_config

_spec = importlib.util.spec_from_file_location(
    "restricted", Path(__file__).resolve().parents[1] / "operator" / "restricted.py")
restricted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(restricted)

URL = "s3://models/loraplane"
SECRET_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"}


def _obj(kind: str, name: str, spec: dict, status: dict | None = None) -> dict:
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
            "spec": spec, "status": status or {}}


def base(cache: dict | None = None) -> BaseModelResource:
    s3 = {"url": URL, "credentialsSecretRef": {"name": "models-s3"}, **({"cache": cache} if cache else {})}
    return BaseModelResource.model_validate(_obj(
        "BaseModel", "m", {"storeName": "tiny", "version": "v1", "store": {"s3": s3}},
        {"phase": "Ready", "variants": [{"name": "fp16", "vramMiB": 14336}]}))


def adapter(dataset: dict | None = None) -> AdapterResource:
    return AdapterResource.model_validate(_obj("Adapter", "a", {
        "baseModelRef": "m", "task": "t", "version": "v1",
        "training": {"method": "lora", "dataset": dataset or {"paths": ["datasets/d.jsonl"]}}}))


def _container(job: dict) -> dict:
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return c


def test_the_job_gets_the_bucket_the_secret_by_reference_and_the_cache_volume():
    job = training_job(adapter(), base(), "j", "node-a", 0, 8000, "img")
    c, pod = _container(job), job["spec"]["template"]["spec"]
    env = {e["name"]: e for e in c["env"]}
    assert env["MODEL_STORE_ROOT"] == {"name": "MODEL_STORE_ROOT", "value": URL}
    assert env["LORAPLANE_MODEL_CACHE"]["value"] == manifests.CACHE_MOUNT
    for key in SECRET_KEYS:  # every credential by reference to the Secret; no value anywhere
        assert set(env[key]) == {"name", "valueFrom"}, env[key]
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "models-s3"
        assert env[key]["valueFrom"]["secretKeyRef"]["key"] == key
    assert not any("value" in e for e in c["env"] if e["name"] in SECRET_KEYS)
    # the same env, volumes and mounts as a verify Job on that store (one builder)
    s_env, s_volumes, s_mounts = manifests.store_pod_parts(base().spec.store, read_only=False)
    assert all(e in c["env"] for e in s_env)
    assert [v for v in pod["volumes"] if v["name"] == "model-cache"] == s_volumes == [
        {"name": "model-cache", "emptyDir": {}}]
    assert [m for m in c["volumeMounts"] if m["name"] == "model-cache"] == s_mounts
    assert not any(v["name"] == "model-store" for v in pod["volumes"])  # a bucket has no store volume
    assert restricted.violations(pod) == []  # the default emptyDir cache passes Pod Security restricted


def test_a_host_path_cache_is_shared_with_the_nodes_workers():
    job = training_job(adapter(), base({"hostPath": {"path": "/var/cache/lp"}}), "j", "n", 0, 1, "img")
    vols = job["spec"]["template"]["spec"]["volumes"]
    assert {"name": "model-cache", "hostPath": {"path": "/var/cache/lp", "type": "Directory"}} in vols


def test_the_argv_names_the_bucket_and_dataset_keys_under_its_prefix():
    argv = train_args(adapter(), base(), URL)
    p = argparse.ArgumentParser()
    configure(p)
    cfg = build_config({}, overrides_from_args(p.parse_args(argv[2:])))
    assert cfg.store_root == URL and cfg.dataset == [f"{URL}/datasets/d.jsonl"] and cfg.publish
    # training_job passes the store URL itself, not a mount path
    assert "--store-root" in (a := _container(training_job(adapter(), base(), "j", "n", 0, 1, "img"))["args"]) \
        and a[a.index("--store-root") + 1] == URL


def test_a_dataset_claim_still_mounts_beside_the_bucket():
    a = adapter({"paths": ["d.jsonl"], "persistentVolumeClaim": {"claimName": "data"}})
    job = training_job(a, base(), "j", "n", 0, 1, "img")
    assert {"name": "dataset", "mountPath": "/data", "readOnly": True} in _container(job)["volumeMounts"]
    assert "/data/d.jsonl" in _container(job)["args"]


def test_an_adapter_on_a_bucket_is_placed_not_refused():
    plan = plan_training(adapter(), base(), [], dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    assert plan.place and plan.need is not None
    assert not any(c.reason == "StoreUnsupported" for c in plan.status.conditions)
    assert train_job_name(adapter()).startswith("adp-a-train")


def test_the_trainer_config_keeps_bucket_urls_and_puts_checkpoints_in_the_node_cache(tmp_path, monkeypatch):
    from loraplane.training.config import default_output_dir

    monkeypatch.setenv("LORAPLANE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODEL_STORE_ROOT", URL)
    cfg = build_config({"base": "default/tiny@v1", "dataset": [f"{URL}/d.jsonl", str(tmp_path / "local.jsonl")],
                        "publish": True, "name": "facts", "version": "v1"})
    assert cfg.store_root == URL  # not a Path, which would fold "s3://" into "s3:/"
    assert cfg.dataset == [f"{URL}/d.jsonl", tmp_path / "local.jsonl"]
    assert default_output_dir(cfg) == tmp_path / "cache" / ".training" / "default" / "facts" / "v1"


def test_a_dataset_on_a_bucket_needs_the_store_on_it(tmp_path, tiny_base_dir):
    """Refused as a bad dataset (exit 2) before the model loads."""
    import pytest

    from loraplane.training.dataset import DatasetError
    from loraplane.training.trainer import train

    cfg = build_config({"base_dir": str(tiny_base_dir), "dataset": [f"{URL}/d.jsonl"],
                        "output_dir": str(tmp_path / "out")})
    with pytest.raises(DatasetError, match="needs the store on that bucket"):
        train(cfg, annotator=None)
    assert not (tmp_path / "out").exists()
