"""A BaseModel and Adapters pointed at a bucket (``spec.store.s3``), against
the real control plane, the real operator and the real S3 server (versitygw).

The operator runs WITHOUT a store root and without any AWS_* variable: it
never reads the bucket or the Secret. HostRunner runs the verify Jobs' own
argv as host processes with the pod's env, so the credentials reach them only
through the ``secretKeyRef``s of the pod spec (read from the Secret by the
runner, as a kubelet would); the Jobs materialise into the node-local cache
(``cache.hostPath``), checking every sha256, and the BaseModel and Adapter
end Ready with the bucket's checksums. A flipped byte on the server fails the
Adapter with the Job's reason; a worker pod of a WorkerPool on that
BaseModel gets the URL, the cache and the Secret's keys by reference.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from loraplane.devcluster.hostrunner import HostRunner
from loraplane.devcluster.waiting import wait_for
from loraplane.modelstore.s3 import S3ModelStore

ROOT = Path(__file__).resolve().parents[3]
SECRET_NAME = "models-s3"


def _operator(cluster, namespace: str, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "MODEL_STORE_ROOT"}
    args = [sys.executable, "-m", "loraplane.cli", "operator", "run", "--kubeconfig", str(cluster.kubeconfig),
            "--metrics-port", "0", "--resync-seconds", "5", "--backoff-base-seconds", "1",
            "--job-image", "loraplane:test", "--worker-image", "loraplane-worker:test", "--namespace", namespace]
    with open(log, "a") as fh:
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env={**env, "PYTHONSAFEPATH": "1"},
                                start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _store(url: str, cache: Path) -> dict:
    return {"s3": {"url": url, "credentialsSecretRef": {"name": SECRET_NAME}, "cache": {"hostPath": {"path": str(cache)}}}}


def _phase(cluster, ns, kind, name, *phases):
    obj = cluster.get_json(kind, name, "-n", ns)
    return obj if (obj.get("status") or {}).get("phase") in phases else None


def _dump(cluster, ns: str, runner: Path) -> None:
    """What the objects, Jobs and pods looked like (printed; pytest shows it when the test fails)."""
    for kind in ("basemodels", "adapters", "jobs", "pods"):
        for o in cluster.get_json(kind, "-n", ns)["items"]:
            st = o.get("status") or {}
            print(kind, o["metadata"]["name"], o["spec"].get("nodeName"), json.dumps(
                {k: st.get(k) for k in ("phase", "conditions", "succeeded", "failed", "active")})[:600])
    for log in sorted(runner.glob("*/output.log")):
        print(log.parent.name, log.read_text(errors="replace")[-800:])


def _flip_a_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0x01]))


def test_basemodel_and_adapters_resolve_from_a_bucket(dev_cluster, namespace, s3_server, tiny_base_dir,
                                                      make_tiny_adapter, tmp_path):
    t0 = time.monotonic()
    # only the Secret can give the Jobs credentials and the endpoint
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} & set(os.environ)
    bucket = s3_server.bucket()
    url = f"s3://{bucket}/models"
    st = S3ModelStore(url, client=s3_server.client())
    base = st.publish(tiny_base_dir, kind="base", name="tiny", version="v1")
    adapter = make_tiny_adapter(seed=1)
    good = st.publish(adapter, kind="adapter", name="synth", version="v1", base_name="tiny", task="synthesizer")
    # other content: the cache is keyed by manifest checksum, and a verified entry with v1's content
    # would rightly serve a v2 that claims the very same files
    st.publish(make_tiny_adapter(seed=2), kind="adapter", name="synth", version="v2", base_name="tiny",
               task="synthesizer")
    _flip_a_byte(s3_server.data_dir / bucket / "models/default/adapters/synth/versions/v2/adapter_model.safetensors")

    dev_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    secret_env = s3_server.env  # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    dev_cluster.kubectl("create", "secret", "generic", SECRET_NAME, "-n", namespace,
                        *[f"--from-literal={k}={v}" for k, v in secret_env.items()])
    cache = tmp_path / "node-cache"  # the node's cache.hostPath
    cache.mkdir()
    meta = {"apiVersion": "loraplane.io/v1alpha1"}

    # The API server refuses two stores at once, naming the rule.
    both = {**meta, "kind": "BaseModel", "metadata": {"name": "both"},
            "spec": {"storeName": "tiny", "version": "v1", "store": {**_store(url, cache), "hostPath": {"path": "/x"}}}}
    refused = dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(both), check=False)
    assert refused.returncode != 0 and "exactly one of persistentVolumeClaim, hostPath or s3" in refused.stderr

    op_log = tmp_path / "operator.log"
    tag = uuid.uuid4().hex[:6]  # a (KWOK) node for the Jobs to be scheduled on
    nodes = dev_cluster.create_gpu_nodes(1, gpus_per_node=1, prefix=f"s3job-{tag}", labels={"loraplane.io/test": tag})
    op = _operator(dev_cluster, namespace, op_log)
    try:
        with HostRunner(dev_cluster.kubeconfig, namespace, tmp_path / "runner", selector="loraplane.io/owner"):
            docs = [{**meta, "kind": "BaseModel", "metadata": {"name": "m"},
                     "spec": {"storeName": "tiny", "version": "v1", "store": _store(url, cache)}},
                    {**meta, "kind": "Adapter", "metadata": {"name": "synth-v1"},
                     "spec": {"baseModelRef": "m", "task": "synthesizer", "version": "v1",
                              "source": {"storeName": "synth"}}},
                    {**meta, "kind": "Adapter", "metadata": {"name": "synth-v2"},
                     "spec": {"baseModelRef": "m", "task": "synthesizer", "version": "v2",
                              "source": {"storeName": "synth"}}}]
            dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
            bm = wait_for(lambda: _phase(dev_cluster, namespace, "basemodel", "m", "Ready", "Failed"), 60,
                          interval=0.5, what="BaseModel m resolved")
            assert bm["status"]["phase"] == "Ready", bm["status"]
            assert bm["status"]["checksum"] == base.checksum
            assert bm["status"]["storePath"] == "default/base_models/tiny/versions/v1"
            assert {v["name"] for v in bm["status"]["variants"]} == set(base.variants)
            a1 = wait_for(lambda: _phase(dev_cluster, namespace, "adapter", "synth-v1", "Ready", "Failed",
                                         "Degraded"), 60, interval=0.5, what="Adapter synth-v1 resolved")
            assert a1["status"]["phase"] == "Ready", a1["status"]
            assert a1["status"]["checksum"] == good.checksum and a1["status"]["baseChecksum"] == base.checksum
            a2 = wait_for(lambda: _phase(dev_cluster, namespace, "adapter", "synth-v2", "Failed"), 60,
                          interval=0.5, what="Adapter synth-v2 Failed")
            ready = next(c for c in a2["status"]["conditions"] if c["type"] == "Ready")
            assert ready["reason"] == "VerifyFailed" and "corrupt: adapter_model.safetensors" in ready["message"]
    finally:
        _stop(op)
        print("\n".join(op_log.read_text().splitlines()[-40:]))  # shown when the test fails
        _dump(dev_cluster, namespace, tmp_path / "runner")
        dev_cluster.delete_nodes(nodes)

    # The verify Jobs materialised into the node's cache, keyed by checksum (a worker there reuses it).
    assert {base.checksum, good.checksum} <= {p.name for p in cache.iterdir()}
    # The Jobs got the credentials by reference only, and nothing wrote the secret anywhere.
    job = dev_cluster.get_json("jobs", "-n", namespace, "-l", "loraplane.io/owner=basemodel.m")["items"][0]
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODEL_STORE_ROOT"]["value"] == url
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME,
                                                                         "key": "AWS_SECRET_ACCESS_KEY"}
    secret = secret_env["AWS_SECRET_ACCESS_KEY"]
    assert secret not in json.dumps(job)
    logs = [op_log, *(tmp_path / "runner").glob("*/output.log"), *(tmp_path / "runner").glob("*/termination-log")]
    assert all(secret not in p.read_text(errors="replace") for p in logs)
    print(f"\nBaseModel + 2 Adapters resolved from the bucket in {time.monotonic() - t0:.1f} s")


def test_a_pool_on_a_bucket_gives_its_workers_the_url_cache_and_secret_refs(dev_cluster, namespace, tmp_path):
    """No verify needed: a Ready BaseModel (status written here) on a bucket, a
    pool on it, and the worker pod the operator creates on a KWOK GPU node."""
    dev_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    tag = uuid.uuid4().hex[:6]
    nodes = dev_cluster.create_gpu_nodes(1, gpus_per_node=1, prefix=f"s3-{tag}", labels={"loraplane.io/test": tag})
    meta = {"apiVersion": "loraplane.io/v1alpha1"}
    url = "s3://models/loraplane"
    op = None
    try:
        bm = {**meta, "kind": "BaseModel", "metadata": {"name": "m"},
              "spec": {"storeName": "tiny", "version": "v1",
                       "store": {"s3": {"url": url, "credentialsSecretRef": {"name": SECRET_NAME}}},
                       "variants": [{"name": "fp16", "vramMiB": 1000}]}}
        pool = {**meta, "kind": "WorkerPool", "metadata": {"name": "p"},
                "spec": {"baseModelRef": "m", "replicas": 1, "variants": ["fp16"],
                         "gpu": {"nodeSelector": {"loraplane.io/test": tag}}}}
        # Ready as a verify Job would leave it (the operator keeps a Ready status of its generation).
        dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bm))
        gen = dev_cluster.get_json("basemodel", "m", "-n", namespace)["metadata"]["generation"]
        status = {"phase": "Ready", "checksum": "c" * 64, "observedGeneration": gen,
                  "variants": [{"name": "fp16", "vramMiB": 1000}]}
        dev_cluster.kubectl("patch", "basemodel", "m", "-n", namespace, "--subresource=status", "--type=merge",
                            "-p", json.dumps({"status": status}))
        op = _operator(dev_cluster, namespace, tmp_path / "operator.log")  # after the status: it must not verify
        dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pool))
        pods = wait_for(lambda: dev_cluster.get_json("pods", "-n", namespace, "-l", "loraplane.io/pool=p")["items"],
                        60, interval=0.5, what="worker pod")
    finally:
        if op is not None:
            _stop(op)
        dev_cluster.delete_nodes(nodes)
    spec = pods[0]["spec"]
    (c,) = spec["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["MODEL_STORE_ROOT"]["value"] == url
    cache_mount = env["LORAPLANE_MODEL_CACHE"]["value"]
    assert {"name": "model-cache", "mountPath": cache_mount} in c["volumeMounts"]
    assert {"name": "model-cache", "emptyDir": {}} in spec["volumes"]
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == SECRET_NAME and "value" not in env[key]
