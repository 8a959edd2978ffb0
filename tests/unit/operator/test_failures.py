"""controllers.failures and the daemon loop's hold: refusals the object's
status can explain are classified; a failed pass is held for the backoff,
wake-ups do not end the hold, a new generation does."""

from __future__ import annotations

import asyncio
import json

from kubernetes.client.rest import ApiException

from loraplane.operator.controllers import failures, handlers
from loraplane.operator.controllers.state import State


def refusal(status: int, message: str) -> ApiException:
    e = ApiException(status=status, reason="Refused")
    e.body = json.dumps({"kind": "Status", "message": message})
    return e


def test_classify():
    term = refusal(403, 'pods "p-0" is forbidden: unable to create new content in namespace t because it is '
                        'being terminated')
    assert failures.classify(term)[0] == "NamespaceTerminating"
    assert failures.classify(refusal(404, 'namespaces "t" not found'))[0] == "NamespaceTerminating"  # already gone
    bad = refusal(422, 'Service "pool.a" is invalid: metadata.name: Invalid value: "pool.a"')
    reason, message = failures.classify(bad)
    assert reason == "ChildRefused" and 'metadata.name: Invalid value: "pool.a"' in message
    psa = refusal(403, 'pods "p-0" is forbidden: violates PodSecurity "restricted:latest": runAsNonRoot != true')
    assert failures.classify(psa)[0] == "ChildRefused"
    assert failures.classify(refusal(403, "forbidden: RBAC")) is None  # not the object's fault: logged as is
    assert failures.classify(refusal(500, "etcd")) is None
    itself = refusal(422, 'Adapter.loraplane.io "a" is invalid: <nil>: Invalid value: metadata.name of a Adapter')
    assert failures.classify(itself, "Adapter", "a")[0] == "InvalidSpec"  # its own status write refused
    assert failures.classify(itself, "Adapter", "b")[0] == "ChildRefused"
    assert failures.classify(ValueError("x")) is None


def test_guarded_marks_failures_and_lets_unknown_errors_through():
    def ok(ns, name):
        return 7.0

    def boom(ns, name):
        raise RuntimeError("bug")

    g = failures.Guarded(lambda: None, "WorkerPool", ok)
    assert g("ns", "p") == 7.0 and not g.failed
    g = failures.Guarded(lambda: None, "WorkerPool", boom)
    try:
        g("ns", "p")
    except RuntimeError:
        pass
    assert g.failed  # reconcile.timed logs it; the loop still backs off


def test_hold_ignores_wakeups_but_not_a_new_generation():
    key = ("Adapter", "ns", "a")
    State.spec_generations[key] = 1

    async def run(change_generation: bool) -> float:
        ev = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def poke():
            for _ in range(3):
                await asyncio.sleep(0.1)
                ev.set()  # watch events (e.g. our own status patch)
            if change_generation:
                State.spec_generations[key] = 2
                ev.set()
        start = loop.time()
        task = asyncio.create_task(poke())
        await handlers._hold(key, ev, 1.5, stopped=False)
        await task
        return loop.time() - start

    assert asyncio.run(run(False)) >= 1.4
    assert asyncio.run(run(True)) < 1.0
    State.spec_generations.pop(key, None)
