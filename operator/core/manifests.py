"""Pure builders: API objects the operator owns, as plain dicts.

Every object carries a controller ownerReference, so deleting a pool (or a
BaseModel/Adapter) lets the garbage collector remove what it owns.

Worker pods are pinned with required node affinity on ``metadata.name``
(the way the DaemonSet controller pins its pods) rather than ``nodeName``:
the kube-scheduler still checks taints, CPU/memory and volume topology and
records *why* a pod cannot bind, instead of the kubelet rejecting it.
The GPU is chosen by us, not the device plugin, so workers do not request
``nvidia.com/gpu``; the index goes to the container runtime through
``NVIDIA_VISIBLE_DEVICES`` (see docs/operator.md for the device plugin).

Every pod passes Pod Security ``restricted`` (``pod_security``,
``container_security``): the images run as uid/gid 10001 with a read-only
root filesystem, so ``HOME`` and the Hugging Face caches live on an
``emptyDir`` at ``/tmp``. The images' ENTRYPOINT is tini, so pods set
``args`` only, never ``command``.
"""

from __future__ import annotations

import hashlib
import json
from shlex import quote as q
from typing import Any

from ..api.common_types import API_VERSION, SecretKeyRef, StoreVolume
from ..api.resources import AdapterResource, BaseModelResource, WorkerPoolResource, dump
from ..api.workerpool_types import GpuSelection, WorkerPoolSpec
from ..api.names import (
    GPU_ANNOTATION, MANAGED_BY, ORDINAL_LABEL, OWNER_LABEL, POOL_LABEL, RESERVATION_ANNOTATION,
    SPEC_HASH_ANNOTATION, WORKLOAD_SERVICE_ACCOUNT, desired_configmap, owner_label_value, worker_name,
)


#: A desired object in wire format (what the API client sends). Desired manifests stay plain
#: dicts on purpose: they are built here, once, and handed to the client unchanged. Observed
#: objects are parsed into ``api.resources``/``api.observed_types`` instead (docs/architecture.md).
Manifest = dict[str, Any]

#: uid and gid of both images (Dockerfile, worker_image/Dockerfile)
RUN_AS = 10001
TMP_MOUNT = "/tmp"
#: Where processes may write with a read-only root filesystem.
WRITABLE_ENV = [
    {"name": "HOME", "value": TMP_MOUNT},
    {"name": "HF_HOME", "value": f"{TMP_MOUNT}/hf"},
    {"name": "XDG_CACHE_HOME", "value": f"{TMP_MOUNT}/.cache"},
]
#: Workers, verify and training Jobs never reach the hub (publish Jobs do).
OFFLINE_ENV = [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "TRANSFORMERS_OFFLINE", "value": "1"}]


def pod_security() -> dict:
    """Pod-level securityContext of every pod the operator creates (Pod Security ``restricted``).
    ``OnRootMismatch``: a large store volume is not re-chowned file by file on every mount."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}


def container_security() -> dict:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def tmp_volume() -> tuple[dict, dict]:
    """(volume, mount): the writable /tmp (HOME, caches) beside the read-only root filesystem."""
    return {"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": TMP_MOUNT}


def with_pull_settings(obj: Manifest, policy: str | None, secrets: list[str]) -> dict:
    """Set the installation's ``imagePullPolicy`` on every container and its
    ``imagePullSecrets`` (names of Secrets that must exist in the pod's
    namespace) on a Pod or a Job's pod template. Returns ``obj``, changed in place."""
    spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Job" else obj["spec"]
    if policy:
        for c in spec["containers"]:
            c["imagePullPolicy"] = policy
    if secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in secrets]
    return obj


