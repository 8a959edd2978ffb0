"""Rollout robustness (issue 12, Build 5): queued commands, O(series) analysis
state, windows not polluted by a failed scrape, the inconclusive timeout, the
configurable drain period and the semantic route checks. Whole passes of the
pure routing glue, status fed back through a merge patch like the API server."""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest

from loraplane.operator.api.rollout_types import COMMAND_PREFIX, RolloutCommand, RolloutSpec
from loraplane.operator.core import analysis
from loraplane.operator.core import rollout as ro
from loraplane.operator.core import routing

from loraplane.operator.api.common_types import Condition
from loraplane.operator.api.resources import WorkerPoolResource, as_read

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def pool(routes, rollouts=None, status=None, annotations=None):
    return {"metadata": {"name": "p", "namespace": "n", "uid": "u", "generation": 1,
                         "annotations": annotations or {}},
            "spec": {"routes": routes, **({"rollouts": rollouts} if rollouts else {})}, "status": status or {}}


def parsed(p: dict) -> WorkerPoolResource:
    return WorkerPoolResource.model_validate({**p, "spec": {"baseModelRef": "m", **p["spec"]}})


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
    p = copy.deepcopy(p)
    p["status"] = merge_patch(p.get("status") or {}, plan.status)
    return p


def r(*pairs):
    return [{"adapter": a, "weight": w} for a, w in pairs]


def at(sec: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=sec)


def plan(p, loaded, snap, t):
    return routing.plan_routing(parsed(p), loaded, snap, at(t))


def snap(exposition, pods: dict[str, list]) -> dict:
    return {pod: analysis.parse_worker(exposition(obs)) for pod, obs in pods.items()}


def command(p: dict, cid: str, cmd: str, task: str = "t") -> None:
    """What ``kubectl loraplane`` adds: one annotation per command."""
    p["metadata"]["annotations"][f"{COMMAND_PREFIX}/{cid}"] = RolloutCommand(command=cmd, task=task).to_annotation()


def started(interval=3600, steps=(10, 50, 100), **extra):
    """A pool whose rollout of v2 is at its first step, weights in effect, window open."""
    ro_spec = {"canary": "v2", "steps": list(steps), "intervalSeconds": interval,
               "analysis": {"minRequests": 5, "maxErrorRatePercent": 5}, **extra}
    p = pool({"t": r(("v1", 100))}, {"t": ro_spec})
    p = feed_back(p, plan(p, [["v1"]], None, 0))
    p = feed_back(p, plan(p, [["v1", "v2"]], None, 1))  # loaded: 10% takes effect
    p = feed_back(p, plan(p, [["v1", "v2"]], {}, 2))  # effective: the window opens
    assert p["status"]["rollouts"]["t"]["stepStarted"]
    return p


# --- 1. commands are queued, none is lost -------------------------------------------------------

@pytest.mark.parametrize("order,phase", [(["promote", "pause"], "Paused"), (["pause", "promote"], "Progressing")])
def test_two_commands_sent_within_one_pass_are_both_applied_in_order(order, phase):
    p = started()
    command(p, "20260101T000001000000-aaaaaaaa", order[0])
    command(p, "20260101T000001000001-bbbbbbbb", order[1])
    pl = plan(p, [["v1", "v2"]], {}, 3)
    st = pl.status["rollouts"]["t"]
    assert (st["canaryWeight"], st["phase"]) == (50, phase)  # the promote AND the pause took effect
    reasons = [e[1] for e in pl.events]
    assert reasons.index("StepPromoted") < reasons.index("RolloutPaused") if order[0] == "promote" else \
        reasons.index("RolloutPaused") < reasons.index("StepPromoted")
    ids = sorted(k.split("/", 1)[1] for k in p["metadata"]["annotations"])
    assert pl.status["processedCommands"] == ids
    assert sorted(pl.remove_annotations) == sorted(p["metadata"]["annotations"])
    # Killed before the annotations were removed: the acknowledged ids are not obeyed twice.
    p = feed_back(p, pl)
    again = plan(p, [["v1", "v2"]], {}, 4)
    assert again.status["rollouts"]["t"]["canaryWeight"] == 50 and not again.events
    # Annotations removed: the acknowledgements go too.
    p = feed_back(p, again)
    p["metadata"]["annotations"] = {}
    assert plan(p, [["v1", "v2"]], {}, 5).status["processedCommands"] is None


