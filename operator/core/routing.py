"""Routes of one WorkerPool pass: rollouts, load before route, revisions. Pure.

The glue between the pure rollout pieces (``rollout``, ``routing_policy``,
``revisions``, ``analysis``) and the WorkerPool reconcile pass, following the
integration contract in docs/rollouts.md. Input: the pool (spec, status,
annotations), what each ready worker reports as loaded, the workers' metrics
(when a rollout needs them) and the clock. Output: the effective routes and
adapter set for the desired ConfigMap, the status fields, Events and the
transitions to count.

Why a separate pure module: every decision a rollout makes must survive an
operator restart, so all of it is computed from what the API holds
(``status.rollouts``, ``status.effectiveRoutes``, ``status.draining``,
``status.revisions``, ``status.processedCommands``, ``status.analysisBaseline``)
plus the clock; calling ``plan_routing`` twice on the same inputs gives the
same plan.

What only the operator can see is wrong with the routes (a route to an
adapter of another task, a canary that already serves everything) is a
*problem*: condition ``RoutesValid`` False with its reason, Ready False, and
one Event (``report_problems``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import analysis, revisions, rollout, routing_policy
from ..api.common_types import Condition
from ..api.conditions import find, set_typed
from ..api.observed_types import WorkerReport
from ..api.resources import AdapterResource, InvalidObject, WorkerPoolResource, as_read
from ..api.rollout_types import (
    Backend, CHANGE_CAUSE_ANNOTATION, Phase, Revision, RolloutCommand, RolloutSpec, RolloutState, commands_of,
)
from ..api.workerpool_types import RouteBackend

#: Longest pause between passes while a rollout is progressing (time drives steps).
ROLLOUT_REQUEUE_SECONDS = 15.0

Routes = routing_policy.Routes
#: A JSON merge patch of status fields (wire format: ``None`` deletes a key).
MergePatch = dict[str, Any]


@dataclass
class RoutingPlan:
    #: task -> {adapter: weight} the workers get (zero weights left out)
    worker_routes: Routes
    #: adapters the workers must hold: load before route + draining
    keep: set[str]
    #: status fields to merge (dict fields carry ``None`` for keys to delete: status is merge-patched)
    status: dict
    events: list[tuple[str, str, str]] = field(default_factory=list)
    #: (task, reason) per rollout Event, for the transitions counter
    transitions: list[tuple[str, str]] = field(default_factory=list)
    #: Progressing condition to use when the pool itself is otherwise stable
    progressing: tuple[bool, str, str] | None = None
    #: Degraded condition message for tasks with no loaded backend
    unavailable: str | None = None
    requeue_after: float | None = None
    #: (reason, message) of what is wrong with the rollouts (``report_problems``)
    problems: list[tuple[str, str]] = field(default_factory=list)
    #: command annotations applied (acknowledged in status): remove them once the status is written
    remove_annotations: list[str] = field(default_factory=list)


def ready_loaded(reports: list[WorkerReport]) -> list[list[str]]:
    """Loaded sets of the workers that report themselves ready (a pod with no
    report yet has loaded nothing and serves nothing, whatever its Ready
    condition says: KWOK pods are Ready at once)."""
    return [list(r.loaded) for r in reports if r.ready]


def _routes(typed: Mapping[str, Sequence[Backend | RouteBackend]]) -> Routes:
    """task -> {adapter: weight} from spec.routes or status.effectiveRoutes."""
    return {t: {b.adapter: int(b.weight) for b in bs} for t, bs in typed.items()}


def _iso(t: dt.datetime) -> str:
    return t.isoformat()


def needs_metrics(pool: WorkerPoolResource) -> bool:
    """Scrape the workers only while some rollout is progressing (window start
    or analysis); scraping is the expensive part of a pass."""
    return any(s.phase == Phase.progressing for s in pool.status.rollouts.values())


def prometheus_source(pool: WorkerPoolResource):
    """The ``analysis.prometheus`` block of the first progressing rollout whose
    ``analysis.provider`` is ``prometheus`` (None: scrape the workers directly).
    One source serves the pass: both read the same worker counters."""
    for task, spec in sorted(pool.spec.rollouts.items()):
        st = pool.status.rollouts.get(task)
        if st is None or st.phase != Phase.progressing:
            continue
        if spec.analysis.provider == "prometheus" and spec.analysis.prometheus is not None:
            return spec.analysis.prometheus
    return None


def adapters_named(pool: WorkerPoolResource) -> set[str]:
    """Every adapter this pass may need an AdapterRef for: the spec's routes,
    the rollouts' canaries, and what status still holds (effective, draining,
    a rollout's stable set)."""
    spec, status = pool.spec, pool.status
    names = {b.adapter for bs in spec.routes.values() for b in bs}
    names |= {r.canary for r in spec.rollouts.values() if r.canary}
    names |= {a for r in _routes(status.effective_routes).values() for a in r}
    names |= set(status.draining)
    for st in status.rollouts.values():
        names |= {b.adapter for b in st.stable} | {st.canary}
    return names


