"""The WorkerPool pass's routing glue: load before route, rollout steps,
revisions and the status round trip (what an operator restart reads back)."""

from __future__ import annotations

import copy
import datetime as dt

from loraplane.operator.core import analysis
from loraplane.operator.api.resources import WorkerPoolResource
from loraplane.operator.core import routing
from loraplane.operator.api.observed_types import WorkerReport
from loraplane.operator.core.routing import ready_loaded

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def pool(routes, rollouts=None, status=None, annotations=None, generation=1):
    return {"metadata": {"name": "p", "namespace": "n", "uid": "u", "generation": generation,
                         "annotations": annotations or {}},
            "spec": {"routes": routes, **({"rollouts": rollouts} if rollouts else {})},
            "status": status or {}}


def parsed(p: dict) -> WorkerPoolResource:
    """The pool as the controller hands it to the core (parsed once)."""
    return WorkerPoolResource.model_validate({**p, "spec": {"baseModelRef": "m", **p["spec"]}})


def plan_routing(p: dict, *args, **kw):
    return routing.plan_routing(parsed(p), *args, **kw)


def adapters_named(p: dict):
    return routing.adapters_named(parsed(p))


def needs_metrics(p: dict):
    return routing.needs_metrics(parsed(p))


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch, as the API server applies a status patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def feed_back(p: dict, plan) -> dict:
    """The pool as the API server holds it after the status merge patch."""
    p = copy.deepcopy(p)
    p["status"] = merge_patch(p.get("status") or {}, plan.status)
    return p


def r(*pairs):
    return [{"adapter": a, "weight": w} for a, w in pairs]


def test_a_new_backend_gets_weight_only_once_every_ready_worker_loaded_it():
    p = pool({"sum": r(("v1", 100))})
    plan = plan_routing(p, [["v1"], ["v1"]], None, T0)
    assert plan.worker_routes == {"sum": {"v1": 100}}
    p = feed_back(p, plan)
    p["spec"]["routes"] = {"sum": r(("v1", 50), ("v2", 50))}
    plan = plan_routing(p, [["v1", "v2"], ["v1"]], None, T0)
    assert plan.worker_routes == {"sum": {"v1": 100}}  # one worker still lacks v2
    assert {"v1", "v2"} <= plan.keep  # ... but it is asked to load it
    assert plan.status["routes"][0]["pending"] is True
    assert plan.progressing[1] == "RolloutProgressing"
    assert plan.requeue_after is not None
    p = feed_back(p, plan)
    plan = plan_routing(p, [["v1", "v2"], ["v1", "v2"]], None, T0)
    assert plan.worker_routes == {"sum": {"v1": 50, "v2": 50}}
    p = feed_back(p, plan)
    revs = p["status"]["revisions"]
    assert [x["routes"] for x in revs] == [{"sum": r(("v1", 100))}, {"sum": r(("v1", 50), ("v2", 50))}]
    assert revs[-1]["cause"] == "spec.routes[sum] edited (generation 1)"


def test_a_dropped_backend_drains_then_leaves_the_adapter_set():
    p = feed_back(pool({"sum": r(("v1", 50), ("v2", 50))}),
                  plan_routing(pool({"sum": r(("v1", 50), ("v2", 50))}), [["v1", "v2"]], None, T0))
    p["spec"]["routes"] = {"sum": r(("v2", 100))}
    plan = plan_routing(p, [["v1", "v2"]], None, T0)
    assert plan.worker_routes == {"sum": {"v2": 100}} and "v1" in plan.keep
    assert "v1" in plan.status["draining"]
    p = feed_back(p, plan)
    later = plan_routing(p, [["v1", "v2"]], None, T0 + dt.timedelta(seconds=61))
    assert "v1" not in later.keep
    assert later.status["draining"].get("v1", None) is None  # deleted from status by the merge patch


