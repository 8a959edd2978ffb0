"""Unit tests for the real node's pure parts: config rendering, the build's
stamp logic, sysctl record/restore, stale-state reading, cgroup/mount/chain
parsing, OCI archive names. No node, no root-only host changes."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import tomllib
import yaml

from loraplane.devcluster import build, host_state, node_build, node_runtime, pki, realnode, versions
from loraplane.devcluster.node_runtime import NodePaths


@pytest.fixture
def paths(tmp_path) -> NodePaths:
    return NodePaths(run_dir=tmp_path / "run", node_dir=tmp_path / "node", containerd_root=tmp_path / "root")


# ---- public API other suites use ---------------------------------------------------
def test_socket_path_is_the_agreed_one():
    assert realnode.CONTAINERD_SOCKET == "/run/loraplane-node/containerd/containerd.sock"
    assert NodePaths().socket == realnode.CONTAINERD_SOCKET
    assert realnode.ctr_path() == build.bin_dir() / "ctr"


# ---- build -----------------------------------------------------------------------------------
def test_goproxy_takes_the_first_url_entry():
    assert build.goproxy_url("direct,https://a.example/x/,https://b.example") == "https://a.example/x"
    assert build.goproxy_url("off|file:///srv/mods") == "file:///srv/mods"
    with pytest.raises(SystemExit):
        build.goproxy_url("direct")


def test_node_build_stamp(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "bin_dir", lambda: tmp_path)
    assert node_build.missing_node_binaries(tmp_path) == list(build.NODE_BINARIES)
    for b in build.NODE_BINARIES:
        (tmp_path / b).write_text("")
        (tmp_path / b).chmod(0o755)
    # Binaries without a stamp: an interrupted build, so everything again.
    assert node_build.missing_node_binaries(tmp_path) == list(build.NODE_BINARIES)
    (tmp_path / build.NODE_STAMP).write_text(json.dumps(node_build.wanted_info()))
    assert node_build.missing_node_binaries(tmp_path) == []
    (tmp_path / build.NODE_STAMP).write_text(json.dumps(node_build.wanted_info() | {"containerd": "v2.0.0"}))
    assert node_build.missing_node_binaries(tmp_path) == list(build.CONTAINERD_BINARIES)
    (tmp_path / build.NODE_STAMP).write_text(json.dumps(node_build.wanted_info() | {"programs": "old"}))
    assert node_build.missing_node_binaries(tmp_path) == list(build.GO_PROGRAMS)
    (tmp_path / build.NODE_STAMP).write_text(json.dumps(node_build.wanted_info()))
    (tmp_path / "kubelet").unlink()
    assert node_build.missing_node_binaries(tmp_path) == ["kubelet"]


def test_programs_hash_follows_the_go_sources():
    assert len(node_build.programs_hash()) == 64
    assert (node_build.GO_PROGRAMS_DIR / "pause" / "main.go").exists()
    assert versions.CONTAINERD_VERSION.startswith("v2.")


# ---- configs ---------------------------------------------------------------------------------------
def test_containerd_config(paths):
    cfg = tomllib.loads(node_runtime.containerd_config(paths, "localhost/loraplane/pause:abc", "/usr/sbin/runc"))
    assert cfg["version"] == 4
    assert cfg["root"] == str(paths.containerd_root)
    assert cfg["state"] == str(paths.containerd_state)
    assert cfg["imports"] == []
    plugins = cfg["plugins"]
    assert plugins["io.containerd.server.v1.grpc"]["address"] == paths.socket
    assert "grpc" not in cfg  # ignored by config version 4
    images = plugins["io.containerd.cri.v1.images"]
    assert images["snapshotter"] == "overlayfs"
    assert images["pinned_images"]["sandbox"] == "localhost/loraplane/pause:abc"
    runtime = plugins["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["netns_mounts_under_state_dir"] is True
    assert runtime["cni"]["bin_dirs"] == ["/usr/lib/cni"]
    assert runtime["cni"]["conf_dir"] == str(paths.cni_conf_dir)
    runc = runtime["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"] == {"SystemdCgroup": False, "BinaryName": "/usr/sbin/runc",
                               "Root": str(paths.containerd_state / "runc")}
    assert plugins["io.containerd.shim.v1.manager"]["socket_dir"] == str(paths.containerd_state / "s")
    assert plugins["io.containerd.nri.v1.nri"]["disable"] is True


def test_cni_conflist(paths):
    conf = json.loads(node_runtime.cni_conflist(paths))
    bridge, portmap = conf["plugins"]
    assert bridge["type"] == "bridge" and bridge["bridge"] == "cni0" and bridge["ipMasq"] is True
    assert bridge["ipam"]["type"] == "host-local"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.88.0.0/24"}]]
    assert bridge["ipam"]["dataDir"].startswith(str(paths.run_dir))
    assert portmap["type"] == "portmap"


def test_kubelet_config(paths, tmp_path):
    cfg = yaml.safe_load(node_runtime.kubelet_config(paths, "/run/x.sock", tmp_path / "ca.crt"))
    assert cfg["kind"] == "KubeletConfiguration"
    assert cfg["cgroupDriver"] == "cgroupfs"
    assert cfg["failSwapOn"] is False and cfg["failCgroupV1"] is False
    assert cfg["oomScoreAdj"] == 0
    assert cfg["containerRuntimeEndpoint"] == "unix:///run/x.sock"
    assert cfg["authentication"]["webhook"]["enabled"] is True
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    assert cfg["authentication"]["x509"]["clientCAFile"] == str(tmp_path / "ca.crt")
    assert cfg["authorization"]["mode"] == "Webhook"
    assert cfg["resolvConf"] == "/etc/resolv.conf"
    assert cfg["podLogsDir"] == str(paths.pod_logs)
    assert cfg["evictionHard"]["nodefs.available"] == "1%"
    args = node_runtime.kubelet_args(paths, tmp_path / "kc", "n0", "192.0.2.9")
    assert "--node-ip=192.0.2.9" in args and f"--root-dir={paths.kubelet_root}" in args
    assert "--hostname-override=n0" in args


def test_kube_proxy_config(tmp_path):
    cfg = yaml.safe_load(node_runtime.kube_proxy_config(tmp_path / "kc", "n0"))
    assert cfg["mode"] == "iptables"
    assert cfg["conntrack"]["maxPerCore"] == 0
    assert cfg["clusterCIDR"] == "10.88.0.0/24"
    assert cfg["hostnameOverride"] == "n0"
    assert cfg["iptables"]["localhostNodePorts"] is False


def test_node_identities(tmp_path):
    p = pki.make_pki(tmp_path, extra_ips=("192.0.2.7",))
    import subprocess

    def subject(cert: Path) -> str:
        return subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", str(cert)],
                              capture_output=True, text=True, check=True).stdout
    cert, _ = pki.node_identity(tmp_path, "n0")
    assert "O = system:nodes" in subject(cert) and "CN = system:node:n0" in subject(cert)
    cert, _ = pki.kube_proxy_identity(tmp_path)
    assert "CN = system:kube-proxy" in subject(cert)
    assert "O = system:masters" in subject(p.kubelet_client_cert)
    sans = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(p.serving_cert)],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:192.0.2.7" in sans and "IP Address:10.0.0.1" in sans
    # Another advertised address: the serving certificate is made again.
    pki.make_pki(tmp_path, extra_ips=("192.0.2.8",))
    sans = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(p.serving_cert)],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:192.0.2.8" in sans and "192.0.2.7" not in sans


# ---- sysctls and state ---------------------------------------------------------------------------------------
def test_sysctl_record_and_restore(tmp_path):
    root = tmp_path / "sys"
    (root / "kernel").mkdir(parents=True)
    (root / "kernel" / "panic").write_text("1\n")
    (root / "net" / "ipv4" / "conf" / "all").mkdir(parents=True)
    (root / "net" / "ipv4" / "conf" / "all" / "route_localnet").write_text("0\n")
    names = ("kernel.panic", "net.ipv4.conf.all.route_localnet", "net.netfilter.nf_conntrack_max")
    recorded = host_state.record_sysctls(names, root=root)
    assert recorded == {"kernel.panic": "1", "net.ipv4.conf.all.route_localnet": "0",
                        "net.netfilter.nf_conntrack_max": None}
    (root / "kernel" / "panic").write_text("10\n")  # what the kubelet does
    (root / "net" / "netfilter").mkdir(parents=True)
    (root / "net" / "netfilter" / "nf_conntrack_max").write_text("131072\n")  # appeared later
    assert host_state.restore_sysctls(recorded, root=root) == {"kernel.panic": "1"}
    assert (root / "kernel" / "panic").read_text().strip() == "1"
    assert (root / "net" / "netfilter" / "nf_conntrack_max").read_text().strip() == "131072"
    assert host_state.restore_sysctls(recorded, root=root) == {}  # idempotent


def test_default_sysctls_cover_what_the_stack_changes():
    for name in ("kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory", "net.ipv4.ip_forward",
                 "net.ipv4.conf.all.route_localnet", "net.netfilter.nf_conntrack_tcp_timeout_established"):
        assert name in host_state.SYSCTLS


def test_state_file(tmp_path):
    path = tmp_path / "run" / "state.json"
    assert host_state.read_state(path) is None  # no run recorded: not stale
    host_state.write_state(path, {"pids": {"kubelet": 1}, "sysctls": {"kernel.panic": "1"}})
    assert host_state.read_state(path)["pids"] == {"kubelet": 1}
    path.write_text('{"pids": {"kub')  # a crash while writing: still a run to undo
    assert host_state.read_state(path) == {}


def test_stale_run_is_undone_and_a_live_detached_one_refused(tmp_path, paths, monkeypatch):
    class FakeCluster:
        bin_dir = tmp_path / "bin"
        workdir = tmp_path / "cluster"
    node = realnode.RealNode(FakeCluster(), paths=paths)
    calls = []
    monkeypatch.setattr(node, "_teardown", lambda pids, sysctls, **kw: calls.append((pids, sysctls, kw)))
    node._undo_stale_run()
    assert calls == []  # no state file: nothing to undo
    host_state.write_state(paths.state_file, {"name": "old", "pids": {"kubelet": 999999999},
                                              "sysctls": {"kernel.panic": "1"}, "bin_dir": str(tmp_path / "bin")})
    node._undo_stale_run()
    assert calls[0][0] == {"kubelet": 999999999} and calls[0][1] == {"kernel.panic": "1"}
    assert calls[0][2]["cluster_alive"] is False and calls[0][2]["stale_name"] == "old"
    # A detached node whose processes still run (here: this very process,
    # recorded under its executable's name) is not stale.
    exe = Path(os.readlink("/proc/self/exe"))
    host_state.write_state(paths.state_file, {"pids": {exe.name: os.getpid()}, "detached": True,
                                              "bin_dir": str(exe.parent)})
    with pytest.raises(RuntimeError, match="detached real node is running"):
        node._undo_stale_run()


# ---- parsing host state ---------------------------------------------------------------------------------------------------
MOUNTINFO = """\
25 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
40 25 0:50 / /var/lib/loraplane-node/kubelet/pods/u1/volumes/kubernetes.io~projected/kube-api-access rw - tmpfs tmpfs rw
41 25 0:51 / /run/loraplane-node/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs rw - overlay overlay rw
42 25 0:52 / /run/loraplane-node-other rw - tmpfs tmpfs rw
43 25 0:53 / /run/loraplane-node/containerd/io.containerd.grpc.v1.cri/sandboxes/abc/shm rw - tmpfs shm rw
"""


def test_cgroup_and_mount_parsing(tmp_path):
    assert host_state.cgroup_mounts(MOUNTINFO) == [Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup/unified")]
    points = host_state.mounts_under(("/var/lib/loraplane-node", "/run/loraplane-node"), MOUNTINFO)
    assert "/run/loraplane-node-other" not in points
    assert len(points) == 3
    assert points[0].count("/") >= points[-1].count("/")  # deepest first
    memory = tmp_path / "memory"
    (memory / "kubepods" / "besteffort" / "pod1" / "c1").mkdir(parents=True)
    (memory / "system.slice").mkdir()
    found = host_state.kubepods_cgroups([memory])
    assert found[0] == memory / "kubepods" / "besteffort" / "pod1" / "c1"
    assert found[-1] == memory / "kubepods"
    assert memory / "system.slice" not in found


IPTABLES_SAVE = """\
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:CNI-abc123 - [0:0]
:DOCKER-ISH - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -s 10.88.0.5/32 -m comment --comment "name: \\"loraplane-node\\" id: \\"x\\"" -j CNI-abc123
-A POSTROUTING -j DOCKER-ISH
-A KUBE-SERVICES -j KUBE-POSTROUTING
COMMIT
"""


def test_chain_cleanup_commands():
    cmds = host_state.chain_cleanup_commands(IPTABLES_SAVE, "nat")
    deletes = [c for c in cmds if c[2] == "-D"]
    assert ["-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals",
            "-j", "KUBE-SERVICES"] in deletes
    assert any(c[3] == "POSTROUTING" and c[-1] == "CNI-abc123" for c in deletes)
    assert not any("DOCKER-ISH" in c for c in cmds)
    assert not any(c[3].startswith("KUBE-") for c in deletes)  # rules inside our chains go with -F
    assert ["-t", "nat", "-X", "KUBE-SERVICES"] in cmds and ["-t", "nat", "-F", "CNI-abc123"] in cmds
    flushes = [i for i, c in enumerate(cmds) if c[2] == "-F"]
    assert max(i for i, c in enumerate(cmds) if c[2] == "-D") < min(flushes)
    assert host_state.chain_cleanup_commands("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n", "nat") == []


def test_oci_archive_images(tmp_path):
    archive = tmp_path / "img.tar"
    index = {"schemaVersion": 2, "manifests": [
        {"digest": "sha256:aa", "annotations": {"org.opencontainers.image.ref.name": "localhost/x:1"}},
        {"digest": "sha256:bb", "annotations": {"io.containerd.image.name": "localhost/y:2",
                                                "org.opencontainers.image.ref.name": "2"}}]}
    data = json.dumps(index).encode()
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert realnode.oci_archive_images(archive) == {"localhost/x:1": "sha256:aa", "localhost/y:2": "sha256:bb"}


def test_containerfile_is_from_scratch():
    from loraplane.devcluster import node_images

    assert node_images.containerfile("pause") == 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n'


def test_start_refuses_a_live_detached_node_without_touching_it(tmp_path, paths, monkeypatch):
    class FakeCluster:
        bin_dir = tmp_path / "bin"
        workdir = tmp_path / "cluster"
    monkeypatch.setattr(realnode.node_build, "missing_node_binaries", lambda d: [])
    monkeypatch.setattr(realnode, "missing_host_tools", lambda: [])
    monkeypatch.setattr(realnode, "LOCK_FILE", tmp_path / "lock")
    node = realnode.RealNode(FakeCluster(), paths=paths)
    torn = []
    monkeypatch.setattr(node, "_teardown", lambda *a, **kw: torn.append(a))
    exe = Path(os.readlink("/proc/self/exe"))
    host_state.write_state(paths.state_file, {"pids": {exe.name: os.getpid()}, "detached": True,
                                              "bin_dir": str(exe.parent)})
    with pytest.raises(RuntimeError, match="detached real node is running"):
        node.start()
    assert torn == [] and node._lock_fd is None and paths.state_file.exists()
    # `down` finds it; a node a test run started (not detached) it leaves alone.
    assert realnode.RealNode.attach(FakeCluster(), paths=paths).pids == {exe.name: os.getpid()}
    host_state.write_state(paths.state_file, {"pids": {exe.name: os.getpid()}, "bin_dir": str(exe.parent)})
    assert realnode.RealNode.attach(FakeCluster(), paths=paths) is None
