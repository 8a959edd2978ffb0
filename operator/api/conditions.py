"""Kubernetes-style conditions, computed purely.

``lastTransitionTime`` moves only when a condition's status flips, so
watchers (kubectl wait, Argo CD, Flux) see real transitions, not churn.
"""

from __future__ import annotations

import datetime as dt


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
