"""Pure router: weights, renormalisation, pinning, stickiness, errors."""

import random
from collections import Counter

import pytest

from loraplane.worker.routing import BASE_ADAPTER, RouteError, choose, sticky_draw, weighted_pick

TASKS = {"synth-v1": "synthesizer", "synth-v2": "synthesizer", "crit-v1": "critic"}


def _route(weights, loaded=("synth-v1", "synth-v2", "crit-v1"), seed=0, n=1000):
    rng = random.Random(seed)
    routes = {"synthesizer": weights}
    return Counter(
        choose("synthesizer", routes=routes, adapter_tasks=TASKS, loaded=loaded, rand=rng.random()).adapter
        for _ in range(n)
    )


def test_weight_zero_is_never_chosen():
    counts = _route([("synth-v1", 100), ("synth-v2", 0)], n=5000)
    assert counts == {"synth-v1": 5000}


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_80_20_within_5_percent(seed):
    counts = _route([("synth-v1", 80), ("synth-v2", 20)], seed=seed)
    assert abs(counts["synth-v2"] / 1000 - 0.20) <= 0.05
    assert counts["synth-v1"] + counts["synth-v2"] == 1000


def test_weights_renormalised_over_loaded():
    counts = _route([("synth-v1", 95), ("synth-v2", 5)], loaded=("synth-v2",))
    assert counts == {"synth-v2": 1000}


def test_no_loaded_backend_is_503():
    with pytest.raises(RouteError) as e:
        choose("synthesizer", routes={"synthesizer": [("synth-v1", 100)]}, adapter_tasks=TASKS, loaded=(), rand=0.3)
    assert e.value.status == 503


def test_unknown_model_is_404():
    with pytest.raises(RouteError) as e:
        choose("nope", routes={}, adapter_tasks=TASKS, loaded=TASKS, rand=0.1)
    assert e.value.status == 404 and "nope" in e.value.message


def test_pin_by_adapter_name_and_base():
    c = choose("synth-v2", routes={"synthesizer": [("synth-v1", 100)]}, adapter_tasks=TASKS, loaded=TASKS)
    assert c.adapter == "synth-v2" and c.task is None
    c = choose("tiny", routes={}, adapter_tasks=TASKS, loaded=TASKS, base_names=["tiny"])
    assert c.adapter == BASE_ADAPTER
    with pytest.raises(RouteError) as e:
        choose("synth-v2", routes={}, adapter_tasks=TASKS, loaded=["synth-v1"])
    assert e.value.status == 503


def test_task_without_route_spreads_over_its_adapters():
    seen = {choose("critic", routes={}, adapter_tasks=TASKS, loaded=TASKS, rand=u).adapter for u in (0.1, 0.9)}
    assert seen == {"crit-v1"}


def test_sticky_key_is_stable_and_spreads():
    routes = {"synthesizer": [("synth-v1", 50), ("synth-v2", 50)]}
    kw = dict(routes=routes, adapter_tasks=TASKS, loaded=TASKS)
    first = {f"user-{i}": choose("synthesizer", key=f"user-{i}", **kw).adapter for i in range(200)}
    again = {f"user-{i}": choose("synthesizer", key=f"user-{i}", **kw).adapter for i in range(200)}
    assert first == again
    assert 60 < Counter(first.values())["synth-v1"] < 140
    assert 0 <= sticky_draw("x") < 1


def test_weighted_pick_edges():
    assert weighted_pick([("a", 1), ("b", 1)], 0.0) == "a"
    assert weighted_pick([("a", 1), ("b", 1)], 0.999999) == "b"
    with pytest.raises(ValueError):
        weighted_pick([("a", 0)], 0.5)
