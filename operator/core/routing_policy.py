"""Load before route: which route weights may take effect now, and which
adapters workers must keep loaded. Pure; the WorkerPool handler supplies the
desired routes, what each ready worker reports as loaded, and the clock.

Why: a canary weight is a promise that requests reach a version that is
actually resident. If the operator published a 5% weight before every worker
had loaded the canary, a worker without it would silently renormalise (or
fail) and the analysis would compare the wrong traffic. So the weights the
workers see (the *effective* routes, written to the desired ConfigMap) trail
the *desired* routes (spec, or a rollout's override) until the loads are done.

The rule, per task:

1. A backend is *admissible* when every ready worker reports it loaded.
   With no ready worker at all, nothing can be checked and nothing serves:
   the previous effective route is kept, or, for a task that has none yet,
   the desired route is taken as is (bootstrap — workers become ready only
   after loading their desired adapters).
2. An admissible backend gets its desired weight. A non-admissible backend
   gets 0 — its previous effective value whenever the invariant held, and 0
   as well when a newly ready worker lacks a backend that had weight, because
   weight must never point at a version some ready worker cannot serve.
3. The weight left over (the desired weight of non-admissible backends) stays
   with the backends already in effect: it is spread over the previous
   effective backends that are still admissible, in proportion to their
   previous effective weights (largest remainder, ties by name), so the
   route still sums to 100. If none of those is admissible, it goes to the
   admissible desired backends in proportion to their desired weights, and if
   no backend is admissible the task gets no effective route (the handler
   reports it; workers answer 503 for it rather than serving a wrong version).

Removal: a backend dropped from a route (or set to weight 0) must stay in
the workers' desired adapter set until its *effective* weight has been 0 for
``drain_seconds`` — workers pick up the new routes from the ConfigMap at their
own pace and may still hold requests for it. ``keep`` in the result is that
set; ``zero_since`` remembers when each adapter's effective weight reached 0.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Iterable, Mapping

#: task -> {adapter: weight}; insertion order is the route's backend order.
Routes = dict[str, dict[str, int]]


def apportion(total: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Split integer ``total`` in proportion to ``shares`` (largest remainder,
    ties broken by name) so the parts sum exactly to ``total``."""
    keys = [k for k, v in shares.items() if v > 0]
    if total <= 0 or not keys:
        return {k: 0 for k in shares}
    s = float(sum(shares[k] for k in keys))
    exact = {k: total * shares[k] / s for k in keys}
    out = {k: int(exact[k]) for k in keys}
    left = total - sum(out.values())
    for k in sorted(keys, key=lambda k: (-(exact[k] - out[k]), k))[:left]:
        out[k] += 1
    return {k: out.get(k, 0) for k in shares}


def admissible(ready_loaded: Iterable[Iterable[str]]) -> set[str] | None:
    """Adapters every ready worker has loaded; ``None`` when no worker is ready."""
    sets = [set(s) for s in ready_loaded]
    if not sets:
        return None
    out = sets[0]
    for s in sets[1:]:
        out &= s
    return out


def effective_route(desired: Mapping[str, int], previous: Mapping[str, int] | None,
                    ok: set[str] | None) -> dict[str, int]:
    """Effective weights of one task (module doc, rules 1-3)."""
    if ok is None:
        return dict(previous) if previous else dict(desired)
    previous = previous or {}
    out = {a: (w if a in ok else 0) for a, w in desired.items()}
    left = 100 - sum(out.values())
    if left > 0:
        holders = {a: w for a, w in previous.items() if w > 0 and a in ok}
        if not holders:
            holders = {a: w for a, w in desired.items() if w > 0 and a in ok}
        if not holders:
            return {}
        for a, extra in apportion(left, holders).items():
            out[a] = out.get(a, 0) + extra
    return out


@dataclass
class RoutingResult:
    effective: Routes
    #: adapters workers must keep loaded: every desired backend, every
    #: backend with effective weight, and backends still draining.
    keep: set[str]
    #: adapter -> time its effective weight (over all tasks) became 0.
    zero_since: dict[str, dt.datetime]
    #: tasks whose effective weights differ from the desired ones.
    pending: set[str] = field(default_factory=set)
    #: tasks with no admissible backend at all.
    unavailable: set[str] = field(default_factory=set)


def compute(desired: Routes, previous: Routes, ready_loaded: Iterable[Iterable[str]], *,
            zero_since: Mapping[str, dt.datetime], now: dt.datetime, drain_seconds: float) -> RoutingResult:
    """Effective routes and the adapters to keep; see the module doc."""
    ok = admissible(ready_loaded)
    effective: Routes = {}
    pending, unavailable = set(), set()
    for task, want in desired.items():
        eff = effective_route(want, previous.get(task), ok)
        if not eff:
            unavailable.add(task)
        else:
            effective[task] = eff
        if {a: w for a, w in eff.items() if w} != {a: w for a, w in want.items() if w}:
            pending.add(task)

    weighted = {a for r in effective.values() for a, w in r.items() if w > 0}
    listed = {a for r in desired.values() for a in r}
    ever = listed | {a for r in previous.values() for a in r} | set(zero_since)
    new_zero: dict[str, dt.datetime] = {}
    keep = set(weighted) | {a for a in listed if desired_weight(desired, a) > 0}
    for a in ever - weighted:
        since = zero_since.get(a)
        was_weighted = any(r.get(a, 0) > 0 for r in previous.values())
        if since is None or was_weighted:
            since = now
        if (now - since).total_seconds() < drain_seconds:
            new_zero[a] = since
            keep.add(a)
        elif a in listed:
            new_zero[a] = since  # still named (weight 0): remember, but no need to hold it
    return RoutingResult(effective=effective, keep=keep, zero_since=new_zero, pending=pending,
                         unavailable=unavailable)


def desired_weight(routes: Routes, adapter: str) -> int:
    return max((r.get(adapter, 0) for r in routes.values()), default=0)


def for_workers(effective: Routes) -> dict[str, list[dict]]:
    """Routes for the desired ConfigMap: effective weights, zero weights left
    out (a worker never picks weight 0, and a dropped backend may be unloaded
    after draining, which the ConfigMap's adapters list must not contradict)."""
    return {t: [{"adapter": a, "weight": w} for a, w in r.items() if w > 0] for t, r in effective.items() if r}


def route_status(desired: Routes, effective: Routes, ready_loaded: Iterable[Iterable[str]]) -> list[dict]:
    """``status.routes``: per task, desired vs effective weight of every
    backend named in either, and on how many ready workers it is loaded."""
    sets = [set(s) for s in ready_loaded]
    out = []
    for task in sorted(set(desired) | set(effective)):
        want, eff = desired.get(task, {}), effective.get(task, {})
        names = list(want) + [a for a in eff if a not in want]
        backends = [{"adapter": a, "desired": want.get(a, 0), "effective": eff.get(a, 0),
                     "loadedOn": f"{sum(a in s for s in sets)}/{len(sets)}"} for a in names]
        pend = {a: w for a, w in want.items() if w} != {a: w for a, w in eff.items() if w}
        out.append({"task": task, "backends": backends, "pending": pend})
    return out
