"""Pure reconcile core for BaseModel and Adapter: resolve a stored version
through Jobs (publish from the hub when asked, then verify) and report it.

The handler parses the object (``api.resources``) and reads the world into a
``World`` (owned Jobs with their outcome,
whether the token Secret exists, the summary of a succeeded verify), calls
``plan_*`` and applies the ``Plan``. Failures never raise: they become a
condition with a reason, ``status.attempts`` grows and the next try waits an
exponential backoff (``nextRetry``), so a missing Secret or a broken store
never turns into a crash loop or a hot loop.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from ..api.adapter_types import AdapterSpec, AdapterStatus
from ..api.basemodel_types import BaseModelSpec, BaseModelStatus, VariantStatus
from ..api.conditions import now_iso, triple_typed
from ..api.names import job_name
from ..api.resources import AdapterResource, BaseModelResource, InvalidObject
from .store_summary import store_relpath


@dataclass
class JobState:
    name: str
    step: str  # publish | verify
    phase: str  # Running | Succeeded | Failed
    message: str = ""  # termination message (summary JSON, or the error tail)


@dataclass
class World:
    now: dt.datetime
    jobs: dict[str, JobState] = field(default_factory=dict)
    secret_missing: str | None = None  # name of a referenced Secret (or key) that is absent
    summary: dict | None = None  # summary of the succeeded verify Job's version
    summary_error: str | None = None
    base: BaseModelResource | InvalidObject | None = None  # Adapter only: its BaseModel (None: not found)


Status = BaseModelStatus | AdapterStatus


@dataclass
class Plan:
    status: Status  # typed; the controller dumps it with ``as_read`` (only the keys read or set: a merge patch)
    create_job: str | None = None  # step to create a Job for ("publish" | "verify")
    job_name: str | None = None
    requeue_after: float | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


def relpath_of(spec: BaseModelSpec | AdapterSpec, kind: str) -> tuple[str, bool]:
    """(path relative to the store root, derived-from-names?)."""
    src = spec.source
    if src is not None and src.path:
        return src.path, False
    name = spec.store_name if kind == "base" else src.store_name
    owner = spec.owner if kind == "base" else src.owner
    return store_relpath(owner, kind, name, spec.version), True


def _parse_time(s: str | None) -> dt.datetime | None:
    if not s:
        return None
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)


Resource = BaseModelResource | AdapterResource
#: Ready reasons of an Adapter whose BaseModel is missing or invalid
BASE_FAILURES = ("BaseModelMissing", "BaseModelInvalid")


def _set(status: Status, **fields) -> Status:
    """Assign fields (snake_case), marking them set, so ``as_read`` sends them (None deletes the key)."""
    for k, v in fields.items():
        setattr(status, k, v)
    return status


def _conditions(status: Status, generation: int | None, now: dt.datetime, **three: tuple[bool, str, str]) -> None:
    """Set Ready, Progressing and Degraded (transition times kept where a status did not flip)."""
    status.conditions = triple_typed(status.conditions, generation=generation, now=now, **three)


def _ready_reason(status: Status) -> str | None:
    return next((c.reason for c in status.conditions if c.type == "Ready"), None)


def _fail(obj: Resource, status: Status, world: World, reason: str, message: str, backoff, phase="Failed") -> Plan:
    gen = obj.generation
    attempts = (status.attempts or 0) + 1
    delay = backoff(attempts)
    _set(status, phase=phase, attempts=attempts, next_retry=now_iso(world.now + dt.timedelta(seconds=delay)),
         observed_generation=gen)
    _conditions(status, gen, world.now, ready=(False, reason, message),
                progressing=(True, "RetryScheduled", f"retry {attempts} in {delay:.0f}s"),
                degraded=(True, reason, message))
    return Plan(status=status, requeue_after=delay, events=[("Warning", reason, message)])


def _progress(obj: Resource, status: Status, world: World, phase: str, reason: str, message: str) -> Status:
    gen = obj.generation
    _set(status, phase=phase, observed_generation=gen)
    _conditions(status, gen, world.now, ready=(False, reason, message), progressing=(True, reason, message),
                degraded=(False, "AsExpected", ""))
    return status


def _base_status(obj: Resource) -> Status:
    """The status as read (a copy: only the keys it had count as set)."""
    st = obj.status.model_copy(deep=True)
    if st.observed_generation != obj.generation:
        # The spec changed: forget the last version's outcome and retries.
        _set(st, attempts=0, next_retry=None, phase="Pending", job=None)
        if isinstance(st, BaseModelStatus):
            st.published_generation = None
    return st


def _retry_pending(status: Status, world: World) -> Plan | None:
    """Wait out a scheduled retry: a pass woken early (a watch event) must not
    count as another attempt, or the backoff would grow with every event."""
    nxt = _parse_time(status.next_retry)
    if nxt and nxt > world.now:
        return Plan(status=status, requeue_after=(nxt - world.now).total_seconds())
    return None


def _run_step(obj: Resource, kind: str, status: Status, world: World, step: str, backoff) -> Plan | None:
    """Drive one Job step; None when that step already succeeded."""
    gen = obj.generation or 0
    name = job_name("bm" if kind == "base" else "adp", obj.name, step, gen, status.attempts or 0)
    job = world.jobs.get(name)
    label = "Publishing" if step == "publish" else "Verifying"
    if job is None:
        pending = _retry_pending(status, world)
        if pending is not None:
            return pending
        status.job = name
        _progress(obj, status, world, label, f"{label}Started", f"Job {name} started")
        return Plan(status=status, create_job=step, job_name=name,
                    events=[("Normal", f"{label}Started", f"Job {name}")])
    status.job = name
    if job.phase == "Running":
        return Plan(status=_progress(obj, status, world, label, label, f"Job {name} running"))
    if job.phase == "Failed":
        why = (job.message or "no termination message").strip().splitlines()[-1][:400] if job.message else \
            "the Job failed without a message"
        return _fail(obj, status, world, f"{step.capitalize()}Failed", f"Job {name} failed: {why}", backoff)
    return None  # Succeeded


def _verify_step(obj: Resource, kind: str, status: Status, world: World, backoff) -> Plan | None:
    """The verify Job step, then its summary; None once both are in hand."""
    plan = _run_step(obj, kind, status, world, "verify", backoff)
    if plan is not None:
        return plan
    if world.summary is None:
        return _fail(obj, status, world, "SummaryUnavailable",
                     world.summary_error or "verify Job succeeded but reported no summary", backoff)
    return None


def plan_basemodel(obj: BaseModelResource, world: World, backoff) -> Plan:
    spec = obj.spec
    status = _base_status(obj)
    gen = obj.generation
    if status.phase == "Ready" and status.observed_generation == gen:
        return Plan(status=status)
    relpath, derived = relpath_of(spec, "base")
    status.store_path = relpath
    if spec.source.hugging_face and status.published_generation != gen:
        if world.secret_missing:
            return _retry_pending(status, world) or _fail(obj, status, world, "SecretMissing",
                                                          world.secret_missing, backoff)
        pvc = spec.store.persistent_volume_claim
        if pvc and pvc.read_only:
            return _fail(obj, status, world, "StoreReadOnly",
                         "spec.store.persistentVolumeClaim.readOnly must be false to publish from the hub", backoff)
        plan = _run_step(obj, "base", status, world, "publish", backoff)
        if plan is not None:
            return plan
        status.published_generation = gen
    plan = _verify_step(obj, "base", status, world, backoff)
    if plan is not None:
        return plan
    variants = {v.name: v.vram_mib for v in spec.variants} or \
        dict(world.summary.get("variants") or {})
    if not variants:
        return _fail(obj, status, world, "NoVariants",
                     "neither spec.variants nor the manifest lists a variant with VRAM", backoff)
    _set(status, phase="Ready", checksum=world.summary.get("checksum"), size_bytes=world.summary.get("sizeBytes"),
         variants=[VariantStatus(name=k, vramMiB=int(v)) for k, v in sorted(variants.items())],
         attempts=0, next_retry=None, observed_generation=gen)
    msg = f"{relpath} verified, checksum {str(status.checksum)[:12]}"
    _conditions(status, gen, world.now, ready=(True, "Verified", msg), progressing=(False, "Verified", msg),
                degraded=(False, "AsExpected", ""))
    return Plan(status=status, events=[("Normal", "Verified", msg)])


def plan_adapter(obj: AdapterResource, world: World, backoff) -> Plan:
    spec = obj.spec
    status = _base_status(obj)
    gen = obj.generation
    base = world.base
    base_ready = isinstance(base, BaseModelResource) and base.status.phase == "Ready"
    if status.phase == "Ready" and status.observed_generation == gen and base_ready and \
            status.base_checksum == base.status.checksum:
        return Plan(status=status)
    if spec.training and not spec.source:
        return Plan(status=_progress(obj, status, world, "Pending", "TrainingNotHandled",
                                     "spec.training is handled by the training controller"))
    if base is None or isinstance(base, InvalidObject):
        # Wait out the scheduled retry: every event in the namespace wakes this Adapter, and each
        # pass must not count (and report) another attempt. The base appearing is seen at once.
        waiting = _retry_pending(status, world)
        if waiting is not None:
            return waiting
        if base is None:
            return _fail(obj, status, world, "BaseModelMissing",
                         f"BaseModel {spec.base_model_ref} not found in this namespace", backoff, phase="Pending")
        return _fail(obj, status, world, "BaseModelInvalid",
                     f"BaseModel {spec.base_model_ref} is invalid: {base.message}", backoff, phase="Pending")
    if _ready_reason(status) in BASE_FAILURES:
        status.next_retry = None  # the retry waited for the base, which is there now: go on at once
    if not base_ready:
        _progress(obj, status, world, "Pending", "WaitingForBaseModel", f"BaseModel {spec.base_model_ref} not Ready")
        return Plan(status=status, requeue_after=10)
    relpath, _ = relpath_of(spec, "adapter")
    status.store_path = relpath
    plan = _verify_step(obj, "adapter", status, world, backoff)
    if plan is not None:
        return plan
    s = world.summary
    _set(status, checksum=s.get("checksum"), size_bytes=s.get("sizeBytes"), vram_mib=s.get("vramMiB"),
         rank=s.get("rank"), base_checksum=s.get("baseChecksum"), observed_generation=gen)
    want = base.status.checksum
    if s.get("kind") != "adapter":
        return _fail(obj, status, world, "NotAnAdapter", f"{relpath} holds a {s.get('kind')}, not an adapter",
                     backoff, phase="Degraded")
    if s.get("baseChecksum") != want:
        msg = (f"adapter was trained on base checksum {str(s.get('baseChecksum'))[:12]}, BaseModel "
               f"{spec.base_model_ref} has {str(want)[:12]}")
        _set(status, phase="Degraded", attempts=0, next_retry=None)
        _conditions(status, gen, world.now, ready=(False, "BaseChecksumMismatch", msg),
                    progressing=(False, "BaseChecksumMismatch", msg), degraded=(True, "BaseChecksumMismatch", msg))
        return Plan(status=status, events=[("Warning", "BaseChecksumMismatch", msg)], requeue_after=60)
    msg = f"{relpath} verified against BaseModel {spec.base_model_ref}"
    _set(status, phase="Ready", attempts=0, next_retry=None)
    _conditions(status, gen, world.now, ready=(True, "Verified", msg), progressing=(False, "Verified", msg),
                degraded=(False, "AsExpected", ""))
    return Plan(status=status, events=[("Normal", "Verified", msg)])
