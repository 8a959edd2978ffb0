import datetime as dt

from hypothesis import given, settings, strategies as st

from loraplane.operator.core import routing_policy as rp

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def compute(desired, previous, loaded, zero_since=None, now=T0, drain=60):
    return rp.compute(desired, previous, loaded, zero_since=zero_since or {}, now=now, drain_seconds=drain)


def test_apportion_sums_and_is_proportional():
    assert rp.apportion(100, {"a": 1, "b": 1, "c": 1}) == {"a": 34, "b": 33, "c": 33}
    assert rp.apportion(5, {"a": 75, "b": 25}) == {"a": 4, "b": 1}
    assert rp.apportion(0, {"a": 1}) == {"a": 0}
    assert rp.apportion(10, {"a": 0, "b": 2}) == {"a": 0, "b": 10}


def test_canary_waits_until_every_ready_worker_loaded_it():
    desired = {"t": {"v1": 95, "v2": 5}}
    prev = {"t": {"v1": 100}}
    r = compute(desired, prev, [{"v1", "v2"}, {"v1"}])
    assert r.effective == {"t": {"v1": 100, "v2": 0}}
    assert r.pending == {"t"}
    assert "v2" in r.keep  # desired with weight: workers must load it
    r = compute(desired, prev, [{"v1", "v2"}, {"v1", "v2"}])
    assert r.effective == {"t": {"v1": 95, "v2": 5}}
    assert r.pending == set()


def test_leftover_stays_with_backends_in_effect_proportionally():
    desired = {"t": {"v1": 0, "v2": 50, "v3": 50}}
    prev = {"t": {"v1": 50, "v2": 50}}
    r = compute(desired, prev, [{"v1", "v2"}])
    assert r.effective == {"t": {"v1": 25, "v2": 75, "v3": 0}}


def test_new_worker_without_a_weighted_backend_takes_its_weight_away():
    prev = {"t": {"v1": 50, "v2": 50}}
    r = compute(prev, prev, [{"v1", "v2"}, {"v1"}])
    assert r.effective == {"t": {"v1": 100, "v2": 0}}


def test_no_admissible_backend_means_unavailable():
    r = compute({"t": {"v2": 100}}, {"t": {"v1": 100}}, [{"v3"}])
    assert r.unavailable == {"t"} and "t" not in r.effective


def test_no_ready_worker_keeps_previous_or_bootstraps():
    assert compute({"t": {"v2": 100}}, {"t": {"v1": 100}}, []).effective == {"t": {"v1": 100}}
    assert compute({"t": {"v2": 100}}, {}, []).effective == {"t": {"v2": 100}}


def test_removed_backend_is_kept_until_drained():
    desired = {"t": {"v2": 100}}
    prev = {"t": {"v1": 50, "v2": 50}}
    r = compute(desired, prev, [{"v1", "v2"}], now=T0)
    assert r.effective == {"t": {"v2": 100}}
    assert r.keep == {"v1", "v2"} and r.zero_since["v1"] == T0
    later = T0 + dt.timedelta(seconds=30)
    r2 = compute(desired, r.effective, [{"v1", "v2"}], zero_since=r.zero_since, now=later)
    assert "v1" in r2.keep and r2.zero_since["v1"] == T0
    r3 = compute(desired, r2.effective, [{"v1", "v2"}], zero_since=r2.zero_since, now=T0 + dt.timedelta(seconds=61))
    assert r3.keep == {"v2"} and "v1" not in r3.zero_since


def test_for_workers_and_route_status():
    eff = {"t": {"v1": 100, "v2": 0}}
    assert rp.for_workers(eff) == {"t": [{"adapter": "v1", "weight": 100}]}
    st = rp.route_status({"t": {"v1": 95, "v2": 5}}, eff, [{"v1", "v2"}, {"v1"}])
    assert st == [{"task": "t", "pending": True, "backends": [
        {"adapter": "v1", "desired": 95, "effective": 100, "loadedOn": "2/2"},
        {"adapter": "v2", "desired": 5, "effective": 0, "loadedOn": "1/2"}]}]


ADAPTERS = ["a", "b", "c", "d", "e"]


@st.composite
def route(draw):
    names = draw(st.lists(st.sampled_from(ADAPTERS), min_size=1, max_size=4, unique=True))
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=len(names) - 1, max_size=len(names) - 1)))
    weights = [b - a for a, b in zip([0] + cuts, cuts + [100])]
    return dict(zip(names, weights))


@settings(max_examples=300, deadline=None)
@given(desired=route(), previous=st.one_of(st.none(), route()),
       loaded=st.lists(st.sets(st.sampled_from(ADAPTERS)), min_size=1, max_size=4))
def test_property_sum_100_and_only_loaded_backends_weighted(desired, previous, loaded):
    prev = {"t": previous} if previous else {}
    r = compute({"t": desired}, prev, loaded)
    everywhere = set.intersection(*map(set, loaded))
    if "t" in r.effective:
        eff = r.effective["t"]
        assert sum(eff.values()) == 100
        assert all(w >= 0 for w in eff.values())
        assert {a for a, w in eff.items() if w > 0} <= everywhere
    else:
        assert not (everywhere & ({a for a, w in desired.items() if w} | {a for a, w in (previous or {}).items() if w}))
    # desired weights that can take effect do take effect
    if {a for a, w in desired.items() if w} <= everywhere:
        assert {a: w for a, w in r.effective["t"].items() if w} == {a: w for a, w in desired.items() if w}
    # every backend with effective weight is kept loaded
    assert {a for a, w in r.effective.get("t", {}).items() if w} <= r.keep
