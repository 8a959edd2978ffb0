import datetime as dt

from hypothesis import given, settings, strategies as st

from loraplane.operator.core import analysis as an
from loraplane.operator.core import rollout as ro
from loraplane.operator.api.rollout_types import AnalysisThresholds, Phase, RolloutCommand, RolloutSpec, RolloutState

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
SPEC = RolloutSpec(canary="v2", steps=[5, 25, 50, 100], intervalSeconds=600)
STABLE = {"v1": 100}
HEALTHY = an.Verdict("healthy", "Healthy", "ok")
BREACH = an.Verdict("breach", "LatencyRegression", "p95 +40%")
WAIT = an.Verdict("inconclusive", "NotEnoughRequests", "3 < 100")


def run(state, *, t, effective=None, verdict=None, command=None, spec=SPEC, spec_route=STABLE):
    d = ro.step(spec, state, task="t", spec_route=spec_route, effective_route=effective, now=t,
                counts=ro.window_after(state, {}), verdict=verdict, commands=[command] if command else [])
    return d


def at(sec):
    return T0 + dt.timedelta(seconds=sec)


def test_start_then_window_opens_only_when_weights_in_effect():
    d = run(None, t=at(0))
    assert d.state.phase == Phase.progressing and d.route == {"v1": 95, "v2": 5}
    assert [e.reason for e in d.events] == ["RolloutStarted"]
    d = run(d.state, t=at(10), effective={"v1": 100})  # canary not loaded yet
    assert d.state.step_started is None
    d = run(d.state, t=at(20), effective={"v1": 95, "v2": 5})
    assert d.state.step_started == at(20).isoformat() and d.state.window_counts == "{}"


def _in_effect(state, t):
    return run(state, t=at(t), effective=ro.route_of(state)).state


def test_promotes_step_by_step_after_each_interval_while_healthy():
    s = _in_effect(run(None, t=at(0)).state, 1)
    weights = []
    t = 1
    while s.phase == Phase.progressing:
        d = run(s, t=at(t + 599), effective=ro.route_of(s), verdict=HEALTHY)
        assert d.state.canary_weight == s.canary_weight  # interval not over yet
        d = run(s, t=at(t + 600), effective=ro.route_of(s), verdict=HEALTHY)
        s = d.state
        weights.append(s.canary_weight)
        t += 600
        s = _in_effect(s, t)
    assert weights == [25, 50, 100]
    assert s.phase == Phase.promoted and ro.route_of(s) == {"v2": 100}


def test_breach_rolls_back_at_once_with_events_and_reason():
    s = _in_effect(run(None, t=at(0)).state, 1)
    d = run(s, t=at(30), effective=ro.route_of(s), verdict=BREACH)
    assert d.state.phase == Phase.rolled_back and d.route == {"v1": 100}
    assert d.state.reason == "LatencyRegression"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "AnalysisFailed"), ("Warning", "RolledBack")]


def test_inconclusive_holds_the_step():
    s = _in_effect(run(None, t=at(0)).state, 1)
    d = run(s, t=at(700), effective=ro.route_of(s), verdict=WAIT)
    assert d.state.canary_weight == 5 and d.state.phase == Phase.progressing and "3 < 100" in d.state.message


def cmd(c, cid):
    return RolloutCommand(command=c, task="t", id=cid)


def test_commands_pause_resume_promote_abort_retry():
    s = _in_effect(run(None, t=at(0)).state, 1)
    s = run(s, t=at(2), command=cmd("pause", "n1")).state
    assert s.phase == Phase.paused
    s = run(s, t=at(2000), effective=ro.route_of(s), verdict=HEALTHY).state
    assert s.phase == Phase.paused and s.canary_weight == 5  # paused: no progress
    s = run(s, t=at(2001), command=cmd("resume", "n2")).state
    assert s.phase == Phase.progressing and s.step_started is None
    s = run(s, t=at(2002), command=cmd("promote", "n3")).state
    assert s.canary_weight == 25
    d = run(s, t=at(2003), command=cmd("abort", "n4"))
    assert d.state.phase == Phase.aborted and d.route == {"v1": 100}
    d = run(d.state, t=at(2004), command=cmd("retry", "n5"))
    assert d.state.phase == Phase.progressing and d.route == {"v1": 95, "v2": 5}
    d = run(d.state, t=at(2005), command=cmd("promote-full", "n6"))
    assert d.state.phase == Phase.promoted and d.route == {"v2": 100}
    d = run(d.state, t=at(2006), command=cmd("rollback", "n7"))
    assert d.state.phase == Phase.rolled_back and d.route == {"v1": 100}
    d = run(d.state, t=at(2007), command=cmd("pause", "n8"))
    assert [e.reason for e in d.events] == ["CommandIgnored"]


