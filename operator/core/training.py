"""Pure core for an Adapter with ``spec.training``: the training Job, its VRAM
need, and the Adapter's phase from what the Job and its pods report.

Flow: Pending (BaseModel not Ready, or no GPU has room) -> Training (Job
placed on one GPU, progress copied from the pod's
``loraplane.io/training-progress`` annotation) -> the published adapter is
verified exactly like a ``source`` Adapter (``resolve.plan_adapter``
runs the verify Job) -> Ready, or Failed with the pod's own reason.

Why place the Job ourselves: training and serving share the fleet, so the
training pod carries the same ``loraplane.io/reservation`` annotation as a
worker (node, GPU, MiB) and every ledger (the operator's, after a restart
too) counts it; the pod is pinned to the node with required node affinity
and to the card with ``NVIDIA_VISIBLE_DEVICES``, like a worker.

Why a Failed training is not retried: the Job already retried its pods
(``backoffLimit``, each pod resuming from the last checkpoint); what is left
is a deterministic failure (bad dataset, a version another run published, OOM
at this batch size) that a blind retry would repeat on a shared GPU. A new
generation of the spec gets a new Job. A pod that dies after publishing but
before exiting is not a failure: the Job's retry finds the version this very
run published (same summary, verified files) and exits 0
(``training_jobs/published.py``), so the Job completes and verify follows.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from shlex import join as shjoin

from . import placement as pl
from ..api.conditions import find, triple_typed
from .manifests import (
    OFFLINE_ENV, WRITABLE_ENV, Manifest, container_security, owner_ref_of, pod_security, store_pod_parts, tmp_volume,
)
from ..api.names import (
    GPU_ANNOTATION, MANAGED_BY, OWNER_LABEL, RESERVATION_ANNOTATION, WORKLOAD_SERVICE_ACCOUNT, job_name,
)
from .pool import request_for
from .store_summary import store_relpath
from ..api.adapter_types import AdapterSource, AdapterStatus
from ..api.common_types import StoreVolume
from ..api.observed_types import GENERATION_LABEL, PROGRESS_ANNOTATION, JobView  # noqa: F401 (both re-exported)
from ..api.resources import AdapterResource, BaseModelResource, InvalidObject, as_read, dump
from ..api.training_types import Hyperparameters, TrainingSpec, TrainingStatus

TRAINING_LABEL = "loraplane.io/training"  # on training pods: the Adapter's name
DATA_MOUNT = "/data"
EXIT_BAD_CONFIG = 2  # the trainer's "bad config/dataset/method": never worth a pod retry

# --- VRAM need ---------------------------------------------------------------------------------
#: Reference shape for the derived need: Mistral-7B (fp16 weights 14336 MiB, 32 layers x 4096).
REF_FP16_MIB = 14336
#: Activation MiB per token (batch x seqLen) at the reference shape, incl. fp32 logits and their
#: gradient (32768 vocab x 8 B = 0.25 MiB): with gradient checkpointing one hidden state per layer
#: is kept (32 x 4096 x 2 B = 0.25 MiB) plus one layer recomputed; without, ~34 x hidden x layers B.
ACT_MIB_PER_TOKEN = {True: 0.75, False: 4.5}
#: LoRA weights + grads + AdamW moments (16 B/param) per rank and target module at the reference
#: shape: q/k/v/o at r=16 are 13.6 M params -> 208 MiB, i.e. 3.25 MiB per (rank x module).
LORA_MIB_PER_RANK_MODULE = 3.25
CUDA_OVERHEAD_MIB = 1024  # context, cuBLAS workspace, allocator fragmentation


@dataclass(frozen=True)
class Need:
    mib: int
    detail: str  # how it was obtained, for status and events


def _trainer_default(h: Hyperparameters, key: str, default):
    v = getattr(h, key)
    return default if v is None else v


def derive_need(training: TrainingSpec, base_variants: dict[str, int]) -> Need:
    """Declared ``resources.vramMiB``, or base weights + LoRA state + activations + overhead.

    Base weights come from the BaseModel's measured variants: qlora loads the base in 4-bit
    (``bnb-4bit``; else 0.3 x fp16, NF4 with double quantisation), lora in 16-bit (``bf16``/
    ``fp16``; else fp32 / 2). LoRA state and activations are scaled from the Mistral-7B reference
    by the base's size, which over-estimates larger bases (activations grow with sqrt of size)
    and is what ``resources.vramMiB`` is for.
    """
    declared = training.resources.vram_mib
    if declared:
        return Need(int(declared), f"declared {declared} MiB")
    h = training.hyperparameters
    fp16 = base_variants.get("fp16") or base_variants.get("bf16") or (
        base_variants["fp32"] // 2 if base_variants.get("fp32") else None)
    if training.method == "qlora":
        weights = base_variants.get("bnb-4bit") or (int(fp16 * 0.3) if fp16 else None)
    else:
        weights = fp16
    if not weights:
        raise ValueError(f"cannot derive the VRAM need: the BaseModel offers no usable variant "
                         f"({sorted(base_variants) or 'none'}); set spec.training.resources.vramMiB")
    scale = (fp16 or weights) / REF_FP16_MIB
    r = _trainer_default(h, "r", 16)
    modules = len(_trainer_default(h, "target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"]))
    lora = LORA_MIB_PER_RANK_MODULE * r * modules * scale
    tokens = _trainer_default(h, "batch_size", 4) * _trainer_default(h, "seq_len", 512)
    act = ACT_MIB_PER_TOKEN[bool(h.gradient_checkpointing)] * tokens * scale
    total = int(weights + lora + act + CUDA_OVERHEAD_MIB + 0.999)
    return Need(total, f"derived {total} MiB = base {weights} + LoRA {lora:.0f} + activations {act:.0f} "
                       f"({tokens} tokens) + {CUDA_OVERHEAD_MIB} overhead")


# --- the Job ---------------------------------------------------------------------------------------
def adapter_store_name(adapter: AdapterResource) -> str:
    return adapter.spec.training.store_name or adapter.name


def adapter_relpath(adapter: AdapterResource) -> str:
    t = adapter.spec.training
    return store_relpath(t.owner, "adapter", adapter_store_name(adapter), adapter.spec.version)


def train_job_name(adapter: AdapterResource) -> str:
    """Deterministic per generation (a restarted operator finds its Job); never depends on
    retries of the verify step."""
    return job_name("adp", adapter.name, "train", adapter.generation or 0, 0)


def store_root(store: StoreVolume) -> str:
    """What the trainer gets as ``--store-root``: the mount path, or the bucket's URL."""
    return store.s3.url if store.s3 is not None else store.mount_path


