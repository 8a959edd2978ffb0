"""A REAL kubelet node (containerd v2 + runc + CNI + kube-proxy) joined to the
dev cluster: it becomes Ready with GPU Feature Discovery labels, runs a real
container from an image built FROM scratch, serves on a pod IP the host
reaches, answers `kubectl logs` / `exec`, backs a ClusterIP Service through
kube-proxy, lets the pod call the API server with its projected
ServiceAccount token through the `kubernetes` Service, and leaves nothing
behind after stop().

Needs root, the node binaries (`make node`) and the node's Debian packages
(`make node-deps`); `make test` provides all three, so this is not skipped.
"""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest

from loraplane.devcluster import host_state, node_images
from loraplane.devcluster.node_runtime import BRIDGE
from loraplane.devcluster.nodes import RTX_3090
from loraplane.devcluster.realnode import CONTAINERD_SOCKET, RealNode, ctr_path
from loraplane.devcluster.waiting import wait_for

NODE_NAME = "loraplane-node-test"


def _http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def _try_get(url: str) -> str | None:
    try:
        return _http_get(url)
    except OSError:
        return None


@pytest.fixture(scope="module")
def real_node(dev_cluster):
    before = host_state.record_sysctls()
    host_paths = {p: p.exists() for p in (Path("/run/containerd"), Path("/opt/containerd"), Path("/run/netns"))}
    started = time.monotonic()
    node = RealNode(dev_cluster, name=NODE_NAME)
    node.start()
    node.start_to_ready_s = round(time.monotonic() - started, 1)
    print(f"real node {NODE_NAME}: Ready + GPUs advertised in {node.start_to_ready_s} s; {node.timings}")
    node.sysctls_before = before
    node.host_paths_before = host_paths
    yield node
    node.stop()


@pytest.fixture(scope="module")
def probe_image(real_node):
    ref, archive = node_images.scratch_image("nodeprobe")
    assert ref in real_node.import_image(archive)
    assert real_node.images().get(ref)  # in containerd's k8s.io namespace
    # A second import of the same archive is skipped (same name and digest).
    before = real_node.ctr("images", "ls").stdout
    real_node.import_image(archive)
    assert real_node.ctr("images", "ls").stdout == before
    return ref


def test_node_ready_with_gpu_labels_and_capacity(dev_cluster, real_node):
    node = dev_cluster.get_json("node", NODE_NAME)
    conds = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conds["Ready"] == "True"
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == RTX_3090
    assert labels["nvidia.com/gpu.memory"] == "24576"
    assert labels["nvidia.com/gpu.count"] == "2"
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "2"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.37.2"
    assert info["containerRuntimeVersion"].startswith("containerd://2.")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == dev_cluster.host_ip
    assert Path(CONTAINERD_SOCKET).is_socket()
    assert ctr_path().exists()


def test_kubernetes_service_has_the_api_server_endpoint(dev_cluster, real_node):
    slices = dev_cluster.get_json("endpointslices", "-n", "default", "-l", "kubernetes.io/service-name=kubernetes")
    addresses = [a for s in slices["items"] for e in s.get("endpoints", []) for a in e["addresses"]]
    assert addresses == [dev_cluster.host_ip]


