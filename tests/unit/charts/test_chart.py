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
                 ("batch", "jobs", "create"), ("", "nodes", "watch"),
                 ("kopf.dev", "clusterkopfpeerings", "patch")]:
        assert need in granted, need
    assert not [g for g in granted if g[1] == "secrets"]  # Secrets: only hubTokenSecrets, per namespace
    assert "Role" not in {k for k, _ in docs}


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


def operator_container(docs: list[dict]) -> tuple[dict, dict]:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


@needs_helm
def test_operator_pod_is_restricted_keeps_tini_and_probes_kopf():
    pod, c = operator_container(render())
    psc = pod["securityContext"]
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"} and psc["runAsNonRoot"] is True
    assert (psc["runAsUser"], psc["runAsGroup"], psc["fsGroup"]) == (10001, 10001, 10001)
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert "command" not in c and c["args"][:3] == ["loraplane", "operator", "run"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert env["LORAPLANE_LIVENESS"] == f"http://0.0.0.0:{ports['health']}/healthz"
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    assert env["LORAPLANE_IMAGE_PULL_POLICY"] == "IfNotPresent" and "LORAPLANE_IMAGE_PULL_SECRETS" not in env
    assert "imagePullSecrets" not in pod


@needs_helm
def test_flags_follow_the_args_and_pull_settings_reach_the_operator():
    pod, c = operator_container(render("watchNamespaces={a,b}", "logVerbose=true", "image.pullPolicy=Never",
                                       "imagePullSecrets[0].name=regcred", "imagePullSecrets[1]=plain"))
    assert c["args"] == ["loraplane", "operator", "run", "--namespace=a", "--namespace=b", "--verbose"]
    assert c["imagePullPolicy"] == "Never"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "plain"}]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LORAPLANE_IMAGE_PULL_POLICY"] == "Never" and env["LORAPLANE_IMAGE_PULL_SECRETS"] == "regcred,plain"
    _, c = operator_container(render("image.pullPolicy=Never", "workloadImagePullPolicy=IfNotPresent"))
    assert {e["name"]: e.get("value") for e in c["env"]}["LORAPLANE_IMAGE_PULL_POLICY"] == "IfNotPresent"


@needs_helm
def test_shared_store_gives_each_workload_namespace_a_statically_bound_claim():
    docs = render("modelStore.shared.namespaces={ml,team-b}", "modelStore.shared.source.nfs.server=nfs.internal",
                  "modelStore.shared.source.nfs.path=/exports/models")
    pvs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolume"}
    pvcs = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert set(pvs) == {"lp-store-ml", "lp-store-team-b"} and set(pvcs) == {"ml", "team-b"}
    for ns, pvc in pvcs.items():
        pv = pvs[f"lp-store-{ns}"]
        assert pvc["metadata"]["name"] == "loraplane-store" and pvc["spec"]["volumeName"] == pv["metadata"]["name"]
        assert pv["spec"]["claimRef"] == {"namespace": ns, "name": "loraplane-store"}
        assert pv["spec"]["storageClassName"] == "" == pvc["spec"]["storageClassName"]  # no dynamic provisioning
        assert pv["spec"]["accessModes"] == ["ReadWriteMany"] == pvc["spec"]["accessModes"]
        assert pv["spec"]["nfs"] == {"server": "nfs.internal", "path": "/exports/models"}
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
        assert pv["spec"]["capacity"] == pvc["spec"]["resources"]["requests"] == {"storage": "500Gi"}
        for obj in (pv, pvc):
            assert obj["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@needs_helm
def test_shared_store_host_path_source_and_deletable_on_uninstall():
    docs = render("modelStore.shared.namespaces={dev}", "modelStore.shared.source.hostPath.path=/srv/store",
                  "modelStore.shared.keepOnUninstall=false", "modelStore.shared.size=1Gi")
    pv = next(d for d in docs if d["kind"] == "PersistentVolume")
    assert pv["spec"]["hostPath"] == {"path": "/srv/store"} and pv["spec"]["capacity"] == {"storage": "1Gi"}
    assert "annotations" not in pv["metadata"]
    assert not [d for d in render() if d["kind"] in ("PersistentVolume", "PersistentVolumeClaim")]


@needs_helm
def test_shared_store_without_a_source_is_refused():
    result = helm("template", "lp", str(CHART), "--set", "modelStore.shared.namespaces={ml}", check=False)
    assert result.returncode != 0 and "modelStore.shared.source is required" in result.stderr


@needs_helm
def test_workload_pod_policy_binds_the_token_to_its_own_pod():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render()}
    vap = docs[("ValidatingAdmissionPolicy", "lp-loraplane-workload-own-pod")]
    binding = docs[("ValidatingAdmissionPolicyBinding", "lp-loraplane-workload-own-pod")]
    assert binding["spec"] == {"policyName": "lp-loraplane-workload-own-pod", "validationActions": ["Deny"]}
    assert vap["spec"]["failurePolicy"] == "Fail"
    assert "authentication.kubernetes.io/pod-name" in vap["spec"]["validations"][0]["expression"]
    assert ":loraplane-workload" in vap["spec"]["matchConditions"][0]["expression"]
    off = render("workloadPodPolicy.enabled=false")
    assert not [d for d in off if d["kind"].startswith("ValidatingAdmissionPolicy")]


@needs_helm
def test_hub_token_secrets_are_granted_by_name_per_namespace():
    docs = render("hubTokenSecrets[0].namespace=ml", "hubTokenSecrets[0].name=hf",
                  "hubTokenSecrets[1].namespace=ml", "hubTokenSecrets[1].name=hf2",
                  "hubTokenSecrets[2].namespace=other", "hubTokenSecrets[2].name=hf")
    roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role"}
    binds = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding"}
    assert set(roles) == set(binds) == {"ml", "other"}
    assert roles["ml"]["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                                     "resourceNames": ["hf", "hf2"]}]
    assert roles["other"]["rules"][0]["resourceNames"] == ["hf"]
    assert binds["ml"]["subjects"] == [{"kind": "ServiceAccount", "name": "lp-loraplane",
                                        "namespace": "loraplane-system"}]
