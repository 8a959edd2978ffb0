"""LedgerCache: first read lists, own creates are written through, events
never drop a same-named successor, resync relists."""

import json

from loraplane.operator.controllers.ledger_cache import LedgerCache

NODE = {"metadata": {"name": "n0", "resourceVersion": "1",
                     "labels": {"nvidia.com/gpu.count": "1", "nvidia.com/gpu.memory": "24576"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def pod(name, uid, rv, mib=10000):
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": str(rv),
                         "annotations": {"loraplane.io/reservation": json.dumps(
                             {"node": "n0", "gpu": 0, "vramMiB": mib, "variant": "fp16"})}},
            "spec": {}, "status": {"phase": "Running"}}


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def test_cache_lists_once_then_follows_events():
    calls = []
    listed = [pod("p-0", "u0", 5)]
    clock = Clock()
    c = LedgerCache(lambda: [NODE], lambda: calls.append(1) or listed, resync_seconds=30, clock=clock)
    nodes, res, _ = c.view()
    assert len(calls) == 1 and [r.mib for r in res] == [10000]
    c.created(pod("p-1", "u1", 7, 5000))
    assert sorted(r.mib for r in c.view()[1]) == [5000, 10000] and len(calls) == 1
    # p-0 is deleted by a user and recreated by us before its DELETED event arrives.
    c.created(pod("p-0", "u2", 9, 7000))
    c.pod_event(pod("p-0", "u0", 8), deleted=True)
    assert sorted(r.mib for r in c.view()[1]) == [5000, 7000]
    c.pod_event(pod("p-0", "u0", 6), deleted=False)  # a stale event of the old incarnation
    assert sorted(r.mib for r in c.view()[1]) == [5000, 7000]
    c.pod_event(pod("p-1", "u1", 10), deleted=True)
    assert [r.mib for r in c.view()[1]] == [7000]
    clock.t = 31
    c.view()
    assert len(calls) == 2  # resync relists


def test_pods_without_gpu_are_ignored():
    c = LedgerCache(lambda: [NODE], lambda: [], clock=Clock())
    c.view()
    c.pod_event({"metadata": {"name": "web", "namespace": "x", "uid": "w", "resourceVersion": "3"},
                 "spec": {"containers": [{"resources": {}}]}}, deleted=False)
    assert c.pods == {}
