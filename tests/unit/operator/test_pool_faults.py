"""Pool faults (issue 12, item 4), decided by the pure pool core with a fixed ``now``:
Unschedulable workers, node loss, crash-looping and OOMKilled workers, and ``gpu.*``
changes that roll the workers (make-before-break when a GPU has room)."""

from __future__ import annotations

import copy
import datetime as dt

from loraplane.operator.api.conditions import now_iso
from loraplane.operator.api.observed_types import NodeView, PodView
from loraplane.operator.core import inventory, placement as pl

from .test_cores import ADP, BASE, NOW, pool, running, st
from .test_cores import plan_pool as _plan

ADAPTERS = {"syn-v1": ADP}


def ago(seconds: float) -> str:
    return now_iso(NOW - dt.timedelta(seconds=seconds))


def node(name: str, gpus: int = 1, ready: bool = True, since: str | None = None) -> NodeView:
    cond = {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": since or ago(3600)}
    return NodeView.from_api({"metadata": {"name": name, "labels": {pl.GPU_COUNT: str(gpus),
                                                                   pl.GPU_MEMORY: "24576"}},
                              "status": {"conditions": [cond]}})


def plan(pool_obj, pods, nodes_, now=NOW):
    views = [PodView.from_api(p) for p in pods]
    return _plan(pool_obj, BASE, ADAPTERS, pods, nodes_, inventory.reservations(views, nodes_), "img", now)


def placed(pool_obj, nodes_):
    """Running, Ready workers as the first pass placed them."""
    return running(plan(pool_obj, [], nodes_).create)


def unschedulable(pod: dict, seconds: float) -> dict:
    pod["status"] = {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": ago(seconds),
         "message": "0/3 nodes are available: 1 Insufficient memory."}]}
    return pod


def on(pod: dict) -> str:
    return PodView.from_api(pod).reservation.node


# --- Unschedulable -------------------------------------------------------------------------------
def test_a_worker_unschedulable_past_the_bound_is_deleted_and_placed_elsewhere():
    nodes_ = [node("n0"), node("n1")]
    pods = placed(pool(1), nodes_)
    assert on(pods[0]) == "n0"
    unschedulable(pods[0], 299)
    early = plan(pool(1), pods, nodes_)
    assert not early.delete and not early.create  # within the default bound (300 s): keep waiting
    unschedulable(pods[0], 301)
    p = plan(pool(1), pods, nodes_)
    assert p.delete == ["p-0"] and "p-0" not in p.force_delete
    assert [c["metadata"]["name"] for c in p.create] == ["p-1"]  # p-0 still exists: a new name
    assert on(p.create[0]) == "n1"  # not back onto the node it could not be scheduled on
    assert [(a.node, a.until) for a in p.status.avoided_nodes] == [("n0", now_iso(NOW + dt.timedelta(seconds=300)))]
    events = {r: m for _, r, m in p.events}
    assert "Unschedulable on n0 for 301s: 0/3 nodes are available: 1 Insufficient memory." in \
        events["WorkerUnschedulable"]


def test_the_bound_is_configurable_and_the_avoided_node_expires():
    nodes_ = [node("n0")]
    custom = pool(1, rescheduleAfterSeconds=60)
    pods = [unschedulable(p, 61) for p in placed(custom, nodes_)]
    p = plan(custom, pods, nodes_)
    assert p.delete == ["p-0"] and not p.create  # the only node is avoided: reported unplaced
    assert st(p)["unplaced"] == 1
    prog = next(c for c in p.status.conditions if c.type == "Progressing")
    assert prog.reason == "Unplaceable" and "avoided after a worker stayed Unschedulable" in prog.message
    after = copy.deepcopy(custom)
    after["status"] = st(p)  # what the controller patched; p-0 is gone now
    assert not plan(after, [], nodes_, NOW + dt.timedelta(seconds=59)).create
    again = plan(after, [], nodes_, NOW + dt.timedelta(seconds=61))
    assert [on(c) for c in again.create] == ["n0"] and st(again)["avoidedNodes"] == []


def test_the_stuck_pods_reservation_is_released_for_its_replacement():
    """n0's GPU holds p-0 (stuck) and room for one more worker only once p-0's VRAM is released."""
    nodes_ = [node("n0"), node("n1")]
    pods = placed(pool(2), nodes_)  # binpack: both on n0/gpu0
    assert {on(p) for p in pods} == {"n0"}
    views = [PodView.from_api(p) for p in pods]
    assert len(inventory.reservations(views, nodes_)) == 2
    unschedulable(pods[1], 400)
    p = plan(pool(2), pods, nodes_)
    assert p.delete == ["p-1"] and [on(c) for c in p.create] == ["n1"]


# --- node loss -----------------------------------------------------------------------------------
def test_workers_on_a_deleted_node_are_force_deleted_and_replaced():
    nodes_ = [node("n0"), node("n1")]
    pods = placed(pool(1), nodes_)
    p = plan(pool(1), pods, [node("n1")])  # n0 is gone
    assert p.delete == ["p-0"] and p.force_delete == {"p-0"}
    assert [on(c) for c in p.create] == ["n1"]
    assert any(r == "NodeLost" and "node n0 is gone" in m for _, r, m in p.events)


