"""Unit tests for the pieces of the control-plane harness that need no cluster."""

from __future__ import annotations

import yaml

from loraplane.devcluster import build, kwok_stages, versions
from loraplane.devcluster.nodes import gpu_node_manifest

KUBERNETES_GOMOD = """module k8s.io/kubernetes

go 1.26.0

require (
\tk8s.io/api v0.0.0
\tgithub.com/foo/bar v1.2.3
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/cri-client => ./staging/src/k8s.io/cri-client
\tk8s.io/kms => ./staging/src/k8s.io/kms
)
"""


def test_staging_version_maps_v1_to_v0():
    assert versions.staging_version("v1.37.2") == "v0.37.2"


def test_staging_modules_are_read_from_the_pinned_gomod():
    assert build.staging_modules(KUBERNETES_GOMOD) == ["k8s.io/api", "k8s.io/cri-client", "k8s.io/kms"]


def test_scratch_gomod_pins_every_staging_module():
    gomod = build.kubernetes_scratch_gomod(KUBERNETES_GOMOD)
    staging = versions.staging_version()
    for module in ("k8s.io/api", "k8s.io/cri-client", "k8s.io/kms"):
        assert f"{module} => {module} {staging}" in gomod
    assert f"require k8s.io/kubernetes {versions.KUBERNETES_VERSION}" in gomod
    assert "go 1.26.0" in gomod


def test_kube_ldflags_stamp_the_pinned_version():
    flags = build.kube_ldflags()
    assert f"k8s.io/component-base/version.gitVersion={versions.KUBERNETES_VERSION}" in flags


def test_missing_binaries_without_stamp_means_rebuild(tmp_path):
    for name in build.ALL_BINARIES:
        exe = tmp_path / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    assert set(build.missing_binaries(tmp_path)) == set(build.ALL_BINARIES)


UPSTREAM_COMPLETE = """apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-complete
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: DoesNotExist}
    - {key: '.metadata.ownerReferences.[].kind', operator: In, values: [Job]}
  next:
    statusTemplate: |
      state:
        terminated:
          exitCode: 0
          reason: Completed
      phase: Succeeded
"""


def _stage(name):
    return f"apiVersion: kwok.x-k8s.io/v1alpha1\nkind: Stage\nmetadata: {{name: {name}}}\nspec: {{}}\n"


def test_pods_finish_only_when_annotated(tmp_path):
    for name in ("node-initialize", "node-heartbeat", "pod-ready", "pod-delete"):
        (tmp_path / f"{name}.yaml").write_text(_stage(name))
    (tmp_path / "pod-complete.yaml").write_text(UPSTREAM_COMPLETE)
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(kwok_stages.render(tmp_path))}
    complete, failed = docs["pod-complete"], docs["pod-failed"]
    key = f'.metadata.annotations["{kwok_stages.RESULT_ANNOTATION}"]'
    assert {"key": key, "operator": "In", "values": ["Succeeded"]} in complete["spec"]["selector"]["matchExpressions"]
    assert {"key": key, "operator": "In", "values": ["Failed"]} in failed["spec"]["selector"]["matchExpressions"]
    assert all(e["key"] != ".metadata.ownerReferences.[].kind" for e in complete["spec"]["selector"]["matchExpressions"])
    assert "phase: Failed" in failed["spec"]["next"]["statusTemplate"]
    assert "exitCode: 1" in failed["spec"]["next"]["statusTemplate"]
    assert "phase: Succeeded" in complete["spec"]["next"]["statusTemplate"]


def test_render_refuses_an_incomplete_stage_set(tmp_path):
    (tmp_path / "pod-ready.yaml").write_text(_stage("pod-ready"))
    try:
        kwok_stages.render(tmp_path)
    except RuntimeError as err:
        assert "node-initialize" in str(err)
    else:
        raise AssertionError("render accepted a stage set without node stages")


def test_gpu_node_manifest_has_gfd_labels_and_capacity():
    node = gpu_node_manifest("n0", gpus=4, labels={"zone": "a"}, taints=[{"key": "k", "effect": "NoSchedule"}])
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-GeForce-RTX-3090"
    assert labels["nvidia.com/gpu.memory"] == "24576"
    assert labels["nvidia.com/gpu.count"] == "4"
    assert labels["zone"] == "a"
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "4"
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert node["spec"]["taints"][0]["key"] == "k"
