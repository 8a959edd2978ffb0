"""Placement of workers on (node, GPU) by VRAM headroom: a pure function.

Inputs are plain values (``NodeInfo``, ``Reservation``, ``Request``) built
from the observed read-models (``api.observed_types``) by ``inventory``; nothing here talks to Kubernetes, so the
rules are unit- and property-tested and benchmarked directly.

Rules:
- A GPU's free VRAM is its memory (GFD ``nvidia.com/gpu.memory``) minus every
  reservation on it. A request is placed only where ``need <= free``: the
  ledger never overcommits.
- Nodes that are cordoned, NotReady, tainted (NoSchedule/NoExecute) without a
  matching toleration, off the pool's nodeSelector/affinity, of another GPU
  product, too small, or avoided by the request (a worker stayed Unschedulable
  there, ``faults``) are skipped.
- Variant preference: the first variant (in the pool's order) that fits on
  some eligible GPU wins; ``Decision.fallback`` says when it was not the first.
- ``binpack`` (default) takes the feasible GPU with the least free VRAM left
  after placing (best fit), so GPUs fill before new ones open. ``spread``
  takes the node holding the fewest workers of the pool, then the GPU with
  the most free VRAM.
- Ties break on (node name, GPU index): the result is deterministic.
Requests are placed one after another, each seeing the reservations of the
ones before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.names import GPU_COUNT, GPU_MEMORY, GPU_PRODUCT  # noqa: F401 - re-exported for callers
from ..api.observed_types import NodeView, Taint  # noqa: F401

#: placement's name for a node's read-model (parsed once by the controllers, ``NodeView.from_api``)
NodeInfo = NodeView


@dataclass(frozen=True)
class Reservation:
    """VRAM held on one GPU: a loraplane pod's reservation, or a whole GPU
    held by someone else's ``nvidia.com/gpu`` request."""

    node: str
    gpu: int
    mib: int
    holder: str  # "<namespace>/<pod>"
    pool: str | None = None  # "<namespace>/<pool>" for loraplane workers


@dataclass(frozen=True)
class Toleration:
    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None

    def tolerates(self, t: Taint) -> bool:
        if self.effect and self.effect != t.effect:
            return False
        if self.key is None:  # empty key + Exists tolerates everything
            return self.operator == "Exists"
        if self.key != t.key:
            return False
        return self.operator == "Exists" or (self.value or "") == t.value


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In NotIn Exists DoesNotExist Gt Lt
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        v = labels.get(self.key)
        op = self.operator
        if op == "Exists":
            return self.key in labels
        if op == "DoesNotExist":
            return self.key not in labels
        if op == "In":
            return v is not None and v in self.values
        if op == "NotIn":
            return v is None or v not in self.values
        try:
            return v is not None and (int(v) > int(self.values[0]) if op == "Gt" else int(v) < int(self.values[0]))
        except (ValueError, IndexError):
            return False


@dataclass(frozen=True)
class Request:
    """One worker to place. ``needs`` is the variant preference: (variant,
    VRAM MiB) in order."""

    worker: str
    needs: tuple[tuple[str, int], ...]
    pool: str | None = None
    policy: str = "binpack"
    product: str | None = None
    min_memory_mib: int | None = None
    node_selector: tuple[tuple[str, str], ...] = ()
    affinity: tuple[tuple[Requirement, ...], ...] = ()  # ORed terms of ANDed requirements
    tolerations: tuple[Toleration, ...] = ()
    avoid_nodes: tuple[str, ...] = ()  # nodes the pool's workers stayed Unschedulable on


@dataclass(frozen=True)
class Decision:
    worker: str
    node: str | None = None
    gpu: int | None = None
    variant: str | None = None
    need_mib: int | None = None
    fallback: str | None = None  # e.g. "bnb-int8 does not fit; placed as fp16"
    message: str = ""  # why unplaced

    @property
    def placed(self) -> bool:
        return self.node is not None


def gib(mib: int | float) -> str:
    return f"{mib / 1024:.1f} GiB"


