"""core.resolve: an Adapter whose BaseModel is missing or invalid retries on
the documented backoff, not on every wake-up (the issue measured 409
attempts and 409 Events in 43 s), and goes on at once when the base appears."""

from __future__ import annotations

import datetime as dt

import pytest

from loraplane.operator.api.resources import AdapterResource, BaseModelResource, InvalidObject, as_read, parse
from loraplane.operator.controllers.config import Config
from loraplane.operator.core import resolve
from loraplane.operator.core.resolve import World

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
BACKOFF = Config(kubeconfig=None).backoff  # the operator's own: 5 s doubling to 300 s


def adapter(status=None) -> dict:
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "Adapter",
            "metadata": {"name": "a", "namespace": "ns", "uid": "u", "generation": 1},
            "spec": {"baseModelRef": "m", "task": "t", "version": "v1", "source": {"storeName": "s"}},
            "status": {k: v for k, v in (status or {}).items() if v is not None}}


INVALID = InvalidObject(kind="BaseModel", name="m", fields=["spec.store"], message="spec.store: Field required")


@pytest.mark.parametrize("base,reason", [(None, "BaseModelMissing"), (INVALID, "BaseModelInvalid")])
def test_missing_base_waits_out_the_backoff(base, reason):
    status, attempts_at, events = None, [], 0
    for second in range(0, 60):  # woken every second (as watch events did), for a minute
        plan = resolve.plan_adapter(parse(AdapterResource, adapter(status)),
                                    World(now=NOW + dt.timedelta(seconds=second), base=base), BACKOFF)
        events += len(plan.events)
        if as_read(plan.status).get("attempts") != (status or {}).get("attempts"):
            attempts_at.append(second)
        status = as_read(plan.status)  # as the controller patches it
        assert plan.requeue_after and plan.requeue_after > 0
    assert status["conditions"][0]["reason"] == reason and "BaseModel m" in status["conditions"][0]["message"]
    assert attempts_at == [0, 5, 15, 35], attempts_at  # 5, 10, 20 s apart
    assert events == len(attempts_at)


def test_base_appearing_is_seen_at_once():
    first = resolve.plan_adapter(parse(AdapterResource, adapter()), World(now=NOW, base=None), BACKOFF)
    base = parse(BaseModelResource, {
        "apiVersion": "loraplane.io/v1alpha1", "kind": "BaseModel",
        "metadata": {"name": "m", "namespace": "ns", "uid": "b", "generation": 1},
        "spec": {"storeName": "x", "version": "v1", "store": {"hostPath": {"path": "/s"}}},
        "status": {"phase": "Ready", "checksum": "c" * 64}})
    later = resolve.plan_adapter(parse(AdapterResource, adapter(as_read(first.status))),
                                 World(now=NOW + dt.timedelta(seconds=1), base=base), BACKOFF)
    assert later.create_job == "verify"  # not held back by the missing base's nextRetry
