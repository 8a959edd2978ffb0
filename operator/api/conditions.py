"""Kubernetes-style conditions, computed purely.

``lastTransitionTime`` moves only when a condition's status flips, so
watchers (kubectl wait, Argo CD, Flux) see real transitions, not churn.
"""

from __future__ import annotations

import datetime as dt

from .common_types import Condition


def now_iso(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict], type_: str, status: bool | str, reason: str, message: str,
                  generation: int | None, now: dt.datetime | None = None) -> list[dict]:
    status_s = status if isinstance(status, str) else ("True" if status else "False")
    out, found = [], False
    for c in conditions or []:
        if c.get("type") == type_:
            found = True
            ltt = c.get("lastTransitionTime") if c.get("status") == status_s else now_iso(now)
            out.append({"type": type_, "status": status_s, "reason": reason, "message": message,
                        "lastTransitionTime": ltt or now_iso(now), "observedGeneration": generation})
        else:
            out.append(c)
    if not found:
        out.append({"type": type_, "status": status_s, "reason": reason, "message": message,
                    "lastTransitionTime": now_iso(now), "observedGeneration": generation})
    return out


def get_condition(conditions: list[dict] | None, type_: str) -> dict | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[dict] | None, type_: str) -> bool:
    c = get_condition(conditions, type_)
    return bool(c and c.get("status") == "True")


def triple(conditions: list[dict], *, ready: tuple[bool, str, str], progressing: tuple[bool, str, str],
           degraded: tuple[bool, str, str], generation: int | None, now: dt.datetime | None = None) -> list[dict]:
    """Set Ready, Progressing and Degraded at once from (status, reason, message)."""
    for t, (s, r, m) in (("Ready", ready), ("Progressing", progressing), ("Degraded", degraded)):
        conditions = set_condition(conditions, t, s, r, m, generation, now)
    return conditions


#: Progressing reasons that mean the object waits for a person (or for the
#: scheduled retry of a failure), not for work under way: kstatus Failed.
STALLED_REASONS = frozenset({
    "RetryScheduled", "InvalidSpec", "BaseModelMissing", "BaseModelInvalid", "NoVariant", "ChildRefused",
})


def kstatus_conditions(status: dict, generation: int | None, now: dt.datetime | None = None) -> dict:
    """``status`` with kstatus' ``Reconciling`` and ``Stalled`` conditions
    derived from Ready, Progressing and Degraded, so the kstatus library
    (Argo CD, Flux) reads the object right:

    - Ready=True and Progressing not True: neither (Current);
    - not Ready and failed (Degraded=True or RoutesValid=False with nothing
      under way, or a Progressing reason in ``STALLED_REASONS``): Stalled=True
      (Failed);
    - otherwise (Progressing=True, e.g. a pool whose canary weights are still
      pending, or not Ready yet): Reconciling=True (InProgress).

    Both are "abnormal-true": False when they do not apply, never True at
    once. A status without a Ready condition (nothing computed yet) is left
    as it is. Pure and idempotent: applied to every status the operator writes.
    """
    conds = status.get("conditions") or []
    ready = get_condition(conds, "Ready")
    if ready is None:
        return status
    prog = get_condition(conds, "Progressing") or {}
    deg = get_condition(conds, "Degraded") or {}
    routes = get_condition(conds, "RoutesValid") or {}  # a pool's routes name what it cannot serve as asked
    is_ready, progressing = ready.get("status") == "True", prog.get("status") == "True"
    stalled = reconciling = None
    if not is_ready and progressing and prog.get("reason") in STALLED_REASONS:
        stalled = (deg.get("reason") if deg.get("status") == "True" else prog.get("reason"), ready.get("message", ""))
    elif not is_ready and not progressing and deg.get("status") == "True":
        stalled = (deg.get("reason", ""), deg.get("message") or ready.get("message", ""))
    elif not is_ready and not progressing and routes.get("status") == "False":
        stalled = (routes.get("reason", ""), routes.get("message", ""))
    elif progressing:
        reconciling = (prog.get("reason", ""), prog.get("message", ""))
    elif not is_ready:
        reconciling = (ready.get("reason", ""), ready.get("message", ""))
    out = dict(status)
    for type_, value in (("Reconciling", reconciling), ("Stalled", stalled)):
        reason, message = value or ("AsExpected", "")
        out["conditions"] = conds = set_condition(conds, type_, value is not None, reason or type_, message,
                                                  generation, now)
    return out


# --- the same on typed conditions (``common_types.Condition``), for cores that take a typed status ----
def find(conditions: list[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or [] if c.type == type_), None)


def set_typed(conditions: list[Condition], type_: str, status: bool | str, reason: str, message: str,
              generation: int | None, now: dt.datetime | None = None) -> list[Condition]:
    """``set_condition`` on typed conditions (the same transition-time rule; only the keys each
    condition had, or that this sets, are dumped)."""
    read = [c.model_dump(by_alias=True, mode="json", exclude_unset=True) for c in conditions]
    return [Condition.model_validate(c) for c in set_condition(read, type_, status, reason, message, generation, now)]


def triple_typed(conditions: list[Condition], *, ready: tuple[bool, str, str], progressing: tuple[bool, str, str],
                 degraded: tuple[bool, str, str], generation: int | None,
                 now: dt.datetime | None = None) -> list[Condition]:
    """``triple`` on typed conditions."""
    read = [c.model_dump(by_alias=True, mode="json", exclude_unset=True) for c in conditions]
    return [Condition.model_validate(c) for c in triple(read, ready=ready, progressing=progressing,
                                                        degraded=degraded, generation=generation, now=now)]