def owner_ref(obj: Manifest) -> dict:
    meta = obj["metadata"]
    return {"apiVersion": obj.get("apiVersion", API_VERSION), "kind": obj["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def owner_ref_of(res: WorkerPoolResource | BaseModelResource | AdapterResource) -> dict:
    """The controller ownerReference to a parsed resource."""
    return {"apiVersion": res.api_version, "kind": res.kind, "name": res.name, "uid": res.metadata.uid,
            "controller": True, "blockOwnerDeletion": True}


def pool_labels(pool: str) -> dict:
    return {POOL_LABEL: pool, "app.kubernetes.io/name": "loraplane-worker", "app.kubernetes.io/instance": pool,
            **MANAGED_BY}


def selector(pool: str) -> str:
    return f"{POOL_LABEL}={pool}"


#: Where an S3 store's node-local cache is mounted (``LORAPLANE_MODEL_CACHE``).
CACHE_MOUNT = "/var/cache/loraplane-models"
#: (Secret key = env var, optional?) passed from ``spec.store.s3.credentialsSecretRef``.
#: Endpoint and region may be absent (AWS defaults); the keys may not: a pod
#: whose Secret lacks one does not start (CreateContainerConfigError names it).
S3_SECRET_KEYS = (("AWS_ENDPOINT_URL", True), ("AWS_REGION", True), ("AWS_ACCESS_KEY_ID", False),
                  ("AWS_SECRET_ACCESS_KEY", False))


def store_volume(store: StoreVolume) -> dict:
    """core/v1 Volume for a volume store (PVC or hostPath); an S3 store has none."""
    if store.s3 is not None:
        raise ValueError("an S3 store has no store volume (see store_pod_parts)")
    if store.persistent_volume_claim:
        pvc = store.persistent_volume_claim
        return {"name": "model-store", "persistentVolumeClaim": {"claimName": pvc.claim_name,
                                                                   "readOnly": pvc.read_only}}
    return {"name": "model-store", "hostPath": {"path": store.host_path.path, "type": "Directory"}}


def store_read_only(store: StoreVolume) -> bool:
    return store.persistent_volume_claim.read_only if store.persistent_volume_claim else False


def store_pod_parts(store: StoreVolume, read_only: bool) -> tuple[list[dict], list[dict], list[dict]]:
    """(env, volumes, mounts) that give a container the store.

    A volume store is mounted at ``mountPath``, which is ``MODEL_STORE_ROOT``.
    An S3 store is its URL in ``MODEL_STORE_ROOT``, the credentials from the
    referenced Secret by ``secretKeyRef`` (the operator never holds a value,
    so no manifest and no log line can carry one), and a writable node-local
    cache (emptyDir, or the node's ``cache.hostPath`` shared by its pods)."""
    s3 = store.s3
    if s3 is None:
        mount = {"name": "model-store", "mountPath": store.mount_path, "readOnly": read_only}
        return [{"name": "MODEL_STORE_ROOT", "value": store.mount_path}], [store_volume(store)], [mount]
    secret = s3.credentials_secret_ref.name
    env = [{"name": "MODEL_STORE_ROOT", "value": s3.url}, {"name": "LORAPLANE_MODEL_CACHE", "value": CACHE_MOUNT}]
    for key, optional in S3_SECRET_KEYS:
        ref = {"name": secret, "key": key, **({"optional": True} if optional else {})}
        env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    cache = s3.cache
    if cache.host_path is not None:
        volume = {"name": "model-cache", "hostPath": {"path": cache.host_path.path, "type": "Directory"}}
    else:
        volume = {"name": "model-cache", "emptyDir": {"sizeLimit": cache.size_limit} if cache.size_limit else {}}
    return env, [volume], [{"name": "model-cache", "mountPath": CACHE_MOUNT}]


#: ``gpu`` fields that change neither a worker's pod nor where it may run: not in the spec hash
_GPU_NOT_IN_POD = ("policy", "rescheduleAfterSeconds")


def worker_spec_hash(pool_spec: WorkerPoolSpec, image: str, store: StoreVolume, variant: str) -> str:
    """What, when changed, needs a new pod (not a hot swap): image, store,
    resources, port, variant, and the ``gpu`` settings that size the
    reservation (kvCacheMiB, headroomMiB) or decide where it may run
    (tolerations, nodeSelector, nodeAffinity, product, minMemoryMiB), and
    the worker's limits (kvCacheMiB, maxLoadedAdapters: ``worker_limits_env``).
    Routes and adapters are not in it: they reach
    running workers through the desired ConfigMap."""
    # the JSON of the object as the API server stores it (defaults applied), so the hash of a pod
    # made before the operator parsed its objects is the same
    key = {"image": image, "store": dump(store), "resources": dump(pool_spec.resources), "port": pool_spec.port,
           "variant": variant, "template": 2}  # 2: restricted securityContext, args (rolls older workers)
    defaults = dump(GpuSelection())
    gpu = {k: v for k, v in dump(pool_spec.gpu).items() if k not in _GPU_NOT_IN_POD and v != defaults.get(k)}
    if gpu:  # only settings off their default: a pool on defaults keeps the hash its pods had before gpu counted
        key["gpu"] = gpu
    limits = {e["name"]: e["value"] for e in worker_limits_env(pool_spec)}
    if limits != {"LORAPLANE_KV_CACHE_MIB": str(GpuSelection().kv_cache_mib)}:
        # the worker's limits env (kvCacheMiB passed since template 2): off the worker's defaults, the
        # pods made before it was passed roll and get it; on them, they already behave the same and keep
        key["limits"] = limits
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def worker_pod(pool: WorkerPoolResource, ordinal: int, node: str, gpu: int, vram_mib: int, variant: str,
               image: str, store: StoreVolume) -> dict:
    spec = pool.spec
    name, ns = pool.name, pool.namespace
    reservation = {"node": node, "gpu": gpu, "vramMiB": vram_mib, "variant": variant}
    tmp, tmp_mount = tmp_volume()
    store_env, store_volumes, store_mounts = store_pod_parts(store, read_only=True)
    tolerations = [dump(t) for t in spec.gpu.tolerations]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": worker_name(name, ordinal),
            "namespace": ns,
            "labels": {**pool_labels(name), ORDINAL_LABEL: str(ordinal)},
            "annotations": {
                RESERVATION_ANNOTATION: json.dumps(reservation, sort_keys=True, separators=(",", ":")),
                GPU_ANNOTATION: str(gpu),
                SPEC_HASH_ANNOTATION: worker_spec_hash(spec, image, store, variant),
            },
            "ownerReferences": [owner_ref_of(pool)],
        },
        "spec": {
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}},
            "tolerations": tolerations,
            "serviceAccountName": WORKLOAD_SERVICE_ACCOUNT,
            "restartPolicy": "Always",
            "enableServiceLinks": False,
            "securityContext": pod_security(),
            "containers": [_worker_container(pool, gpu, vram_mib, variant, image, store_env,
                                             [*store_mounts, tmp_mount])],
            "volumes": [*store_volumes, tmp],
        },
    }


