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

from ..api.adapter_types import AdapterSpec
from ..api.basemodel_types import BaseModelSpec
from ..api.conditions import get_condition, now_iso, triple
from ..api.names import job_name
from ..api.resources import AdapterResource, BaseModelResource, InvalidObject, as_read
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


@dataclass
class Plan:
    status: dict
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


def _fail(obj: Resource, status: dict, world: World, reason: str, message: str, backoff, phase="Failed") -> Plan:
    gen = obj.generation
    attempts = status.get("attempts", 0) + 1
    delay = backoff(attempts)
    status.update(phase=phase, attempts=attempts, nextRetry=now_iso(world.now + dt.timedelta(seconds=delay)),
                  observedGeneration=gen)
    status["conditions"] = triple(status.get("conditions", []), ready=(False, reason, message),
                                  progressing=(True, "RetryScheduled", f"retry {attempts} in {delay:.0f}s"),
                                  degraded=(True, reason, message), generation=gen, now=world.now)
    return Plan(status=status, requeue_after=delay, events=[("Warning", reason, message)])


def _progress(obj: Resource, status: dict, world: World, phase: str, reason: str, message: str) -> dict:
    gen = obj.generation
    status.update(phase=phase, observedGeneration=gen)
    status["conditions"] = triple(status.get("conditions", []), ready=(False, reason, message),
                                  progressing=(True, reason, message), degraded=(False, "AsExpected", ""),
                                  generation=gen, now=world.now)
    return status


def _base_status(obj: Resource) -> dict:
    st = as_read(obj.status)
    if st.get("observedGeneration") != obj.generation:
        # The spec changed: forget the last version's outcome and retries.
        st.update(attempts=0, nextRetry=None, phase="Pending", job=None, publishedGeneration=None)
    return st


def _retry_pending(status: dict, world: World) -> Plan | None:
    """Wait out a scheduled retry: a pass woken early (a watch event) must not
    count as another attempt, or the backoff would grow with every event."""
    nxt = _parse_time(status.get("nextRetry"))
    if nxt and nxt > world.now:
        return Plan(status=status, requeue_after=(nxt - world.now).total_seconds())
    return None


def _run_step(obj: Resource, kind: str, status: dict, world: World, step: str, backoff) -> Plan | None:
    """Drive one Job step; None when that step already succeeded."""
    gen = obj.generation or 0
    name = job_name("bm" if kind == "base" else "adp", obj.name, step, gen, status.get("attempts", 0))
    job = world.jobs.get(name)
    label = "Publishing" if step == "publish" else "Verifying"
    if job is None:
        pending = _retry_pending(status, world)
        if pending is not None:
            return pending
        status["job"] = name
        _progress(obj, status, world, label, f"{label}Started", f"Job {name} started")
        return Plan(status=status, create_job=step, job_name=name,
                    events=[("Normal", f"{label}Started", f"Job {name}")])
    status["job"] = name
    if job.phase == "Running":
        return Plan(status=_progress(obj, status, world, label, label, f"Job {name} running"))
    if job.phase == "Failed":
        why = (job.message or "no termination message").strip().splitlines()[-1][:400] if job.message else \
            "the Job failed without a message"
        return _fail(obj, status, world, f"{step.capitalize()}Failed", f"Job {name} failed: {why}", backoff)
    return None  # Succeeded


def _verify_step(obj: Resource, kind: str, status: dict, world: World, backoff) -> Plan | None:
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
    if status.get("phase") == "Ready" and status.get("observedGeneration") == gen:
        return Plan(status=status)
    relpath, derived = relpath_of(spec, "base")
    status["storePath"] = relpath
    if spec.source.hugging_face and status.get("publishedGeneration") != gen:
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
        status["publishedGeneration"] = gen
    plan = _verify_step(obj, "base", status, world, backoff)
    if plan is not None:
        return plan
    variants = {v.name: v.vram_mib for v in spec.variants} or \
        dict(world.summary.get("variants") or {})
    if not variants:
        return _fail(obj, status, world, "NoVariants",
                     "neither spec.variants nor the manifest lists a variant with VRAM", backoff)
    status.update(phase="Ready", checksum=world.summary.get("checksum"), sizeBytes=world.summary.get("sizeBytes"),
                  variants=[{"name": k, "vramMiB": int(v)} for k, v in sorted(variants.items())],
                  attempts=0, nextRetry=None, observedGeneration=gen)
    msg = f"{relpath} verified, checksum {str(status['checksum'])[:12]}"
    status["conditions"] = triple(status.get("conditions", []), ready=(True, "Verified", msg),
                                  progressing=(False, "Verified", msg), degraded=(False, "AsExpected", ""),
                                  generation=gen, now=world.now)
    return Plan(status=status, events=[("Normal", "Verified", msg)])


def plan_adapter(obj: AdapterResource, world: World, backoff) -> Plan:
    spec = obj.spec
    status = _base_status(obj)
    gen = obj.generation
    base = world.base
    base_ready = isinstance(base, BaseModelResource) and base.status.phase == "Ready"
    if status.get("phase") == "Ready" and status.get("observedGeneration") == gen and base_ready and \
            status.get("baseChecksum") == base.status.checksum:
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
    if (get_condition(status.get("conditions"), "Ready") or {}).get("reason") in BASE_FAILURES:
        status["nextRetry"] = None  # the retry waited for the base, which is there now: go on at once
    if not base_ready:
        _progress(obj, status, world, "Pending", "WaitingForBaseModel", f"BaseModel {spec.base_model_ref} not Ready")
        return Plan(status=status, requeue_after=10)
    relpath, _ = relpath_of(spec, "adapter")
    status["storePath"] = relpath
    plan = _verify_step(obj, "adapter", status, world, backoff)
    if plan is not None:
        return plan
    s = world.summary
    status.update(checksum=s.get("checksum"), sizeBytes=s.get("sizeBytes"), vramMiB=s.get("vramMiB"),
                  rank=s.get("rank"), baseChecksum=s.get("baseChecksum"), observedGeneration=gen)
    want = base.status.checksum
    if s.get("kind") != "adapter":
        return _fail(obj, status, world, "NotAnAdapter", f"{relpath} holds a {s.get('kind')}, not an adapter",
                     backoff, phase="Degraded")
    if s.get("baseChecksum") != want:
        msg = (f"adapter was trained on base checksum {str(s.get('baseChecksum'))[:12]}, BaseModel "
               f"{spec.base_model_ref} has {str(want)[:12]}")
        status.update(phase="Degraded", attempts=0, nextRetry=None)
        status["conditions"] = triple(status.get("conditions", []), ready=(False, "BaseChecksumMismatch", msg),
                                      progressing=(False, "BaseChecksumMismatch", msg),
                                      degraded=(True, "BaseChecksumMismatch", msg), generation=gen, now=world.now)
        return Plan(status=status, events=[("Warning", "BaseChecksumMismatch", msg)], requeue_after=60)
    msg = f"{relpath} verified against BaseModel {spec.base_model_ref}"
    status.update(phase="Ready", attempts=0, nextRetry=None)
    status["conditions"] = triple(status.get("conditions", []), ready=(True, "Verified", msg),
                                  progressing=(False, "Verified", msg), degraded=(False, "AsExpected", ""),
                                  generation=gen, now=world.now)
    return Plan(status=status, events=[("Normal", "Verified", msg)])
