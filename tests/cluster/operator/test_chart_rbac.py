"""The chart's ServiceAccount and ClusterRole are enough for the real operator:
it runs with a token of that ServiceAccount (not the admin certificate),
brings a pool to Ready, and no API call is refused."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import yaml

from loraplane.devcluster import build
from loraplane.devcluster.cluster import free_port

ROOT = Path(__file__).resolve().parents[3]
BASE_NAME, BASE_VERSION = "mistral-7b-instruct", "v0.3"  # as published by the op_store fixture


def rendered_rbac(release: str, namespace: str, *sets: str) -> list[dict]:
    args = [a for s in sets for a in ("--set", s)]
    out = subprocess.run([str(build.bin_dir() / "helm"), "template", release, str(ROOT / "charts" / "loraplane"),
                          "--namespace", namespace, "--set", "peering.enabled=false", *args],
                         capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out)  # not the Deployment
            if d and d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]


def token_kubeconfig(cluster, namespace: str, sa: str, path: Path) -> Path:
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": server}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": namespace}}],
    }))
    return path


def test_operator_runs_with_only_the_charts_rbac(dev_cluster, namespace, operator, op_store, gpu_nodes, helpers,
                                                 tmp_path):
    release = f"lp-{namespace}"
    docs = rendered_rbac(release, namespace)
    dev_cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    kubeconfig = token_kubeconfig(dev_cluster, namespace, sa, tmp_path / "sa.kubeconfig")
    who = dev_cluster.kubectl("--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json").stdout
    assert f"system:serviceaccount:{namespace}:{sa}" in who

    _, label = gpu_nodes(1, gpus=2)
    workload_role = next(d["metadata"]["name"] for d in docs
                         if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-workload"))
    health = free_port()
    op = operator(kubeconfig=kubeconfig, namespace=namespace, workload_cluster_role=workload_role,
                  liveness=f"http://127.0.0.1:{health}/healthz", image_pull_policy="IfNotPresent",
                  image_pull_secrets="regcred")
    store = {"hostPath": {"path": str(op_store)}, "mountPath": "/models"}
    objects = [
        {"apiVersion": "loraplane.io/v1alpha1", "kind": "BaseModel", "metadata": {"name": "m"},
         "spec": {"storeName": BASE_NAME, "version": BASE_VERSION, "store": store,
                  "variants": [{"name": "fp16", "vramMiB": 14336}]}},
        {"apiVersion": "loraplane.io/v1alpha1", "kind": "Adapter", "metadata": {"name": "syn-v1"},
         "spec": {"baseModelRef": "m", "task": "synthesizer", "version": "v1",
                  "source": {"storeName": "synthesizer"}}},
        {"apiVersion": "loraplane.io/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "p"},
         "spec": {"baseModelRef": "m", "replicas": 1, "variants": ["fp16"], "gpu": {"nodeSelector": label},
                  "routes": {"synthesizer": [{"adapter": "syn-v1", "weight": 100}]}}},
    ]
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(json.dumps(d) for d in objects))

    def pool_ready():
        pool = helpers.get_json(dev_cluster, "wp", "p", "-n", namespace)
        conds = {c["type"]: c["status"] for c in (pool.get("status") or {}).get("conditions") or []}
        return conds.get("Ready") == "True"

    helpers.wait_for(pool_ready, timeout=120, what="the pool to become Ready under the chart's RBAC")
    # kopf's own liveness endpoint (the chart's probes) answers while the operator runs.
    with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=5) as r:
        assert r.status == 200 and isinstance(json.loads(r.read()), dict)
    log = op.tail(400)
    assert "forbidden" not in log.lower(), log

    # Workers run as loraplane-workload, which may read the desired ConfigMap and
    # report on its Pod in this namespace, and nothing more.
    pod = helpers.get_json(dev_cluster, "pods", "-n", namespace, "-l", "loraplane.io/pool=p")["items"][0]
    assert pod["spec"]["serviceAccountName"] == "loraplane-workload"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    worker = f"system:serviceaccount:{namespace}:loraplane-workload"

    def can(verb, resource, ns=namespace):
        out = dev_cluster.kubectl("auth", "can-i", verb, resource, "-n", ns, f"--as={worker}", check=False)
        return out.stdout.strip() == "yes"

    assert can("watch", "configmaps") and can("patch", "pods")
    assert not can("create", "pods") and not can("get", "secrets") and not can("watch", "configmaps", "default")


def test_operator_reads_only_the_hub_token_secrets_the_chart_names(dev_cluster, namespace, tmp_path):
    """No cluster-wide Secret access: `get` on the Secrets listed in hubTokenSecrets,
    in their namespace; the existence check reports a refused read as such."""
    from loraplane.operator.controllers.kube import Kube

    release = f"lp-{namespace}"
    docs = rendered_rbac(release, namespace, f"hubTokenSecrets[0].namespace={namespace}",
                         "hubTokenSecrets[0].name=hf")
    dev_cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    me = f"system:serviceaccount:{namespace}:{sa}"

    def can(*args):
        return dev_cluster.kubectl("auth", "can-i", *args, f"--as={me}", check=False).stdout.strip() == "yes"

    assert can("get", "secret/hf", "-n", namespace)
    assert not can("get", "secret/other", "-n", namespace)
    assert not can("list", "secrets", "-n", namespace) and not can("get", "secrets", "-n", namespace)
    assert not can("get", "secret/hf", "-n", "default") and not can("get", "secrets", "-A")

    kube = Kube(str(token_kubeconfig(dev_cluster, namespace, sa, tmp_path / "sa.kubeconfig")))
    assert kube.secret_key_present(namespace, "hf", "token") == f"Secret hf not found in namespace {namespace}"
    dev_cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf", "namespace": namespace},
                       "stringData": {"token": "hf_value"}})
    assert kube.secret_key_present(namespace, "hf", "token") is None
    assert kube.secret_key_present(namespace, "hf", "other") == "Secret hf has no key 'other'"
    refused = kube.secret_key_present(namespace, "unlisted", "token")
    assert "may not read Secret unlisted" in refused and "hubTokenSecrets" in refused
