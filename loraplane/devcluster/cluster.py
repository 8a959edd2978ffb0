"""Start a real Kubernetes control plane, the way envtest does.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as
local processes built from their Go modules (see ``build.py``); KWOK plays
the kubelets of fake nodes, and ``realnode.RealNode`` can join a real
kubelet. Everything listens on loopback except the API server, which
listens on all addresses and advertises the VM's own, so that pods on a
real node reach it through the ``kubernetes`` Service. Nothing is mocked: admission, CEL validation,
the scheduler, the garbage collector and the Job controller are the real
ones.

Process hygiene: every component runs in its own process group. Under
pytest (``detached=False``) each child also gets ``PR_SET_PDEATHSIG`` so a
SIGKILLed test run cannot leave orphans; ``stop()`` sends SIGTERM, then
SIGKILL, to each group. ``loraplane dev-cluster up`` starts it detached and
records the pids in ``state.json`` for ``down``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import build, kwok_stages, pki
from .hostnet import primary_ipv4
from .nodes import KWOK_ANNOTATION, gpu_node_manifest

SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/16"
# Reverse start order is the stop order: KWOK first, etcd last.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: the kernel SIGKILLs this child when its parent dies."""
    os.setsid()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class DevCluster:
    """A control plane under ``workdir``; use as a context manager or start()/stop()."""

    workdir: Path
    bin_dir: Path = field(default_factory=build.bin_dir)
    detached: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    # The VM's primary IPv4: the API server's advertised address (see
    # _apiserver_args); filled in by start() or attach().
    host_ip: str = ""
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    # ---- paths -------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def log_path(self, component: str) -> Path:
        return self.workdir / "logs" / f"{component}.log"

    # ---- lifecycle ---------------------------------------------------
    def start(self, timeout: float = 180.0) -> "DevCluster":
        missing = [b for b in build.missing_binaries(self.bin_dir) if b in build.CONTROL_PLANE_BINARIES]
        if missing:
            raise RuntimeError(
                f"control-plane binaries missing in {self.bin_dir}: {missing}; "
                "run `python -m loraplane.devcluster.build` (or `make control-plane`)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.ports = {name: free_port() for name in
                      ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")}
        self.host_ip = self.host_ip or primary_ipv4()
        self.pki = pki.make_pki(self.workdir / "pki", extra_ips=(self.host_ip,))
        self.kubeconfig.write_text(pki.kubeconfig_yaml(self.server, self.pki))
        deadline = time.monotonic() + timeout
        try:
            self._spawn("etcd", self._etcd_args())
            self._wait(lambda: self._http_ok(f"http://127.0.0.1:{self.ports['etcd']}/health"), "etcd", deadline)
            self._spawn("kube-apiserver", self._apiserver_args())
            self._wait(self._apiserver_ready, "kube-apiserver", deadline)
            self._spawn("kube-controller-manager", self._controller_manager_args())
            self._spawn("kube-scheduler", self._scheduler_args())
            stages = self.workdir / "kwok-stages.yaml"
            stages.write_text(kwok_stages.render(build.stages_dir()))
            self._spawn("kwok", self._kwok_args(stages))
            for name, port in (("kube-controller-manager", "controller-manager"), ("kube-scheduler", "scheduler")):
                self._wait(lambda p=port: self._http_ok(f"https://127.0.0.1:{self.ports[p]}/healthz"), name, deadline)
            self._wait(lambda: self._http_ok(f"http://127.0.0.1:{self.ports['kwok']}/healthz"), "kwok", deadline)
            # Pods cannot be admitted until the controller-manager has made
            # the default ServiceAccount; wait for it so tests never race it.
            self._wait(lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
                       "default ServiceAccount", deadline)
        except BaseException:
            self.stop()
            raise
        self._write_state()
        return self

    def stop(self) -> None:
        pids = dict(self.pids)
        for name in reversed(COMPONENTS):
            pid = pids.get(name)
            if pid:
                _signal_group(pid, signal.SIGTERM)
        end = time.monotonic() + 10
        for name in reversed(COMPONENTS):
            pid = pids.get(name)
            if not pid:
                continue
            proc = self._procs.get(name)
            while _alive(pid, proc) and time.monotonic() < end:
                time.sleep(0.1)
            if _alive(pid, proc):
                _signal_group(pid, signal.SIGKILL)
            if proc is not None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            else:  # detached: not our child, so poll until the kernel has it gone
                gone_by = time.monotonic() + 5
                while _alive(pid, None) and time.monotonic() < gone_by:
                    time.sleep(0.05)
        self.pids.clear()
        self._procs.clear()
        state = self.workdir / "state.json"
        if state.exists():
            state.unlink()

    def __enter__(self) -> "DevCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def running(self) -> bool:
        return bool(self.pids) and all(_alive(pid, self._procs.get(n)) for n, pid in self.pids.items())

    # ---- state for the detached CLI ------------------------------------
    def _write_state(self) -> None:
        state = {"pids": self.pids, "ports": self.ports, "kubeconfig": str(self.kubeconfig),
                 "bin_dir": str(self.bin_dir), "host_ip": self.host_ip}
        (self.workdir / "state.json").write_text(json.dumps(state, indent=2))

    @classmethod
    def attach(cls, workdir: Path) -> "DevCluster":
        """The cluster a detached ``up`` left running in ``workdir``."""
        state = json.loads((workdir / "state.json").read_text())
        return cls(workdir=workdir, bin_dir=Path(state["bin_dir"]), detached=True, ports=state["ports"],
                   pids={k: int(v) for k, v in state["pids"].items()}, host_ip=state.get("host_ip", ""))

    # ---- process plumbing ---------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.log_path(name), "ab")
        proc = subprocess.Popen(
            [str(self.bin_dir / ("etcd" if name == "etcd" else name)), *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            preexec_fn=None if self.detached else _die_with_parent,
            start_new_session=self.detached,
        )
        log.close()
        self._procs[name] = proc
        self.pids[name] = proc.pid

    def _wait(self, ready, what: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    tail = self.log_path(name).read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n{tail}")
            try:
                if ready():
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"timed out waiting for {what}; logs in {self.workdir / 'logs'}")

    @staticmethod
    def _http_ok(url: str) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(url, timeout=2, context=ctx if url.startswith("https") else None) as r:
            return r.status == 200

    def _apiserver_ready(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        with urllib.request.urlopen(f"{self.server}/readyz", timeout=2, context=ctx) as r:
            return r.status == 200

    # ---- component flags -------------------------------------------------
    def _etcd_args(self) -> list[str]:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        return [
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync=true", "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        p = self.pki
        return [
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            # Pods reach the API server through the `kubernetes` Service
            # (10.0.0.1:443, in-cluster config). Its endpoint is the advertised
            # address, which the lease reconciler publishes; loopback is refused
            # there ("may not be in the loopback range"), so the API server
            # advertises the VM's address and listens on every address
            # (loopback for the harness, the VM address for pods via
            # kube-proxy's DNAT). KWOK-only runs do not need it, but one set of
            # flags keeps a real node attachable to any running cluster.
            "--bind-address=0.0.0.0", f"--advertise-address={self.host_ip}",
            "--endpoint-reconciler-type=lease",
            f"--secure-port={self.ports['apiserver']}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={p.serving_cert}", f"--tls-private-key-file={p.serving_key}",
            f"--client-ca-file={p.ca_cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Node + NodeRestriction: a real kubelet (RealNode) may only read
            # and write what its own pods need, as on a production cluster.
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            # logs/exec/port-forward: dial the kubelet at its InternalIP (the
            # node name does not resolve), as a client its webhook authorizer
            # accepts.
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--kubelet-client-certificate={p.kubelet_client_cert}",
            f"--kubelet-client-key={p.kubelet_client_key}",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ]

    def _component_auth(self) -> list[str]:
        kc = str(self.kubeconfig)
        return [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                "--leader-elect=false", "--bind-address=127.0.0.1"]

    def _controller_manager_args(self) -> list[str]:
        return self._component_auth() + [
            f"--secure-port={self.ports['controller-manager']}",
            f"--cert-dir={self.workdir / 'controller-manager-certs'}",
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.ca_cert}",
            f"--cluster-signing-cert-file={self.pki.ca_cert}",
            f"--cluster-signing-key-file={self.pki.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*",
            "--v=1",
        ]

    def _scheduler_args(self) -> list[str]:
        return self._component_auth() + [
            f"--secure-port={self.ports['scheduler']}",
            f"--cert-dir={self.workdir / 'scheduler-certs'}",
            "--v=1",
        ]

    def _kwok_args(self, stages: Path) -> list[str]:
        return [
            f"--kubeconfig={self.kubeconfig}",
            f"--config={stages}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            "--manage-nodes-with-label-selector=",
            "--manage-single-node=",
            f"--cidr={POD_CIDR}",
            "--node-ip=10.0.0.1",
            f"--server-address=127.0.0.1:{self.ports['kwok']}",
        ]

    # ---- clients ------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess:
        """Real kubectl (built with the control plane) against this cluster;
        raises with stderr when ``check``."""
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def get_json(self, *args: str) -> dict:
        """``kubectl get ARGS -o json``, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def apply(self, manifests: list[dict] | dict, namespace: str | None = None) -> subprocess.CompletedProcess:
        docs = manifests if isinstance(manifests, list) else [manifests]
        args = ["apply", "--server-side", "--force-conflicts", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        return self.kubectl(*args, input="\n---\n".join(json.dumps(d) for d in docs))

    # ---- fake GPU fleet ---------------------------------------------------
    def create_gpu_nodes(self, count: int, gpus_per_node: int = 1, prefix: str = "rtx3090",
                         memory_mib: int = 24576, labels: dict | None = None, taints: list | None = None,
                         wait_ready: bool = True, timeout: float = 60) -> list[str]:
        """N KWOK nodes with GFD labels and ``nvidia.com/gpu`` capacity; returns their names."""
        existing = set(self.kubectl("get", "nodes", "-o", "name").stdout.split())
        names, index = [], 0
        while len(names) < count:
            name = f"{prefix}-{index}"
            if f"node/{name}" not in existing:
                names.append(name)
            index += 1
        docs = [gpu_node_manifest(n, gpus=gpus_per_node, memory_mib=memory_mib, labels=labels, taints=taints)
                for n in names]
        # Create (not server-side apply) so the status capacity is kept.
        self.kubectl("create", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
        if wait_ready:
            self.wait_nodes_ready(names, timeout=timeout)
        return names

    def wait_nodes_ready(self, names: list[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending and time.monotonic() < deadline:
            out = self.kubectl("get", "nodes", "-o", "json").stdout
            for node in json.loads(out)["items"]:
                conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
                if conds.get("Ready") == "True":
                    pending.discard(node["metadata"]["name"])
            if pending:
                time.sleep(0.3)
        if pending:
            raise TimeoutError(f"nodes not Ready after {timeout}s: {sorted(pending)}")

    def delete_nodes(self, names: list[str]) -> None:
        if names:
            self.kubectl("delete", "node", *names, "--wait=false", check=False)


def _alive(pid: int, proc: subprocess.Popen | None) -> bool:
    if proc is not None:
        return proc.poll() is None
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