def train_args(adapter: AdapterResource, base: BaseModelResource, store_mount: str) -> list[str]:
    """``loraplane train`` argv for the Job. Fixed ``--version`` (the Adapter's) so a restarted pod
    finds its own checkpoint under ``<store>/.training/<owner>/<name>/<version>`` (on a bucket:
    under the node cache). ``store_mount`` is ``store_root(store)``; dataset paths are relative to
    it (keys under the bucket's prefix) unless they are on the dataset's claim."""
    spec, t, bspec = adapter.spec, adapter.spec.training, base.spec
    root = DATA_MOUNT if t.dataset.persistent_volume_claim else store_mount
    args = ["loraplane", "train", "--method", t.method,
            "--base", f"{bspec.owner}/{bspec.store_name}@{bspec.version}",
            "--verify-base", t.verify_base, "--device", t.device,
            "--store-root", store_mount, "--owner", t.owner,
            "--name", adapter_store_name(adapter), "--version", spec.version, "--task", spec.task,
            "--publish"]
    for p in t.dataset.paths:
        args += ["--dataset", f"{root.rstrip('/')}/{p}"]
    h = as_read(t.hyperparameters)  # camelCase keys, as written in the spec
    for key in sorted(h):
        v = h[key]
        if v is None:
            continue
        flag = "--" + "".join("-" + c.lower() if c.isupper() else c for c in key)
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + flag[2:])
        elif isinstance(v, list):
            args += [flag, ",".join(v)]
        else:
            args += [flag, str(v)]
    return args


