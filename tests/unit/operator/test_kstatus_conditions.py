"""kstatus' Reconciling and Stalled conditions (api.conditions.kstatus_conditions),
checked against the rule and against the real kstatus library (the
``kstatus`` program built from sigs.k8s.io/cli-utils by
loraplane/devcluster/kstatus_build.py, as Argo CD and Flux compute health)."""

from __future__ import annotations

import datetime as dt

import pytest

from loraplane.devcluster import kstatus_build
from loraplane.operator.api.conditions import get_condition, kstatus_conditions, triple

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
OK = (False, "AsExpected", "")


def status(ready, progressing, degraded, gen=3) -> dict:
    return {"observedGeneration": gen,
            "conditions": triple([], ready=ready, progressing=progressing, degraded=degraded, generation=gen, now=NOW)}


def blocked(reason, message) -> dict:
    """A pool that cannot plan workers (core.pool._blocked)."""
    return status((False, reason, message), (True, reason, message), (True, reason, message))


def routes_invalid() -> dict:
    """A pool up but routing a task to an adapter of another task (core.routing.report_problems)."""
    msg = "route critic -> sum-v1: adapter sum-v1 serves task summarize"
    st = status((False, "RouteTaskMismatch", msg), (False, "Stable", "2/2"), OK)
    st["conditions"].append({"type": "RoutesValid", "status": "False", "reason": "RouteTaskMismatch",
                             "message": msg, "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 3})
    return st


STATES = {  # name -> (status, what kstatus must read)
    "ready": (status((True, "AllWorkersReady", "2/2"), (False, "Stable", "2/2"), OK), "Current"),
    "canary weights pending": (status((True, "AllWorkersReady", "2/2"),
                                      (True, "RolloutProgressing", "waiting for ready workers to load v2"), OK),
                               "InProgress"),
    "pods starting": (status((False, "Reconciling", "0/2"), (True, "Reconciling", "0/2 workers ready"), OK),
                      "InProgress"),
    "waiting for base": (blocked("WaitingForBaseModel", "BaseModel m is not Ready"), "InProgress"),
    "verify failed, retry scheduled": (status((False, "VerifyFailed", "Job x failed"),
                                              (True, "RetryScheduled", "retry 2 in 20s"),
                                              (True, "VerifyFailed", "Job x failed")), "Failed"),
    "base missing": (blocked("BaseModelMissing", "BaseModel m not found"), "Failed"),
    "invalid spec": (status((False, "InvalidSpec", "spec.x: bad"), (False, "InvalidSpec", "spec.x: bad"),
                            (True, "InvalidSpec", "spec.x: bad")), "Failed"),
    "training failed": (status((False, "TrainingFailed", "exit 1"), (False, "TrainingFailed", "exit 1"),
                               (True, "TrainingFailed", "exit 1")), "Failed"),
    "route to an adapter of another task": (routes_invalid(), "Failed"),
    "not ready, nothing said": (status((False, "Pending", ""), (False, "Pending", ""), OK), "InProgress"),
}


def _by_type(st: dict) -> dict:
    return {c["type"]: c for c in st["conditions"]}


@pytest.mark.parametrize("name", sorted(STATES))
def test_rule(name):
    st, want = STATES[name]
    out = _by_type(kstatus_conditions(st, 3, NOW))
    rec, stalled = out["Reconciling"]["status"] == "True", out["Stalled"]["status"] == "True"
    assert not (rec and stalled)
    assert (rec, stalled) == {"Current": (False, False), "InProgress": (True, False), "Failed": (False, True)}[want]
    assert out["Reconciling"]["observedGeneration"] == out["Stalled"]["observedGeneration"] == 3
    assert out["Stalled" if stalled else "Reconciling"]["reason"]  # a CamelCase reason always


def test_idempotent_and_transition_time_kept():
    st, _ = STATES["base missing"]
    once = kstatus_conditions(st, 3, NOW)
    later = NOW + dt.timedelta(minutes=5)
    assert kstatus_conditions(once, 3, later) == once  # no status patch from a repeated pass
    fixed = status((True, "Verified", "ok"), (False, "Verified", "ok"), OK)
    fixed["conditions"] += [c for c in once["conditions"] if c["type"] in ("Reconciling", "Stalled")]
    out = _by_type(kstatus_conditions(fixed, 3, later))
    assert out["Stalled"]["status"] == "False" and out["Stalled"]["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    assert out["Reconciling"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # was False, still False


def test_no_ready_condition_left_alone():
    assert kstatus_conditions({"phase": "Pending"}, 1) == {"phase": "Pending"}


def _obj(kind: str, st: dict, generation: int = 3) -> dict:
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": kind,
            "metadata": {"name": "x", "namespace": "ns", "generation": generation}, "status": st}


def test_real_kstatus_library_agrees():
    """Every state above, as BaseModel/Adapter/WorkerPool objects, read by kstatus itself."""
    objs, want = [], []
    for name in sorted(STATES):
        st, expected = STATES[name]
        for kind in ("BaseModel", "Adapter", "WorkerPool"):
            objs.append(_obj(kind, kstatus_conditions(st, 3, NOW)))
            want.append((kind, name, expected))
    got = kstatus_build.compute(objs)
    assert [(k, n, g["status"]) for (k, n, _), g in zip(want, got)] == want, got
    # Without these conditions (the operator before this change) kstatus fell back to Ready: a
    # failed object read InProgress for ever, and a pool with canary weights pending read Current.
    before = kstatus_build.compute([_obj("Adapter", STATES["base missing"][0]),
                                    _obj("WorkerPool", STATES["canary weights pending"][0])])
    assert [b["status"] for b in before] == ["InProgress", "Current"]
    # A spec change not yet observed reads InProgress whatever the conditions say.
    stale = kstatus_build.compute([_obj("WorkerPool", kstatus_conditions(STATES["ready"][0], 3, NOW), 4)])
    assert stale[0]["status"] == "InProgress"
