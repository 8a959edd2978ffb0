"""Which adapter version serves a request: a pure function of the request's
``model`` field, the routes, and what this worker has loaded.

Why pure: canary weights are a promise to users (5% means 5%), so the choice
is tested exhaustively without a model, a server or a clock. The caller
supplies the uniform draw (``rand``) or a sticky key, never hidden state.

Rules:
* ``model`` = a task name: pick among that task's backends that are loaded
  here and have weight > 0, with weights renormalised over those. Weight 0
  is never chosen. A task whose adapters are listed but which has no route
  spreads evenly over its loaded adapters.
* ``model`` = an adapter name: pin that version (503 if not loaded here).
* ``model`` = the base name (or ``__base__``): no adapter.
* anything else: 404.
* ``key`` (sticky routing): the draw is a hash of the key, so one key keeps
  landing on the same version while the weights and loaded set are unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

BASE_ADAPTER = "__base__"


class RouteError(Exception):
    """A request that cannot be routed; ``status`` is the HTTP status to return,
    ``code`` a stable machine-readable reason (OpenAI's ``error.code``), and
    ``task``/``adapter`` what the request was for when that is known (metrics)."""

    def __init__(self, status: int, message: str, code: str | None = None, *, task: str | None = None,
                 adapter: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.task = task
        self.adapter = adapter


@dataclass(frozen=True)
class Choice:
    task: str | None  # None when pinned to an adapter or the base
    adapter: str  # served adapter name, or BASE_ADAPTER


def sticky_draw(key: str) -> float:
    """A uniform number in [0, 1) that depends only on ``key``."""
    # surrogatepass: a header's undecodable bytes (aiohttp keeps them as lone surrogates) still hash
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def weighted_pick(backends: Sequence[tuple[str, int]], u: float) -> str:
    """Pick from (name, weight>0) pairs by a uniform draw ``u`` in [0, 1)."""
    total = sum(w for _, w in backends)
    if total <= 0:
        raise ValueError("no positive weight to pick from")
    target = u * total
    acc = 0.0
    for name, weight in backends:
        acc += weight
        if target < acc:
            return name
    return backends[-1][0]  # u == 1.0 - epsilon rounding


def choose(
    model: str,
    *,
    routes: Mapping[str, Sequence[tuple[str, int]]],
    adapter_tasks: Mapping[str, str],
    loaded: Iterable[str],
    base_names: Iterable[str] = (),
    rand: float | None = None,
    key: str | None = None,
) -> Choice:
    """Resolve ``model`` to the adapter that serves it (see module doc)."""
    loaded_set = set(loaded)
    if model in routes or model in set(adapter_tasks.values()):
        task = model
        backends = list(routes.get(task, ()))
        if not backends:
            backends = [(n, 1) for n, t in sorted(adapter_tasks.items()) if t == task]
        live = [(n, w) for n, w in backends if w > 0 and n in loaded_set]
        if not live:
            wanted = [n for n, w in backends if w > 0]
            raise RouteError(
                503,
                f"task {task!r} has no loaded adapter with weight > 0 on this worker "
                f"(routed: {wanted}, loaded: {sorted(loaded_set)})",
                "no_loaded_backend", task=task,
            )
        if key is not None:
            u = sticky_draw(key)
        elif rand is not None:
            u = rand
        else:
            raise ValueError("choose() needs rand or key for a task route")
        return Choice(task=task, adapter=weighted_pick(live, u))
    if model in adapter_tasks or model in loaded_set:
        if model not in loaded_set:
            raise RouteError(503, f"adapter {model!r} is not loaded on this worker yet", "adapter_not_loaded",
                             adapter=model)
        return Choice(task=None, adapter=model)
    if model == BASE_ADAPTER or model in set(base_names):
        return Choice(task=None, adapter=BASE_ADAPTER)
    known = sorted(set(routes) | set(adapter_tasks.values()) | set(adapter_tasks))
    raise RouteError(404, f"The model {model!r} does not exist on this worker (not a task, adapter or base served "
                          f"here; known: {known})", "model_not_found")