def training_job(adapter: AdapterResource, base: BaseModelResource, name: str, node: str, gpu: int, need_mib: int,
                 image: str, pod_annotations: dict[str, str] | None = None) -> dict:
    t = adapter.spec.training
    store = base.spec.store
    mount = store_root(store)
    owner_label = f"adapter.{adapter.name}"
    labels = {OWNER_LABEL: owner_label, **MANAGED_BY}
    job_labels = {**labels, GENERATION_LABEL: str(adapter.generation or 0)}
    pod_labels = {**labels, TRAINING_LABEL: adapter.name, "app.kubernetes.io/name": "loraplane-trainer"}
    reservation = {"node": node, "gpu": gpu, "vramMiB": need_mib, "variant": f"training-{t.method}"}
    store_env, volumes, mounts = _trainer_volumes(t, store)
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": adapter.namespace, "labels": job_labels,
                     "annotations": {RESERVATION_ANNOTATION: json.dumps(reservation, sort_keys=True,
                                                                        separators=(",", ":"))},
                     "ownerReferences": [owner_ref_of(adapter)]},
        "spec": {
            "backoffLimit": t.backoff_limit,
            "activeDeadlineSeconds": t.active_deadline_seconds,
            # Exit 2 is a bad config or dataset: fail the Job at once. Evictions/drains (the trainer
            # checkpointed on SIGTERM) do not count against backoffLimit.
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                      "values": [EXIT_BAD_CONFIG]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {
                    **(pod_annotations or {}),
                    RESERVATION_ANNOTATION: json.dumps(reservation, sort_keys=True, separators=(",", ":")),
                    GPU_ANNOTATION: str(gpu)}},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": t.service_account_name or WORKLOAD_SERVICE_ACCOUNT,
                    "terminationGracePeriodSeconds": 300,  # finish the step and checkpoint on SIGTERM
                    "enableServiceLinks": False,
                    "securityContext": pod_security(),
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchFields": [
                            {"key": "metadata.name", "operator": "In", "values": [node]}]}]}}},
                    "tolerations": [dump(tol) for tol in t.gpu.tolerations],
                    "containers": [_trainer_container(adapter, base, mount, gpu, store_env, mounts, image)],
                    "volumes": volumes,
                },
            },
        },
    }


def _trainer_volumes(t: TrainingSpec, store: StoreVolume) -> tuple[list[dict], list[dict], list[dict]]:
    """(env, volumes, mounts): the store as every pod gets it (``store_pod_parts``: a volume
    mounted read-write, since the trainer publishes; or the bucket's URL, credentials by
    ``secretKeyRef`` and the node cache), /tmp, and the dataset's claim if it has one."""
    env, volumes, mounts = store_pod_parts(store, read_only=False)
    for volume in volumes:
        if "persistentVolumeClaim" in volume:  # workers may mount the claim read-only; the trainer writes
            volume["persistentVolumeClaim"]["readOnly"] = False
    tmp, tmp_mount = tmp_volume()
    volumes, mounts = [*volumes, tmp], [*mounts, tmp_mount]
    claim = t.dataset.persistent_volume_claim.claim_name if t.dataset.persistent_volume_claim else None
    if claim:
        volumes.append({"name": "dataset", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "dataset", "mountPath": DATA_MOUNT, "readOnly": True})
    return env, volumes, mounts


def _trainer_container(adapter: AdapterResource, base: BaseModelResource, mount: str, gpu: int,
                       store_env: list[Manifest], mounts: list[Manifest], image: str) -> dict:
    t = adapter.spec.training
    res = t.resources
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        *store_env,
        {"name": "NVIDIA_VISIBLE_DEVICES", "value": str(gpu)},
        {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *WRITABLE_ENV, *OFFLINE_ENV,
    ]
    return {
        "name": "trainer",
        "image": t.image or image,
        "args": train_args(adapter, base, mount),  # the image's ENTRYPOINT (tini) stays
        "securityContext": container_security(),
        "env": env,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": res.cpu, "memory": res.memory}},
        "volumeMounts": mounts,
    }


def placement_request(adapter: AdapterResource, need_mib: int) -> pl.Request:
    t, ns = adapter.spec.training, adapter.namespace
    return request_for(t.gpu, f"{ns}/train-{adapter.name}", f"{ns}/{train_job_name(adapter)}",
                       ((f"training-{t.method}", need_mib),))


def pending_reservation_pod(job: Manifest) -> dict:
    """A stand-in for the Job's pod, written through to the ledger cache at once so the next
    placement sees the VRAM before the Job controller has created the pod."""
    meta = job["metadata"]
    return {"metadata": {"name": f"{meta['name']}-pending", "namespace": meta["namespace"], "uid": "",
                         "annotations": {RESERVATION_ANNOTATION: meta["annotations"][RESERVATION_ANNOTATION]}},
            "spec": {}, "status": {"phase": "Pending"}}


# --- observing the Job -----------------------------------------------------------------------------
# The controller reads each training Job and its pods once into ``api.observed_types.JobView``
# (pods as ``TrainingPodView``, oldest first); the functions below see only those.


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    # The trainer's own error line wins over a traceback's last frame.
    mine = [ln for ln in lines if ln.startswith("loraplane train:")]
    return (mine or lines or [""])[-1][:400]