def _with_deletions(new: MergePatch, old: MergePatch | None) -> MergePatch:
    """``new`` as a JSON merge patch over ``old``: keys that went away become
    ``None`` (merge patch deletes them), recursively — a nested key merely
    left out would survive the patch (e.g. a step's stale ``stepStarted``)."""
    out = dict(new)
    for k, v in (old or {}).items():
        if k not in out:
            out[k] = None
        elif isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = _with_deletions(out[k], v)
    return out


def plan_routing(pool: WorkerPoolResource, loaded: list[list[str]], snap: analysis.Snapshot | None,
                 now: dt.datetime, drain_seconds: float | None = None) -> RoutingPlan:
    status = pool.status
    drain = float(pool.spec.drain_seconds if drain_seconds is None else drain_seconds)
    spec_routes = _routes(pool.spec.routes)
    previous = _routes(status.effective_routes)
    commands = commands_of(pool.metadata.annotations)
    baseline, increment = None, None
    if snap is not None:  # the counters read at the last pass -> the increment of this pass
        baseline, increment = analysis.advance(analysis.Baseline.loads(status.analysis_baseline), snap)
    # 1. Each task's rollout step (the override of spec.routes[task]), commands not applied yet.
    done = set(status.processed_commands)
    steps = _step_rollouts(pool, spec_routes, previous, (snap is not None, increment), now,
                           [(cid, c) for cid, c in commands if cid not in done])
    # 2. Load before route.
    zero_since = {a: dt.datetime.fromisoformat(t) for a, t in status.draining.items()}
    r = routing_policy.compute(steps.desired, previous, loaded, zero_since=zero_since, now=now, drain_seconds=drain)
    # 3. Revisions: what clients actually got.
    history = _record_revision(pool, r.effective, previous, spec_routes, steps.states, now)
    st_out = {
        "routes": routing_policy.route_status(steps.desired, r.effective, loaded),
        "effectiveRoutes": _with_deletions(
            {t: [{"adapter": a, "weight": w} for a, w in eff.items()] for t, eff in r.effective.items()},
            {t: [as_read(b) for b in bs] for t, bs in status.effective_routes.items()}),
        "draining": _with_deletions({a: _iso(t) for a, t in sorted(r.zero_since.items())}, status.draining),
        "revisions": [h.model_dump(by_alias=True, mode="json") for h in history],
        "rollouts": _with_deletions({t: s.model_dump(by_alias=True, mode="json", exclude_none=True)
                                     for t, s in steps.states.items()},
                                    {t: as_read(s) for t, s in status.rollouts.items()}),
        "processedCommands": sorted(cid for cid, _ in commands) or None,
        "analysisBaseline": baseline.dumps() if baseline is not None else None,
    }
    # 4. Conditions, requeue.
    unavailable = None
    if r.unavailable:
        unavailable = f"no backend of {', '.join(sorted(r.unavailable))} is loaded on every ready worker"
        before = next((c for c in status.conditions if c.type == "Degraded"), None)
        if before is None or before.reason != "NoLoadedBackend":
            steps.events.append(("Warning", "NoLoadedBackend", unavailable))
    return RoutingPlan(worker_routes={t: {b["adapter"]: b["weight"] for b in bs}
                                      for t, bs in routing_policy.for_workers(r.effective).items()},
                       keep=set(r.keep), status=st_out, events=steps.events, transitions=steps.transitions,
                       progressing=_progressing(steps.states, r.pending), unavailable=unavailable,
                       requeue_after=_requeue(steps, r, now, drain), problems=_rollout_problems(pool, steps.states),
                       remove_annotations=[RolloutCommand.key(cid) for cid, _ in commands])