def test_a_command_for_a_task_without_rollout_and_a_malformed_one_are_reported_once():
    p = started()
    command(p, "20260101T000001000000-aaaaaaaa", "pause", task="other")
    p["metadata"]["annotations"][f"{COMMAND_PREFIX}/20260101T000001000001-bbbbbbbb"] = "{not json"
    pl = plan(p, [["v1", "v2"]], {}, 3)
    assert [e[1] for e in pl.events] == ["CommandIgnored", "InvalidRolloutCommand"]
    assert len(pl.remove_annotations) == 2
    assert not plan(feed_back(p, pl), [["v1", "v2"]], {}, 4).events


def test_command_ids_sort_in_sending_order_and_are_valid_annotation_names():
    ids = [RolloutCommand.new_id(at(s)) for s in (0, 0.000001, 1)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert all(len(i) <= 63 and i[0].isalnum() and i[-1].isalnum() for i in ids)


# --- 2. analysis state is O(series) ------------------------------------------------------------

def test_analysis_state_grows_with_pods_by_a_few_bytes_not_per_series(exposition):
    """The per-pod part of the stored state is a reset mark, whatever the number of series."""
    def size(n_pods, n_adapters):
        obs = [(f"a{i}", "200", 0.2) for i in range(n_adapters)] + [(f"a{i}", "500", 0.01) for i in range(n_adapters)]
        series = analysis.parse_worker(exposition(obs, created=True))  # as scraped directly
        cur = {f"pool-{i}": series for i in range(n_pods)}
        return len(analysis.advance(None, cur)[0].dumps())
    per_pod_10 = (size(200, 10) - size(100, 10)) / 100
    per_pod_1 = (size(200, 1) - size(100, 1)) / 100
    assert per_pod_10 == per_pod_1 and per_pod_10 < 64


# --- 3. a window opened while a pod's scrape failed is not polluted ------------------------------

def test_a_pod_whose_scrape_failed_when_the_window_opened_counts_only_from_its_first_read(exposition):
    ro_spec = {"canary": "v2", "steps": [10, 100], "intervalSeconds": 5,
               "analysis": {"minRequests": 5, "maxErrorRatePercent": 5}}
    p = pool({"t": r(("v1", 100))}, {"t": ro_spec})
    p = feed_back(p, plan(p, [["v1"]], None, 0))
    # w1's history: 100 failed requests of the canary, long before the window (a previous attempt).
    old_w1 = [("v2", "500", 0.01)] * 100 + [("v1", "200", 0.1)] * 50
    p = feed_back(p, plan(p, [["v1", "v2"], ["v1", "v2"]], snap(exposition, {"w0": [], "w1": old_w1}), 1))
    # The window opens while w1's scrape fails.
    p = feed_back(p, plan(p, [["v1", "v2"], ["v1", "v2"]], snap(exposition, {"w0": []}), 2))
    assert p["status"]["rollouts"]["t"]["stepStarted"]
    # w1 is read again: nothing new happened on it, and w0 served a healthy canary.
    healthy_w0 = [("v1", "200", 0.1)] * 20 + [("v2", "200", 0.1)] * 10
    p = feed_back(p, plan(p, [["v1", "v2"], ["v1", "v2"]], snap(exposition, {"w0": healthy_w0, "w1": old_w1}), 3))
    pl = plan(p, [["v1", "v2"], ["v1", "v2"]], snap(exposition, {"w0": healthy_w0 * 2, "w1": old_w1}), 8)
    assert "AnalysisFailed" not in [e[1] for e in pl.events], pl.events
    assert ("t", "RolloutPromoted") in pl.transitions


def test_a_reset_or_missing_pod_loses_one_pass_never_pollutes(exposition):
    base = analysis.advance(None, snap(exposition, {"a": [("v1", "200", 0.1)] * 10, "b": [("v1", "200", 0.1)] * 4}))[0]
    grown = snap(exposition, {"a": [("v1", "200", 0.1)] * 15, "b": [("v1", "200", 0.1)] * 6})
    nxt, inc = analysis.advance(base, grown)
    assert analysis.stats(inc, ["v1"]).requests == 7
    # b restarted (its counters fell): that pass adds nothing, the next one counts again from b's new values
    restarted = snap(exposition, {"a": [("v1", "200", 0.1)] * 16, "b": [("v1", "200", 0.1)]})
    nxt2, inc = analysis.advance(nxt, restarted)
    assert inc is None
    _, inc = analysis.advance(nxt2, snap(exposition, {"a": [("v1", "200", 0.1)] * 17,
                                                      "b": [("v1", "200", 0.1)] * 3}))
    assert analysis.stats(inc, ["v1"]).requests == 3
    # b missing (scrape failed): that pass adds nothing
    assert analysis.advance(nxt, snap(exposition, {"a": [("v1", "200", 0.1)] * 20}))[1] is None


# --- 4. an inconclusive step has a timeout with a defined outcome --------------------------------

WAIT = analysis.Verdict("inconclusive", "NotEnoughRequests", "3 < 100")


@pytest.mark.parametrize("outcome,phase,weight", [("rollback", "RolledBack", 5), ("promote", "Progressing", 25)])
def test_an_inconclusive_step_ends_after_its_timeout(outcome, phase, weight):
    spec = RolloutSpec(canary="v2", steps=[5, 25, 100], intervalSeconds=600, inconclusiveTimeoutSeconds=300,
                       onInconclusive=outcome)
    s = ro.step(spec, None, task="t", spec_route={"v1": 100}, effective_route=None, now=at(0)).state
    s = ro.step(spec, s, task="t", spec_route={"v1": 100}, effective_route=ro.route_of(s), now=at(1)).state
    held = ro.step(spec, s, task="t", spec_route={"v1": 100}, effective_route=ro.route_of(s), now=at(900),
                   verdict=WAIT)
    assert held.state.phase.value == "Progressing" and held.state.canary_weight == 5  # 299 s past the interval
    d = ro.step(spec, held.state, task="t", spec_route={"v1": 100}, effective_route=ro.route_of(s), now=at(901),
                verdict=WAIT)
    assert (d.state.phase.value, d.state.canary_weight) == (phase, weight)
    assert d.state.reason == ("InconclusiveTimeout" if outcome == "rollback" else "StepPromoted")
    assert "inconclusive" in " ".join(e.message for e in d.events)


def test_inconclusive_timeout_defaults_to_rollback_after_an_hour():
    spec = RolloutSpec(canary="v2")
    assert (spec.inconclusive_timeout_seconds, spec.on_inconclusive) == (3600, "rollback")


# --- 5. the drain period is configurable ---------------------------------------------------------

def test_the_drain_period_comes_from_the_spec():
    p = pool({"sum": r(("v1", 50), ("v2", 50))})
    p["spec"]["drainSeconds"] = 5
    p = feed_back(p, plan(p, [["v1", "v2"]], None, 0))
    p["spec"]["routes"] = {"sum": r(("v2", 100))}
    pl = plan(p, [["v1", "v2"]], None, 0)
    assert "v1" in pl.keep and pl.requeue_after == pytest.approx(5.5)
    p = feed_back(p, pl)
    assert "v1" in plan(p, [["v1", "v2"]], None, 4).keep
    assert "v1" not in plan(p, [["v1", "v2"]], None, 6).keep


# --- 7. semantic route checks --------------------------------------------------------------------

def test_a_canary_that_already_serves_everything_is_reported_not_silently_promoted():
    p = pool({"t": r(("v2", 100))}, {"t": {"canary": "v2"}})
    pl = plan(p, [["v2"]], None, 0)
    assert pl.problems == [("CanaryIsStable", pl.problems[0][1])] and "v2" in pl.problems[0][1]
    assert pl.status["rollouts"]["t"]["reason"] == "CanaryIsStable"
    # still a problem on later passes (the condition stays), but the rollout does not start again
    p = feed_back(p, pl)
    again = plan(p, [["v2"]], None, 1)
    assert [x[0] for x in again.problems] == ["CanaryIsStable"] and not again.events


def test_a_route_to_an_adapter_of_another_task_is_a_problem():
    from loraplane.operator.api.resources import AdapterResource

    def adapter(name, task):
        return AdapterResource.model_validate({
            "metadata": {"name": name, "namespace": "n"},
            "spec": {"baseModelRef": "m", "task": task, "version": "v1", "source": {"storeName": name}}})
    p = parsed(pool({"critic": r(("crit-v1", 50), ("sum-v1", 50))}, {"critic": {"canary": "sum-v2"}}))
    adapters = {"crit-v1": adapter("crit-v1", "critic"), "sum-v1": adapter("sum-v1", "summarize"),
                "sum-v2": adapter("sum-v2", "summarize")}
    probs = routing.task_problems(p, adapters)
    assert [x[0] for x in probs] == ["RouteTaskMismatch", "RouteTaskMismatch"]
    assert "sum-v1" in probs[0][1] and "summarize" in probs[0][1] and "critic" in probs[0][1]
    assert "sum-v2" in probs[1][1]
    assert routing.task_problems(parsed(pool({"critic": r(("crit-v1", 100))})), adapters) == []


def typed(conds):
    return [Condition.model_validate(c) for c in conds]


def wire(conds):
    return [as_read(c) for c in conds]


def test_problems_make_ready_false_with_the_reason_and_one_event():
    conds = typed([{"type": "Ready", "status": "True", "reason": "AllWorkersReady", "message": "2/2 workers ready"}])
    probs = [("RouteTaskMismatch", "route critic -> sum-v1: adapter sum-v1 serves task summarize")]
    out, event = routing.report_problems(conds, probs, generation=3, now=at(0))
    by = {c["type"]: c for c in wire(out)}
    assert (by["Ready"]["status"], by["Ready"]["reason"]) == ("False", "RouteTaskMismatch")
    assert (by["RoutesValid"]["status"], by["RoutesValid"]["reason"]) == ("False", "RouteTaskMismatch")
    assert event == ("Warning", "RouteTaskMismatch", probs[0][1])
    # Next pass: the pool core computed Ready=True again; same problem -> same conditions, no Event
    again, event = routing.report_problems(conds, probs, generation=3, now=at(60), stored=out)
    assert event is None and wire(again) == wire(out)
    # A pool already not Ready keeps its own reason (its Events are deduplicated on it)
    blocked = typed([{"type": "Ready", "status": "False", "reason": "BaseModelMissing", "message": "no base"}])
    b, event = routing.report_problems(blocked, probs, generation=3, now=at(0))
    assert {c.type: c.reason for c in b} == {"Ready": "BaseModelMissing", "RoutesValid": "RouteTaskMismatch"}
    # Fixed: RoutesValid turns True, Ready is the pool's own again
    fixed, event = routing.report_problems(conds, [], generation=3, now=at(90), stored=out)
    assert {c["type"]: c["status"] for c in wire(fixed)} == {"Ready": "True", "RoutesValid": "True"} and event is None
    assert routing.report_problems(conds, [], generation=3, now=at(0)) == (conds, None)


# --- 2b. the whole object: 1,000 workers x 10 adapters ------------------------------------------
# Big WorkerPool as the API server stores it: 5 tasks, each rolling out its v2 with an open analysis
# window, every pod's counters scraped. The analysis state used to be per pod x per series (~3 MB here).

from loraplane.contracts.desired import STATUS_ANNOTATION  # noqa: E402
from loraplane.operator.api.observed_types import PodView  # noqa: E402
from loraplane.operator.api.resources import AdapterResource, BaseModelResource, parse  # noqa: E402
from loraplane.operator.core import inventory, placement  # noqa: E402
from loraplane.operator.core import pool as pool_core  # noqa: E402

CK = "a" * 64


def obj(kind, name, spec, status=None):
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
            "spec": spec, "status": status or {}}