def test_spec_paused_and_spec_edit_supersedes():
    s = run(None, t=at(0)).state
    paused = RolloutSpec(**{**SPEC.model_dump(), "paused": True})
    s = run(s, t=at(1), spec=paused).state
    assert s.phase == Phase.paused
    s = run(s, t=at(2)).state
    assert s.phase == Phase.progressing
    d = run(s, t=at(3), spec_route={"v1": 90, "v3": 10})
    assert d.state.phase == Phase.aborted and d.route is None and d.state.reason == "SpecRoutesEdited"
    assert ro.desired_route({"v1": 90, "v3": 10}, d.state) == {"v1": 90, "v3": 10}


def test_already_promoted_and_multi_backend_stable_split():
    d = run(None, t=at(0), spec_route={"v2": 100})
    assert d.state.phase == Phase.promoted and d.route == {"v2": 100} and d.state.reason == ro.CANARY_IS_STABLE
    d = run(None, t=at(0), spec_route={"a": 60, "b": 40})
    assert d.route == {"a": 57, "b": 38, "v2": 5}
    assert sum(d.route.values()) == 100


def test_removing_the_block_hands_back_to_spec():
    s = run(None, t=at(0)).state
    d = ro.step(None, s, task="t", spec_route=STABLE, effective_route=None, now=at(1))
    assert d.state is None and d.route is None and d.events[0].reason == "RolloutRemoved"


# --- restart: a machine fed its state back from serialized status behaves identically ---

actions = st.lists(st.tuples(
    st.integers(0, 900),  # seconds to advance
    st.sampled_from(["healthy", "breach", "wait", None]),
    st.sampled_from([None, None, None, "pause", "resume", "promote", "abort", "rollback", "retry"]),
    st.booleans(),  # weights in effect?
), min_size=1, max_size=25)


def _verdict(k):
    return {"healthy": HEALTHY, "breach": BREACH, "wait": WAIT, None: None}[k]


@settings(max_examples=150, deadline=None)
@given(actions)
def test_property_restart_from_serialized_status_resumes_at_same_step(seq):
    live, t = None, 0
    restored = None
    for i, (adv, v, c, in_effect) in enumerate(seq):
        t += adv
        command = cmd(c, f"n{i}") if c else None
        eff = ro.route_of(live) if (live is not None and in_effect) else {"v1": 100}
        a = run(live, t=at(t), effective=eff, verdict=_verdict(v), command=command)
        # the "restarted operator": only the JSON status of the previous state
        b = run(restored, t=at(t), effective=eff, verdict=_verdict(v), command=command)
        assert a.route == b.route and a.events == b.events
        assert a.state.model_dump() == b.state.model_dump()
        live = a.state
        restored = RolloutState.model_validate_json(a.state.model_dump_json(by_alias=True))
        # weights always sum to 100 and the canary weight is a configured step (or 0 after rollback)
        assert sum(a.route.values()) == 100
        assert a.state.canary_weight in SPEC.steps


def test_the_window_accumulates_increments_and_is_judged(exposition):
    _worker = exposition
    TH = AnalysisThresholds(maxP95RegressionPercent=20, maxErrorRatePercent=5, minRequests=10)
    spec = RolloutSpec(canary="v2", intervalSeconds=60, analysis=TH)
    s = run(None, t=at(0), spec=spec).state
    s = ro.step(spec, s, task="t", spec_route=STABLE, effective_route=ro.route_of(s), now=at(1)).state
    assert ro.window_after(s, None) == "{}"
    inc = an.by_adapter([an.parse_worker(_worker([("v1", "200", 0.05)] * 50 + [("v2", "500", 0.01)] * 12))])
    counts = ro.window_after(s, an.add_counts(inc, inc))
    v = ro.evaluate(spec, s, counts)
    assert v.breach and v.reason == "ErrorRate" and "24/24" in v.message
    assert ro.window_after(None, inc) is None and ro.evaluate(spec, None, counts) is None
