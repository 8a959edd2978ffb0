import datetime as dt

import pytest
from hypothesis import given, settings, strategies as st

from loraplane.operator.core import revisions as rv

T = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def test_append_only_on_change_and_keep_last_n():
    h = rv.record([], {"t": {"v1": 100}}, now=T, cause="created")
    assert [r.revision for r in h] == [1]
    assert rv.record(h, {"t": {"v1": 100, "v2": 0}}, now=T, cause="noop") == h  # zero weight: same set
    for i in range(2, 15):
        h = rv.record(h, {"t": {"v1": 100 - i, "v2": i}}, now=T, cause=f"edit {i}", keep=5)
    assert [r.revision for r in h] == [10, 11, 12, 13, 14]


def test_rollback_is_previous_set_exactly_and_last_stable_skips_canary_steps():
    h = rv.record([], {"t": {"v1": 100}, "u": {"a": 60, "b": 40}}, now=T, cause="c1")
    h = rv.record(h, {"t": {"v1": 95, "v2": 5}, "u": {"a": 60, "b": 40}}, now=T, cause="step", stable=False)
    h = rv.record(h, {"t": {"v1": 75, "v2": 25}, "u": {"a": 60, "b": 40}}, now=T, cause="step", stable=False)
    assert rv.rollback_routes(h) == {"t": {"v1": 95, "v2": 5}, "u": {"a": 60, "b": 40}}
    assert rv.last_stable(h).revision == 1
    assert rv.rollback_routes(h, to=1) == {"t": {"v1": 100}, "u": {"a": 60, "b": 40}}
    with pytest.raises(KeyError, match="kept: 1, 2, 3"):
        rv.find(h, 9)
    with pytest.raises(LookupError):
        rv.rollback_routes(h[:1])


routes = st.dictionaries(st.sampled_from(["t", "u"]),
                         st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(1, 100), min_size=1),
                         min_size=1)


@settings(max_examples=200, deadline=None)
@given(st.lists(routes, min_size=2, max_size=8))
def test_property_rollback_restores_exactly_the_previous_distinct_set(seq):
    h = []
    for r in seq:
        h = rv.record(h, r, now=T, cause="x", keep=20)
    distinct = [rv.normalize(seq[0])]
    for r in seq[1:]:
        if rv.normalize(r) != distinct[-1]:
            distinct.append(rv.normalize(r))
    if len(distinct) >= 2:
        assert rv.rollback_routes(h) == distinct[-2]
    assert rv.to_routes(h[-1]) == distinct[-1]