def test_pod_runs_serves_logs_exec_service_and_api(dev_cluster, real_node, probe_image, namespace):
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "probe", "labels": {"app": "probe"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": NODE_NAME},
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "probe", "image": probe_image, "imagePullPolicy": "Never",
                "args": ["serve"], "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}},
            }],
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe"},
        "spec": {"selector": {"app": "probe"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    dev_cluster.apply([pod, service], namespace=namespace)

    def ready_ip():
        p = dev_cluster.get_json("pod", "probe", "-n", namespace)
        conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
        return p["status"].get("podIP") if conds.get("Ready") == "True" else None
    pod_ip = wait_for(ready_ip, timeout=120, interval=0.5, what="probe pod Ready on the real node")
    assert pod_ip.startswith("10.88.0.")

    # The host reaches the pod IP over the cni0 bridge.
    assert _http_get(f"http://{pod_ip}:8080/").startswith("nodeprobe probe")
    # kubectl logs: API server -> kubelet (InternalIP, kubelet client cert).
    logs = dev_cluster.kubectl("logs", "probe", "-n", namespace).stdout
    assert "nodeprobe serving on :8080" in logs
    # kubectl exec runs the same static binary in the container; `whoami`
    # calls the API server through the `kubernetes` Service (10.0.0.1:443)
    # with the projected ServiceAccount token.
    who = dev_cluster.kubectl("exec", "probe", "-n", namespace, "--", "/nodeprobe", "whoami").stdout.strip()
    assert who == f"system:serviceaccount:{namespace}:default"
    assert _http_get(f"http://{pod_ip}:8080/whoami").strip() == who
    # A ClusterIP Service through kube-proxy's iptables rules, from the host.
    cluster_ip = dev_cluster.get_json("service", "probe", "-n", namespace)["spec"]["clusterIP"]
    body = wait_for(lambda: _try_get(f"http://{cluster_ip}/"), timeout=60, interval=0.5,
                    what=f"Service probe at {cluster_ip}")
    assert body.startswith("nodeprobe probe")
    # The pod's container is limited in the v1 memory hierarchy.
    uid = dev_cluster.get_json("pod", "probe", "-n", namespace)["metadata"]["uid"]
    limits = list(Path("/sys/fs/cgroup/memory/kubepods").glob(f"**/pod{uid}/*/memory.limit_in_bytes"))
    assert any(int(p.read_text()) == 64 * 1024 * 1024 for p in limits), limits


def test_stop_removes_everything(dev_cluster, real_node):
    pids = dict(real_node.pids)
    assert pids.keys() == {"containerd", "kubelet", "kube-proxy"}
    report = real_node.stop()
    assert report["chains_left"] == [] and report["mounts_left"] == [] and report["cgroups_left"] == []
    for name, pid in pids.items():
        assert not host_state.process_alive(pid), name
    assert host_state.pids_running(str(real_node.bin_dir / "containerd-shim-runc-v2")) == []
    assert not Path(f"/sys/class/net/{BRIDGE}").exists()
    assert host_state.leftover_chains() == []
    assert host_state.kubepods_cgroups(host_state.cgroup_mounts()) == []
    assert host_state.mounts_under(("/var/lib/loraplane-node", "/run/loraplane-node")) == []
    assert not real_node.paths.state_file.exists()
    # Nothing of containerd's defaults (/run/containerd, /opt/containerd, /run/netns) was created.
    assert {p: p.exists() for p in real_node.host_paths_before} == real_node.host_paths_before
    after = host_state.record_sysctls()
    changed = {k: (v, after[k]) for k, v in real_node.sysctls_before.items() if v is not None and after[k] != v}
    assert changed == {}
    assert dev_cluster.kubectl("get", "node", NODE_NAME, check=False).returncode != 0 or \
        wait_for(lambda: dev_cluster.kubectl("get", "node", NODE_NAME, check=False).returncode != 0,
                 timeout=30, what="the Node object deleted")
    assert real_node.stop() == {}  # idempotent


def test_start_undoes_a_crashed_run(dev_cluster):
    """SIGKILL every node process (as a crash would), then start again: the
    stale run is found through the state file and undone first."""
    node_state_before = host_state.record_sysctls()
    node = RealNode(dev_cluster, name=NODE_NAME)
    node.start()
    again = None
    try:
        for pid in node.pids.values():
            os.killpg(pid, 9)
        wait_for(lambda: not any(host_state.process_alive(p) for p in node.pids.values()), timeout=20,
                 what="node processes killed")
        node._unlock()  # a crashed process loses its lock with its file descriptors
        assert node.paths.state_file.exists()
        changed_by_node = host_state.record_sysctls()
        again = RealNode(dev_cluster, name=NODE_NAME)
        again.start()
        assert again.pids["kubelet"] != node.pids["kubelet"]
    finally:
        # Stop through `again` when it started: it holds the node lock, and a
        # lock left open would block every later RealNode in this process (the
        # e2e suite runs after this one in `make test`).
        report = (again or RealNode(dev_cluster, name=NODE_NAME)).stop()
    assert report["mounts_left"] == [] and report["cgroups_left"] == [] and report["chains_left"] == []
    assert not node.paths.state_file.exists()
    # The kubelet of the crashed run had changed kernel.panic etc.; the values
    # recorded before that run are back, not the crashed run's.
    assert changed_by_node["kernel.panic"] == "10"
    assert host_state.record_sysctls()["kernel.panic"] == node_state_before["kernel.panic"]