def test_an_automated_rollout_steps_on_health_and_rolls_back_on_errors(exposition):
    rollouts = {"t": {"canary": "v2", "steps": [10, 50, 100], "intervalSeconds": 5,
                      "analysis": {"minRequests": 5, "maxErrorRatePercent": 5}}}
    p = pool({"t": r(("v1", 100))}, rollouts)
    plan = plan_routing(p, [["v1"]], None, T0)
    assert plan.status["rollouts"]["t"]["canaryWeight"] == 10
    assert plan.worker_routes == {"t": {"v1": 100}}  # v2 not loaded yet: no weight
    assert "v2" in plan.keep and ("t", "RolloutStarted") in plan.transitions
    p = feed_back(p, plan)
    assert needs_metrics(p) and "v2" in adapters_named(p)
    start = {"w0": analysis.parse_worker(exposition([("v1", "200", 0.2)] * 3))}
    plan = plan_routing(p, [["v1", "v2"]], start, T0 + dt.timedelta(seconds=1))
    assert plan.worker_routes == {"t": {"v1": 90, "v2": 10}}
    p = feed_back(p, plan)
    plan = plan_routing(p, [["v1", "v2"]], start, T0 + dt.timedelta(seconds=2))  # weights in effect: window opens
    p = feed_back(p, plan)
    assert p["status"]["rollouts"]["t"]["stepStarted"]
    healthy = {"w0": analysis.parse_worker(exposition([("v1", "200", 0.2)] * 13 + [("v2", "200", 0.2)] * 6))}
    plan = plan_routing(p, [["v1", "v2"]], healthy, T0 + dt.timedelta(seconds=8))
    assert ("t", "StepPromoted") in plan.transitions
    assert plan.status["rollouts"]["t"]["canaryWeight"] == 50
    p = feed_back(p, plan)
    # A restart reads only the API: the same status gives the same step.
    again = plan_routing(copy.deepcopy(p), [["v1", "v2"]], healthy, T0 + dt.timedelta(seconds=8))
    assert again.status["rollouts"]["t"]["canaryWeight"] == 50 and not again.transitions
    plan = plan_routing(p, [["v1", "v2"]], healthy, T0 + dt.timedelta(seconds=9))
    p = feed_back(p, plan)
    assert plan.worker_routes == {"t": {"v1": 50, "v2": 50}}
    plan = plan_routing(p, [["v1", "v2"]], healthy, T0 + dt.timedelta(seconds=10))  # window opens at 50%
    p = feed_back(p, plan)
    failing = {"w0": analysis.parse_worker(exposition([("v1", "200", 0.2)] * 13 + [("v2", "200", 0.2)] * 6
                                                      + [("v2", "500", 0.01)] * 5))}
    plan = plan_routing(p, [["v1", "v2"]], failing, T0 + dt.timedelta(seconds=11))
    reasons = [e[1] for e in plan.events]
    assert "AnalysisFailed" in reasons and "RolledBack" in reasons
    assert plan.status["rollouts"]["t"]["phase"] == "RolledBack"
    assert plan.worker_routes == {"t": {"v1": 100}}
    p = feed_back(p, plan)
    plan = plan_routing(p, [["v1", "v2"]], None, T0 + dt.timedelta(seconds=12))
    assert plan.progressing[:2] == (False, "RolloutRolledBack")
    assert [x["stable"] for x in feed_back(p, plan)["status"]["revisions"]] == [True, False, False, True]


def test_a_malformed_command_is_reported_not_obeyed():
    key = "rollout-command.loraplane.io/20260101T000000000000-abcdef01"
    p = pool({"t": r(("v1", 100))}, annotations={key: "{not json"})
    plan = plan_routing(p, [["v1"]], None, T0)
    assert [e[1] for e in plan.events] == ["InvalidRolloutCommand"] and key in plan.events[0][2]
    assert plan.worker_routes == {"t": {"v1": 100}} and plan.remove_annotations == [key]


def test_ready_loaded_ignores_workers_that_have_not_reported_ready():
    reports = [WorkerReport.parse(None), WorkerReport.parse('{"ready": false, "loaded": ["a"]}'),
               WorkerReport.parse('{"ready": true, "loaded": ["b"]}')]
    assert ready_loaded(reports) == [["b"]]
