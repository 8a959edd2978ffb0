"""Training series in a real Prometheus: the real operator (its Job pods run by
HostRunner, so the real ``loraplane train`` writes its progress annotation),
scraped by the Prometheus built from its module, with the chart's rules.

Proves the dashboard's "Training progress" and "Training loss" panels return
data for a real training run, and that a real failed training (a dataset with
a bad line) fires LoraplaneTrainingJobFailed for that Adapter only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from loraplane.demo import OperatorProcess, wait_for
from loraplane.devcluster import build
from loraplane.devcluster.cluster import free_port
from loraplane.devcluster.hostrunner import HostRunner
from loraplane.devcluster.promserver import PrometheusServer
from loraplane.modelstore import ModelStore

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[3]
BASE_NAME, BASE_VERSION = "mistral-7b-instruct", "v0.3"


def rendered(*sets: str) -> list[dict]:
    args = [str(build.bin_dir() / "helm"), "template", "lp", str(ROOT / "charts" / "loraplane"),
            "--namespace", "loraplane-system"]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(subprocess.run(args, capture_output=True, text=True, check=True,
                                                          timeout=120).stdout) if d]


def training_doc(name, selector, dataset):
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "Adapter", "metadata": {"name": name},
            "spec": {"baseModelRef": "m", "task": "echo", "version": "v1", "training": {
                "method": "lora", "device": "cpu", "dataset": {"paths": [dataset]},
                "hyperparameters": {"maxSteps": 3, "batchSize": 2, "seqLen": 64, "evalSplit": 0,
                                    "loggingSteps": 1, "learningRate": 0.005, "r": 4, "alpha": 8},
                "resources": {"vramMiB": 6000, "cpu": "1", "memory": "1Gi"},
                "gpu": {"nodeSelector": selector}, "backoffLimit": 0}}}


def test_training_progress_loss_and_failure_reach_prometheus(dev_cluster, namespace, tiny_base_dir,
                                                             tmp_path):
    store = tmp_path / "store"
    ModelStore(store).publish(tiny_base_dir, kind="base", name=BASE_NAME, version=BASE_VERSION)
    (store / "datasets").mkdir()
    words = ["alpha", "beta", "gamma", "delta"]
    (store / "datasets" / "good.jsonl").write_text("".join(
        json.dumps({"instruction": f"repeat {w}", "output": f"{w} {w}"}) + "\n" for w in words * 3))
    (store / "datasets" / "bad.jsonl").write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n{not json\n")
    dev_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    tag = uuid.uuid4().hex[:6]
    sel = {"loraplane.io/test": tag}
    nodes = dev_cluster.create_gpu_nodes(1, gpus_per_node=1, prefix=f"obs-train-{tag}", memory_mib=24576, labels=sel)
    op_port = free_port()
    # Job pods really run (HostRunner), so no KWOK result annotation; the trainer's image is irrelevant here.
    operator = OperatorProcess(dev_cluster.kubeconfig, store, tmp_path / "operator.log", resync_seconds=3,
                               extra={"metrics_port": op_port, "job_pod_annotations": "{}",
                                      "job_image": "loraplane:test"}).start()
    rule = next(d for d in rendered("metrics.prometheusRule.enabled=true") if d["kind"] == "PrometheusRule")
    dashboard = json.loads(next(d for d in rendered("metrics.dashboard.enabled=true")
                                if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard"))
                           ["data"]["loraplane.json"])
    prom = PrometheusServer(tmp_path / "prom", rule["spec"], [
        {"job_name": "lp-loraplane-metrics", "static_configs": [{"targets": [f"127.0.0.1:{op_port}"]}]}])
    try:
        with HostRunner(dev_cluster.kubeconfig, namespace, tmp_path / "runner", selector="loraplane.io/owner"):
            base = {"apiVersion": "loraplane.io/v1alpha1", "kind": "BaseModel", "metadata": {"name": "m"},
                    "spec": {"storeName": BASE_NAME, "version": BASE_VERSION,
                             "store": {"hostPath": {"path": str(store)}, "mountPath": "/models"},
                             "variants": [{"name": "fp16", "vramMiB": 14336}]}}
            dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(json.dumps(d) for d in (
                base, training_doc("echo-v1", sel, "datasets/good.jsonl"),
                training_doc("bad-v1", sel, "datasets/bad.jsonl"))))
            phase = lambda name: ((dev_cluster.get_json("adapter", name, "-n", namespace).get("status") or {})  # noqa: E731
                                  .get("phase"))
            wait_for(lambda: phase("echo-v1") in ("Ready", "Failed") and phase("bad-v1") in ("Ready", "Failed"),
                     timeout=300, interval=1, what="both trainings finished")
        assert (phase("echo-v1"), phase("bad-v1")) == ("Ready", "Failed")
        wait_for(prom.ready, timeout=60, what="prometheus ready")
        wait_for(lambda: prom.firing("LoraplaneTrainingJobFailed"), timeout=60, what="LoraplaneTrainingJobFailed")
        assert [(a["namespace"], a["adapter"]) for a in prom.firing("LoraplaneTrainingJobFailed")] \
            == [(namespace, "bad-v1")]
        for title in ("Training progress", "Training loss"):
            panel = next(p for p in dashboard["panels"] if p["title"] == title)
            got = {r["metric"]["adapter"]: float(r["value"][1]) for r in prom.query(panel["targets"][0]["expr"])
                   if r["metric"].get("namespace") == namespace}
            assert "echo-v1" in got, (title, got)
            if title == "Training progress":
                assert got["echo-v1"] == 1.0  # 3/3 steps
    finally:
        print(operator.tail(30), file=sys.stderr)
        prom.stop()
        operator.stop()
        dev_cluster.delete_nodes(nodes)
