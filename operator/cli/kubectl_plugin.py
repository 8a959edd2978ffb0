"""``kubectl loraplane``: canary, promote, rollback and history of WorkerPool
routes, as the console script ``kubectl-loraplane``.

Why a plugin rather than raw ``kubectl patch``: a canary is "N% to the new
version, the rest to the stable one", a rollback is "exactly the previous
revision's routes", and both are easy to get wrong as JSON by hand. The
plugin only ever changes what a user could change themselves:

* ``canary set`` and plain ``rollback`` / ``promote`` (no automated rollout
  active for the task) JSON-merge-patch ``spec.routes`` and set
  ``loraplane.io/change-cause`` (recorded in the revision history).
* While an automated rollout owns the task (``status.rollouts[task]`` is
  Progressing or Paused), ``promote | abort | rollback | pause | resume``
  add one annotation per command, ``rollout-command.loraplane.io/<id>:
  {"command": ..., "task": ...}`` (id: UTC time to the microsecond and a
  random suffix). A merge patch that adds a new key never overwrites another
  command, so two commands sent within one operator pass are both applied, in
  id order; the operator acknowledges the ids in ``status.processedCommands``
  and removes the annotations. ``pause``/``resume``/``abort`` always go
  through an annotation.

Pure parts (patch builders, table rendering) are separate from the API calls
so they are unit-tested without a cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from ..api.common_types import GROUP, VERSION
from ..api.rollout_types import CHANGE_CAUSE_ANNOTATION, RolloutCommand

PLURAL = "workerpools"
ACTIVE = ("Progressing", "Paused")


# ---------- pure ----------

def pool_name(ref: str) -> str:
    """``wp/NAME``, ``workerpool/NAME``, ``workerpools/NAME`` or ``NAME``."""
    if "/" in ref:
        kind, name = ref.split("/", 1)
        if kind.lower() not in ("wp", "workerpool", "workerpools", f"workerpools.{GROUP}"):
            raise ValueError(f"{ref!r} is not a WorkerPool reference (use wp/NAME)")
        return name
    return ref


def canary_routes(route: Sequence[dict], to: str, weight: int) -> list[dict]:
    """``weight``% to ``to``; the rest to the current stable backend, i.e. the
    one with the most weight among the others (ties: first listed)."""
    if not 0 <= weight <= 100:
        raise ValueError(f"--weight must be within 0..100, got {weight}")
    others = [b for b in route if b["adapter"] != to]
    if weight < 100 and not others:
        raise ValueError(f"route has no backend besides {to!r} to keep {100 - weight}%")
    out = []
    if weight < 100:
        stable = max(others, key=lambda b: b["weight"])["adapter"]
        out.append({"adapter": stable, "weight": 100 - weight})
    if weight > 0:
        out.append({"adapter": to, "weight": weight})
    return out


def routes_patch(routes: dict[str, list[dict]], current: dict[str, Any], cause: str) -> dict:
    """Merge patch replacing ``spec.routes`` by ``routes`` (tasks that are
    absent are deleted with null, as merge patch requires)."""
    patch_routes: dict[str, Any] = {t: None for t in current if t not in routes}
    patch_routes.update(routes)
    return {"metadata": {"annotations": {CHANGE_CAUSE_ANNOTATION: cause}}, "spec": {"routes": patch_routes}}


def command_patch(command: str, task: str, command_id: str | None = None) -> dict:
    """Merge patch adding one command annotation (a new key: it cannot overwrite another command)."""
    cmd = RolloutCommand(command=command, task=task)
    return {"metadata": {"annotations": {RolloutCommand.key(command_id or RolloutCommand.new_id()):
                                         cmd.to_annotation()}}}


def rollout_active(pool: dict, task: str) -> bool:
    st = ((pool.get("status") or {}).get("rollouts") or {}).get(task)
    return bool(st) and st.get("phase") in ACTIVE


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _fmt_route(backends: Sequence[dict]) -> str:
    return " ".join(f"{b['adapter']}={b['weight']}" for b in backends)


def render_status(pool: dict) -> str:
    spec, status = pool.get("spec") or {}, pool.get("status") or {}
    name = pool["metadata"]["name"]
    lines = [f"WorkerPool {name}: {status.get('readyReplicas', 0)}/{spec.get('replicas', 0)} ready"]
    by_task = {r["task"]: r for r in status.get("routes") or []}
    rows = []
    for task in sorted(set(spec.get("routes") or {}) | set(by_task)):
        st = by_task.get(task)
        if st:
            for b in st["backends"]:
                rows.append([task, b["adapter"], b["desired"], b["effective"], b.get("loadedOn", ""),
                             "pending" if st.get("pending") else ""])
        else:
            for b in spec["routes"][task]:
                rows.append([task, b["adapter"], b["weight"], "?", "", "not reconciled"])
    lines.append(table(["TASK", "ADAPTER", "DESIRED", "EFFECTIVE", "LOADED", "NOTE"], rows))
    ro = status.get("rollouts") or {}
    if ro:
        lines.append("")
        lines.append(table(["TASK", "CANARY", "PHASE", "WEIGHT", "STEP", "SINCE", "MESSAGE"],
                           [[t, s.get("canary"), s.get("phase"), s.get("canaryWeight"), (s.get("stepIndex") or 0) + 1,
                             s.get("lastTransition"), s.get("message")] for t, s in sorted(ro.items())]))
    draining = status.get("draining") or {}
    if draining:
        lines.append("")
        lines.append("draining: " + ", ".join(f"{a} (weight 0 since {t})" for a, t in sorted(draining.items())))
    return "\n".join(lines)


def render_history(pool: dict) -> str:
    revs = (pool.get("status") or {}).get("revisions") or []
    rows = []
    for r in revs:
        routes = "; ".join(f"{t}: {_fmt_route(bs)}" for t, bs in sorted(r["routes"].items()))
        rows.append([r["revision"], r["time"], "yes" if r.get("stable", True) else "no", routes, r.get("cause", "")])
    return table(["REVISION", "TIME", "STABLE", "ROUTES", "CAUSE"], rows) if rows else "no revisions recorded yet"


def previous_routes(pool: dict, to: int | None) -> tuple[dict[str, list[dict]], int]:
    revs = (pool.get("status") or {}).get("revisions") or []
    if to is None:
        if len(revs) < 2:
            raise ValueError("no previous revision to roll back to (see `kubectl loraplane history`)")
        target = revs[-2]
    else:
        target = next((r for r in revs if r["revision"] == to), None)
        if target is None:
            raise ValueError(f"revision {to} is not in the history (kept: {[r['revision'] for r in revs]})")
    return {t: [{"adapter": b["adapter"], "weight": b["weight"]} for b in bs] for t, bs in target["routes"].items()}, \
        target["revision"]


def promote_routes(pool: dict, task: str, to: str | None) -> list[dict]:
    """Manual promote: the canary (``--to`` or the route's lighter backend
    with weight) gets 100%."""
    route = ((pool.get("spec") or {}).get("routes") or {}).get(task)
    if not route:
        raise ValueError(f"pool has no route for task {task!r}")
    if to is None:
        weighted = [b for b in route if b["weight"] > 0]
        if len(weighted) != 2:
            raise ValueError(f"route {task!r} has {len(weighted)} weighted backends; name the one to promote with --to")
        to = min(weighted, key=lambda b: b["weight"])["adapter"]
    return canary_routes(route, to, 100)


# ---------- edges ----------

def _api(args):
    from kubernetes import client, config  # noqa: PLC0415 - keep --help fast

    config.load_kube_config(config_file=args.kubeconfig, context=args.context)
    return client.CustomObjectsApi()


def _namespace(args) -> str:
    if args.namespace:
        return args.namespace
    from kubernetes import config  # noqa: PLC0415

    try:
        _, active = config.list_kube_config_contexts(config_file=args.kubeconfig)
        return (active or {}).get("context", {}).get("namespace") or "default"
    except Exception:  # noqa: BLE001 - no kubeconfig: the API call will say so
        return "default"


def _get(api, ns, name):
    return api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def _patch(api, ns, name, body):
    return api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, body)


def run(args) -> int:
    api, ns = _api(args), _namespace(args)
    name = pool_name(args.pool)
    pool = _get(api, ns, name)
    cmd = args.cmd
    if cmd == "status":
        print(render_status(pool))
    elif cmd == "history":
        print(render_history(pool))
    elif cmd == "canary":
        route = ((pool.get("spec") or {}).get("routes") or {}).get(args.task)
        if route is None:
            raise ValueError(f"pool {name} has no route for task {args.task!r}")
        new = canary_routes(route, args.to, args.weight)
        routes = dict(pool["spec"]["routes"])
        routes[args.task] = new
        _patch(api, ns, name, routes_patch(routes, pool["spec"]["routes"],
                                           f"kubectl loraplane canary set {args.task} {args.to}={args.weight}"))
        print(f"{name}: {args.task} -> {_fmt_route(new)} (takes effect once every ready worker has loaded it)")
    elif cmd in ("pause", "resume", "abort") or (cmd in ("promote", "rollback") and rollout_active(pool, args.task)):
        command = "promote-full" if cmd == "promote" and args.full else cmd
        _patch(api, ns, name, command_patch(command, args.task))
        print(f"{name}: asked the operator to {command} the rollout of {args.task}")
    elif cmd == "promote":
        new = promote_routes(pool, args.task, args.to)
        routes = dict(pool["spec"]["routes"])
        routes[args.task] = new
        _patch(api, ns, name, routes_patch(routes, pool["spec"]["routes"], f"kubectl loraplane promote {args.task}"))
        print(f"{name}: {args.task} -> {_fmt_route(new)}")
    elif cmd == "rollback":
        routes, rev = previous_routes(pool, args.to_revision)
        _patch(api, ns, name, routes_patch(routes, pool["spec"].get("routes") or {},
                                           f"kubectl loraplane rollback to revision {rev}"))
        print(f"{name}: routes set to revision {rev}: " +
              "; ".join(f"{t}: {_fmt_route(b)}" for t, b in sorted(routes.items())))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubectl loraplane", description="Canary, promote and roll back WorkerPool routes.")
    p.add_argument("-n", "--namespace", help="namespace (default: the context's, else default)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context (default: current)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("status", help="desired vs effective weights, rollouts, draining adapters")
    s.add_argument("pool", help="wp/NAME")
    s = sub.add_parser("history", help="revision history of the effective routes")
    s.add_argument("pool")
    c = sub.add_parser("canary", help="canary set wp/NAME --task T --to ADAPTER --weight N")
    c.add_argument("action", choices=["set"])
    c.add_argument("pool")
    c.add_argument("--task", required=True)
    c.add_argument("--to", required=True, help="adapter to receive the weight")
    c.add_argument("--weight", required=True, type=int, help="percent 0..100; the rest stays on the stable backend")
    for name, helptext in [("promote", "next step of a rollout, or 100%% to the canary"),
                           ("abort", "abort a rollout: stable weights"),
                           ("rollback", "roll back a rollout, or set routes to the previous revision"),
                           ("pause", "pause a rollout"), ("resume", "resume a paused rollout")]:
        s = sub.add_parser(name, help=helptext)
        s.add_argument("pool")
        s.add_argument("--task", required=name not in ("rollback",), help="task the rollout is for")
        if name == "promote":
            s.add_argument("--full", action="store_true", help="rollout: straight to 100%%")
            s.add_argument("--to", help="manual canary: the adapter to promote (default: the lighter one)")
        if name == "rollback":
            s.add_argument("--to-revision", type=int, help="revision number (default: the previous one)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - API errors: print the server's message, not a traceback
        body = getattr(e, "body", None)
        msg = body if body else e
        try:
            msg = json.loads(body)["message"] if body else e
        except (ValueError, KeyError, TypeError):
            pass
        print(f"error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
