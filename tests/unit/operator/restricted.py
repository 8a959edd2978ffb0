"""Pod Security Standards, profile ``restricted`` (which includes ``baseline``),
as a checker over a pod spec, and one pod of every kind the operator builds.

Shared by ``test_pod_security.py`` (unit) and
``tests/cluster/operator/test_pod_security_admission.py`` (the real API server's
``PodSecurity`` admission decides there); loaded by file path because the
suite runs with ``--import-mode=importlib``.

The checks follow the documented controls of the Pod Security Standards
(https://kubernetes.io/docs/concepts/security/pod-security-standards/), in
their latest version: host namespaces, privileged, capabilities, hostPath,
host ports, AppArmor, SELinux, /proc mount, seccomp, sysctls (baseline), then
volume types, privilege escalation, running as non-root, non-zero uid,
seccomp and capabilities (restricted).
"""

from __future__ import annotations

import copy

#: Baseline: capabilities that may be added (restricted allows only NET_BIND_SERVICE).
BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                 "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def _containers(spec: dict):
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(field) or []:
            yield field, c


def violations(pod_spec: dict) -> list[str]:
    """Every restricted-profile rule ``pod_spec`` (a core/v1 PodSpec) breaks; empty when admitted."""
    out: list[str] = []
    psc = pod_spec.get("securityContext") or {}
    # --- baseline ---------------------------------------------------------------------------
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(host):
            out.append(f"{host}=true")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("pod windowsOptions.hostProcess")
    for v in pod_spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if "hostPath" in kinds:
            out.append(f"volume {v['name']}: hostPath")
        elif not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {v['name']}: type {sorted(kinds - RESTRICTED_VOLUMES)} not allowed")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {s.get('name')}")
    if (psc.get("seLinuxOptions") or {}).get("type") not in SELINUX_TYPES or \
            {"user", "role"} & set(psc.get("seLinuxOptions") or {}):
        out.append("pod seLinuxOptions")
    if (psc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
        out.append("pod appArmorProfile")
    # --- restricted, pod level ----------------------------------------------------------------
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"pod seccompProfile {pod_seccomp}")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser=0")
    for field, c in _containers(pod_spec):
        who = f"{field[:-1]} {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{who}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{who}: hostProcess")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{who}: procMount {sc['procMount']}")
        if (sc.get("seLinuxOptions") or {}).get("type") not in SELINUX_TYPES or \
                {"user", "role"} & set(sc.get("seLinuxOptions") or {}):
            out.append(f"{who}: seLinuxOptions")
        if (sc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"{who}: appArmorProfile")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append(f"{who}: hostPort {p['hostPort']}")
        caps = sc.get("capabilities") or {}
        added = set(caps.get("add") or [])
        if added - BASELINE_CAPS:
            out.append(f"{who}: adds capabilities {sorted(added - BASELINE_CAPS)}")
        # --- restricted, per container --------------------------------------------------------
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{who}: allowPrivilegeEscalation must be false")
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{who}: capabilities must drop ALL")
        if added - {"NET_BIND_SERVICE"}:
            out.append(f"{who}: may add only NET_BIND_SERVICE")
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and psc.get("runAsNonRoot") is not True):
            out.append(f"{who}: runAsNonRoot must be true")
        if sc.get("runAsUser") == 0:
            out.append(f"{who}: runAsUser=0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp not in (None, "RuntimeDefault", "Localhost") or (seccomp is None and pod_seccomp is None):
            out.append(f"{who}: seccompProfile must be RuntimeDefault or Localhost")
    return out


# --- one pod of every kind the operator creates -------------------------------------------------
def _obj(kind: str, name: str, spec: dict, namespace: str) -> dict:
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "uid": f"00000000-0000-0000-0000-{name:0>12}"[:36],
                         "generation": 1}, "spec": spec, "status": {}}


def operator_workloads(namespace: str = "ns", claim: str = "loraplane-store", pull_policy: str | None = "IfNotPresent",
                       pull_secrets: tuple[str, ...] = ("regcred",)) -> dict[str, dict]:
    """name -> the Pod or Job as the operator builds it, with a PVC store (the
    only store volume ``restricted`` admits) and the installation's pull settings."""
    from loraplane.operator.api.common_types import SecretKeyRef, StoreVolume
    from loraplane.operator.api.resources import AdapterResource, BaseModelResource, WorkerPoolResource
    from loraplane.operator.core.manifests import publish_job, verify_job, with_pull_settings, worker_pod
    from loraplane.operator.core.training import training_job

    store_raw = {"persistentVolumeClaim": {"claimName": claim, "readOnly": True}, "mountPath": "/models"}
    rw_store = {**store_raw, "persistentVolumeClaim": {"claimName": claim, "readOnly": False}}
    store = StoreVolume.model_validate(store_raw)
    base = _obj("BaseModel", "m", {"storeName": "tiny", "version": "v1", "store": rw_store}, namespace)
    base["status"] = {"phase": "Ready"}
    pool = _obj("WorkerPool", "p", {"baseModelRef": "m", "replicas": 1, "port": 8000}, namespace)
    adapter = _obj("Adapter", "a", {"baseModelRef": "m", "task": "t", "version": "v1", "training": {
        "method": "lora", "dataset": {"paths": ["d.jsonl"], "persistentVolumeClaim": {"claimName": "data"}}}},
        namespace)
    out = {
        "worker": worker_pod(WorkerPoolResource.model_validate(pool), 0, "node-a", 0, 9000, "fp16", "worker:dev", store),
        "verify-job": verify_job(BaseModelResource.model_validate(base), "bm-m-verify-g1-a0", "base", "default", "tiny", "v1",
                                 "default/base_models/tiny/versions/v1", True, store, "worker:dev", {}),
        "verify-job-by-path": verify_job(BaseModelResource.model_validate(base), "bm-m-verify-g1-a1", "base", "default", "tiny", "v1", "some/dir",
                                         False, store, "worker:dev", {}),
        "publish-job": publish_job(BaseModelResource.model_validate(base), "bm-m-publish-g1-a0", "default", "tiny",
                                   "v1", "org/repo", "main", SecretKeyRef(name="hf", key="token"), StoreVolume.model_validate(rw_store),
                                   "worker:dev", {}, "apache-2.0"),
        "training-job": training_job(AdapterResource.model_validate(adapter), BaseModelResource.model_validate(base),
                                     "adp-a-train-g1-a0", "node-a", 0, 8000, "worker:dev"),
    }
    return {k: with_pull_settings(v, pull_policy, list(pull_secrets)) for k, v in out.items()}


def pod_of(obj: dict) -> dict:
    """The Pod itself, or the Pod a Job's controller would create from its template."""
    if obj["kind"] == "Pod":
        return copy.deepcopy(obj)
    tmpl = copy.deepcopy(obj["spec"]["template"])
    meta = {**tmpl.get("metadata", {}), "name": f"{obj['metadata']['name']}-pod",
            "namespace": obj["metadata"]["namespace"]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": tmpl["spec"]}
