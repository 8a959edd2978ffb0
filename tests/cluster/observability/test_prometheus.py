"""A real Prometheus (built from its Go module, loraplane/devcluster/prom_build.py)
scrapes the real operator and real worker processes and evaluates the chart's
alert rules (charts/loraplane/files/alerts.yaml as `helm template` renders it,
with test thresholds).

Set-up as the canary suite: the real control plane, KWOK GPU nodes, the
operator as a subprocess (here with ``--metrics-port``), and HostRunner
running the pool's worker pods as host processes, with a test-only fault:
``sum-slow`` answers 1.5 s late. Prometheus finds its targets by file service
discovery: the operator's metrics address, and each worker pod's advertised
endpoint (its ``loraplane.io/worker-status`` annotation) with the labels the
chart's PodMonitor would add (namespace, pool, pod, node, gpu, variant).

The test proves: `promtool check metrics` passes on the real operator's and a
real worker's /metrics; every rule loads and evaluates; real faults fire alerts
(an automated canary of ``sum-slow`` is rolled back by the operator:
LoraplaneCanaryRolledBack; its latency: LoraplaneHighP95Latency for
adapter ``sum-slow`` only); the operator is not reported down; and every
dashboard panel's PromQL returns data, except the panels whose events this
scenario does not produce (training; hot-swap/preload/verify failures),
which must still be valid PromQL (the last test fills the failures panel;
test_training_metrics.py the training panels).
Then canary analysis with
``analysis.provider: prometheus`` against that Prometheus promotes a good
version (``sum-v2``) and rolls back the slow one (``sum-slow``).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from kubernetes import client, config

from loraplane.demo import (ADAPTER_STORE_NAME, BASE_NAME, BASE_VERSION, TASK, OperatorProcess, effective, manifests,
                            wait_for)
from loraplane.devcluster import build, prom_build
from loraplane.devcluster.cluster import free_port
from loraplane.devcluster.hostrunner import HostRunner
from loraplane.devcluster.promserver import PrometheusServer
from loraplane.modelstore import ModelStore
from loraplane.traffic import Traffic

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[3]
POOL = "obs"
ADAPTERS = {"sum-v1": "v1", "sum-v2": "v2", "sum-slow": "v2"}
FAULTS = {"LORAPLANE_FAULT_ADAPTER_DELAY_MS": "sum-slow=1500"}
OPERATOR_JOB = "lp-loraplane-metrics"  # what the chart's ServiceMonitor (release lp) scrapes as
THRESHOLDS = ["metrics.prometheusRule.thresholds.p95LatencySeconds=1",
              "metrics.prometheusRule.thresholds.latencyFor=0s"]
# Panels fed by events this scenario does not produce.
NO_EVENTS_HERE = {"Hot-swap, preload and verify failures (since worker start)", "Training progress", "Training loss"}


def rendered(*sets: str) -> list[dict]:
    args = [str(build.bin_dir() / "helm"), "template", "lp", str(ROOT / "charts" / "loraplane"),
            "--namespace", "loraplane-system"]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(subprocess.run(args, capture_output=True, text=True, check=True,
                                                          timeout=120).stdout) if d]


def write_targets(core: client.CoreV1Api, ns: str, path: Path) -> int:
    """File SD: each worker's advertised endpoint, labelled as the PodMonitor labels it."""
    groups = []
    for p in core.list_namespaced_pod(ns, label_selector=f"loraplane.io/pool={POOL}").items:
        ann = p.metadata.annotations or {}
        rep = json.loads(ann.get("loraplane.io/worker-status") or "{}")
        if not rep.get("endpoint"):
            continue
        variant = re.search(r'"variant":"([^"]+)"', ann.get("loraplane.io/reservation", ""))
        groups.append({"targets": [urllib.parse.urlparse(rep["endpoint"]).netloc],
                       "labels": {"namespace": ns, "pool": POOL, "pod": p.metadata.name,
                                  "node": p.spec.node_name or "", "gpu": ann.get("loraplane.io/gpu-index", ""),
                                  "variant": variant.group(1) if variant else ""}})
    # the SD thread and the test's own waits both write: one temp file per thread, then an atomic rename
    tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(groups))
    tmp.replace(path)
    return len(groups)


