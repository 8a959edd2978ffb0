"""Placement: examples for each rule, and hypothesis properties (never
overcommits, always places when a fit exists, deterministic)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from loraplane.operator.core.placement import (
    GPU_PRODUCT, Decision, NodeInfo, Request, Requirement, Reservation, Taint, Toleration, choose_removal, place,
    vram_lower_bound,
)

RTX = "NVIDIA-GeForce-RTX-3090"


def node(name, gpus=2, mem=24576, **kw):
    labels = kw.pop("labels", {GPU_PRODUCT: RTX})
    return NodeInfo(name=name, labels=labels, gpu_count=gpus, gpu_memory_mib=mem, **kw)


def req(worker, need=10752, variants=None, **kw):
    needs = tuple(variants) if variants else (("bnb-int8", need),)
    return Request(worker=worker, needs=needs, pool="ns/p", **kw)


def test_six_int8_workers_on_two_nodes_use_three_gpus():
    ds = place([node("a"), node("b")], [], [req(f"p-{i}") for i in range(6)])
    assert all(d.placed for d in ds)
    used = {(d.node, d.gpu) for d in ds}
    assert len(used) == vram_lower_bound(6 * 10752, 24576) == 3


def test_spread_uses_every_node_first():
    ds = place([node("a"), node("b"), node("c")], [], [req(f"p-{i}", policy="spread") for i in range(3)])
    assert sorted(d.node for d in ds) == ["a", "b", "c"]


def test_skips_cordoned_not_ready_and_untolerated_taints():
    nodes = [node("a", unschedulable=True), node("b", ready=False),
             node("c", taints=(Taint("gpu", "x", "NoSchedule"),))]
    d = place(nodes, [], [req("p-0")])[0]
    assert not d.placed
    assert "1 cordoned" in d.message and "1 not ready" in d.message and "1 tainted" in d.message
    d = place(nodes, [], [req("p-0", tolerations=(Toleration("gpu", "Equal", "x", "NoSchedule"),))])[0]
    assert d.node == "c"


def test_selector_affinity_and_product():
    nodes = [node("a", labels={GPU_PRODUCT: "A100"}), node("b", labels={GPU_PRODUCT: RTX, "zone": "z1"}),
             node("c", labels={GPU_PRODUCT: RTX, "zone": "z2"})]
    assert place(nodes, [], [req("p", product=RTX, node_selector=(("zone", "z2"),))])[0].node == "c"
    aff = ((Requirement("zone", "In", ("z1",)),),)
    assert place(nodes, [], [req("p", product=RTX, affinity=aff)])[0].node == "b"


def test_unplaceable_names_the_shortfall():
    d = place([node("a", gpus=1)], [Reservation("a", 0, 18432, "x/other")], [req("p", need=9420)])[0]
    assert d.message.startswith("needs 9.2 GiB (bnb-int8); the best GPU has 6.0 GiB free (a/gpu0")


def test_variant_fallback_is_stated():
    d = place([node("a", gpus=1, mem=8192)], [], [req("p", variants=[("fp16", 16384), ("bnb-4bit", 6000)])])[0]
    assert d.variant == "bnb-4bit" and d.fallback == "fp16 does not fit; placed as bnb-4bit"


def test_whole_gpu_reservations_block_the_card():
    d = place([node("a", gpus=2)], [Reservation("a", 0, 24576, "x/trainer")], [req("p", need=20000)] * 2)
    assert (d[0].node, d[0].gpu) == ("a", 1) and not d[1].placed


def test_scale_down_frees_a_whole_gpu_first():
    nodes = [node("a", gpus=2)]
    res = [Reservation("a", 0, 10000, "ns/p-0", "ns/p"), Reservation("a", 0, 10000, "ns/p-1", "ns/p"),
           Reservation("a", 1, 10000, "ns/p-2", "ns/p")]
    assert choose_removal(nodes, res, ["ns/p-0", "ns/p-1", "ns/p-2"]) == "ns/p-2"
    # Unplaced workers go first; among equals the highest ordinal.
    assert choose_removal(nodes, res, ["ns/p-0", "ns/p-1", "ns/p-3", "ns/p-4"]) == "ns/p-4"
    assert choose_removal(nodes, res[:2], ["ns/p-0", "ns/p-1"]) == "ns/p-1"


# --- properties -------------------------------------------------------------

nodes_st = st.lists(
    st.builds(lambda i, g, m, c, r: NodeInfo(f"n{i:03d}", {GPU_PRODUCT: RTX}, g, m, ready=r, unschedulable=c),
              st.integers(0, 999), st.integers(0, 4), st.sampled_from([8192, 12288, 24576]),
              st.booleans(), st.booleans()),
    min_size=0, max_size=8, unique_by=lambda n: n.name)
requests_st = st.lists(
    st.tuples(st.integers(512, 26000), st.sampled_from(["binpack", "spread"]),
              st.one_of(st.none(), st.integers(512, 26000))),
    min_size=1, max_size=20)


def _build(nodes, raw):
    reqs = []
    for i, (need, policy, alt) in enumerate(raw):
        needs = (("bnb-int8", need),) + ((("fp16", alt),) if alt else ())
        reqs.append(Request(f"p-{i}", needs, pool="ns/p", policy=policy))
    return reqs


def _preexisting(nodes, data):
    res = []
    for n in nodes:
        for g in range(n.gpu_count):
            used = data.draw(st.integers(0, n.gpu_memory_mib))
            if used:
                res.append(Reservation(n.name, g, used, f"x/{n.name}-{g}"))
    return res


@settings(max_examples=200, deadline=None)
@given(nodes=nodes_st, raw=requests_st, data=st.data())
def test_never_overcommits(nodes, raw, data):
    res = _preexisting(nodes, data)
    ds = place(nodes, res, _build(nodes, raw))
    used = {}
    for r in res:
        used[(r.node, r.gpu)] = used.get((r.node, r.gpu), 0) + r.mib
    by_name = {n.name: n for n in nodes}
    for d in ds:
        if d.placed:
            n = by_name[d.node]
            assert n.ready and not n.unschedulable and 0 <= d.gpu < n.gpu_count
            used[(d.node, d.gpu)] = used.get((d.node, d.gpu), 0) + d.need_mib
    for (name, _), mib in used.items():
        assert mib <= by_name[name].gpu_memory_mib


@settings(max_examples=200, deadline=None)
@given(nodes=nodes_st, raw=requests_st, data=st.data())
def test_always_places_when_a_fit_exists(nodes, raw, data):
    """Each request, in order, is placed iff some eligible GPU has room for
    one of its variants given the decisions before it."""
    res = _preexisting(nodes, data)
    free = {}
    for n in nodes:
        for g in range(n.gpu_count):
            free[(n.name, g)] = n.gpu_memory_mib
    for r in res:
        free[(r.node, r.gpu)] -= r.mib
    eligible = {n.name for n in nodes if n.ready and not n.unschedulable}
    for request, d in zip(_build(nodes, raw), place(nodes, res, _build(nodes, raw))):
        fit = any(f >= need for (nn, _), f in free.items() if nn in eligible for _, need in request.needs)
        assert d.placed == fit, (request, d)
        if d.placed:
            free[(d.node, d.gpu)] -= d.need_mib
        else:
            assert d.message


@settings(max_examples=100, deadline=None)
@given(nodes=nodes_st, raw=requests_st, data=st.data(), seed=st.randoms())
def test_deterministic_whatever_the_input_order(nodes, raw, data, seed):
    res = _preexisting(nodes, data)
    reqs = _build(nodes, raw)
    first = place(nodes, res, reqs)
    shuffled_nodes, shuffled_res = list(nodes), list(res)
    seed.shuffle(shuffled_nodes)
    seed.shuffle(shuffled_res)
    assert place(shuffled_nodes, shuffled_res, reqs) == first
    assert all(isinstance(d, Decision) for d in first)


def test_integral_lower_bound_examples():
    from loraplane.operator.core.placement import integral_lower_bound
    assert integral_lower_bound([11052] * 6, 24576) == 3  # two per card at most
    assert vram_lower_bound(6 * 11052, 24576) == 3
    assert integral_lower_bound([11052] * 1000, 24576) == 500 > vram_lower_bound(11052 * 1000, 24576)
    assert integral_lower_bound([13000, 13000, 5000], 24576) == 2


@settings(max_examples=100, deadline=None)
@given(needs=st.lists(st.integers(500, 24576), min_size=1, max_size=40))
def test_integral_lower_bound_never_exceeds_binpack(needs):
    from loraplane.operator.core.placement import integral_lower_bound
    nodes = [NodeInfo(f"n{i:03d}", {}, 1, 24576) for i in range(len(needs))]
    ds = place(nodes, [], [Request(f"p-{i}", (("fp16", n),)) for i, n in enumerate(sorted(needs, reverse=True))])
    assert all(d.placed for d in ds)
    assert integral_lower_bound(needs, 24576) <= len({(d.node, d.gpu) for d in ds})
