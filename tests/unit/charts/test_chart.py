"""The Helm chart: lints, renders for the documented value combinations, and
ships exactly the CRDs generated from the API types."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from loraplane.devcluster import build

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "loraplane"
HELM = build.bin_dir() / "helm"

needs_helm = pytest.mark.skipif(not HELM.exists(), reason="helm not built (make control-plane builds it)")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, check=check, timeout=60)


def render(*sets: str) -> list[dict]:
    args = ["template", "lp", str(CHART), "--namespace", "loraplane-system"]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def test_chart_crds_are_generated_from_the_api_types():
    from loraplane.operator.api import crdgen

    assert crdgen.stale(CHART / "crds") == [], "charts/loraplane/crds is stale: run `make crds`"


@needs_helm
def test_chart_lints():
    result = helm("lint", str(CHART), "--strict", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_helm
def test_default_render_has_operator_rbac_and_peering():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render()}
    deployment = docs[("Deployment", "lp-loraplane")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LORAPLANE_PEERING"] == "loraplane"
    assert env["LORAPLANE_WORKER_IMAGE"] == "ghcr.io/loraplane/worker:0.1.0"
    assert "MODEL_STORE_ROOT" not in env
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "lp-loraplane"
    assert ("ClusterKopfPeering", "loraplane") in docs
    rules = docs[("ClusterRole", "lp-loraplane")]["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    for need in [("loraplane.io", "workerpools/status", "patch"), ("", "pods", "create"), ("", "pods", "delete"),
                 ("batch", "jobs", "create"), ("", "nodes", "watch"), ("", "secrets", "get"),
                 ("kopf.dev", "clusterkopfpeerings", "patch")]:
        assert need in granted, need


@needs_helm
def test_store_claim_mounts_the_store_and_sets_the_root():
    docs = render("modelStore.create=true")
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"claimName": pvc["metadata"]["name"], "readOnly": True} in [v.get("persistentVolumeClaim") for v in volumes]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODEL_STORE_ROOT"] == "/models"


@needs_helm
def test_several_replicas_without_peering_is_refused():
    args = ["template", "lp", str(CHART), "--set", "replicas=2", "--set", "peering.enabled=false"]
    result = helm(*args, check=False)
    assert result.returncode != 0
    assert "needs peering.enabled=true" in result.stderr