@pytest.fixture(scope="module")
def observed(dev_cluster, tiny_base_dir, make_tiny_adapter, tmp_path_factory):
    work = tmp_path_factory.mktemp("observability")
    store = ModelStore(work / "store")
    store.publish(tiny_base_dir, kind="base", name=BASE_NAME, version=BASE_VERSION)
    for i, v in enumerate(("v1", "v2")):
        store.publish(make_tiny_adapter(seed=11 + i, r=8), kind="adapter", name=ADAPTER_STORE_NAME, version=v,
                      task=TASK, base_name=BASE_NAME, base_version=BASE_VERSION)
    # v3: published fine, then a byte flipped on disk (the workers' full verify refuses it)
    store.publish(make_tiny_adapter(seed=13, r=8), kind="adapter", name=ADAPTER_STORE_NAME, version="v3",
                  task=TASK, base_name=BASE_NAME, base_version=BASE_VERSION)
    f = store.resolve("default", "adapter", ADAPTER_STORE_NAME, "v3").path / "adapter_model.safetensors"
    f.chmod(0o644)
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    ns = f"obs-{uuid.uuid4().hex[:6]}"
    dev_cluster.kubectl("create", "namespace", ns)
    wait_for(lambda: dev_cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
             what="default ServiceAccount")
    label = {"loraplane.io/test": ns}
    nodes = dev_cluster.create_gpu_nodes(2, gpus_per_node=1, prefix=f"rtx3090-{ns}", labels=label)
    dev_cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    api = config.new_client_from_config(config_file=str(dev_cluster.kubeconfig))
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    rule = next(d for d in rendered("metrics.prometheusRule.enabled=true", *THRESHOLDS)
                if d["kind"] == "PrometheusRule")
    dashboard = json.loads(next(d for d in rendered("metrics.dashboard.enabled=true")
                                if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard"))
                           ["data"]["loraplane.json"])
    op_port = free_port()
    operator = OperatorProcess(dev_cluster.kubeconfig, work / "store", work / "operator.log", resync_seconds=3,
                               extra={"metrics_port": op_port}).start()
    runner = HostRunner(dev_cluster.kubeconfig, ns, work / "pods", selector=f"loraplane.io/pool={POOL}",
                        extra_env={"LORAPLANE_THREADS": "1", "OMP_NUM_THREADS": "1", **FAULTS},
                        grace_seconds=5).start()
    targets = work / "targets.json"
    targets.write_text("[]")
    prom = PrometheusServer(work / "prom", rule["spec"], [
        {"job_name": OPERATOR_JOB, "static_configs": [{"targets": [f"127.0.0.1:{op_port}"]}]},
        {"job_name": "loraplane-workers", "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}]}])
    stop = threading.Event()

    def sd_loop():
        while not stop.is_set():
            try:
                write_targets(core, ns, targets)
            except Exception:  # noqa: BLE001 - retried every second
                pass
            stop.wait(1.0)
    sd = threading.Thread(target=sd_loop, daemon=True)
    sd.start()
    try:
        dev_cluster.kubectl("apply", "-n", ns, "-f", "-", input="\n---\n".join(
            json.dumps(d) for d in manifests(work / "store", label, replicas=2, adapters=ADAPTERS, pool=POOL)))
        wait_for(prom.ready, timeout=60, what="prometheus ready")
        wait_for(lambda: write_targets(core, ns, targets) == 2, timeout=180, what="2 advertised workers")
        yield SimpleNamespace(
            ns=ns, cluster=dev_cluster, prom=prom, dashboard=dashboard, operator=operator, operator_port=op_port, targets=targets, rules=rule["spec"], kubeconfig=dev_cluster.kubeconfig,
            patch_adapter=lambda name, body: custom.patch_namespaced_custom_object(
                "loraplane.io", "v1alpha1", ns, "adapters", name, body),
            patch=lambda body: custom.patch_namespaced_custom_object("loraplane.io", "v1alpha1", ns, "workerpools",
                                                                     POOL, body),
            pool=lambda: custom.get_namespaced_custom_object("loraplane.io", "v1alpha1", ns, "workerpools", POOL))
    finally:
        stop.set()
        print(operator.tail(40))
        print(prom.log_path.read_text()[-3000:])
        prom.stop()
        runner.stop()
        operator.stop()
        dev_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        dev_cluster.delete_nodes(nodes)


def test_prometheus_loads_the_rules_fires_on_real_faults_and_feeds_every_panel(observed):
    env, prom = observed, observed.prom
    wait_for(lambda: {t["labels"]["job"] for t in prom.api("targets")["activeTargets"] if t["health"] == "up"}
             == {OPERATOR_JOB, "loraplane-workers"}, timeout=60, what="operator and workers scraped")

    # 1. every rule of the shipped file loaded and evaluates without error
    shipped = {r["alert"] for g in env.rules["groups"] for r in g["rules"]}
    wait_for(lambda: all(r.get("lastEvaluation", "").startswith("2") and r["health"] == "ok"
                         for g in prom.api("rules")["groups"] for r in g["rules"]), timeout=30,
             what="every rule evaluated")
    loaded = {r["name"] for g in prom.api("rules")["groups"] for r in g["rules"]}
    assert loaded == shipped and len(loaded) == 14

    # 2. real faults: an automated canary of the slow version, judged and rolled back by the operator
    with Traffic(env.kubeconfig, env.ns, POOL, TASK, concurrency=2, max_tokens=2):
        env.patch({"spec": {"rollouts": {TASK: {
            "canary": "sum-slow", "steps": [50, 100], "intervalSeconds": 30,
            "analysis": {"minRequests": 5, "maxP95RegressionPercent": 300, "maxErrorRatePercent": 5}}}}})
        wait_for(lambda: ((env.pool().get("status") or {}).get("rollouts") or {}).get(TASK, {}).get("phase")
                 == "RolledBack", timeout=120, what="automatic rollback")
        wait_for(lambda: prom.firing("LoraplaneCanaryRolledBack"), timeout=60, what="LoraplaneCanaryRolledBack")
        wait_for(lambda: prom.firing("LoraplaneHighP95Latency"), timeout=60, what="LoraplaneHighP95Latency")
        time.sleep(3)  # stable traffic on sum-v1 for the rate() panels
    rolled = prom.firing("LoraplaneCanaryRolledBack")
    assert [(a["namespace"], a["pool"], a["task"]) for a in rolled] == [(env.ns, POOL, TASK)]
    slow = prom.firing("LoraplaneHighP95Latency")
    assert {a["adapter"] for a in slow} == {"sum-slow"}, slow  # 1.5 s injected; sum-v1 stays under 1 s
    assert prom.firing("LoraplaneOperatorDown") == []

    # promtool check metrics on the real operator process and a real worker process, as scraped
    worker = json.loads(env.targets.read_text())[0]["targets"][0]
    for url in (f"http://127.0.0.1:{env.operator_port}/metrics", f"http://{worker}/metrics"):
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        out = subprocess.run([str(prom_build.promtool()), "check", "metrics"], input=text, text=True,
                             capture_output=True, timeout=120)
        assert out.returncode == 0, (url, out.stdout + out.stderr)

    # 3. every dashboard panel's PromQL returns data (those fed by absent events: valid, empty)
    empty = []
    for panel in env.dashboard["panels"]:
        for target in panel["targets"]:
            result = prom.api("query", query=target["expr"])["result"]
            if not result:
                empty.append(panel["title"])
    assert set(empty) == NO_EVENTS_HERE, empty


def rollout_state(env) -> dict:
    return ((env.pool().get("status") or {}).get("rollouts") or {}).get(TASK) or {}


def reset(env) -> None:
    env.patch({"spec": {"routes": {TASK: [{"adapter": "sum-v1", "weight": 100}]}, "rollouts": None}})
    wait_for(lambda: effective(env.pool()) == {"sum-v1": 100} and not rollout_state(env), timeout=60,
             what="reset to sum-v1 100%")


def test_prometheus_analysis_promotes_a_good_canary_and_rolls_back_a_slow_one(observed):
    env, prom = observed, observed.prom
    analysis = {"provider": "prometheus", "prometheus": {"address": f"http://127.0.0.1:{prom.port}"},
                "minRequests": 5, "maxP95RegressionPercent": 300, "maxErrorRatePercent": 5}
    reset(env)
    with Traffic(env.kubeconfig, env.ns, POOL, TASK, concurrency=2, max_tokens=2):
        env.patch({"spec": {"rollouts": {TASK: {"canary": "sum-v2", "steps": [50, 100], "intervalSeconds": 4,
                                                "analysis": analysis}}}})
        wait_for(lambda: rollout_state(env).get("phase") == "Promoted", timeout=180, what="sum-v2 promoted")
    assert effective(env.pool()) == {"sum-v2": 100}
    reset(env)
    with Traffic(env.kubeconfig, env.ns, POOL, TASK, concurrency=2, max_tokens=2):
        env.patch({"spec": {"rollouts": {TASK: {"canary": "sum-slow", "steps": [50, 100], "intervalSeconds": 30,
                                                "analysis": analysis}}}})
        wait_for(lambda: rollout_state(env).get("phase") == "RolledBack", timeout=120, what="sum-slow rolled back")
    assert rollout_state(env)["reason"] == "LatencyRegression", rollout_state(env)
    wait_for(lambda: effective(env.pool()) == {"sum-v1": 100}, what="stable weights back")
    # the verdicts came from Prometheus: the operator queried it, and never fell back to a direct scrape
    queries = prom.queries_logged()
    assert f'loraplane_worker_requests_total{{namespace=\\"{env.ns}\\",pool=\\"{POOL}\\"}}' in queries
    assert "scraping the workers directly" not in env.operator.log.read_text()


def test_a_corrupt_hot_swap_fires_the_swap_and_load_alerts_and_fills_the_failures_panel(observed):
    """Last (it leaves sum-v1 refused): the served sum-v1 is pointed at a store version whose
    file was corrupted after publishing; the workers' verify refuses the swap."""
    env, prom = observed, observed.prom
    env.patch_adapter("sum-v1", {"spec": {"version": "v3"}})
    try:
        wait_for(lambda: prom.firing("LoraplaneAdapterHotSwapFailed"), timeout=180,
                 what="LoraplaneAdapterHotSwapFailed")
    finally:
        print("adapter:", env.cluster.kubectl("get", "adapter", "sum-v1", "-n", env.ns, "-o", "json").stdout[-1500:])
        print("workers:", env.cluster.kubectl("get", "pods", "-n", env.ns, "-o",
                                              "jsonpath={.items[*].metadata.annotations.loraplane\\.io/worker-status}",
                                              check=False).stdout[-3000:])
        print("swap series:", prom.query("loraplane_worker_adapter_swap_failures_total"),
              prom.query("loraplane_worker_adapter_load_failures_total"))
    wait_for(lambda: prom.firing("LoraplaneAdapterLoadFailed"), timeout=30, what="LoraplaneAdapterLoadFailed")
    assert {(a["namespace"], a["pool"], a["adapter"]) for a in prom.firing("LoraplaneAdapterHotSwapFailed")} \
        == {(env.ns, POOL, "sum-v1")}
    assert {(a["adapter"], a["reason"]) for a in prom.firing("LoraplaneAdapterLoadFailed")} \
        == {("sum-v1", "AdapterRefused")}
    panel = next(p for p in env.dashboard["panels"] if p["title"].startswith("Hot-swap, preload and verify failures"))
    got = [bool(prom.api("query", query=t["expr"])["result"]) for t in panel["targets"]]
    assert got == [True, True, False], got  # adapter load/verify, hot swap: data; base load: none happened