BASE = obj("BaseModel", "m", {"storeName": "mistral", "version": "v1", "store": {"hostPath": {"path": "/s"}}},
           {"phase": "Ready", "checksum": CK, "variants": [{"name": "bnb-int8", "vramMiB": 7680}]})
TASKS = [f"task-{i}" for i in range(5)]
ADAPTERS = [f"{t}-v{v}" for t in TASKS for v in (1, 2)]
LIMIT = 256 * 1024


def adapter(name: str) -> dict:
    return obj("Adapter", name, {"baseModelRef": "m", "task": name.rsplit("-", 1)[0], "version": "v1",
                                 "source": {"storeName": name}},
               {"phase": "Ready", "checksum": CK, "vramMiB": 100})


def big_pool() -> dict:
    p = obj("WorkerPool", "agents-7b", {
        "baseModelRef": "m", "variants": ["bnb-int8", "fp16"], "replicas": 1000,
        "routes": {t: [{"adapter": f"{t}-v1", "weight": 100}] for t in TASKS},
        "rollouts": {t: {"canary": f"{t}-v2", "steps": [5, 25, 50, 100], "intervalSeconds": 1800} for t in TASKS}})
    p["metadata"]["annotations"] = {}
    return p


def worker_text(exposition_fn, pod: int) -> str:
    obs = [(a, "200", 0.2) for a in ADAPTERS] * (1 + pod % 3) + [(a, "500", 0.01) for a in ADAPTERS]
    return exposition_fn(obs)


