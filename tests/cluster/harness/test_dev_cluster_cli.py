"""`loraplane dev-cluster up|kubeconfig|status|down` starts a detached control
plane a person can use with kubectl, and `down` leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from loraplane.devcluster import build


def loraplane(*args, check=True):
    return subprocess.run([sys.executable, "-m", "loraplane.cli", *args], capture_output=True, text=True,
                          check=check, timeout=240)


def test_up_kubeconfig_status_down(tmp_path):
    state_dir = tmp_path / "dc"
    up = loraplane("dev-cluster", "up", "--dir", str(state_dir), "--nodes", "1", "--gpus-per-node", "2")
    pids = {}
    try:
        assert "control plane up" in up.stdout
        kubeconfig = loraplane("dev-cluster", "kubeconfig", "--dir", str(state_dir)).stdout.strip()
        assert os.path.exists(kubeconfig)
        status = json.loads(loraplane("dev-cluster", "status", "--dir", str(state_dir)).stdout)
        assert status["running"] is True
        pids = status["pids"]
        nodes = subprocess.run([str(build.bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", "get", "nodes",
                                "-o", "json"], capture_output=True, text=True, check=True).stdout
        items = json.loads(nodes)["items"]
        assert [n["metadata"]["labels"]["nvidia.com/gpu.count"] for n in items] == ["2"]
    finally:
        loraplane("dev-cluster", "down", "--dir", str(state_dir), check=False)
    for name, pid in pids.items():
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid), f"{name} (pid {pid}) survived down"
    assert loraplane("dev-cluster", "status", "--dir", str(state_dir), check=False).returncode == 1


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except FileNotFoundError:
        return True
