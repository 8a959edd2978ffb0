"""The real API server's PodSecurity admission, in a namespace that enforces
``restricted``, admits every kind of pod the operator builds (server-side dry
run: nothing is stored), and refuses the one with a hostPath store volume (the
namespace really enforces)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from loraplane.operator.core import workload_identity

_path = Path(__file__).resolve().parents[2] / "unit" / "operator" / "restricted.py"
_spec = importlib.util.spec_from_file_location("restricted", _path)
restricted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(restricted)

KINDS = sorted(restricted.operator_workloads())


@pytest.fixture
def restricted_ns(dev_cluster, namespace):
    dev_cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                        "pod-security.kubernetes.io/enforce-version=latest")
    # Pods name loraplane-workload: the ServiceAccount admission refuses them without it.
    dev_cluster.apply(workload_identity.objects(namespace, None))
    return namespace


def dry_run_create(cluster, obj: dict):
    obj = json.loads(json.dumps(obj))
    obj["metadata"].pop("ownerReferences", None)  # the owners do not exist here
    return cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(obj), check=False)


@pytest.mark.parametrize("kind", KINDS)
def test_operator_pods_are_admitted_under_restricted(dev_cluster, restricted_ns, kind):
    obj = restricted.operator_workloads(namespace=restricted_ns)[kind]
    if obj["kind"] == "Job":  # the Job itself is valid; its template is checked when its Pod is created
        job = dry_run_create(dev_cluster, obj)
        assert job.returncode == 0, job.stderr
    pod = dry_run_create(dev_cluster, restricted.pod_of(obj))
    assert pod.returncode == 0, pod.stderr
    assert "would violate" not in pod.stderr  # no warnings either
    admitted = json.loads(pod.stdout)
    assert admitted["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_a_host_path_store_is_refused_under_restricted(dev_cluster, restricted_ns):
    from loraplane.operator.api.common_types import StoreVolume
    from loraplane.operator.api.resources import WorkerPoolResource
    from loraplane.operator.core.manifests import worker_pod

    pool = WorkerPoolResource.model_validate({"apiVersion": "loraplane.io/v1alpha1", "kind": "WorkerPool",
                                              "metadata": {"name": "p", "namespace": restricted_ns, "uid": "u"},
                                              "spec": {"baseModelRef": "m"}})
    pod = worker_pod(pool, 0, "n", 0, 1, "fp16", "img", StoreVolume.model_validate({"hostPath": {"path": "/srv/store"}}))
    out = dry_run_create(dev_cluster, pod)
    assert out.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in out.stderr and "hostPath" in out.stderr, out.stderr
