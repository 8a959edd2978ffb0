"""The identity worker and training pods run as.

Why: a worker watches its pool's desired ConfigMap and patches its own Pod
with what it has loaded; a trainer patches its Pod with progress. The
namespace's ``default`` ServiceAccount usually may do neither, so a pool
would never load an adapter. The operator therefore keeps, in every
namespace where it runs workloads, a ServiceAccount ``loraplane-workload``
and — when the installation names a ClusterRole for it (the chart's
``<release>-workload``) — a RoleBinding granting that role in this namespace
only. Pods name the ServiceAccount, so they work with least privilege and
nothing cluster-wide.
"""

from __future__ import annotations

from ..api.names import MANAGED_BY, WORKLOAD_SERVICE_ACCOUNT


def objects(namespace: str, cluster_role: str | None) -> list[dict]:
    """The ServiceAccount, plus a RoleBinding when ``cluster_role`` is set."""
    meta = {"name": WORKLOAD_SERVICE_ACCOUNT, "namespace": namespace, "labels": dict(MANAGED_BY)}
    docs = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)}]
    if cluster_role:
        docs.append({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": dict(meta),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
            "subjects": [{"kind": "ServiceAccount", "name": WORKLOAD_SERVICE_ACCOUNT, "namespace": namespace}],
        })
    return docs