def running(pods: list[dict]) -> list[dict]:
    for i, pod in enumerate(pods):
        pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        pod["metadata"]["annotations"][STATUS_ANNOTATION] = json.dumps(
            {"ready": True, "loaded": ADAPTERS, "variant": "bnb-int8",
             "endpoint": f"http://10.0.{i // 250}.{i % 250}:8000"})
    return pods


@pytest.fixture(scope="module")
def big_pool_stored() -> dict:
    """The pool after five passes, status merge-patched as the API server stores it."""
    from .conftest import worker_exposition
    p = big_pool()
    base = parse(BaseModelResource, BASE)
    adapters = {a: parse(AdapterResource, adapter(a)) for a in ADAPTERS}
    world = [placement.NodeInfo(f"node-{i}", {}, 2, 24576) for i in range(250)]
    pods = running(pool_core.plan_pool(parse(WorkerPoolResource, p), base, adapters, [], world, [], "img", T0).create)
    assert len(pods) == 1000
    loaded = [ADAPTERS] * 1000
    kinds = [analysis.parse_worker(worker_text(worker_exposition, i)) for i in range(3)]
    snap = {pod["metadata"]["name"]: kinds[i % 3] for i, pod in enumerate(pods)}
    p["metadata"]["annotations"]["old-window-start-bytes"] = str(5 * len(analysis.dumps(snap)))
    for sec in range(4):  # start, canaries loaded, weights in effect (window opens), one analysed pass
        p = feed_back(p, routing.plan_routing(parse(WorkerPoolResource, p), loaded, snap if sec else None, at(sec)))
    assert all(s["stepStarted"] for s in p["status"]["rollouts"].values())
    rplan = routing.plan_routing(parse(WorkerPoolResource, p), loaded, snap, at(5))
    views = [PodView.from_api(pod) for pod in pods]
    plan = pool_core.plan_pool(parse(WorkerPoolResource, p), base, adapters, views, world,
                               inventory.reservations(views, world), "img", at(5),
                               routing=(rplan.worker_routes, rplan.keep))
    status = as_read(plan.status)  # as the controller dumps the typed status before merging routing's
    status.update(rplan.status)
    return feed_back(p, routing.RoutingPlan(worker_routes={}, keep=set(), status=status))