def failure_reason(job: JobView) -> str:
    """Why the Job failed, from the most specific source: the last failed pod's termination
    message (the trainer's error), else its terminated reason and exit code, else the Job's
    condition (deadline, backoff limit)."""
    failed = [p for p in job.pods if p.phase == "Failed" or p.exit_code not in (None, 0)]
    for p in reversed(failed):
        line = _last_line(p.message)
        if line:
            return f"pod {p.name}: {line}"
        if p.reason or p.exit_code is not None:
            extra = " (out of memory: lower batchSize/seqLen or raise resources.vramMiB)" \
                if p.reason == "OOMKilled" else ""
            return f"pod {p.name}: {p.reason or 'terminated'} with exit code {p.exit_code}{extra}"
    if job.reason or job.message:
        return f"{job.reason}: {job.message}".strip(": ")
    return "the training Job failed without a reason"


def _assign(model, **fields):
    """Set fields (snake_case) on a status model, marking them set: ``as_read`` sends them (None deletes)."""
    for k, v in fields.items():
        setattr(model, k, v)
    return model


def fold_progress(training: TrainingStatus, job: JobView) -> TrainingStatus:
    """``status.training`` from the newest pod's progress annotation (older pods' progress is kept
    when the new pod has not reported yet: a resumed pod starts from that step). The trainer's
    values are copied as it wrote them (``loraplane.training.progress``)."""
    out = _assign(training.model_copy(deep=True), job=job.name, restarts=job.failed_pods)
    for p in reversed(job.pods):
        if p.progress:
            pr = p.progress
            _assign(out, phase=pr.get("phase"), step=pr.get("step"), total_steps=pr.get("totalSteps"),
                    loss=pr.get("loss"), eval_loss=pr.get("evalLoss"), tokens_per_second=pr.get("tokensPerSecond"),
                    eta_seconds=pr.get("etaSeconds"), updated=pr.get("updated"))
            if pr.get("totalSteps"):
                out.progress = f"{pr.get('step', 0)}/{pr['totalSteps']}"
            break
    return out


# --- the plan --------------------------------------------------------------------------------------
@dataclass
class TrainPlan:
    status: AdapterStatus  # typed; the controller dumps it with ``as_read`` just before the patch
    place: bool = False  # run placement, then ``placed``/``unplaced``
    need: Need | None = None
    verify: bool = False  # training done: verify the published adapter as a source Adapter
    delete_jobs: list[str] = field(default_factory=list)  # training Jobs of older generations
    requeue_after: float | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _status(adapter: AdapterResource) -> AdapterStatus:
    """The status as read (a copy: only the keys it had count as set), ``training`` always set."""
    st = adapter.status.model_copy(deep=True)
    if st.observed_generation != adapter.generation:  # the spec changed: start over
        _assign(st, phase="Pending", attempts=0, next_retry=None, job=None, checksum=None)
        st.training = None
    st.training = st.training or TrainingStatus()
    return st


def _set(adapter: AdapterResource, st: AdapterStatus, now: dt.datetime, phase: str, reason: str, message: str, *,
         ready=False, progressing=True, degraded=False) -> AdapterStatus:
    gen = adapter.generation
    _assign(st, phase=phase, observed_generation=gen)
    st.conditions = triple_typed(st.conditions, ready=(ready, reason, message),
                                 progressing=(progressing, reason, message),
                                 degraded=(degraded, reason if degraded else "AsExpected", message if degraded else ""),
                                 generation=gen, now=now)
    return st


def plan_training(adapter: AdapterResource, base: BaseModelResource | InvalidObject | None, jobs: list[JobView],
                  now: dt.datetime) -> TrainPlan:
    gen = adapter.generation or 0
    st = _status(adapter)
    name = train_job_name(adapter)
    plan = TrainPlan(status=st)
    plan.delete_jobs = [j.name for j in jobs if j.name != name and j.generation is not None and j.generation < gen
                        and j.phase == "Running"]
    if st.training.trained_generation == gen:
        plan.verify = True
        return plan
    job = next((j for j in jobs if j.name == name), None)
    if job is None:
        return _before_job(adapter, base, plan, now)
    st.training = fold_progress(st.training, job)
    if job.phase == "Running":
        _set(adapter, st, now, "Training", "Training", _running_message(name, st.training, job))
        plan.requeue_after = 15
        return plan
    if job.phase == "Failed":
        why = failure_reason(job)
        first = st.phase != "Failed"
        _set(adapter, st, now, "Failed", "TrainingFailed", f"Job {name} failed: {why}", progressing=False,
             degraded=True)
        if first:
            plan.events.append(("Warning", "TrainingFailed", f"Job {name} failed: {why}"))
        return plan
    _assign(st.training, trained_generation=gen, phase="succeeded")
    st.observed_generation = gen  # else the next pass would take it for a spec change
    plan.events.append(("Normal", "Trained", f"Job {name} succeeded; verifying {adapter_relpath(adapter)}"))
    plan.verify = True
    return plan


