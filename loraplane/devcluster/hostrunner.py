"""Run pods' containers as host processes: a stand-in kubelet for KWOK nodes.

KWOK fakes a pod's status but runs nothing. For the demo and for tests that
need real inference or training, ``HostRunner`` watches the pods of one
namespace (optionally a label selector) and, once a pod is Running on its
fake node, starts the pod's first container command on this machine *with
the pod's identity*, so the code inside cannot tell the difference that
matters:

- env comes from the container spec: plain values, ``fieldRef`` (name,
  namespace, uid, node name; ``status.podIP`` becomes 127.0.0.1), and
  ``secretKeyRef``/``configMapKeyRef`` read from the API server;
- ``KUBECONFIG`` points at the dev cluster, so clients that try in-cluster
  config first fall back to it;
- volumes: a ``hostPath`` volume is used at its host path, a PVC at the
  directory given in ``pvc_paths``; env values and arguments under the mount
  path are rewritten to the host path;
- the port: each pod gets a free loopback port in ``LORAPLANE_PORT``, and
  ``LORAPLANE_ADVERTISE_URL`` says where it can be reached (a fake pod IP
  cannot be dialled from here);
- ``loraplane`` as the command runs this interpreter's ``loraplane.cli``;
- ``/dev/termination-log`` is a file per pod; when the process exits, its
  text (else the log's tail) becomes the container's termination message and
  the exit code decides Succeeded or Failed, through the KWOK Stages'
  annotations.

A pod deleted from the API gets SIGTERM (then SIGKILL after its grace
period), like a kubelet would send.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .cluster import free_port
from .kwok_stages import MESSAGE_ANNOTATION, RESULT_ANNOTATION

log = logging.getLogger(__name__)

TERMINATION_LOG = "/dev/termination-log"


@dataclass
class HostProcess:
    pod: str
    uid: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    termination_log: Path
    reported: bool = False


@dataclass
class HostRunner:
    kubeconfig: Path
    namespace: str
    workdir: Path
    selector: str | None = None
    pvc_paths: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    poll_seconds: float = 0.3
    grace_seconds: float = 20.0

    def __post_init__(self) -> None:
        from kubernetes import client, config

        self._api = client.CoreV1Api(config.new_client_from_config(config_file=str(self.kubeconfig)))
        self.processes: dict[str, HostProcess] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.workdir.mkdir(parents=True, exist_ok=True)

    # ---- lifecycle -----------------------------------------------------------
    def start(self) -> "HostRunner":
        self._thread = threading.Thread(target=self._loop, name="hostrunner", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        for hp in list(self.processes.values()):
            self._terminate(hp)
        self.processes.clear()

    def __enter__(self) -> "HostRunner":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def endpoint(self, pod: str) -> str | None:
        hp = self.processes.get(pod)
        return f"http://127.0.0.1:{hp.port}" if hp else None

    # ---- the loop ------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception:  # keep running: the API server may be restarting
                log.exception("host runner sync failed")
            self._stop.wait(self.poll_seconds)

    def sync_once(self) -> None:
        pods = self._api.list_namespaced_pod(self.namespace, label_selector=self.selector or "").items
        live = {}
        for pod in pods:
            name = pod.metadata.name
            live[name] = pod
            hp = self.processes.get(name)
            if hp and hp.uid != pod.metadata.uid:  # same name, new pod (stable worker names)
                self._terminate(self.processes.pop(name))
                hp = None
            if pod.metadata.deletion_timestamp is not None:
                if hp:
                    self._terminate(self.processes.pop(name))
                continue
            if hp is None and pod.status.phase == "Running" and pod.spec.node_name:
                self.processes[name] = self._spawn(pod)
            elif hp is not None and not hp.reported and hp.proc.poll() is not None:
                self._report_exit(pod, hp)
        for name in set(self.processes) - set(live):
            self._terminate(self.processes.pop(name))

    # ---- one pod -------------------------------------------------------------
    def _spawn(self, pod) -> HostProcess:
        container = pod.spec.containers[0]
        mounts = self._mount_map(pod, container)
        port = free_port()
        poddir = self.workdir / pod.metadata.name
        poddir.mkdir(parents=True, exist_ok=True)
        termination_log = poddir / "termination-log"
        termination_log.write_text("")
        env = dict(os.environ)
        env.update(self._container_env(pod, container, mounts))
        env.update({
            "KUBECONFIG": str(self.kubeconfig),
            "LORAPLANE_PORT": str(port),
            "LORAPLANE_ADVERTISE_URL": f"http://127.0.0.1:{port}",
            "PYTHONSAFEPATH": "1",
        })
        env.update(self.extra_env)
        argv = [self._rewrite(a, mounts, termination_log) for a in (container.command or []) + (container.args or [])]
        if argv and argv[0] == "loraplane":
            argv = [sys.executable, "-m", "loraplane.cli", *argv[1:]]
        # `sh -c "... loraplane ..."`: make the console script resolvable.
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        log_path = poddir / "output.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=poddir, start_new_session=True)
        log.info("started %s (pid %d, port %d): %s", pod.metadata.name, proc.pid, port, " ".join(argv))
        return HostProcess(pod.metadata.name, pod.metadata.uid, proc, port, log_path, termination_log)

    def _report_exit(self, pod, hp: HostProcess) -> None:
        code = hp.proc.returncode
        message = hp.termination_log.read_text(errors="replace").strip()
        if not message and code != 0:
            message = hp.log_path.read_text(errors="replace")[-2000:].strip()
        self._api.patch_namespaced_pod(pod.metadata.name, self.namespace, {"metadata": {"annotations": {
            MESSAGE_ANNOTATION: message[-4000:],
            RESULT_ANNOTATION: "Succeeded" if code == 0 else "Failed",
        }}})
        hp.reported = True
        log.info("%s exited with %s", pod.metadata.name, code)

    def _terminate(self, hp: HostProcess) -> None:
        if hp.proc.poll() is None:
            _killpg(hp.proc.pid, signal.SIGTERM)
            try:
                hp.proc.wait(timeout=self.grace_seconds)
            except subprocess.TimeoutExpired:
                _killpg(hp.proc.pid, signal.SIGKILL)
                hp.proc.wait(timeout=5)

    # ---- translation of the pod spec -------------------------------------------
    def _mount_map(self, pod, container) -> dict[str, str]:
        """mountPath -> host directory, for the volumes this runner can honour."""
        volumes = {v.name: v for v in pod.spec.volumes or []}
        mapping = {}
        for m in container.volume_mounts or []:
            vol = volumes.get(m.name)
            if vol is None:
                continue
            if vol.host_path is not None:
                mapping[m.mount_path] = vol.host_path.path
            elif vol.persistent_volume_claim is not None and vol.persistent_volume_claim.claim_name in self.pvc_paths:
                mapping[m.mount_path] = self.pvc_paths[vol.persistent_volume_claim.claim_name]
        return mapping

    @staticmethod
    def _rewrite(value: str, mounts: dict[str, str], termination_log: Path | None = None) -> str:
        if termination_log is not None:
            value = value.replace(TERMINATION_LOG, str(termination_log))
        for mount, host in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return host + value[len(mount):]
        return value

    def _container_env(self, pod, container, mounts) -> dict[str, str]:
        env = {}
        for var in container.env or []:
            if var.value is not None:
                env[var.name] = self._rewrite(var.value, mounts)
            elif var.value_from is not None:
                value = self._value_from(pod, var.value_from)
                if value is not None:
                    env[var.name] = value
        return env

    def _value_from(self, pod, source) -> str | None:
        if source.field_ref is not None:
            path = source.field_ref.field_path
            return {
                "metadata.name": pod.metadata.name,
                "metadata.namespace": pod.metadata.namespace,
                "metadata.uid": pod.metadata.uid,
                "spec.nodeName": pod.spec.node_name,
                "spec.serviceAccountName": pod.spec.service_account_name,
                "status.podIP": "127.0.0.1",
                "status.hostIP": "127.0.0.1",
            }.get(path)
        if source.secret_key_ref is not None:
            ref = source.secret_key_ref
            try:
                secret = self._api.read_namespaced_secret(ref.name, pod.metadata.namespace)
            except Exception:
                return None
            raw = (secret.data or {}).get(ref.key)
            return base64.b64decode(raw).decode() if raw is not None else None
        if source.config_map_key_ref is not None:
            ref = source.config_map_key_ref
            try:
                cm = self._api.read_namespaced_config_map(ref.name, pod.metadata.namespace)
            except Exception:
                return None
            return (cm.data or {}).get(ref.key)
        return None


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
