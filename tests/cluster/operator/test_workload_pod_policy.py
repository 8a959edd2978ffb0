"""The chart's ValidatingAdmissionPolicy narrows the workload role's
``patch pods`` to the worker's own Pod: a loraplane-workload token bound to
Pod A may patch A, not B, and a token bound to no Pod may patch neither."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from loraplane.devcluster import build
from loraplane.devcluster.waiting import wait_for
from loraplane.operator.core import workload_identity

ROOT = Path(__file__).resolve().parents[3]
MESSAGE = "loraplane-workload may modify only its own Pod"


def rendered(release: str, namespace: str) -> list[dict]:
    out = subprocess.run([str(build.bin_dir() / "helm"), "template", release, str(ROOT / "charts" / "loraplane"),
                          "--namespace", namespace], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def kubeconfig_for(cluster, token: str, path: Path) -> Path:
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "t", "user": {"token": token}}],
        "contexts": [{"name": "t", "context": {"cluster": "c", "user": "t"}}],
    }))
    return path


def pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"serviceAccountName": workload_identity.WORKLOAD_SERVICE_ACCOUNT,
                     "nodeSelector": {"loraplane.io/test": "nowhere"},  # stays Pending: no node needed
                     "containers": [{"name": "c", "image": "worker:dev"}]}}


@pytest.fixture
def policy(dev_cluster, namespace):
    """The chart's workload ClusterRole, policy and binding (cluster-scoped: removed afterwards)."""
    docs = [d for d in rendered(f"lp-{namespace}", namespace)
            if d["kind"] in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
            or (d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-workload"))]
    assert len(docs) == 3
    dev_cluster.apply(docs)
    yield {d["kind"]: d["metadata"]["name"] for d in docs}
    for d in docs:
        dev_cluster.kubectl("delete", d["kind"].lower(), d["metadata"]["name"], "--wait=false", check=False)


def test_a_worker_token_patches_only_its_own_pod(dev_cluster, namespace, policy, tmp_path):
    dev_cluster.apply(workload_identity.objects(namespace, policy["ClusterRole"]))
    dev_cluster.apply([pod("a"), pod("b")], namespace=namespace)
    uid_a = dev_cluster.get_json("pod", "a", "-n", namespace)["metadata"]["uid"]
    sa = workload_identity.WORKLOAD_SERVICE_ACCOUNT
    bound = dev_cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=10m", "--bound-object-kind=Pod",
                                "--bound-object-name=a", f"--bound-object-uid={uid_a}").stdout.strip()
    unbound = dev_cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=10m").stdout.strip()
    as_a = kubeconfig_for(dev_cluster, bound, tmp_path / "a.kubeconfig")
    as_nobody = kubeconfig_for(dev_cluster, unbound, tmp_path / "unbound.kubeconfig")

    def patch(kubeconfig: Path, name: str, *extra: str):
        body = json.dumps({"metadata": {"annotations": {"loraplane.io/worker-status": f"from-{name}"}}})
        return dev_cluster.kubectl("--kubeconfig", str(kubeconfig), "patch", "pod", name, "-n", namespace,
                                   "--type=merge", "-p", body, *extra, check=False)

    # The policy is enforced once its type check ran and the admission plugin has
    # synced it: poll with server-side dry runs (admission runs, nothing is written).
    vap = policy["ValidatingAdmissionPolicy"]
    wait_for(lambda: (dev_cluster.get_json("validatingadmissionpolicy", vap).get("status") or {})
             .get("observedGeneration"), timeout=30, what="the policy's type check")
    wait_for(lambda: MESSAGE in patch(as_a, "b", "--dry-run=server").stderr, timeout=30, interval=0.5,
             what="the policy to deny a patch of another pod")

    own = patch(as_a, "a")
    assert own.returncode == 0, own.stderr
    assert dev_cluster.get_json("pod", "a", "-n", namespace)["metadata"]["annotations"][
        "loraplane.io/worker-status"] == "from-a"

    other = patch(as_a, "b")
    assert other.returncode != 0 and MESSAGE in other.stderr, other.stderr
    assert "loraplane.io/worker-status" not in (dev_cluster.get_json("pod", "b", "-n", namespace)["metadata"]
                                                .get("annotations") or {})

    # RBAC alone would allow it: the same token passes `auth can-i`, the policy refuses.
    can = dev_cluster.kubectl("--kubeconfig", str(as_a), "auth", "can-i", "patch", "pod/b", "-n", namespace,
                              check=False)
    assert can.stdout.strip() == "yes"

    nobody = patch(as_nobody, "a")  # a token bound to no Pod carries no pod-name: refused
    assert nobody.returncode != 0 and MESSAGE in nobody.stderr, nobody.stderr

    # Other identities are not matched: the admin still patches any pod.
    admin = dev_cluster.kubectl("annotate", "pod", "b", "-n", namespace, "x=y")
    assert admin.returncode == 0