def worker_limits_env(spec: WorkerPoolSpec) -> list[dict]:
    """The worker's own limits from the pool: its KV budget is the ``gpu.kvCacheMiB`` the
    reservation holds (``--kv-cache-mib``, so what placement reserves is what the worker admits
    against), and ``maxLoadedAdapters`` when set (``--max-loaded-adapters``)."""
    env = [{"name": "LORAPLANE_KV_CACHE_MIB", "value": str(spec.gpu.kv_cache_mib)}]
    if spec.max_loaded_adapters is not None:
        env.append({"name": "LORAPLANE_MAX_LOADED_ADAPTERS", "value": str(spec.max_loaded_adapters)})
    return env


def _worker_container(pool: WorkerPoolResource, gpu: int, vram_mib: int, variant: str, image: str,
                      store_env: list[Manifest], mounts: list[Manifest]) -> dict:
    res, port = pool.spec.resources, pool.spec.port
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        *store_env,
        {"name": "LORAPLANE_DESIRED_CONFIGMAP", "value": f"{pool.namespace}/{desired_configmap(pool.name)}"},
        {"name": "LORAPLANE_VARIANT", "value": variant},
        {"name": "LORAPLANE_VRAM_MIB", "value": str(vram_mib)},
        {"name": "LORAPLANE_PORT", "value": str(port)},
        *worker_limits_env(pool.spec),
        {"name": "NVIDIA_VISIBLE_DEVICES", "value": str(gpu)},
        {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility"},
        *WRITABLE_ENV, *OFFLINE_ENV,
    ]
    return {
        "name": "worker",
        "image": image,
        "args": ["loraplane", "worker"],
        "securityContext": container_security(),
        "env": env,
        "ports": [{"name": "http", "containerPort": port}],
        "resources": {"requests": {"cpu": res.cpu, "memory": res.memory}},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10,
                          "failureThreshold": 6},
        "volumeMounts": mounts,
    }


