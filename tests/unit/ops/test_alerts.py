"""Alert rules as the chart ships them (charts/loraplane/files/alerts.yaml
rendered by templates/prometheusrule.yaml), checked and unit-tested with the
real promtool built from the Prometheus Go module (loraplane/devcluster/prom_build.py).

tests/unit/ops/alerts_test.yaml holds the promtool cases: for every alert
synthetic series that fire it and series or times where it must not."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from loraplane.devcluster import build, prom_build

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "loraplane"
CASES = Path(__file__).with_name("alerts_test.yaml")
RUNBOOK = ROOT / "docs" / "ops" / "runbook.md"
HELM = build.bin_dir() / "helm"
needs_helm = pytest.mark.skipif(not HELM.exists(), reason="helm not built (make control-plane builds it)")


def rendered_rules(*sets: str) -> dict:
    """The PrometheusRule's spec as `helm template` renders it (release lp)."""
    args = [str(HELM), "template", "lp", str(CHART), "--namespace", "loraplane-system",
            "--set", "metrics.prometheusRule.enabled=true", "--show-only", "templates/prometheusrule.yaml"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    (doc,) = [d for d in yaml.safe_load_all(out) if d]
    assert doc["kind"] == "PrometheusRule"
    return doc["spec"]


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(prom_build.promtool()), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def write_rules(tmp_path: Path, spec: dict) -> Path:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copyfile(CASES, tmp_path / CASES.name)
    return tmp_path / "rules.yaml"


def alerts(spec: dict) -> list[dict]:
    return [r for g in spec["groups"] for r in g["rules"] if "alert" in r]


@needs_helm
def test_promtool_check_rules_passes_on_the_shipped_rules(tmp_path):
    rules = write_rules(tmp_path, rendered_rules())
    out = promtool("check", "rules", str(rules))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 14 rules found" in out.stdout, out.stdout


@needs_helm
def test_promtool_unit_tests_of_every_alert_pass(tmp_path):
    write_rules(tmp_path, rendered_rules())
    out = promtool("test", "rules", CASES.name, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_helm
def test_promtool_unit_tests_fail_when_a_threshold_changes(tmp_path):
    """The cases test the shipped values: a p95 threshold of 60 s no longer fires for a 28.75 s p95."""
    write_rules(tmp_path, rendered_rules("metrics.prometheusRule.thresholds.p95LatencySeconds=60"))
    out = promtool("test", "rules", CASES.name, cwd=tmp_path)
    assert out.returncode != 0
    assert "LoraplaneHighP95Latency" in out.stdout + out.stderr


@needs_helm
def test_every_alert_has_a_firing_and_a_quiet_case():
    names = {r["alert"] for r in alerts(rendered_rules())}
    cases = yaml.safe_load(CASES.read_text())
    fired, quiet = set(), set()
    for t in cases["tests"]:
        for a in t.get("alert_rule_test", []):
            (fired if a.get("exp_alerts") else quiet).add(a["alertname"])
    assert names == fired == quiet, (names - fired, names - quiet)


@needs_helm
def test_every_alert_has_severity_summary_description_and_a_runbook_anchor_that_exists():
    text = RUNBOOK.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    for rule in alerts(rendered_rules()):
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], rule["alert"]
        url, _, anchor = ann["runbook_url"].partition("#")
        assert url.endswith("docs/ops/runbook.md") and anchor == rule["alert"].lower(), ann["runbook_url"]
        assert anchor in anchors, f"docs/ops/runbook.md has no section {rule['alert']}"
    assert "__" not in yaml.safe_dump(rendered_rules()).replace("__name__", ""), "a placeholder was not replaced"