def ineligibility(node: NodeInfo, req: Request) -> str | None:
    """Why ``req`` may not go to ``node`` (a short category), or None."""
    if node.gpu_count <= 0 or node.gpu_memory_mib <= 0:
        return "without GPU labels"
    if node.unschedulable:
        return "cordoned"
    if not node.ready:
        return "not ready"
    for t in node.taints:
        if t.effect in ("NoSchedule", "NoExecute") and not any(tol.tolerates(t) for tol in req.tolerations):
            return "tainted"
    if req.product and node.labels.get(GPU_PRODUCT) != req.product:
        return "another GPU product"
    if req.min_memory_mib and node.gpu_memory_mib < req.min_memory_mib:
        return "GPUs too small"
    if node.name in req.avoid_nodes:
        return "avoided after a worker stayed Unschedulable"
    if any(node.labels.get(k) != v for k, v in req.node_selector):
        return "off nodeSelector"
    if req.affinity and not any(all(r.matches(node.labels) for r in term) for term in req.affinity):
        return "off affinity"
    return None


class Ledger:
    """Free VRAM per (node, GPU), updated as decisions are made."""

    def __init__(self, nodes: list[NodeInfo], reservations: list[Reservation]):
        self.nodes = {n.name: n for n in nodes}
        self.free: dict[tuple[str, int], int] = {}
        self.pool_count: dict[tuple[str, str], int] = {}
        self.eligible_cache: dict = {}
        for n in sorted(nodes, key=lambda n: n.name):
            for i in range(n.gpu_count):
                self.free[(n.name, i)] = n.gpu_memory_mib
        for r in reservations:
            self.reserve(r.node, r.gpu, r.mib, r.pool)

    def reserve(self, node: str, gpu: int, mib: int, pool: str | None) -> None:
        if (node, gpu) in self.free:
            self.free[(node, gpu)] -= mib
        if pool:
            self.pool_count[(pool, node)] = self.pool_count.get((pool, node), 0) + 1


def _choose(ledger: Ledger, gpus: list[tuple[str, int]], need: int, req: Request):
    fits = [g for g in gpus if ledger.free[g] >= need]
    if not fits:
        return None
    if req.policy == "spread":
        return min(fits, key=lambda g: (ledger.pool_count.get((req.pool, g[0]), 0), -ledger.free[g], g))
    return min(fits, key=lambda g: (ledger.free[g] - need, g))


