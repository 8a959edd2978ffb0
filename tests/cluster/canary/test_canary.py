"""Canary rollouts against the real control plane, the real operator and REAL
worker processes (HostRunner): load before route during a weight shift,
exact rollback, automated promotion and rollback on a slow or failing canary,
resuming after an operator restart, and the kubectl plugin's commands."""

from __future__ import annotations

import json
import threading
import time

import pytest

from loraplane.demo import OperatorProcess, TASK, effective, plugin, wait_for
from loraplane.traffic import Traffic, summarize

POOL = "canary"
V1 = [{"adapter": "sum-v1", "weight": 100}]


def reset(env) -> None:
    """Route 100% sum-v1 with no rollout, and wait until that is in effect."""
    env.patch({"spec": {"routes": {TASK: V1}, "rollouts": None}})
    wait_for(lambda: effective(env.pool()) == {"sum-v1": 100} and not env.pool()["status"].get("rollouts"),
             timeout=60, what="reset to sum-v1 100%")


def rollout_state(env) -> dict:
    return (env.pool().get("status") or {}).get("rollouts", {}).get(TASK) or {}


def events(env) -> list[dict]:
    out = env.cluster.kubectl("get", "events", "-n", env.ns, "--field-selector",
                              f"involvedObject.name={POOL},involvedObject.kind=WorkerPool", "-o", "json").stdout
    return json.loads(out)["items"]


def traffic(env, **kw) -> Traffic:
    return Traffic(env.kubeconfig, env.ns, POOL, TASK, concurrency=2, max_tokens=2, **kw)


class Invariant(threading.Thread):
    """Polls the pool's effective routes, then the workers' reports: any backend
    with effective weight must be loaded on every ready worker (loaded sets only
    grow during these tests, so reading the reports after the routes is safe)."""

    def __init__(self, env):
        super().__init__(daemon=True)
        self.env, self.stop, self.violations, self.polls = env, threading.Event(), [], 0

    def run(self):
        while not self.stop.is_set():
            eff = effective(self.env.pool())
            for pod, rep in self.env.reports().items():
                if rep.get("ready"):
                    missing = [a for a in eff if a not in rep.get("loaded", [])]
                    if missing:
                        self.violations.append((pod, eff, rep.get("loaded")))
            self.polls += 1
            time.sleep(0.1)


def test_weight_shift_loads_before_routing_and_rollback_restores_exact_weights(canary):
    env = canary
    reset(env)
    inv = Invariant(env)
    inv.start()
    with traffic(env) as t:
        wait_for(lambda: len(t.responses) > 10, what="first responses")
        plugin(env.kubeconfig, env.ns, "canary", "set", f"wp/{POOL}", "--task", TASK, "--to", "sum-v2",
               "--weight", "30")
        wait_for(lambda: effective(env.pool()) == {"sum-v1": 70, "sum-v2": 30}, what="30% canary in effect")
        t_shift = time.time()
        wait_for(lambda: summarize(t.since(t_shift))["by_version"].get("sum-v2", 0) >= 5, timeout=30,
                 what="canary responses")
        before = effective(env.pool())
        revs_before = env.pool()["status"]["revisions"]
        plugin(env.kubeconfig, env.ns, "rollback", f"wp/{POOL}")
        wait_for(lambda: effective(env.pool()) == {"sum-v1": 100}, what="rollback in effect")
        t_back = time.time()
        time.sleep(1.5)
    inv.stop.set()
    inv.join()
    assert before == {"sum-v1": 70, "sum-v2": 30}
    assert inv.polls > 5 and not inv.violations, inv.violations[:3]
    ok = [r for r in t.responses if r.status == 200]
    assert len(ok) == len(t.responses), {r.status for r in t.responses}
    assert {r.adapter for r in ok} == {"sum-v1", "sum-v2"}
    assert all(r.adapter in r.loaded for r in ok)  # no response from a version its worker had not loaded
    # Rollback restores exactly the previous revision's weights (the spec too).
    pool = env.pool()
    assert pool["spec"]["routes"][TASK] == [b for b in revs_before[-2]["routes"][TASK]]
    assert pool["status"]["revisions"][-1]["routes"] == revs_before[-2]["routes"]
    late = [r for r in t.since(t_back + 1.0)]
    assert late and all(r.adapter == "sum-v1" for r in late)
    assert "sum-v2" in plugin(env.kubeconfig, env.ns, "history", f"wp/{POOL}")


