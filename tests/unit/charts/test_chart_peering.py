"""The chart's high-availability settings: replicas > 1 run with peering, each
replica's identity is its pod name, the keep-alive lifetime reaches the
operator, and watchNamespaces gets a namespaced KopfPeering in each watched
namespace (kopf peers through those, not the ClusterKopfPeering, when it
watches namespaces)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from loraplane.devcluster import build

CHART = Path(__file__).resolve().parents[3] / "charts" / "loraplane"
HELM = build.bin_dir() / "helm"
needs_helm = pytest.mark.skipif(not HELM.exists(), reason="helm not built (make control-plane builds it)")


def render(*sets: str) -> list[dict]:
    args = [str(HELM), "template", "lp", str(CHART), "--namespace", "loraplane-system"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def operator_env(docs: list[dict]) -> dict:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


@needs_helm
def test_two_replicas_peer_cluster_wide_with_pod_identities():
    docs = render("replicas=2")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    env = operator_env(docs)
    assert env["LORAPLANE_PEERING"] == "loraplane" and env["LORAPLANE_PEERING_LIFETIME"] == "30"
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "LORAPLANE_PEERING_PRIORITY" not in env  # one value for all replicas would freeze them all
    peerings = [(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in docs
                if d["apiVersion"] == "kopf.dev/v1"]
    assert peerings == [("ClusterKopfPeering", "loraplane", None)]


@needs_helm
def test_watched_namespaces_get_a_namespaced_kopfpeering_each():
    docs = render("replicas=2", "watchNamespaces={ml,team-b}", "peering.name=lp", "peering.lifetimeSeconds=15")
    peerings = sorted((d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in docs
                      if d["apiVersion"] == "kopf.dev/v1")
    assert peerings == [("KopfPeering", "lp", "ml"), ("KopfPeering", "lp", "team-b")]
    assert operator_env(docs)["LORAPLANE_PEERING_LIFETIME"] == "15"


@needs_helm
def test_standalone_keeps_recreate_and_no_peering_object():
    docs = render("peering.enabled=false")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not [d for d in docs if d["apiVersion"] == "kopf.dev/v1"]
    assert "LORAPLANE_PEERING" not in operator_env(docs)
