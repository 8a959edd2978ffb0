"""api.conditions on typed ``Condition`` lists (``find``, ``set_typed``, ``triple_typed``): the cores
that take a typed status use them; they must keep the dict helpers' transition-time rule exactly."""

from __future__ import annotations

import datetime as dt

from loraplane.operator.api.common_types import Condition
from loraplane.operator.api.conditions import find, set_condition, set_typed, triple, triple_typed
from loraplane.operator.api.resources import as_read

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
T1 = T0 + dt.timedelta(minutes=5)


def wire(conds: list[Condition]) -> list[dict]:
    return [as_read(c) for c in conds]


def test_set_typed_keeps_the_time_unless_the_status_flips_like_set_condition():
    stored = [{"type": "Ready", "status": "True", "reason": "A", "message": "",
               "lastTransitionTime": "2025-12-31T00:00:00Z"},
              {"type": "Degraded", "status": "False"}]
    typed = [Condition.model_validate(c) for c in stored]
    for status, reason in ((True, "B"), (False, "C")):
        got = set_typed(typed, "Ready", status, reason, "m", 4, T1)
        assert all(isinstance(c, Condition) for c in got)
        assert wire(got) == set_condition(stored, "Ready", status, reason, "m", 4, T1)
    assert find(set_typed(typed, "Ready", True, "B", "m", 4, T1), "Ready").last_transition_time == "2025-12-31T00:00:00Z"
    assert find(set_typed(typed, "Ready", False, "C", "m", 4, T1), "Ready").last_transition_time == "2026-01-01T00:05:00Z"
    assert find(typed, "Missing") is None and find(None, "Ready") is None


def test_triple_typed_is_triple_on_typed_conditions():
    three = dict(ready=(False, "Verifying", "job"), progressing=(True, "Verifying", "job"),
                 degraded=(False, "AsExpected", ""))
    first = triple_typed([], generation=2, now=T0, **three)
    assert wire(first) == triple([], generation=2, now=T0, **three)
    again = triple_typed(first, generation=2, now=T1, **three)
    assert wire(again) == triple(wire(first), generation=2, now=T1, **three)
    assert [c.last_transition_time for c in again] == ["2026-01-01T00:00:00Z"] * 3
