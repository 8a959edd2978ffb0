"""The chart's optional ModelStore backup CronJob (issue 17): off by default;
on, it runs `loraplane modelstore backup` against the store claim with the
S3 credentials from a Secret (envFrom), never inlined in the manifest."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from loraplane.devcluster import build

CHART = Path(__file__).resolve().parents[3] / "charts" / "loraplane"
HELM = build.bin_dir() / "helm"
needs_helm = pytest.mark.skipif(not HELM.exists(), reason="helm not built (make control-plane builds it)")

ON = ["modelStore.existingClaim=models", "modelStore.backup.enabled=true", "modelStore.backup.to=s3://bk/loraplane",
      "modelStore.backup.credentialsSecret=s3-creds"]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, check=check)


def render(*sets: str) -> list[dict]:
    args = ["template", "lp", str(CHART), "--namespace", "loraplane-system"]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


@needs_helm
def test_no_cronjob_by_default():
    assert not [d for d in render() if d["kind"] == "CronJob"]


@needs_helm
def test_backup_cronjob_runs_backup_with_rotation_and_secret_credentials():
    (cj,) = [d for d in render(*ON, "modelStore.backup.keepDaily=5", "modelStore.backup.keepWeekly=3",
                                  "modelStore.backup.endpoint=http://minio.storage:9000") if d["kind"] == "CronJob"]
    spec = cj["spec"]
    assert spec["schedule"] == "17 3 * * *" and spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"][:3] == ["loraplane", "modelstore", "backup"]
    args = c["command"][3:]
    assert args[args.index("--root") + 1] == "/models" and args[args.index("--to") + 1] == "s3://bk/loraplane"
    assert args[args.index("--keep-daily") + 1] == "5" and args[args.index("--keep-weekly") + 1] == "3"
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
    assert "AWS_SECRET_ACCESS_KEY" not in env
    (vol,) = [v for v in pod["volumes"] if v["name"] == "model-store"]
    assert vol["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert {"name": "model-store", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
    assert c["image"].startswith("ghcr.io/loraplane/worker:")  # the image with the s3 extra
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


@needs_helm
def test_backup_without_destination_store_or_secret_is_refused():
    for missing in ("modelStore.backup.to=", "modelStore.backup.credentialsSecret=", "modelStore.existingClaim="):
        result = helm("template", "lp", str(CHART), *sum((["--set", s] for s in ON + [missing]), []), check=False)
        assert result.returncode != 0 and "modelStore.backup" in result.stderr, (missing, result.stderr)