@dataclass
class _Steps:
    """The rollouts' step of this pass."""

    desired: Routes  # spec.routes with each rollout's override
    states: dict[str, RolloutState]  # task -> new rollout state
    specs: dict[str, RolloutSpec]
    events: list[tuple[str, str, str]] = field(default_factory=list)
    transitions: list[tuple[str, str]] = field(default_factory=list)  # (task, reason) per rollout Event


def _step_rollouts(pool: WorkerPoolResource, spec_routes: Routes, previous: Routes,
                   metrics: tuple[bool, analysis.Counts | None], now: dt.datetime,
                   commands: list[tuple[str, RolloutCommand | str]]) -> _Steps:
    """Each task's rollout step. ``metrics``: (counters were read this pass, their increment since
    the last pass or None when it could not be attributed)."""
    states = pool.status.rollouts
    specs = pool.spec.rollouts
    out = _Steps(desired=dict(spec_routes), states={}, specs=specs)
    driven = {t for t in specs if t in spec_routes}
    out.events += _unapplicable(commands, driven)
    for task in sorted(set(specs) | set(states)):
        r_spec = specs.get(task) if task in driven else None
        state = states.get(task)
        counts = rollout.window_after(state, metrics[1]) if metrics[0] else None
        verdict = rollout.evaluate(r_spec, state, counts) if r_spec is not None else None
        mine = [c for _, c in commands if isinstance(c, RolloutCommand) and c.task == task]
        d = rollout.step(r_spec, state, task=task, spec_route=spec_routes.get(task, {}),
                         effective_route=previous.get(task), now=now, counts=counts, verdict=verdict, commands=mine)
        if d.state is not None:
            out.states[task] = d.state
        if d.route is not None and task in spec_routes:
            out.desired[task] = d.route
        for e in d.events:
            out.events.append((e.type, e.reason, e.message))
            out.transitions.append((task, e.reason))
    return out


def _unapplicable(commands: list[tuple[str, RolloutCommand | str]], driven: set[str]) -> list[tuple[str, str, str]]:
    """Events for malformed commands and commands for a task no rollout drives (each is seen once:
    it is acknowledged and its annotation removed)."""
    events = []
    for cid, c in commands:
        if isinstance(c, str):
            events.append(("Warning", "InvalidRolloutCommand", c))
        elif c.task not in driven:
            events.append(("Normal", "CommandIgnored", f"{c.task}: '{c.command}' ({cid}): no rollout drives this task"))
    return events


def _record_revision(pool: WorkerPoolResource, effective: Routes, previous: Routes, spec_routes: Routes,
                     new_states: dict[str, RolloutState], now: dt.datetime) -> list[Revision]:
    """The revision history with this pass's effective routes recorded (with
    their cause) when they changed."""
    history = list(pool.status.revisions)
    active = [s for s in new_states.values() if s.phase in (Phase.progressing, Phase.paused)]
    changed = [t for t in sorted(set(effective) | set(previous))
               if revisions.normalize({"t": effective.get(t, {})}) != revisions.normalize({"t": previous.get(t, {})})]
    causes = []
    for t in changed:
        st = new_states.get(t)
        if st is not None and rollout.applies(st, spec_routes.get(t, {})):
            causes.append(f"rollout {t}: {st.canary} {rollout.route_of(st).get(st.canary, 0)}% ({st.reason})")
        else:
            causes.append(pool.metadata.annotations.get(CHANGE_CAUSE_ANNOTATION)
                          or f"spec.routes[{t}] edited (generation {pool.generation})")
    # A set is a canary step when some running rollout has moved its task off the stable weights.
    stable = all(revisions.normalize({"t": effective.get(s.task, {})})
                 == revisions.normalize({"t": {b.adapter: b.weight for b in s.stable}}) for s in active)
    return revisions.record(history, effective, now=now, cause="; ".join(causes)[:500] or "routes changed",
                            stable=stable)


def _progressing(new_states: dict[str, RolloutState], pending) -> tuple[bool, str, str] | None:
    running = [s for s in new_states.values() if s.phase == Phase.progressing]
    if running:
        return True, "RolloutProgressing", "; ".join(f"{s.task}: {s.message}" for s in running)[:1000]
    if pending:
        return True, "RolloutProgressing", \
            f"waiting for ready workers to load the backends of {', '.join(sorted(pending))}"
    back = [s for s in new_states.values() if s.phase == Phase.rolled_back]
    if back:
        return False, "RolloutRolledBack", "; ".join(f"{s.task}: {s.message}" for s in back)[:1000]
    return None