def _eligible(ledger: Ledger, req: Request) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Eligible GPUs and skip reasons; cached per request shape (all workers
    of a pool share one), which keeps a 1000-worker pass linear in GPUs."""
    key = (req.product, req.min_memory_mib, req.node_selector, req.affinity, req.tolerations, req.avoid_nodes)
    hit = ledger.eligible_cache.get(key)
    if hit is None:
        skipped: dict[str, int] = {}
        gpus: list[tuple[str, int]] = []
        for name in sorted(ledger.nodes):
            why = ineligibility(ledger.nodes[name], req)
            if why:
                skipped[why] = skipped.get(why, 0) + 1
            else:
                gpus.extend((name, i) for i in range(ledger.nodes[name].gpu_count))
        hit = ledger.eligible_cache[key] = (gpus, skipped)
    return hit


def place_one(ledger: Ledger, req: Request) -> Decision:
    gpus, skipped = _eligible(ledger, req)
    if not gpus:
        detail = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) or "no nodes"
        return Decision(req.worker, message=f"no eligible GPU node ({detail})")
    first = req.needs[0][0]
    for variant, need in req.needs:
        g = _choose(ledger, gpus, need, req)
        if g is not None:
            ledger.reserve(g[0], g[1], need, req.pool)
            fallback = None if variant == first else f"{first} does not fit; placed as {variant}"
            return Decision(req.worker, g[0], g[1], variant, need, fallback)
    best = max(gpus, key=lambda g: (ledger.free[g], tuple(-ord(c) for c in g[0]), -g[1]))
    variant, need = req.needs[0]
    return Decision(req.worker, message=(
        f"needs {gib(need)} ({variant}); the best GPU has {gib(max(ledger.free[best], 0))} free "
        f"({best[0]}/gpu{best[1]}, {len(gpus)} eligible GPUs)"))


def place(nodes: list[NodeInfo], reservations: list[Reservation], requests: list[Request]) -> list[Decision]:
    """Place ``requests`` in order; see the module docstring for the rules."""
    ledger = Ledger(nodes, reservations)
    return [place_one(ledger, r) for r in requests]


def resident_adapter_mib(sizes: dict[str, int], pinned: set[str], cap: int | None) -> int:
    """VRAM of the adapters a worker can hold at once. Without a cap, all of them. With
    ``maxLoadedAdapters`` the worker keeps every pinned adapter (weight > 0) stacked, even beyond
    the cap, and at most ``cap`` in all; which unpinned ones are resident depends on traffic (LRU),
    so the largest are counted."""
    if cap is None:
        return sum(sizes.values())
    held = sum(m for n, m in sizes.items() if n in pinned)
    others = sorted((m for n, m in sizes.items() if n not in pinned), reverse=True)
    return held + sum(others[:max(0, cap - len(pinned & set(sizes)))])


def fragmentation(free: dict[tuple[str, int], int], total: dict[tuple[str, int], int]) -> int:
    """Stranded VRAM: the free MiB on GPUs that are partly used. Empty GPUs
    are whole (usable by anything, even whole-GPU pods) and full ones strand
    nothing."""
    return sum(f for g, f in free.items() if 0 < total[g] - f and f > 0)


def choose_removal(nodes: list[NodeInfo], reservations: list[Reservation], candidates: list[str]) -> str:
    """The worker (a holder among ``candidates``) whose removal leaves the
    least stranded VRAM. Removing the last worker of a GPU frees the whole
    card and so usually wins; ties go to the highest-named worker so that
    ordinals stay compact."""
    ledger = Ledger(nodes, reservations)
    total = {g: ledger.nodes[g[0]].gpu_memory_mib for g in ledger.free}
    by_holder = {r.holder: r for r in reservations}

    def score(holder: str):
        r = by_holder.get(holder)
        if r is None or (r.node, r.gpu) not in ledger.free:  # unplaced/unknown: removing it frees nothing
            return (-1, _neg(_ordinal_key(holder)))
        free = dict(ledger.free)
        free[(r.node, r.gpu)] += r.mib
        return (fragmentation(free, total), _neg(_ordinal_key(holder)))

    return min(candidates, key=score)


def _ordinal_key(name: str):
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


def _neg(key):
    head, n = key
    return (tuple(-ord(c) for c in head), -n)


def vram_lower_bound(total_need_mib: int, gpu_memory_mib: int) -> int:
    """GPUs needed if VRAM were perfectly divisible: ceil(sum need / card)."""
    return -(-total_need_mib // gpu_memory_mib)


def integral_lower_bound(needs: list[int], card: int) -> int:
    """Martello-Toth L2 bound for bin packing, and a count bound: no placement
    of whole workers can use fewer GPUs. Tighter than ``vram_lower_bound`` when workers do not
    divide a card evenly (two 10.8 GiB workers strand 2.4 GiB per card)."""
    best = vram_lower_bound(sum(needs), card)
    for alpha in sorted({n for n in needs if n <= card // 2} | {0}):
        j1 = [n for n in needs if n > card - alpha]
        j2 = [n for n in needs if card / 2 < n <= card - alpha]
        j3 = [n for n in needs if alpha <= n <= card / 2]
        spare = len(j2) * card - sum(j2)
        best = max(best, len(j1) + len(j2) + max(0, -(-(sum(j3) - spare) // card)))
    # Count bound: a card holds at most floor(card / s) workers of size >= s.
    ordered = sorted(needs, reverse=True)
    for i, s in enumerate(ordered):
        if s > 0 and (i + 1 == len(ordered) or ordered[i + 1] != s):
            best = max(best, -(-(i + 1) // max(1, card // s)))
    return best
