"""A REAL node for the dev cluster: containerd v2 + runc + CNI, a kubelet and
kube-proxy, all built from Go modules (``node_build.py``), joined to a
running ``DevCluster`` with a node identity under the Node authorizer and
NodeRestriction.

    with RealNode(cluster) as node:          # or node = RealNode(cluster).start()
        node.import_image(Path("img.oci.tar"))
        ...                                   # pods with nodeName/nodeSelector = node.name
    # node.stop() removed everything it changed on the host

One real node per machine (fixed socket ``CONTAINERD_SOCKET``, the ``cni0``
bridge, iptables): ``start()`` takes an exclusive lock, waiting for another
test session's node to stop. Before it changes anything it records the
host's sysctls in a state file under /run/loraplane-node; ``stop()`` removes
pods, processes, mounts, the bridge, iptables chains and kubepods cgroups and
restores the sysctls. A state file found by ``start()`` with no live node
processes is a crashed run: it is undone first.

The node is labelled like a GPU node (the GFD labels ``nodes.py`` puts on
KWOK nodes) and advertises ``nvidia.com/gpu`` capacity through a PATCH of
its status, the documented way to advertise an extended resource; the GPUs
are fake, the node runs CPU containers.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

from . import build, host_state, node_build, node_images, pki
from .cluster import DevCluster
from .hostnet import primary_ipv4
from .node_runtime import (BRIDGE, CONTAINERD_SOCKET, CNI_BIN_DIR, NodePaths, POD_CIDR, containerd_config,
                           cni_conflist, kube_proxy_args, kube_proxy_config, kubelet_args, kubelet_config)
from .nodes import RTX_3090, RTX_3090_MIB
from .waiting import wait_for

__all__ = ["RealNode", "CONTAINERD_SOCKET", "ctr_path", "POD_CIDR", "HOST_TOOLS"]

LOCK_FILE = Path("/run/loraplane-node.lock")
# Processes in stop order (reverse start order).
PROCESSES = ("kube-proxy", "kubelet", "containerd")
# Host binaries the node needs (installed by `make node-deps`).
HOST_TOOLS = ("runc", "iptables", "iptables-save", "ip6tables", "conntrack", "buildah", "ip", "mount")


def ctr_path() -> Path:
    """The ``ctr`` built with containerd; use with ``--address CONTAINERD_SOCKET``."""
    return node_build.ctr_path()


def missing_host_tools() -> list[str]:
    missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
    if not (CNI_BIN_DIR / "bridge").exists():
        missing.append(f"{CNI_BIN_DIR}/bridge (containernetworking-plugins)")
    return missing


def _die_with_parent() -> None:
    os.setsid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def oci_archive_images(archive: Path) -> dict[str, str]:
    """image name -> manifest digest, from an OCI archive's index.json."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ValueError(f"{archive}: no index.json (not an OCI archive)")
        index = json.load(member)
    images = {}
    for manifest in index.get("manifests", []):
        notes = manifest.get("annotations", {})
        name = notes.get("io.containerd.image.name") or notes.get("org.opencontainers.image.ref.name")
        if name:
            images[name] = manifest["digest"]
    return images


