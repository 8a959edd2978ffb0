"""The rollout step machine: one task's automated canary. Pure.

``step()`` takes the rollout block, the state stored in status, the spec's
route, the route currently in effect, the clock, the open window's counts and
their verdict, and the rollout commands not applied yet, and returns the next state, the route the task should
have (an override of ``spec.routes[task]``), and the Events to emit. It keeps
no memory between calls, so an operator that restarts mid-rollout and calls
it with the state it reads back from status continues at the same step.

Why the rollout overrides the spec's route instead of patching it: the spec
belongs to the user or their GitOps tool, which would revert an operator's
edit on its next sync. The override holds while ``spec.routes[task]`` is
what it was when the rollout started (``baseRoute``); any edit of that route
means a human decided, so the spec wins and an active rollout is aborted.

Lifecycle, per task:

* start — ``spec.rollouts[task].canary`` names an adapter the rollout state
  does not (or there is no state): the current route's other backends become
  ``stable``; the canary gets ``steps[0]``, the rest is split over stable in
  proportion to their weights. If the canary already has all the traffic
  there is nothing to roll out: Promoted at once with reason
  ``CanaryIsStable``, which the pool reports as a problem (Ready=False).
* a step's analysis window opens only when the step's weights are *in
  effect* (load before route may delay them), and compares the window since
  then. A breach at any time rolls back (fail fast); after
  ``intervalSeconds`` a healthy window promotes to the next step (100 =
  Promoted); an inconclusive one (too few requests, no metrics) holds and
  re-checks, for at most ``inconclusiveTimeoutSeconds`` past the interval;
  then ``onInconclusive`` decides: rollback (RolledBack, reason
  ``InconclusiveTimeout``) or promote (next step).
* commands (annotations, applied in id order, each once): promote (next step, no
  analysis), promote-full, pause, resume (restarts the step's window),
  abort (stable weights, Aborted), rollback (stable weights, RolledBack),
  retry (after RolledBack/Aborted: from the first step again).
* ``spec.paused`` pauses; clearing it resumes only a pause it caused.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from . import analysis
from .revisions import normalize
from .routing_policy import apportion
from ..api.rollout_types import TERMINAL, Backend, Phase, RolloutCommand, RolloutSpec, RolloutState

Route = dict[str, int]
#: State reason of a rollout whose canary already had all the traffic when it started.
CANARY_IS_STABLE = "CanaryIsStable"


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    state: RolloutState | None
    #: the task's desired route while the rollout owns it; None: use spec.routes[task]
    route: Route | None
    events: list[Event] = field(default_factory=list)


def _route(backends: list[Backend]) -> Route:
    return {b.adapter: b.weight for b in backends}


def _backends(route: Mapping[str, int]) -> list[Backend]:
    return [Backend(adapter=a, weight=w) for a, w in route.items()]


def split(stable: Mapping[str, int], canary: str, weight: int) -> Route:
    """``weight`` to the canary, the rest over ``stable`` by their weights."""
    out = {a: w for a, w in apportion(100 - weight, {a: w for a, w in stable.items() if a != canary}).items()}
    out[canary] = weight
    return out


def route_of(state: RolloutState) -> Route:
    """The weights a state stands for."""
    if state.phase == Phase.promoted:
        return {state.canary: 100}
    if state.phase in (Phase.rolled_back, Phase.aborted):
        return _route(state.stable)
    return split(_route(state.stable), state.canary, state.canary_weight)


def applies(state: RolloutState | None, spec_route: Mapping[str, int]) -> bool:
    """The rollout owns the route while spec.routes[task] is unchanged since it began."""
    return state is not None and normalize({"t": _route(state.base_route)}) == normalize({"t": dict(spec_route)})


def desired_route(spec_route: Mapping[str, int], state: RolloutState | None) -> Route:
    """What the task's desired route is: the rollout's override or the spec's."""
    return route_of(state) if state is not None and applies(state, spec_route) else dict(spec_route)


def _iso(t: dt.datetime) -> str:
    return t.isoformat()


def _since(t: str, now: dt.datetime) -> float:
    return (now - dt.datetime.fromisoformat(t)).total_seconds()


def _next_weight(spec: RolloutSpec, current: int) -> tuple[int, int]:
    """(index, weight) of the first step above ``current``; robust to the
    steps list being edited mid-rollout."""
    for i, s in enumerate(spec.steps):
        if s > current:
            return i, s
    return len(spec.steps) - 1, 100


def _transition(state: RolloutState, now: dt.datetime, phase: Phase, reason: str, message: str,
                **changes) -> RolloutState:
    return state.model_copy(update={"phase": phase, "reason": reason, "message": message,
                                    "last_transition": _iso(now), **changes})


