"""Worker and training pods run as loraplane-workload, bound per namespace."""

from __future__ import annotations

from loraplane.operator.core import workload_identity
from loraplane.operator.api.names import WORKLOAD_SERVICE_ACCOUNT


def test_service_account_only_without_a_cluster_role():
    docs = workload_identity.objects("ml", None)
    assert [d["kind"] for d in docs] == ["ServiceAccount"]
    assert docs[0]["metadata"] == {"name": WORKLOAD_SERVICE_ACCOUNT, "namespace": "ml",
                                   "labels": {"app.kubernetes.io/managed-by": "loraplane"}}


def test_role_binding_grants_the_cluster_role_in_this_namespace_only():
    sa, rb = workload_identity.objects("ml", "lp-loraplane-workload")
    assert rb["kind"] == "RoleBinding" and rb["metadata"]["namespace"] == "ml"
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": "lp-loraplane-workload"}
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "ml"}]


def test_worker_pods_name_the_workload_service_account():
    from loraplane.operator.api.common_types import StoreVolume
    from loraplane.operator.api.resources import WorkerPoolResource
    from loraplane.operator.core.manifests import worker_pod

    pool = WorkerPoolResource.model_validate({"metadata": {"name": "p", "namespace": "ml", "uid": "u"},
                                              "spec": {"baseModelRef": "m"}, "kind": "WorkerPool"})
    store = StoreVolume.model_validate({"hostPath": {"path": "/s"}, "mountPath": "/models"})
    pod = worker_pod(pool, 0, "n0", 0, 9000, "fp16", "img", store)
    assert pod["spec"]["serviceAccountName"] == WORKLOAD_SERVICE_ACCOUNT
