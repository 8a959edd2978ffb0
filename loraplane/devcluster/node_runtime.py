"""Configuration files of the real node: containerd (v2, config version 3),
the CNI network, the kubelet and kube-proxy. Pure functions: they render
text from paths and names, so they are unit-tested without a node.

Why each setting is there (all checked on this machine kind, see
docs/testing.md "The real node"):

- containerd ``restrict_oom_score_adj = true``: the VM gives root no
  CAP_SYS_RESOURCE, so lowering a score is refused and every sandbox fails
  with ``runc create failed: ... can't get final child's PID from pipe:
  EOF`` (``failed to update /proc/self/oom_score_adj: Permission denied``).
- ``SystemdCgroup = false`` and the kubelet's ``cgroupDriver: cgroupfs``:
  no systemd runs the VM; cgroups are hybrid (v1 hierarchies + cgroup2 at
  /sys/fs/cgroup/unified) and the VM's init keeps processes in v1.
- overlayfs snapshotter; NRI off (nothing uses it).
- ``netns_mounts_under_state_dir = true``: pod network namespaces are
  mounted under our state dir, not /run/netns, so teardown only touches ours.
- kubelet ``failCgroupV1: false`` (else "kubelet is configured to not run on
  a host using cgroup v1"), ``oomScoreAdj: 0`` (no CAP_SYS_RESOURCE),
  ``failSwapOn: false``, webhook authentication/authorization with the
  cluster CA (the API server's logs/exec requests), eviction thresholds
  that a busy shared disk does not cross, and image GC off (imported images
  cannot be pulled again: there is no registry).
- kube-proxy ``mode: iptables``, ``conntrack.maxPerCore: 0`` and zero
  timeouts (leave the host's conntrack settings alone),
  ``localhostNodePorts: false`` (no route_localnet change).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RUN_DIR = Path("/run/loraplane-node")
CONTAINERD_STATE = RUN_DIR / "containerd"
CONTAINERD_SOCKET = str(CONTAINERD_STATE / "containerd.sock")
NODE_DIR = Path("/var/lib/loraplane-node")
POD_CIDR = "10.88.0.0/24"
CNI_NETWORK = "loraplane-node"
BRIDGE = "cni0"
CNI_BIN_DIR = Path("/usr/lib/cni")


@dataclass(frozen=True)
class NodePaths:
    """Every directory and file the node uses (overridable for tests)."""

    run_dir: Path = RUN_DIR
    node_dir: Path = NODE_DIR
    containerd_root: Path = Path.home() / ".cache" / "loraplane" / "containerd-root"

    @property
    def containerd_state(self) -> Path:
        return self.run_dir / "containerd"

    @property
    def socket(self) -> str:
        return str(self.containerd_state / "containerd.sock")

    @property
    def containerd_config(self) -> Path:
        return self.run_dir / "containerd.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.run_dir / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.run_dir / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.node_dir / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.node_dir / "pod-logs"

    @property
    def volume_plugins(self) -> Path:
        return self.node_dir / "volume-plugins"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def kubelet_config(self) -> Path:
        return self.run_dir / "kubelet.yaml"

    @property
    def kube_proxy_config(self) -> Path:
        return self.run_dir / "kube-proxy.yaml"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def containerd_config(paths: NodePaths, sandbox_image: str, runc: str, cni_bin_dir: Path = CNI_BIN_DIR) -> str:
    """containerd v2 config (version 4, the current one in v2.4; CRI plugin IDs as in its docs/cri/config.md)."""
    cri_images = "plugins.'io.containerd.cri.v1.images'"
    cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
    return f"""version = 4
root = {_toml_str(str(paths.containerd_root))}
state = {_toml_str(str(paths.containerd_state))}
# The default imports /etc/containerd/conf.d/*.toml: nothing of the host's.
imports = []
# The opt plugin would create /opt/containerd on the host.
disabled_plugins = ['io.containerd.internal.v1.opt']

# Version 4 reads the sockets from the server plugins; a top-level [grpc]
# section is ignored there (containerd would listen on /run/containerd).
[plugins.'io.containerd.server.v1.grpc']
  address = {_toml_str(paths.socket)}

[plugins.'io.containerd.server.v1.ttrpc']
  address = {_toml_str(paths.socket + ".ttrpc")}

[{cri_images}]
  snapshotter = 'overlayfs'

[{cri_images}.pinned_images]
  sandbox = {_toml_str(sandbox_image)}

[{cri_runtime}]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true

[{cri_runtime}.cni]
  bin_dirs = [{_toml_str(str(cni_bin_dir))}]
  conf_dir = {_toml_str(str(paths.cni_conf_dir))}
  max_conf_num = 1

[{cri_runtime}.containerd]
  default_runtime_name = 'runc'

[{cri_runtime}.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'

[{cri_runtime}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = {_toml_str(runc)}
  # runc's state and the shims' sockets default to /run/containerd.
  Root = {_toml_str(str(paths.containerd_state / "runc"))}

[plugins.'io.containerd.shim.v1.manager']
  socket_dir = {_toml_str(str(paths.containerd_state / "s"))}

[plugins.'io.containerd.nri.v1.nri']
  disable = true
"""


def cni_conflist(paths: NodePaths, pod_cidr: str = POD_CIDR) -> str:
    """bridge + host-local + portmap (the loopback plugin is run by the CRI
    plugin itself from ``bin_dirs``). IPAM state lives under the run dir."""
    return json.dumps({
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(paths.cni_ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2)


def kubelet_config(paths: NodePaths, socket: str, ca_file: Path, resolv_conf: str = "/etc/resolv.conf",
                   max_pods: int = 32) -> str:
    cfg = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "failCgroupV1": False,
        "oomScoreAdj": 0,
        "containerRuntimeEndpoint": f"unix://{socket}",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "clusterDomain": "cluster.local",
        "resolvConf": resolv_conf,
        "maxPods": max_pods,
        "podLogsDir": str(paths.pod_logs),
        "volumePluginDir": str(paths.volume_plugins),
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
                         "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "rotateCertificates": False,
        "serializeImagePulls": False,
    }
    return json.dumps(cfg, indent=2)  # YAML is a superset of JSON


def kube_proxy_config(kubeconfig: Path, node_name: str, cluster_cidr: str = POD_CIDR) -> str:
    cfg = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": node_name,
        "clusterCIDR": cluster_cidr,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False},
    }
    return json.dumps(cfg, indent=2)


def kubelet_args(paths: NodePaths, kubeconfig: Path, node_name: str, node_ip: str) -> list[str]:
    return [
        f"--config={paths.kubelet_config}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={paths.kubelet_root}",
        f"--hostname-override={node_name}",
        f"--node-ip={node_ip}",
        "--v=1",
    ]


def kube_proxy_args(paths: NodePaths) -> list[str]:
    return [f"--config={paths.kube_proxy_config}", "--v=1"]