def _start(spec: RolloutSpec, task: str, current: Route, spec_route: Mapping[str, int], now: dt.datetime) -> Decision:
    stable = {a: w for a, w in current.items() if w > 0 and a != spec.canary}
    base = dict(spec_route)
    if not stable:  # reported by the pool as a problem (routing.problems), not as an Event here
        st = RolloutState(task=task, canary=spec.canary, stable=_backends(current), base_route=_backends(base),
                          step_index=len(spec.steps) - 1, canary_weight=100, phase=Phase.promoted,
                          last_transition=_iso(now), reason=CANARY_IS_STABLE,
                          message=f"canary {spec.canary} already serves all of {task}: nothing to roll out "
                                  f"(name a new canary, or remove spec.rollouts[{task}])")
        return Decision(st, route_of(st), [])
    st = RolloutState(task=task, canary=spec.canary, stable=_backends(stable), base_route=_backends(base),
                      step_index=0, canary_weight=spec.steps[0], phase=Phase.progressing,
                      last_transition=_iso(now), reason="RolloutStarted",
                      message=f"step 1/{len(spec.steps)}: {spec.steps[0]}% to {spec.canary}; waiting for it to take effect")
    return Decision(st, route_of(st), [Event("Normal", "RolloutStarted",
                    f"{task}: rolling out {spec.canary} ({spec.steps[0]}% first; stable {stable})")])


def _advance(spec: RolloutSpec, st: RolloutState, now: dt.datetime, why: str, full: bool = False) -> tuple[RolloutState, Event]:
    idx, weight = (len(spec.steps) - 1, 100) if full else _next_weight(spec, st.canary_weight)
    reset = {"step_started": None, "window_counts": None, "step_index": idx, "canary_weight": weight}
    if weight >= 100:
        st = _transition(st, now, Phase.promoted, "RolloutPromoted", f"{st.canary} serves 100% of {st.task} ({why})", **reset)
        return st, Event("Normal", "RolloutPromoted", f"{st.task}: {st.canary} promoted to 100% ({why})")
    st = _transition(st, now, Phase.progressing, "StepPromoted",
                     f"step {idx + 1}/{len(spec.steps)}: {weight}% to {st.canary} ({why}); waiting for it to take effect",
                     **reset)
    return st, Event("Normal", "StepPromoted", f"{st.task}: {st.canary} -> {weight}% ({why})")


def _command(spec: RolloutSpec, st: RolloutState, cmd: RolloutCommand, now: dt.datetime) -> tuple[RolloutState, list[Event]]:
    c, active = cmd.command, st.phase not in TERMINAL
    t = st.task
    if c == "pause" and active:
        return _transition(st, now, Phase.paused, "RolloutPaused", "paused by command"), [
            Event("Normal", "RolloutPaused", f"{t}: paused at {st.canary_weight}%")]
    if c == "resume" and st.phase == Phase.paused:
        st = _transition(st, now, Phase.progressing, "RolloutResumed", "resumed; the step's window restarts",
                         step_started=None, window_counts=None)
        return st, [Event("Normal", "RolloutResumed", f"{t}: resumed at {st.canary_weight}%")]
    if c in ("promote", "promote-full") and active:
        st, ev = _advance(spec, st, now, "manual promote", full=c == "promote-full")
        return st, [ev]
    if c == "abort" and active:
        return _transition(st, now, Phase.aborted, "RolloutAborted", "aborted by command; stable weights restored"), [
            Event("Warning", "RolloutAborted", f"{t}: aborted; back to {_route(st.stable)}")]
    if c == "rollback" and st.phase != Phase.rolled_back:
        return _transition(st, now, Phase.rolled_back, "ManualRollback", "rolled back by command"), [
            Event("Warning", "RolledBack", f"{t}: rolled back by command to {_route(st.stable)}")]
    if c == "retry" and st.phase in (Phase.rolled_back, Phase.aborted):
        st = _transition(st, now, Phase.progressing, "RolloutRetried",
                         f"retry: step 1/{len(spec.steps)}: {spec.steps[0]}% to {st.canary}",
                         step_index=0, canary_weight=spec.steps[0], step_started=None, window_counts=None)
        return st, [Event("Normal", "RolloutRetried", f"{t}: retrying {st.canary} from {spec.steps[0]}%")]
    return st, [Event("Normal", "CommandIgnored", f"{t}: '{c}' does nothing in phase {st.phase.value}")]


