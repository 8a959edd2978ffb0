"""Worker faults a WorkerPool recovers from or reports: pure decisions over observed pods
and nodes, with a fixed ``now`` (unit-tested without a cluster).

- A worker whose pod stays Unschedulable (PodScheduled=False) longer than
  ``spec.gpu.rescheduleAfterSeconds`` is deleted, which releases its VRAM
  reservation, and the node it was bound for is avoided by the pool for that
  long again (``status.avoidedNodes``), so the worker is placed elsewhere or
  reported unplaced instead of landing on the same node again.
- A worker on a node that is gone is deleted at once (forced: no kubelet will
  confirm it); one on a node NotReady longer than the same bound is deleted and
  placed again (the node is ineligible while NotReady).
- A worker in CrashLoopBackOff, or whose container was OOMKilled, is reported:
  a Degraded condition with reason ``WorkersOOMKilled`` / ``WorkersCrashLooping``,
  one Event when the set of failing workers changes, and a gauge (metrics).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..api.conditions import now_iso
from ..api.observed_types import PodView, parse_time
from ..api.workerpool_types import AvoidedNode, WorkerStatus
from .placement import NodeInfo


@dataclass(frozen=True)
class Lost:
    """A worker to delete and place again, and why."""

    pod: str
    reason: str  # Event reason
    message: str
    force: bool = False  # the node is gone: nothing will confirm a graceful deletion
    avoid: str | None = None  # node the replacement must not go to


def _age(since: dt.datetime | None, now: dt.datetime) -> float | None:
    return None if since is None else (now - since).total_seconds()


def orphaned(pod: PodView, nodes: dict[str, NodeInfo]) -> bool:
    """Whether ``pod`` is bound to (or reserved on) a node that no longer exists."""
    node = pod.reservation.node if pod.reservation else pod.node_name
    return bool(node) and node not in nodes


def lost(pod: PodView, nodes: dict[str, NodeInfo], now: dt.datetime, bound: float) -> Lost | None:
    """Why ``pod`` (live, not finished) must be replaced, or None."""
    node = pod.reservation.node if pod.reservation else pod.node_name
    if orphaned(pod, nodes):
        return Lost(pod.name, "NodeLost", f"worker {pod.name}: node {node} is gone; placing it again", force=True)
    info = nodes.get(node) if node else None
    waited = _age(info.not_ready_since, now) if info is not None and not info.ready else None
    if waited is not None and waited >= bound:
        return Lost(pod.name, "NodeLost", f"worker {pod.name}: node {node} NotReady for {int(waited)}s "
                    f"(rescheduleAfterSeconds {int(bound)}); placing it again")
    waited = _age(pod.unschedulable_since, now)
    if waited is not None and waited >= bound:
        detail = f": {pod.unschedulable_message}" if pod.unschedulable_message else ""
        return Lost(pod.name, "WorkerUnschedulable", f"worker {pod.name} Unschedulable on {node} for "
                    f"{int(waited)}s{detail}; deleted (VRAM released), avoiding {node} for {int(bound)}s",
                    avoid=node)
    return None


def wait_left(pod: PodView, nodes: dict[str, NodeInfo], now: dt.datetime, bound: float) -> float | None:
    """Seconds until ``lost`` will replace ``pod`` if nothing changes (None: it is not waiting
    on the bound), so the pool looks again right then instead of at the next resync."""
    node = nodes.get(pod.reservation.node if pod.reservation else pod.node_name or "")
    since = [s for s in (pod.unschedulable_since, node.not_ready_since if node and not node.ready else None) if s]
    return max(0.0, min(bound - _age(s, now) for s in since)) if since else None


def avoided_nodes(previous: list[AvoidedNode], new: list[str], now: dt.datetime, bound: float) -> list[AvoidedNode]:
    """The pool's avoided nodes: unexpired earlier ones, plus ``new`` ones for ``bound`` seconds."""
    until = now_iso(now + dt.timedelta(seconds=bound))
    out = {a.node: a for a in previous if (parse_time(a.until) or now) > now}
    for node in new:
        out[node] = AvoidedNode(node=node, until=until)
    return [out[n] for n in sorted(out)]


def fault_of(pod: PodView) -> str | None:
    """``OOMKilled`` or ``CrashLoopBackOff`` for a worker that keeps failing (and is not Ready
    now), else None. OOMKilled wins: it says what to change (``spec.resources.memory``)."""
    f = pod.faults
    if pod.ready or pod.deleting:
        return None
    if f.terminated_reason == "OOMKilled":
        return "OOMKilled"
    if f.waiting_reason == "CrashLoopBackOff":
        return "CrashLoopBackOff"
    return None


_HINT = {"OOMKilled": "OOMKilled (raise spec.resources.memory)", "CrashLoopBackOff": "in CrashLoopBackOff (see "
         "kubectl logs --previous)"}


def crash_report(workers: list[WorkerStatus]) -> tuple[str, str] | None:
    """(reason, message) of the Degraded condition for failing workers, or None. The message
    names the workers and their fault only (no restart counts), so it changes, and an
    Event is posted, only when the set of failing workers does."""
    failing = [(w.pod, w.fault) for w in workers if w.fault]
    if not failing:
        return None
    reason = "WorkersOOMKilled" if any(f == "OOMKilled" for _, f in failing) else "WorkersCrashLooping"
    return reason, "; ".join(f"worker {p} {_HINT[f]}" for p, f in failing)