def _requeue(steps: _Steps, r, now: dt.datetime, drain_seconds: float) -> float | None:
    """Time drives rollout steps, loading and draining: when to look again."""
    requeue = None
    running = [s for s in steps.states.values() if s.phase == Phase.progressing]
    if running:
        shortest = min(steps.specs[s.task].interval_seconds for s in running if s.task in steps.specs) if any(
            s.task in steps.specs for s in running) else ROLLOUT_REQUEUE_SECONDS
        requeue = max(1.0, min(ROLLOUT_REQUEUE_SECONDS, shortest / 3))
    if r.pending:
        requeue = min(requeue or 2.0, 2.0)
    for since in r.zero_since.values():
        left = drain_seconds - (now - since).total_seconds()
        if left > 0:
            requeue = min(requeue or left + 0.5, left + 0.5)
    return requeue


def _rollout_problems(pool: WorkerPoolResource, states: dict[str, RolloutState]) -> list[tuple[str, str]]:
    """A rollout block naming a canary that already served all of its task."""
    return [(rollout.CANARY_IS_STABLE, f"rollout {t}: {s.message}") for t, s in sorted(states.items())
            if s.reason == rollout.CANARY_IS_STABLE and s.phase == Phase.promoted
            and t in pool.spec.rollouts and pool.spec.rollouts[t].canary == s.canary]


def task_problems(pool: WorkerPoolResource, adapters: dict[str, AdapterResource | InvalidObject | None]
                  ) -> list[tuple[str, str]]:
    """Routes (and rollout canaries) that send a task to an adapter trained for another task."""
    out = []
    named = [(t, b.adapter, "route") for t, bs in sorted(pool.spec.routes.items()) for b in bs]
    named += [(t, r.canary, "rollout canary") for t, r in sorted(pool.spec.rollouts.items())]
    for task, name, what in named:
        a = adapters.get(name)
        if isinstance(a, AdapterResource) and a.spec.task != task:
            out.append(("RouteTaskMismatch", f"{what} {task} -> {name}: adapter {name} serves task {a.spec.task}"))
    return out


#: Condition owned by this module: False with a problem's reason while the routes or rollouts
#: name something the operator cannot serve as asked (absent until a first problem).
ROUTES_VALID = "RoutesValid"


def report_problems(conditions: list[Condition], problems: list[tuple[str, str]], *, generation: int | None,
                    now: dt.datetime, stored: list[Condition] | None = None) -> tuple[list[Condition], tuple | None]:
    """``RoutesValid`` False with the first problem's reason (messages joined) and a Warning Event
    unless ``stored`` (the conditions as the API holds them) already says exactly that; a Ready that
    this pass computed True becomes False with the same reason (never Ready=True silently). A Ready
    already False keeps its own, more urgent reason (and the dedupe of its Events)."""
    stored = conditions if stored is None else stored
    before = find(stored, ROUTES_VALID)
    if not problems:
        if before is None:
            return conditions, None
        return _keep_time(set_typed(conditions, ROUTES_VALID, "True", "AsExpected",
                                    "routes and rollouts name adapters of their task", generation, now),
                          stored, ROUTES_VALID), None
    reason, message = problems[0][0], "; ".join(m for _, m in problems)[:1000]
    same = before is not None and (before.status, before.reason, before.message) == ("False", reason, message)
    conditions = _keep_time(set_typed(conditions, ROUTES_VALID, "False", reason, message, generation, now),
                            stored, ROUTES_VALID)
    ready = find(conditions, "Ready")
    if ready is not None and ready.status == "True":
        conditions = _keep_time(set_typed(conditions, "Ready", "False", reason, message, generation, now),
                                stored, "Ready")
    return conditions, None if same else ("Warning", reason, message)


def _keep_time(conditions: list[Condition], stored: list[Condition], type_: str) -> list[Condition]:
    """``lastTransitionTime`` of ``type_`` as stored when its status did not change (``set_condition``
    compared with this pass's freshly computed conditions, not with what the API holds)."""
    old, new = find(stored, type_), find(conditions, type_)
    if old is None or new is None or old.status != new.status or not old.last_transition_time:
        return conditions
    return [c.model_copy(update={"last_transition_time": old.last_transition_time}) if c.type == type_ else c
            for c in conditions]