class RealNode:
    """A real kubelet node joined to ``cluster``; see the module docstring."""

    def __init__(self, cluster: DevCluster, name: str = "loraplane-node-0", gpus: int = 2,
                 gpu_memory_mib: int = RTX_3090_MIB, detached: bool = False, paths: NodePaths | None = None,
                 lock_timeout: float = 900.0):
        self.cluster = cluster
        self.name = name
        self.gpus = gpus
        self.gpu_memory_mib = gpu_memory_mib
        self.detached = detached
        self.paths = paths or NodePaths(containerd_root=build.cache_root() / "containerd-root")
        self.lock_timeout = lock_timeout
        self.bin_dir = cluster.bin_dir
        self.node_ip = ""
        self.pids: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock_fd: int | None = None
        self.timings: dict[str, float] = {}

    # ---- paths ----------------------------------------------------------------
    @property
    def socket(self) -> str:
        return self.paths.socket

    @property
    def log_dir(self) -> Path:
        return self.cluster.workdir / "logs" / f"node-{self.name}"

    def log_path(self, component: str) -> Path:
        return self.log_dir / f"{component}.log"

    def _exe(self, component: str) -> str:
        return str(self.bin_dir / component)

    # ---- lifecycle ---------------------------------------------------------------
    def start(self, timeout: float = 240.0) -> "RealNode":
        """Start and wait for Ready (``timeout`` counts from when the lock is
        held; waiting for another session's node is ``lock_timeout``).
        ``timings``: seconds waited for the lock, then seconds from holding it
        to containerd up, Node Ready and GPUs advertised."""
        missing = node_build.missing_node_binaries(self.bin_dir)
        if missing:
            raise RuntimeError(f"node binaries missing in {self.bin_dir}: {missing}; run "
                               "`python -m loraplane.devcluster.node_build` (or `make node`)")
        tools = missing_host_tools()
        if tools:
            raise RuntimeError(f"host tools missing: {tools}; run `make node-deps`")
        waited = time.monotonic()
        self._lock()
        t0 = time.monotonic()
        self.timings = {"lock_wait": round(t0 - waited, 1)}
        try:
            # Before the try below: a refusal here must not stop someone's node.
            self._undo_stale_run()
        except BaseException:
            self._unlock()
            raise
        try:
            self.node_ip = primary_ipv4()
            host_state.write_state(self.paths.state_file, {
                "name": self.name, "sysctls": host_state.record_sysctls(), "pids": {}, "bin_dir": str(self.bin_dir),
                "kubeconfig": str(self.cluster.kubeconfig), "detached": self.detached})
            self._write_configs()
            self._start_containerd(deadline=t0 + timeout)
            self.timings["containerd"] = round(time.monotonic() - t0, 1)
            self.import_image(self._sandbox_archive)
            self._spawn("kubelet", kubelet_args(self.paths, self._kubelet_kubeconfig, self.name, self.node_ip))
            self._spawn("kube-proxy", kube_proxy_args(self.paths))
            self._save_pids()
            self._wait_ready(deadline=t0 + timeout)
            self.timings["ready"] = round(time.monotonic() - t0, 1)
            self._advertise_gpus()
            self.timings["gpus"] = round(time.monotonic() - t0, 1)
        except BaseException:
            self.stop()
            raise
        if self.detached:
            self._unlock()  # `down` finds the node through its state file
        return self

    def stop(self) -> dict:
        """Remove everything the node changed; idempotent. Returns a report of
        what was found left over and cleaned (empty lists when all went)."""
        state = host_state.read_state(self.paths.state_file)
        if state is None and not self.pids:
            self._unlock()
            return {}
        state = state or {}
        pids = {k: int(v) for k, v in (state.get("pids") or {}).items()} | self.pids
        report = self._teardown(pids, state.get("sysctls") or {}, cluster_alive=True)
        self.pids.clear()
        self._procs.clear()
        self._unlock()
        return report

    def __enter__(self) -> "RealNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @classmethod
    def attach(cls, cluster: DevCluster, paths: NodePaths | None = None) -> "RealNode | None":
        """The node a detached ``dev-cluster up --real-node`` left running
        (None when there is none, or the recorded one belongs to a test run)."""
        paths = paths or NodePaths(containerd_root=build.cache_root() / "containerd-root")
        state = host_state.read_state(paths.state_file)
        if state is None or not state.get("detached"):
            return None
        node = cls(cluster, name=state.get("name", "loraplane-node-0"), detached=True, paths=paths)
        node.pids = {k: int(v) for k, v in (state.get("pids") or {}).items()}
        return node

    def running(self) -> bool:
        return bool(self.pids) and all(host_state.ours(pid, self._exe(n)) for n, pid in self.pids.items())

    # ---- images ------------------------------------------------------------------------
    def ctr(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(ctr_path()), "--address", self.socket, "-n", "k8s.io", *args],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def images(self) -> dict[str, str]:
        """image name -> manifest/index digest in the k8s.io namespace."""
        out = self.ctr("images", "ls").stdout.splitlines()[1:]
        return {line.split()[0]: line.split()[2] for line in out if line.strip()}

    def import_image(self, archive: Path) -> list[str]:
        """Import an OCI archive into containerd's k8s.io namespace unless every
        image in it is already there with the same digest; returns its names."""
        wanted = oci_archive_images(Path(archive))
        have = self.images()
        if wanted and all(have.get(name) == digest for name, digest in wanted.items()):
            return list(wanted)
        # Unpacked into the CRI snapshotter now, so pod start does not pay for it.
        # A multi-GB worker image takes minutes on a loaded machine.
        self.ctr("images", "import", "--snapshotter", "overlayfs", str(archive), timeout=3600)
        return list(wanted)

    @property
    def _sandbox_archive(self) -> Path:
        return node_images.scratch_image("pause", self.bin_dir)[1]

    # ---- config -----------------------------------------------------------------------------
    def _write_configs(self) -> None:
        p = self.paths
        for d in (p.run_dir, p.containerd_state, p.cni_conf_dir, p.cni_ipam_dir, p.node_dir, p.kubelet_root,
                  p.pod_logs, p.volume_plugins, p.containerd_root, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        sandbox_ref, _ = node_images.scratch_image("pause", self.bin_dir)
        p.containerd_config.write_text(containerd_config(p, sandbox_ref, shutil.which("runc") or "runc"))
        (p.cni_conf_dir / "10-loraplane.conflist").write_text(cni_conflist(p))
        pki_dir = self.cluster.workdir / "pki"
        ca = pki_dir / "ca.crt"
        node_cert, node_key = pki.node_identity(pki_dir, self.name)
        proxy_cert, proxy_key = pki.kube_proxy_identity(pki_dir)
        cluster_pki = pki.make_pki(pki_dir, extra_ips=(self.cluster.host_ip,) if self.cluster.host_ip else ())
        self._kubelet_kubeconfig = p.run_dir / "kubelet.kubeconfig"
        self._kubelet_kubeconfig.write_text(pki.kubeconfig_yaml(self.cluster.server, cluster_pki, "loraplane-node",
                                                                cert=node_cert, key=node_key))
        proxy_kubeconfig = p.run_dir / "kube-proxy.kubeconfig"
        proxy_kubeconfig.write_text(pki.kubeconfig_yaml(self.cluster.server, cluster_pki, "loraplane-node",
                                                        cert=proxy_cert, key=proxy_key))
        p.kubelet_config.write_text(kubelet_config(p, self.socket, ca))
        p.kube_proxy_config.write_text(kube_proxy_config(proxy_kubeconfig, self.name))

    # ---- processes ------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.log_path(name), "ab")
        env = dict(os.environ)
        # containerd finds its shim on PATH; everything finds runc/iptables there.
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}:/usr/sbin:/sbin"
        proc = subprocess.Popen([self._exe(name), *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=self.paths.run_dir,
                                preexec_fn=None if self.detached else _die_with_parent,
                                start_new_session=self.detached)
        log.close()
        self._procs[name] = proc
        self.pids[name] = proc.pid

    def _save_pids(self) -> None:
        state = host_state.read_state(self.paths.state_file) or {}
        state["pids"] = dict(self.pids)
        host_state.write_state(self.paths.state_file, state)

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                tail = self.log_path(name).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def _start_containerd(self, deadline: float) -> None:
        self._spawn("containerd", ["--config", str(self.paths.containerd_config)])
        self._save_pids()

        def up() -> bool:
            self._check_alive()
            return Path(self.socket).exists() and self.ctr("version", check=False, timeout=10).returncode == 0
        wait_for(up, timeout=max(5.0, deadline - time.monotonic()), interval=0.2, what="containerd socket")

    def _node(self) -> dict | None:
        proc = self.cluster.kubectl("get", "node", self.name, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def _wait_ready(self, deadline: float) -> None:
        def ready() -> bool:
            self._check_alive()
            node = self._node()
            conds = {c["type"]: c["status"] for c in (node or {}).get("status", {}).get("conditions", [])}
            return conds.get("Ready") == "True"
        wait_for(ready, timeout=max(5.0, deadline - time.monotonic()), interval=0.5, what=f"node {self.name} Ready")

    def gpu_labels(self) -> dict[str, str]:
        """The labels GPU Feature Discovery puts on real nodes (as ``nodes.py``)."""
        return {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": RTX_3090,
                "nvidia.com/gpu.memory": str(self.gpu_memory_mib), "nvidia.com/gpu.count": str(self.gpus),
                "loraplane.io/real-node": "true"}

    def _advertise_gpus(self) -> None:
        self.cluster.kubectl("label", "node", self.name, "--overwrite",
                             *[f"{k}={v}" for k, v in self.gpu_labels().items()])
        # Allocatable too, so the scheduler sees the GPUs now rather than after
        # the kubelet's next status sync (it derives allocatable from capacity).
        patch = [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": str(self.gpus)},
                 {"op": "add", "path": "/status/allocatable/nvidia.com~1gpu", "value": str(self.gpus)}]
        self.cluster.kubectl("patch", "node", self.name, "--subresource=status", "--type=json",
                             "-p", json.dumps(patch))
        wait_for(lambda: ((self._node() or {}).get("status", {}).get("allocatable", {})
                          .get("nvidia.com/gpu") == str(self.gpus)),
                 timeout=60, interval=0.5, what=f"nvidia.com/gpu allocatable on {self.name}")

    # ---- locking and stale runs ---------------------------------------------------------------------
    def _lock(self) -> None:
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise TimeoutError(f"another real node holds {LOCK_FILE} (waited {self.lock_timeout:.0f}s)")
                time.sleep(1)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _undo_stale_run(self) -> None:
        state = host_state.read_state(self.paths.state_file)
        if state is None:
            return
        bin_dir = state.get("bin_dir", str(self.bin_dir))
        pids = {k: int(v) for k, v in (state.get("pids") or {}).items()}
        live = {n: p for n, p in pids.items() if host_state.ours(p, str(Path(bin_dir) / n))}
        if live and state.get("detached"):
            self._unlock()
            raise RuntimeError(f"a detached real node is running ({live}); stop it with `loraplane dev-cluster down`")
        print(f"real node: undoing a stale run recorded in {self.paths.state_file}", flush=True)
        self._teardown(pids, state.get("sysctls") or {}, cluster_alive=False, bin_dir=Path(bin_dir),
                       stale_name=state.get("name"), stale_kubeconfig=state.get("kubeconfig"))

    # ---- teardown ------------------------------------------------------------------------------------
    def _teardown(self, pids: dict[str, int], sysctls: dict, cluster_alive: bool, bin_dir: Path | None = None,
                  stale_name: str | None = None, stale_kubeconfig: str | None = None) -> dict:
        bin_dir = bin_dir or self.bin_dir
        exe = {n: str(bin_dir / n) for n in PROCESSES}
        containerd_up = "containerd" in pids and host_state.ours(pids["containerd"], exe["containerd"])
        kubelet_up = "kubelet" in pids and host_state.ours(pids["kubelet"], exe["kubelet"])
        if cluster_alive and kubelet_up:
            self._drain()
        for name in ("kube-proxy", "kubelet"):
            if name in pids:
                host_state.stop_process(pids[name], exe[name])
        if containerd_up:
            self._remove_all_containers()
        if "containerd" in pids:
            host_state.stop_process(pids["containerd"], exe["containerd"])
        # Shims outlive containerd (own session); kill every process of ours left.
        host_state.kill_pids(host_state.pids_running(str(bin_dir / "containerd-shim-runc-v2")))
        subprocess.run([str(bin_dir / "kube-proxy"), "--cleanup"], capture_output=True, timeout=120)
        report = {"chains_left": host_state.remove_chains()}
        host_state.delete_link(BRIDGE)
        prefixes = (str(self.paths.kubelet_root), str(self.paths.run_dir), str(self.paths.node_dir))
        report["mounts_left"] = host_state.unmount_under(prefixes)
        report["cgroups_left"] = [str(c) for c in host_state.remove_kubepods_cgroups()]
        if not report["mounts_left"]:
            for d in (self.paths.node_dir, self.paths.run_dir):
                shutil.rmtree(d, ignore_errors=True)
        report["sysctls_restored"] = host_state.restore_sysctls(sysctls)
        name = stale_name or self.name
        if cluster_alive:
            self.cluster.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false", check=False)
        elif stale_kubeconfig and Path(stale_kubeconfig).exists():
            subprocess.run([str(bin_dir / "kubectl"), f"--kubeconfig={stale_kubeconfig}", "delete", "node", name,
                            "--ignore-not-found", "--wait=false", "--request-timeout=5s"], capture_output=True)
        if not report["mounts_left"]:
            self.paths.state_file.unlink(missing_ok=True)
        else:
            raise RuntimeError(f"real node teardown left mounts: {report['mounts_left']}")
        return report

    def _drain(self, timeout: float = 60.0) -> None:
        """Delete every pod on the node through the API while the kubelet runs,
        so it stops them properly (CNI DEL, volume unmounts)."""
        self.cluster.kubectl("cordon", self.name, check=False)
        self.cluster.kubectl("delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={self.name}",
                             "--grace-period=2", "--wait=false", check=False)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            out = self.cluster.kubectl("get", "pods", "--all-namespaces", "-o", "name",
                                       f"--field-selector=spec.nodeName={self.name}", check=False).stdout.strip()
            if not out:
                break
            time.sleep(1)
        self.cluster.kubectl("delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={self.name}",
                             "--grace-period=0", "--force", "--wait=false", check=False)

    def _remove_all_containers(self) -> None:
        """Kill and delete every task, container and sandbox containerd knows."""
        tasks = [line.split()[0] for line in self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]
                 if line.strip()]
        for task in tasks:
            self.ctr("tasks", "kill", "-a", "-s", "SIGKILL", task, check=False, timeout=30)
        for task in tasks:
            self.ctr("tasks", "delete", "-f", task, check=False, timeout=30)
        for cid in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "delete", cid, check=False, timeout=30)
        for line in self.ctr("sandboxes", "ls", check=False).stdout.splitlines()[1:]:
            if line.strip():
                self.ctr("sandboxes", "rm", "-f", line.split()[0], check=False, timeout=30)