def test_workers_on_a_node_not_ready_past_the_bound_are_replaced():
    pods = placed(pool(1), [node("n0"), node("n1")])
    brief = plan(pool(1), pods, [node("n0", ready=False, since=ago(30)), node("n1")])
    assert not brief.delete and not brief.create  # a short NotReady does not kill a warm worker
    p = plan(pool(1), pods, [node("n0", ready=False, since=ago(301)), node("n1")])
    assert p.delete == ["p-0"] and not p.force_delete  # the kubelet may come back and confirm
    assert [on(c) for c in p.create] == ["n1"]
    assert any(r == "NodeLost" and "NotReady for 301s" in m for _, r, m in p.events)


# --- crash loops and OOM kills -------------------------------------------------------------------
def crashing(pod: dict, oom: bool) -> dict:
    last = {"terminated": {"reason": "OOMKilled" if oom else "Error", "exitCode": 137 if oom else 1}}
    pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}], "containerStatuses": [
        {"name": "worker", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
         "lastState": last}]}
    return pod


def test_crash_looping_and_oom_killed_workers_degrade_the_pool_with_one_event():
    nodes_ = [node("n0", gpus=2)]
    pods = placed(pool(2), nodes_)
    crashing(pods[1], oom=False)
    p = plan(pool(2), pods, nodes_)
    deg = next(c for c in p.status.conditions if c.type == "Degraded")
    assert deg.status.value == "True" and deg.reason == "WorkersCrashLooping" and "worker p-1 in CrashLoopBackOff" \
        in deg.message
    assert next(c for c in p.status.conditions if c.type == "Ready").reason == "WorkersCrashLooping"
    assert [w["fault"] for w in st(p)["workers"] if "fault" in w] == ["CrashLoopBackOff"]
    assert [m for _, r, m in p.events if r == "WorkersCrashLooping"] == ["worker p-1 in CrashLoopBackOff (see "
                                                                        "kubectl logs --previous)"]
    seen = copy.deepcopy(pool(2))
    seen["status"] = st(p)
    pods[1]["status"]["containerStatuses"][0]["restartCount"] = 5  # another restart: no second Event
    assert not [e for e in plan(seen, pods, nodes_).events if e[1].startswith("Workers")]
    crashing(pods[0], oom=True)
    oom = plan(seen, pods, nodes_)
    assert next(c for c in oom.status.conditions if c.type == "Degraded").reason == "WorkersOOMKilled"
    assert [m for _, r, m in oom.events if r == "WorkersOOMKilled"] == [
        "worker p-0 OOMKilled (raise spec.resources.memory); worker p-1 in CrashLoopBackOff (see kubectl logs "
        "--previous)"]


def test_a_recovered_worker_is_not_reported():
    nodes_ = [node("n0")]
    pods = placed(pool(1), nodes_)
    crashing(pods[0], oom=True)
    pods[0]["status"]["conditions"] = [{"type": "Ready", "status": "True"}]  # restarted and serving again
    p = plan(pool(1), pods, nodes_)
    assert next(c for c in p.status.conditions if c.type == "Degraded").reason == "AsExpected"


# --- gpu.* changes roll the workers ---------------------------------------------------------------
TOLERATE = {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}


def test_gpu_settings_enter_the_spec_hash_but_the_policy_does_not():
    nodes_ = [node("n0", gpus=2)]
    pods = placed(pool(1), nodes_)
    assert not plan(pool(1, policy="spread"), pods, nodes_).create
    for change in (TOLERATE, {"nodeSelector": {"a": "b"}}, {"kvCacheMiB": 1024}, {"headroomMiB": 512}):
        p = plan(pool(1, **change), pods, nodes_)
        assert p.create or p.delete, change


def test_a_gpu_change_makes_before_it_breaks_when_a_gpu_has_room():
    nodes_ = [node("n0", gpus=2)]
    pods = placed(pool(1), nodes_)
    p = plan(pool(1, **TOLERATE), pods, nodes_)
    assert not p.delete and [c["metadata"]["name"] for c in p.create] == ["p-1"]
    assert p.create[0]["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    surge = p.create[0]
    waiting = plan(pool(1, **TOLERATE), pods + [surge], nodes_)  # the new worker is not Ready yet
    assert not waiting.delete and not waiting.create
    done = plan(pool(1, **TOLERATE), pods + running([surge]), nodes_)
    assert done.delete == ["p-0"] and not done.create
    assert any(r == "Replaced" for _, r, _m in done.events)


def test_a_gpu_change_breaks_before_it_makes_without_room():
    nodes_ = [node("n0")]
    pods = placed(pool(2), nodes_)  # two workers fill the only GPU
    p = plan(pool(2, headroomMiB=900), pods, nodes_)
    assert p.delete == ["p-0"] and not p.create
    assert any("break-before-make" in m for _, r, m in p.events)
    assert not plan(pool(2, headroomMiB=900), [pods[1]], nodes_).delete  # one at a time: p-1 waits


def test_the_pool_looks_again_when_a_bound_runs_out():
    nodes_ = [node("n0"), node("n1")]
    pods = placed(pool(1, rescheduleAfterSeconds=60), nodes_)
    p = plan(pool(1, rescheduleAfterSeconds=60), pods, [node("n0", ready=False, since=ago(50)), node("n1")])
    assert not p.delete and p.requeue_after == 11  # 10 s left, plus a second so the bound has passed


def test_a_terminating_worker_on_a_deleted_node_is_force_deleted_without_a_new_event():
    pods = placed(pool(1), [node("n0"), node("n1")])
    pods[0]["metadata"]["deletionTimestamp"] = ago(5)  # deleted gracefully while n0 was NotReady
    p = plan(pool(1), pods, [node("n1")])
    assert p.delete == ["p-0"] and p.force_delete == {"p-0"} and not [e for e in p.events if e[1] == "NodeLost"]
