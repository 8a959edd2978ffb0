"""The chart's modelStore.shared: the PersistentVolume and PVC it renders for a
workload namespace bind to each other on the real control plane (static
binding, no StorageClass), so pods in that namespace get the store through a
PVC, the only way Pod Security ``restricted`` admits it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from loraplane.devcluster import build
from loraplane.devcluster.waiting import wait_for

ROOT = Path(__file__).resolve().parents[3]


def test_shared_store_claim_binds_in_the_workload_namespace(dev_cluster, namespace, op_store):
    release = f"lp-{namespace}"
    out = subprocess.run([str(build.bin_dir() / "helm"), "template", release, str(ROOT / "charts" / "loraplane"),
                          "--namespace", "loraplane-system", "--set", f"modelStore.shared.namespaces={{{namespace}}}",
                          "--set", f"modelStore.shared.source.hostPath.path={op_store}",
                          "--set", "modelStore.shared.size=1Gi"], capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d and d["kind"] in ("PersistentVolume", "PersistentVolumeClaim")]
    assert [d["kind"] for d in docs] == ["PersistentVolume", "PersistentVolumeClaim"]
    pv = docs[0]["metadata"]["name"]
    try:
        dev_cluster.apply(docs)
        claim = wait_for(lambda: (c := dev_cluster.get_json("pvc", "loraplane-store", "-n", namespace))
                         .get("status", {}).get("phase") == "Bound" and c, timeout=60, what="the claim Bound")
        assert claim["spec"]["volumeName"] == pv == f"{release}-store-{namespace}"
        bound = dev_cluster.get_json("pv", pv)
        assert bound["status"]["phase"] == "Bound" and bound["spec"]["claimRef"]["namespace"] == namespace
    finally:
        dev_cluster.kubectl("delete", "pvc", "loraplane-store", "-n", namespace, "--wait=false", check=False)
        dev_cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)