def _before_job(adapter: AdapterResource, base: BaseModelResource | InvalidObject | None, plan: TrainPlan,
                now: dt.datetime) -> TrainPlan:
    """No Job for this generation yet: wait for the BaseModel, derive the VRAM need, ask for placement."""
    st, gen, ref = plan.status, adapter.generation or 0, adapter.spec.base_model_ref
    if st.phase == "Failed" and st.observed_generation == gen:
        return plan  # terminal for this generation (the Job may have been cleaned up by its TTL)
    if base is None or isinstance(base, InvalidObject):
        why = "not found in this namespace" if base is None else f"is invalid: {base.message}"
        _set(adapter, st, now, "Pending", "BaseModelMissing" if base is None else "BaseModelInvalid",
             f"BaseModel {ref} {why}")
        plan.requeue_after = 15
        return plan
    if base.status.phase != "Ready":
        _set(adapter, st, now, "Pending", "WaitingForBaseModel", f"BaseModel {ref} is not Ready")
        plan.requeue_after = 10
        return plan
    variants = {v.name: int(v.vram_mib) for v in base.status.variants}
    try:
        plan.need = derive_need(adapter.spec.training, variants)
    except ValueError as e:
        _set(adapter, st, now, "Failed", "NeedUnknown", str(e), progressing=False, degraded=True)
        plan.events.append(("Warning", "NeedUnknown", str(e)))
        return plan
    st.training.need_mib = plan.need.mib
    plan.place = True
    return plan


def _running_message(name: str, p: TrainingStatus, job: JobView) -> str:
    """Progress of a running Job, from its pod's progress annotation."""
    where = f"{p.node}/gpu{p.gpu}" if p.node else "its GPU"
    if p.total_steps:
        msg = f"Job {name} on {where}: step {p.step}/{p.total_steps}"
        if p.loss is not None:
            msg += f", loss {p.loss:.4g}"
        if p.eta_seconds is not None:
            msg += f", ETA {p.eta_seconds:.0f}s"
    else:
        msg = f"Job {name} on {where}: {p.phase or 'starting'}"
    if job.failed_pods:
        msg += f" ({job.failed_pods} pod(s) failed; resumed from the last checkpoint)"
    return msg


def placed(adapter: AdapterResource, plan: TrainPlan, decision: pl.Decision, now: dt.datetime) -> TrainPlan:
    """Status after the Job was created on ``decision``'s GPU."""
    st = plan.status
    _assign(st.training, job=train_job_name(adapter), node=decision.node, gpu=decision.gpu,
            need_mib=decision.need_mib, phase="pending")
    msg = f"Job {train_job_name(adapter)} placed on {decision.node}/gpu{decision.gpu} ({plan.need.detail})"
    _set(adapter, st, now, "Training", "TrainingStarted", msg)
    plan.events.append(("Normal", "TrainingStarted", msg))
    plan.requeue_after = 5
    return plan


def unplaced(adapter: AdapterResource, plan: TrainPlan, decision: pl.Decision, now: dt.datetime) -> TrainPlan:
    st = plan.status
    msg = f"no GPU has room for training ({plan.need.detail}): {decision.message}"
    before = find(st.conditions, "Progressing")
    _set(adapter, st, now, "Pending", "Unplaceable", msg)
    if before is None or before.reason != "Unplaceable":
        plan.events.append(("Warning", "FailedPlacement", msg))
    plan.requeue_after = 15
    return plan


def verify_view(adapter: AdapterResource, status: AdapterStatus) -> AdapterResource:
    """The Adapter as ``resolve.plan_adapter`` sees it once trained: a ``source`` Adapter
    naming the version the trainer published, with the status this pass computed (its set
    fields, a null among them deleting a key by merge patch)."""
    source = AdapterSource(owner=adapter.spec.training.owner, storeName=adapter_store_name(adapter))
    spec = adapter.spec.model_copy(update={"training": None, "source": source})
    return adapter.model_copy(update={"spec": spec, "status": status.model_copy(deep=True)})


def describe(args: list[str]) -> str:
    """The Job's command as one shell line (docs, events)."""
    return shjoin(args)