def step(spec: RolloutSpec | None, state: RolloutState | None, *, task: str, spec_route: Mapping[str, int],
         effective_route: Mapping[str, int] | None, now: dt.datetime, counts: str | None = None,
         verdict: analysis.Verdict | None = None, commands: Sequence[RolloutCommand] = ()) -> Decision:
    """Next state of ``task``'s rollout. ``counts`` is the open window's
    counts after this pass (``window_after``; None: unchanged), ``verdict`` their
    analysis (``evaluate``); ``commands`` are this task's commands not applied
    yet, in order. See the module doc for the rules."""
    if spec is None:
        if state is not None and state.phase not in TERMINAL:
            return Decision(None, None, [Event("Warning", "RolloutRemoved",
                                               f"{task}: rollout block removed mid-rollout; spec.routes applies")])
        return Decision(None, None, [])
    events: list[Event] = []
    if state is None or state.canary != spec.canary:
        if state is not None and state.phase not in TERMINAL and applies(state, spec_route):
            current = _route(state.stable)  # a new canary replaces an unfinished one: go from stable
        else:
            current = desired_route(spec_route, state)
        d = _start(spec, task, current, spec_route, now)
        state, events, counts, verdict = d.state, list(d.events), None, None  # a new state has no window
    elif not applies(state, spec_route):
        if state.phase not in TERMINAL:
            state = _transition(state, now, Phase.aborted, "SpecRoutesEdited",
                                f"spec.routes[{task}] was edited during the rollout; the spec applies")
            return Decision(state, None, [Event("Warning", "RolloutAborted", state.message)])
        return Decision(state, None, [])

    st = state
    for command in commands:
        st, evs = _command(spec, st, command, now)
        events += evs
    if spec.paused and st.phase == Phase.progressing:
        st = _transition(st, now, Phase.paused, "SpecPaused", "paused by spec.rollouts[].paused")
        events.append(Event("Normal", "RolloutPaused", f"{task}: paused at {st.canary_weight}% (spec)"))
    elif not spec.paused and st.phase == Phase.paused and st.reason == "SpecPaused":
        st = _transition(st, now, Phase.progressing, "RolloutResumed", "resumed (spec); the step's window restarts",
                         step_started=None, window_counts=None)
        events.append(Event("Normal", "RolloutResumed", f"{task}: resumed at {st.canary_weight}% (spec)"))

    if st.phase == Phase.progressing:
        if st is not state:  # a command moved the step: the window computed before it is not this step's
            counts, verdict = None, None
        st, evs = _progress(spec, st, effective_route, now, counts, verdict)
        events += evs
    return Decision(st, route_of(st), events)


def _progress(spec: RolloutSpec, st: RolloutState, effective: Mapping[str, int] | None, now: dt.datetime,
              counts: str | None, verdict: analysis.Verdict | None) -> tuple[RolloutState, list[Event]]:
    target = route_of(st)
    if st.step_started is None:
        if effective is not None and normalize({"t": dict(effective)}) == normalize({"t": target}):
            msg = f"step {st.step_index + 1}/{len(spec.steps)}: {st.canary_weight}% in effect; analysing"
            return st.model_copy(update={"step_started": _iso(now), "window_counts": analysis.dumps_counts({}),
                                         "message": msg}), []
        return st, []
    if counts is not None:
        st = st.model_copy(update={"window_counts": counts})
    if verdict is not None and verdict.breach:
        st = _transition(st, now, Phase.rolled_back, verdict.reason or "AnalysisFailed",
                         f"analysis failed at {st.canary_weight}%: {verdict.message}")
        return st, [Event("Warning", "AnalysisFailed", f"{st.task}: {verdict.message}"),
                    Event("Warning", "RolledBack", f"{st.task}: rolled back to {_route(st.stable)}")]
    if _since(st.step_started, now) < spec.interval_seconds:
        return st, []
    if verdict is not None and verdict.healthy:
        st, ev = _advance(spec, st, now, verdict.message or "analysis healthy")
        return st, [ev]
    why = verdict.message if verdict is not None else "no analysis available"
    held = _since(st.step_started, now) - spec.interval_seconds
    if held >= spec.inconclusive_timeout_seconds:
        return _inconclusive_timeout(spec, st, now, why)
    return st.model_copy(update={"message": f"holding at {st.canary_weight}%: {why}"}), []


def _inconclusive_timeout(spec: RolloutSpec, st: RolloutState, now: dt.datetime,
                          why: str) -> tuple[RolloutState, list[Event]]:
    """The step stayed inconclusive ``inconclusiveTimeoutSeconds`` past its interval: ``onInconclusive``."""
    what = (f"analysis inconclusive at {st.canary_weight}% for {spec.inconclusive_timeout_seconds}s past the "
            f"step's interval ({why})")
    if spec.on_inconclusive == "promote":
        st, ev = _advance(spec, st, now, f"{what}; onInconclusive: promote")
        return st, [ev]
    st = _transition(st, now, Phase.rolled_back, "InconclusiveTimeout", f"{what}; onInconclusive: rollback")
    return st, [Event("Warning", "AnalysisInconclusive", f"{st.task}: {what}"),
                Event("Warning", "RolledBack", f"{st.task}: rolled back to {_route(st.stable)}")]


def window_after(state: RolloutState | None, increment: analysis.Counts | None) -> str | None:
    """The open window's counts once this pass's ``increment`` is added; None
    when no window is open (not progressing, or weights not in effect)."""
    if state is None or state.phase != Phase.progressing or state.step_started is None:
        return None
    counts = analysis.loads_counts(state.window_counts)
    return analysis.dumps_counts(analysis.add_counts(counts, increment) if increment else counts)


def evaluate(spec: RolloutSpec, state: RolloutState | None, counts: str | None) -> analysis.Verdict | None:
    """Analysis of ``state``'s open window (``counts`` from ``window_after``); None when none is open."""
    if state is None or counts is None:
        return None
    return analysis.analyze(analysis.loads_counts(counts), canary=state.canary,
                            stable=[b.adapter for b in state.stable], thresholds=spec.analysis)
