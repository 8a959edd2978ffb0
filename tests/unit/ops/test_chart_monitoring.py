"""The chart's monitoring parts (PodMonitor, ServiceMonitor, PrometheusRule,
Grafana dashboard ConfigMap): off by default, each behind its switch, and
`helm lint --strict` passes with all of them on."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from loraplane.devcluster import build

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "loraplane"
HELM = build.bin_dir() / "helm"
needs_helm = pytest.mark.skipif(not HELM.exists(), reason="helm not built (make control-plane builds it)")
SWITCHES = ("serviceMonitor", "podMonitor", "prometheusRule", "dashboard")
ALL_ON = [f"metrics.{s}.enabled=true" for s in SWITCHES]
KINDS = {"serviceMonitor": "ServiceMonitor", "podMonitor": "PodMonitor", "prometheusRule": "PrometheusRule",
         "dashboard": "ConfigMap"}


def render(*sets: str) -> list[dict]:
    args = [str(HELM), "template", "lp", str(CHART), "--namespace", "loraplane-system"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@needs_helm
def test_lint_strict_passes_with_every_monitoring_switch_on():
    args = [str(HELM), "lint", str(CHART), "--strict"]
    for s in ALL_ON:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_helm
def test_monitoring_is_off_by_default_and_each_switch_adds_its_object():
    default = {(d["kind"], d["metadata"]["name"]) for d in render()}
    assert not {k for k, _ in default} & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert ("ConfigMap", "lp-loraplane-dashboard") not in default
    for switch in SWITCHES:
        added = {(d["kind"], d["metadata"]["name"]) for d in render(f"metrics.{switch}.enabled=true")} - default
        assert [k for k, _ in added] == [KINDS[switch]], (switch, added)


@needs_helm
def test_pod_monitor_scrapes_workers_with_the_shared_labels():
    docs = {d["kind"]: d for d in render(*ALL_ON)}
    pm = docs["PodMonitor"]["spec"]
    assert pm["selector"]["matchLabels"] == {"app.kubernetes.io/name": "loraplane-worker",
                                             "app.kubernetes.io/managed-by": "loraplane"}
    assert pm["namespaceSelector"] == {"any": True}
    ep = pm["podMetricsEndpoints"][0]
    assert ep["port"] == "http" and ep["path"] == "/metrics"  # operator/manifests.py names the port "http"
    assert {r["targetLabel"] for r in ep["relabelings"]} == {"pool", "node", "gpu", "variant"}
    variant = next(r for r in ep["relabelings"] if r["targetLabel"] == "variant")
    reservation = json.dumps({"gpu": 0, "mib": 100, "node": "n", "variant": "bnb-4bit"}, sort_keys=True,
                             separators=(",", ":"))  # as operator/manifests.py writes the annotation
    assert re.fullmatch(variant["regex"], reservation).group(1) == "bnb-4bit"
    sm = docs["ServiceMonitor"]["spec"]
    assert sm["endpoints"][0]["port"] == "metrics"
    limited = {d["kind"]: d for d in render("metrics.podMonitor.enabled=true", "watchNamespaces={ml,ops}")}
    assert limited["PodMonitor"]["spec"]["namespaceSelector"] == {"matchNames": ["ml", "ops"]}


@needs_helm
def test_dashboard_config_map_has_the_sidecar_label_and_every_panel():
    cm = next(d for d in render("metrics.dashboard.enabled=true") if d["kind"] == "ConfigMap"
              and d["metadata"]["name"] == "lp-loraplane-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["loraplane.json"])
    titles = " | ".join(p["title"] for p in dash["panels"])
    for needed in ("VRAM", "depletion", "p50/p95", "tokens/s", "Canary weights", "Hot-swap, preload and verify",
                   "Training progress", "Training loss"):
        assert needed in titles, needed
    assert all(t["expr"] for p in dash["panels"] for t in p["targets"])
