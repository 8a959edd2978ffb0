"""Failed passes: what the API server refused, said on the object, once.

A pass that meets a refusal from the API server (a child it will not take:
400/422, or 403 from Pod Security admission or a ResourceQuota; a namespace
being deleted: 403 "being terminated") must not crash
into a traceback and must not retry at once. ``Guarded`` wraps one object's
pass: a refusal it knows becomes a condition naming the reason and the
server's message plus one (deduplicated) Event, logged as one line; any
failure marks the pass failed, and the daemon loop (``handlers._loop``)
then waits the operator's backoff, waking early only when the object's spec
changes. Unknown errors still reach ``reconcile.timed``, which logs them.
A namespace refused as terminating gets no pass at all (so no create) while
it stays so: only a read of the namespace per backoff period.
"""

from __future__ import annotations

import json
import logging

from kubernetes.client.rest import ApiException

from ..api.common_types import GROUP
from ..api.conditions import kstatus_conditions, set_condition
from .kube import Kube
from .state import State

log = logging.getLogger("loraplane.operator")

TERMINATING = "NamespaceTerminating"
REFUSED = "ChildRefused"
INVALID = "InvalidSpec"


def api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason or exc.status)


def classify(exc: BaseException, kind: str = "", name: str = "") -> tuple[str, str] | None:
    """(reason, message) for a refusal the object's status can explain; None otherwise."""
    if not isinstance(exc, ApiException):
        return None
    message = api_message(exc)
    if exc.status == 422 and kind and message.startswith(f'{kind}.{GROUP} "{name}" is invalid'):
        # the object itself, stored before its CRD's current rules: even its status cannot be written
        return INVALID, (f"{kind} {name} breaks its CRD's current rules, so the API server refuses any write "
                         f"to it, its status too: {message}; fix or re-create it")
    if (exc.status == 403 and "being terminated" in message) or \
            (exc.status == 404 and message.startswith("namespaces ") and message.endswith("not found")):
        return TERMINATING, message
    if exc.status in (400, 422) or (exc.status == 403 and ("violates PodSecurity" in message
                                                           or "exceeded quota" in message)):
        return REFUSED, f"the API server refused a child object: {message}"
    return None


def report(kube: Kube, kind: str, ns: str, name: str, reason: str, message: str, retry_in: float) -> None:
    """Conditions on the object (and one Warning Event unless the namespace is going away)."""
    raw = kube.get_custom(kind, ns, name)
    if raw is None:
        return
    gen = raw["metadata"].get("generation")
    status = dict(raw.get("status") or {})
    conds = status.get("conditions") or []
    if reason == TERMINATING:  # nothing to fix: the object goes with its namespace
        states = (("Ready", False, reason), ("Progressing", False, reason), ("Degraded", False, reason))
    else:
        states = (("Ready", False, reason), ("Progressing", True, "RetryScheduled"), ("Degraded", True, reason))
    for type_, value, why in states:
        text = f"retry in {retry_in:.0f}s" if why == "RetryScheduled" else message[:1000]
        conds = set_condition(conds, type_, value, why, text, gen)
    status["conditions"] = conds
    status = kstatus_conditions(status, gen)
    try:
        if reason != INVALID and status != (raw.get("status") or {}):
            kube.patch_status(kind, ns, name, status)
    finally:  # the Event even when the status write is refused: the one place left to say it
        if reason != TERMINATING:
            kube.event(raw, "Warning", reason, message)


class Guarded:
    """One object's pass; ``failed`` tells the loop to back off."""

    def __init__(self, kube_of, kind: str, fn):
        self.kube_of, self.kind, self.fn = kube_of, kind, fn
        self.failed, self.failures, self.retry_in = False, 0, 5.0

    def __call__(self, ns: str, name: str):
        retry_in = self.retry_in
        self.failed = True  # until the pass returns: an unknown error propagates to reconcile.timed
        if ns in State.terminating:  # refused there once: create nothing until the namespace is back
            if self.kube_of().namespace_terminating(ns):
                return None
            State.terminating.discard(ns)
        try:
            result = self.fn(ns, name)
        except ApiException as e:
            why = classify(e, self.kind, name)
            if why is None:
                raise
            if why[0] == TERMINATING:
                State.terminating.add(ns)
            log.warning("%s %s/%s: %s: %s (retry in %.0fs)", self.kind, ns, name, why[0], why[1][:300], retry_in)
            try:
                report(self.kube_of(), self.kind, ns, name, *why, retry_in)
            except ApiException as e2:
                log.warning("%s %s/%s: status not written: %s", self.kind, ns, name, api_message(e2)[:300])
            return None
        self.failed = False
        return result