def test_automated_rollout_promotes_step_by_step_and_resumes_after_operator_restart(canary):
    env = canary
    reset(env)
    with traffic(env):
        env.patch({"spec": {"rollouts": {TASK: {
            "canary": "sum-v2", "steps": [20, 50, 100], "intervalSeconds": 4,
            "analysis": {"minRequests": 5, "maxP95RegressionPercent": 300, "maxErrorRatePercent": 5}}}}})
        wait_for(lambda: rollout_state(env).get("canaryWeight") == 50 and rollout_state(env).get("stepStarted"),
                 timeout=60, what="step 2 (50%) in effect")
        env.operator.stop(9)  # SIGKILL mid-rollout: nothing but the API remembers the step
        mid = rollout_state(env)
        assert (mid["stepIndex"], mid["canaryWeight"], mid["phase"]) == (1, 50, "Progressing")
        env.operator = OperatorProcess(env.kubeconfig, env.operator.store, env.operator.log, resync_seconds=3).start()
        wait_for(lambda: rollout_state(env).get("phase") == "Promoted", timeout=60, what="Promoted")
    assert effective(env.pool()) == {"sum-v2": 100}
    weights = [next((b["weight"] for b in r["routes"][TASK] if b["adapter"] == "sum-v2"), 0)
               for r in env.pool()["status"]["revisions"]]
    steps = weights[weights.index(0, max(i for i, w in enumerate(weights) if w == 0)):]
    assert steps == [0, 20, 50, 100]  # resumed at 50%, never back to 20%
    reasons = [e["reason"] for e in events(env)]
    assert "StepPromoted" in reasons and "RolloutPromoted" in reasons


@pytest.mark.parametrize("canary_name,reason", [("sum-slow", "LatencyRegression"), ("sum-bad", "ErrorRate")])
def test_a_slow_or_failing_canary_is_rolled_back_automatically(canary, canary_name, reason):
    env = canary
    reset(env)
    with traffic(env) as t:
        env.patch({"spec": {"rollouts": {TASK: {
            "canary": canary_name, "steps": [50, 100], "intervalSeconds": 30,
            "analysis": {"minRequests": 5, "maxP95RegressionPercent": 300, "maxErrorRatePercent": 5}}}}})
        wait_for(lambda: rollout_state(env).get("phase") == "RolledBack", timeout=90, what="automatic rollback")
        wait_for(lambda: effective(env.pool()) == {"sum-v1": 100}, what="stable weights back")
        t_back = time.time()
        time.sleep(1.0)
    st = rollout_state(env)
    assert st["reason"] == reason, st
    served = {r.adapter for r in t.responses if r.status == 200}
    assert canary_name in served  # the canary really served before it was judged
    assert all(r.adapter == "sum-v1" for r in t.since(t_back + 0.5))
    reasons = [e["reason"] for e in events(env)]
    assert "AnalysisFailed" in reasons and "RolledBack" in reasons
    cond = {c["type"]: c for c in env.pool()["status"]["conditions"]}
    assert cond["Progressing"]["reason"] == "RolloutRolledBack"


def test_plugin_commands_drive_a_rollout(canary):
    env = canary
    reset(env)
    kp = lambda *a: plugin(env.kubeconfig, env.ns, *a)  # noqa: E731
    env.patch({"spec": {"rollouts": {TASK: {"canary": "sum-v2", "steps": [10, 50, 100], "intervalSeconds": 3600}}}})
    wait_for(lambda: rollout_state(env).get("stepStarted"), what="first step in effect")
    out = kp("status", f"wp/{POOL}")
    assert "sum-v2" in out and "Progressing" in out
    kp("promote", f"wp/{POOL}", "--task", TASK)
    wait_for(lambda: effective(env.pool()) == {"sum-v1": 50, "sum-v2": 50}, what="manual promote to 50%")
    kp("pause", f"wp/{POOL}", "--task", TASK)
    wait_for(lambda: rollout_state(env).get("phase") == "Paused", what="paused")
    kp("resume", f"wp/{POOL}", "--task", TASK)
    wait_for(lambda: rollout_state(env).get("phase") == "Progressing", what="resumed")
    kp("abort", f"wp/{POOL}", "--task", TASK)
    wait_for(lambda: rollout_state(env).get("phase") == "Aborted", what="aborted")
    wait_for(lambda: effective(env.pool()) == {"sum-v1": 100}, what="stable weights after abort")
    hist = kp("history", f"wp/{POOL}")
    assert "sum-v2=50" in hist and "sum-v1=100" in hist