def service(pool: WorkerPoolResource) -> dict:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": pool.name, "namespace": pool.namespace, "labels": pool_labels(pool.name),
                     "ownerReferences": [owner_ref_of(pool)]},
        "spec": {"selector": {POOL_LABEL: pool.name},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
    }


def desired_configmap_obj(pool: WorkerPoolResource, desired_json: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": desired_configmap(pool.name), "namespace": pool.namespace,
                     "labels": pool_labels(pool.name), "ownerReferences": [owner_ref_of(pool)]},
        "data": {"desired.json": desired_json},
    }


def _job(owner: BaseModelResource | AdapterResource, name: str, command: str, store: StoreVolume, image: str,
         pod_annotations: dict[str, str], env: list[Manifest] | None = None, offline: bool = True) -> dict:
    tmp, tmp_mount = tmp_volume()
    labels = {OWNER_LABEL: owner_label_value(owner.kind, owner.name), **MANAGED_BY}
    store_env, store_volumes, store_mounts = store_pod_parts(store, read_only=store_read_only(store))
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": owner.namespace, "labels": labels,
                     "ownerReferences": [owner_ref_of(owner)]},
        "spec": {
            "backoffLimit": 0,  # the operator retries with its own backoff and a new Job
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": labels, "annotations": dict(pod_annotations)},
                "spec": {
                    "restartPolicy": "Never",
                    "enableServiceLinks": False,
                    "securityContext": pod_security(),
                    "containers": [{
                        "name": "store",
                        "image": image,
                        "args": ["sh", "-c", command],
                        "securityContext": container_security(),
                        "env": [*store_env, *WRITABLE_ENV, *(OFFLINE_ENV if offline else [])] + (env or []),
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "volumeMounts": [*store_mounts, tmp_mount],
                        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
                    }],
                    "volumes": [*store_volumes, tmp],
                },
            },
        },
    }


def verify_job(owner: BaseModelResource | AdapterResource, name: str, kind: str, store_owner: str, store_name: str, version: str,
               relpath: str, derived: bool, store: StoreVolume, image: str, pod_annotations: dict[str, str]) -> dict:
    """``loraplane modelstore verify`` then the summary into the termination
    message. An explicit ``path`` is verified by directory instead. On a
    bucket the Job materialises the version into the node-local cache, which
    checks every sha256 (and warms a ``cache.hostPath`` for the node's workers)."""
    summary = f'python -m loraplane.operator.core.store_summary "$MODEL_STORE_ROOT" {q(relpath)}'
    if store.s3 is not None or not derived:
        command = f"set -e; {summary} --verify > /dev/termination-log"
    else:
        command = (f'set -e; loraplane modelstore verify --root "$MODEL_STORE_ROOT" --owner {q(store_owner)} '
                   f'{q(kind)} {q(store_name)} --version {q(version)}; {summary} > /dev/termination-log')
    return _job(owner, name, command, store, image, pod_annotations)


def publish_job(owner: BaseModelResource, name: str, store_owner: str, store_name: str, version: str, repo: str,
                revision: str, token_ref: SecretKeyRef | None, store: StoreVolume, image: str, pod_annotations: dict[str, str],
                license: str | None = None) -> dict:
    """Publish from the hub into the store. The token reaches the container
    only as an env var from the Secret: never on the command line, never in
    the operator's logs."""
    env = []
    if token_ref:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token_ref.name,
                                                                        "key": token_ref.key}}})
    lic = f" --license {q(license)}" if license else ""
    command = (f'set -e; loraplane modelstore publish --root "$MODEL_STORE_ROOT" --owner {q(store_owner)} '
               f'--kind base --name {q(store_name)} --version {q(version)} --hf-repo {q(repo)} '
               f'--revision {q(revision)} --token-env HF_TOKEN{lic}')
    return _job(owner, name, command, store, image, pod_annotations, env, offline=False)