def _size(x) -> int:
    return len(x if isinstance(x, str) else json.dumps(x, separators=(",", ":")))


def test_a_1000_worker_pool_with_10_adapters_keeps_its_rollout_state_small(big_pool_stored):
    st = big_pool_stored["status"]
    analysis_part = _size(st["analysisBaseline"]) + sum(_size(s.get("windowCounts") or "") for s in
                                                        st["rollouts"].values())
    rollout_part = sum(_size(st[k]) for k in ("rollouts", "routes", "effectiveRoutes", "revisions",
                                              "analysisBaseline"))
    old = big_pool_stored["metadata"]["annotations"].pop("old-window-start-bytes")
    print(f"\n1000 workers x 10 adapters, 5 rollouts analysing: object {_size(big_pool_stored)} B; analysis state "
          f"{analysis_part} B (per pod x per series before: {old} B); all routing/rollout status {rollout_part} B; "
          f"status.workers {_size(st['workers'])} B")
    assert analysis_part < 32 * 1024 and rollout_part < 40 * 1024


def test_a_1000_worker_pool_with_10_adapters_stays_under_256_kib(big_pool_stored):
    st = big_pool_stored["status"]
    print(f"\nobject {_size(big_pool_stored)} B: status.workers {_size(st['workers'])} B, "
          f"status.loadedSets {_size(st['loadedSets'])} B ({len(st['loadedSets'])} set(s))")
    assert len(st["loadedSets"]) == 1 and st["loadedSets"][0]["workers"] == 1000  # every worker loaded all ten
    assert _size(big_pool_stored) < LIMIT
