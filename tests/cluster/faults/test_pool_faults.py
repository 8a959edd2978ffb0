"""Pool faults with the real operator, API server, scheduler and KWOK nodes (issue 12, item 4):
an Unschedulable worker is moved, node loss replaces workers and frees the ledger,
OOMKilled / CrashLoopBackOff give a condition, one Event and a metric, and a ``gpu.*``
change rolls the workers make-before-break. Fixtures: conftest.py (how faults are made)."""

from __future__ import annotations

import json
import re

RESCHEDULE = 5  # spec.gpu.rescheduleAfterSeconds of these pools (the minimum; default 300)


def node_of(pod: dict) -> str:
    return json.loads(pod["metadata"]["annotations"]["loraplane.io/reservation"])["node"]


def condition(pool: dict, type_: str) -> dict:
    return next((c for c in pool.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def running_on(fx, pool: str, node: str):
    """The pool's one live, Ready worker when it is on ``node`` (and no other pod is left)."""
    pods = fx.pods(pool)
    ready = [p for p in pods if not p["metadata"].get("deletionTimestamp") and node_of(p) == node and any(
        c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
    return len(pods) == 1 and ready and ready[0]


def test_an_unschedulable_worker_releases_its_reservation_and_is_placed_elsewhere(fx):
    a, b = fx.nodes(2)
    # Too little memory for a worker's 16Gi request: the scheduler will refuse the pod bound to a.
    fx.cluster.kubectl("patch", "node", a, "--subresource=status", "--type=merge", "-p",
                       json.dumps({"status": {"allocatable": {"memory": "1Gi"}}}))
    fx.pool("unsched", 1, rescheduleAfterSeconds=RESCHEDULE)
    first = fx.wait_for(lambda: fx.pods("unsched"), timeout=30, what="a worker")[0]
    assert node_of(first) == a  # binpack picks the first node by name; its GPU has the VRAM
    moved = fx.wait_for(lambda: running_on(fx, "unsched", b), timeout=45, what="the worker moved to b")
    assert moved["metadata"]["name"] != first["metadata"]["name"]
    pool = fx.get("unsched")
    assert [n["node"] for n in pool["status"]["avoidedNodes"]] == [a]
    [event] = fx.events("WorkerUnschedulable")
    assert f"Unschedulable on {a}" in event["message"] and "Insufficient memory" in event["message"]
    fx.delete_pool("unsched")


def test_node_loss_replaces_workers_and_frees_the_ledger(fx):
    a, b, c = fx.nodes(3)  # fp16: one worker per 24 GiB card
    fx.pool("lost", 1, rescheduleAfterSeconds=RESCHEDULE)
    fx.wait_for(lambda: running_on(fx, "lost", a), timeout=30, what="the worker on a")
    fx.not_ready(a)
    fx.wait_for(lambda: [p for p in fx.pods("lost") if node_of(p) == b and not p["metadata"].get(
        "deletionTimestamp")], timeout=45, what="a replacement on b")
    fx.cluster.kubectl("delete", "node", a, b, "--wait=false")
    # b's worker is force-deleted and replaced on c; a's (Terminating, no kubelet) is force-deleted too.
    fx.wait_for(lambda: running_on(fx, "lost", c), timeout=45, what="the worker on c, nothing left on a or b")
    messages = [e["message"] for e in fx.events("NodeLost")]
    assert any(f"node {a} NotReady" in m for m in messages) and any(f"node {b} is gone" in m for m in messages)
    fx.delete_pool("lost")


def crash(fx, pod: str, oom: bool, restarts: int) -> None:
    last = {"terminated": {"reason": "OOMKilled" if oom else "Error", "exitCode": 137 if oom else 1,
                           "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:01Z"}}
    fx.patch_pod_status(pod, {"conditions": [{"type": "Ready", "status": "False"},
                                             {"type": "ContainersReady", "status": "False"}],
                              "containerStatuses": [{"name": "worker", "image": "x", "imageID": "", "ready": False,
                                                     "restartCount": restarts, "lastState": last,
                                                     "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]})


def failing(fx, pool: str, reason: str) -> float | None:
    m = re.search(rf'loraplane_pool_failing_workers{{namespace="{fx.ns}",pool="{pool}",reason="{reason}"}} (\S+)',
                  fx.metrics())
    return float(m.group(1)) if m else None


def test_oom_killed_and_crash_looping_workers_give_a_condition_one_event_and_a_metric(fx):
    fx.nodes(1, gpus=2)
    fx.pool("crashy", 2)
    fx.wait_for(lambda: condition(fx.get("crashy"), "Ready").get("status") == "True", timeout=30, what="Ready")
    crash(fx, "crashy-1", oom=False, restarts=3)
    fx.wait_for(lambda: condition(fx.get("crashy"), "Degraded").get("reason") == "WorkersCrashLooping",
                timeout=20, what="WorkersCrashLooping")
    crash(fx, "crashy-0", oom=True, restarts=2)
    fx.wait_for(lambda: condition(fx.get("crashy"), "Degraded").get("reason") == "WorkersOOMKilled",
                timeout=20, what="WorkersOOMKilled")
    for n in (4, 5):  # more restarts: more passes, no more Events
        crash(fx, "crashy-1", oom=False, restarts=n)
    fx.wait_for(lambda: failing(fx, "crashy", "CrashLoopBackOff") == 1, timeout=20, what="the gauge")
    assert failing(fx, "crashy", "OOMKilled") == 1
    assert len(fx.events("WorkersCrashLooping")) == 1 and len(fx.events("WorkersOOMKilled")) == 1
    message = condition(fx.get("crashy"), "Degraded")["message"]
    assert "worker crashy-0 OOMKilled (raise spec.resources.memory)" in message
    fx.delete_pool("crashy")
    fx.wait_for(lambda: failing(fx, "crashy", "OOMKilled") is None, timeout=20, what="series removed")


def test_a_gpu_change_rolls_the_workers_make_before_break(fx):
    (a,) = fx.nodes(1, gpus=2)  # room for a second fp16 worker while the first still runs
    fx.pool("roll", 1)
    old = fx.wait_for(lambda: running_on(fx, "roll", a), timeout=30, what="the first worker")
    fx.pool("roll", 1, tolerations=[{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}])
    new = fx.wait_for(lambda: (p := running_on(fx, "roll", a)) and p["metadata"]["uid"] != old["metadata"]["uid"]
                      and p, timeout=45, what="the worker replaced")
    assert {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"} in new["spec"]["tolerations"]
    [replacing] = fx.events("Replacing")
    assert "make-before-break" in replacing["message"]
    assert fx.events("Replaced")  # the old worker went only after the new one was Ready
    fx.delete_pool("roll")
