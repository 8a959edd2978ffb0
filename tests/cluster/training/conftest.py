"""Fixtures for the training cluster suite: a temp ModelStore holding the tiny
base and the datasets, the real operator as a subprocess reading that store,
and a HostRunner that runs the operator's Job pods (verify and training) as
host processes with the pod's identity, so the real ``loraplane train`` runs
with exactly the Job's argv, writes the store and its pod is completed
through KWOK by its exit code (see docs/training.md, "In the cluster suite").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loraplane.modelstore import ModelStore

BASE_NAME, BASE_VERSION = "mistral-7b-instruct", "v0.3"


def _records(n: int) -> list[dict]:
    words = ["alpha", "beta", "gamma", "delta"]
    return [{"instruction": f"repeat {words[i % 4]}", "output": f"{words[i % 4]} {words[i % 4]}"} for i in range(n)]


@pytest.fixture(scope="module")
def train_store(tiny_base_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainstore")
    ModelStore(root).publish(tiny_base_dir, kind="base", name=BASE_NAME, version=BASE_VERSION)
    data = root / "datasets"
    data.mkdir()
    (data / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(12)))
    (data / "bad.jsonl").write_text(json.dumps(_records(1)[0]) + "\n{not json\n")
    return root


@pytest.fixture(scope="module")
def training_operator(dev_cluster, train_store, tmp_path_factory):
    root = Path(__file__).resolve().parents[3]
    dev_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(root / "crds"))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    log = tmp_path_factory.mktemp("trainop") / "operator.log"
    args = [sys.executable, "-m", "loraplane.cli", "operator", "run", "--kubeconfig", str(dev_cluster.kubeconfig),
            "--store-root", str(train_store), "--metrics-port", "0", "--resync-seconds", "5",
            "--backoff-base-seconds", "1", "--job-image", "loraplane:test"]
    with open(log, "a") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    yield log
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    print("\n".join(log.read_text().splitlines()[-60:]))
