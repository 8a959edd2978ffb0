"""The rollout step machine: one task's automated canary. Pure.

``step()`` takes the rollout block, the state stored in status, the spec's
route, the route currently in effect, the clock, an analysis verdict and an
optional command, and returns the next state, the route the task should
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
  proportion to their weights. If the canary already has all the traffic the
  rollout is Promoted at once.
* a step's analysis window opens only when the step's weights are *in
  effect* (load before route may delay them), and compares the window since
  then. A breach at any time rolls back (fail fast); after
  ``intervalSeconds`` a healthy window promotes to the next step (100 =
  Promoted); an inconclusive one (too few requests) holds and re-checks.
* commands (annotation, each nonce obeyed once): promote (next step, no
  analysis), promote-full, pause, resume (restarts the step's window),
  abort (stable weights, Aborted), rollback (stable weights, RolledBack),
  retry (after RolledBack/Aborted: from the first step again).
* ``spec.paused`` pauses; clearing it resumes only a pause it caused.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Mapping

from . import analysis
from .revisions import normalize
from .routing_policy import apportion
from ..api.rollout_types import TERMINAL, Backend, Phase, RolloutCommand, RolloutSpec, RolloutState

Route = dict[str, int]


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


def _start(spec: RolloutSpec, task: str, current: Route, spec_route: Mapping[str, int], now: dt.datetime,
           nonce: str | None) -> Decision:
    stable = {a: w for a, w in current.items() if w > 0 and a != spec.canary}
    base = dict(spec_route)
    if not stable:
        st = RolloutState(task=task, canary=spec.canary, stable=_backends(current), base_route=_backends(base),
                          step_index=len(spec.steps) - 1, canary_weight=100, phase=Phase.promoted,
                          last_transition=_iso(now), reason="AlreadyPromoted", last_nonce=nonce,
                          message=f"{spec.canary} already serves all of {task}")
        return Decision(st, route_of(st), [])
    st = RolloutState(task=task, canary=spec.canary, stable=_backends(stable), base_route=_backends(base),
                      step_index=0, canary_weight=spec.steps[0], phase=Phase.progressing,
                      last_transition=_iso(now), reason="RolloutStarted", last_nonce=nonce,
                      message=f"step 1/{len(spec.steps)}: {spec.steps[0]}% to {spec.canary}; waiting for it to take effect")
    return Decision(st, route_of(st), [Event("Normal", "RolloutStarted",
                    f"{task}: rolling out {spec.canary} ({spec.steps[0]}% first; stable {stable})")])


def _advance(spec: RolloutSpec, st: RolloutState, now: dt.datetime, why: str, full: bool = False) -> tuple[RolloutState, Event]:
    idx, weight = (len(spec.steps) - 1, 100) if full else _next_weight(spec, st.canary_weight)
    reset = {"step_started": None, "window_start": None, "step_index": idx, "canary_weight": weight}
    if weight >= 100:
        st = _transition(st, now, Phase.promoted, "RolloutPromoted", f"{st.canary} serves 100% of {st.task} ({why})", **reset)
        return st, Event("Normal", "RolloutPromoted", f"{st.task}: {st.canary} promoted to 100% ({why})")
    st = _transition(st, now, Phase.progressing, "StepPromoted",
                     f"step {idx + 1}/{len(spec.steps)}: {weight}% to {st.canary} ({why}); waiting for it to take effect",
                     **reset)
    return st, Event("Normal", "StepPromoted", f"{st.task}: {st.canary} -> {weight}% ({why})")


def _command(spec: RolloutSpec, st: RolloutState, cmd: RolloutCommand, now: dt.datetime) -> tuple[RolloutState, list[Event]]:
    st = st.model_copy(update={"last_nonce": cmd.nonce})
    c, active = cmd.command, st.phase not in TERMINAL
    t = st.task
    if c == "pause" and active:
        return _transition(st, now, Phase.paused, "RolloutPaused", "paused by command"), [
            Event("Normal", "RolloutPaused", f"{t}: paused at {st.canary_weight}%")]
    if c == "resume" and st.phase == Phase.paused:
        st = _transition(st, now, Phase.progressing, "RolloutResumed", "resumed; the step's window restarts",
                         step_started=None, window_start=None)
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
                         step_index=0, canary_weight=spec.steps[0], step_started=None, window_start=None)
        return st, [Event("Normal", "RolloutRetried", f"{t}: retrying {st.canary} from {spec.steps[0]}%")]
    return st, [Event("Normal", "CommandIgnored", f"{t}: '{c}' does nothing in phase {st.phase.value}")]


def step(spec: RolloutSpec | None, state: RolloutState | None, *, task: str, spec_route: Mapping[str, int],
         effective_route: Mapping[str, int] | None, now: dt.datetime, snapshot: str | None = None,
         verdict: analysis.Verdict | None = None, command: RolloutCommand | None = None) -> Decision:
    """Next state of ``task``'s rollout. ``snapshot`` is the workers' current
    counters (``analysis.dumps``), stored as the window start when a step's
    weights take effect; ``verdict`` is the analysis of the open window
    (``evaluate``). See the module doc for the rules."""
    if spec is None:
        if state is not None and state.phase not in TERMINAL:
            return Decision(None, None, [Event("Warning", "RolloutRemoved",
                                               f"{task}: rollout block removed mid-rollout; spec.routes applies")])
        return Decision(None, None, [])
    nonce = command.nonce if command is not None and command.task == task else None
    if state is None or state.canary != spec.canary:
        if state is not None and state.phase not in TERMINAL and applies(state, spec_route):
            current = _route(state.stable)  # a new canary replaces an unfinished one: go from stable
        else:
            current = desired_route(spec_route, state)
        return _start(spec, task, current, spec_route, now, nonce)
    if not applies(state, spec_route):
        if state.phase not in TERMINAL:
            state = _transition(state, now, Phase.aborted, "SpecRoutesEdited",
                                f"spec.routes[{task}] was edited during the rollout; the spec applies")
            return Decision(state, None, [Event("Warning", "RolloutAborted", state.message)])
        return Decision(state, None, [])

    events: list[Event] = []
    st = state
    if command is not None and command.task == task and command.nonce != st.last_nonce:
        st, evs = _command(spec, st, command, now)
        events += evs
    if spec.paused and st.phase == Phase.progressing:
        st = _transition(st, now, Phase.paused, "SpecPaused", "paused by spec.rollouts[].paused")
        events.append(Event("Normal", "RolloutPaused", f"{task}: paused at {st.canary_weight}% (spec)"))
    elif not spec.paused and st.phase == Phase.paused and st.reason == "SpecPaused":
        st = _transition(st, now, Phase.progressing, "RolloutResumed", "resumed (spec); the step's window restarts",
                         step_started=None, window_start=None)
        events.append(Event("Normal", "RolloutResumed", f"{task}: resumed at {st.canary_weight}% (spec)"))

    if st.phase == Phase.progressing:
        st, evs = _progress(spec, st, effective_route, now, snapshot, verdict)
        events += evs
    return Decision(st, route_of(st), events)


def _progress(spec: RolloutSpec, st: RolloutState, effective: Mapping[str, int] | None, now: dt.datetime,
              snapshot: str | None, verdict: analysis.Verdict | None) -> tuple[RolloutState, list[Event]]:
    target = route_of(st)
    if st.step_started is None:
        if effective is not None and normalize({"t": dict(effective)}) == normalize({"t": target}):
            msg = f"step {st.step_index + 1}/{len(spec.steps)}: {st.canary_weight}% in effect; analysing"
            return st.model_copy(update={"step_started": _iso(now), "window_start": snapshot, "message": msg}), []
        return st, []
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
    return st.model_copy(update={"message": f"holding at {st.canary_weight}%: {why}"}), []


def evaluate(spec: RolloutSpec, state: RolloutState | None, current: analysis.Snapshot) -> analysis.Verdict | None:
    """Analysis of ``state``'s open window against the ``current`` scrape;
    None when no window is open (not progressing, or weights not in effect)."""
    if state is None or state.phase != Phase.progressing or state.step_started is None:
        return None
    return analysis.analyze(current, analysis.loads(state.window_start), canary=state.canary,
                            stable=[b.adapter for b in state.stable], thresholds=spec.analysis)
