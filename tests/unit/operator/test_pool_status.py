"""status.workers and status.loadedSets: the loaded adapters are listed once per distinct set,
so a pool's status grows with its workers, not with workers x adapters."""

import hashlib
import json

from loraplane.operator.api.workerpool_types import group_loaded, loaded_by_worker
from loraplane.operator.core import inventory

from .test_cores import ADP, BASE, NOW, nodes, plan_pool, pool, running, st, views

def reporting(pods, loaded):
    """The pods with each worker's own report (``loraplane.io/worker-status``)."""
    for p, have in zip(pods, loaded):
        if have is not None:
            p["metadata"]["annotations"]["loraplane.io/worker-status"] = json.dumps({"ready": True,
                                                                                     "loaded": list(have)})
    return pods


def status_for(loaded):
    pods = running(plan_pool(pool(len(loaded)), BASE, {"syn-v1": ADP}, [], nodes(), [], "img", NOW).create)
    reporting(pods, loaded)
    plan = plan_pool(pool(len(loaded)), BASE, {"syn-v1": ADP}, pods, nodes(),
                     inventory.reservations(views(pods), nodes()), "img", NOW)
    return st(plan)


def test_workers_that_loaded_the_same_adapters_share_one_loaded_set():
    s = status_for([["syn-v1", "syn-v2"], ["syn-v2", "syn-v1"], ["syn-v1"], [], None, ["syn-v1", "syn-v2"]])
    sets = {x["name"]: x for x in s["loadedSets"]}
    assert sorted((x["adapters"], x["workers"]) for x in sets.values()) == [(["syn-v1"], 1),
                                                                            (["syn-v1", "syn-v2"], 3)]
    assert [x["name"] for x in s["loadedSets"]] == sorted(sets)
    by_pod = {w["pod"]: w for w in s["workers"]}
    assert "loadedSet" not in by_pod["p-3"] and "loadedSet" not in by_pod["p-4"]  # nothing loaded / no report
    assert by_pod["p-0"]["loadedSet"] == by_pod["p-1"]["loadedSet"] == by_pod["p-5"]["loadedSet"]
    assert "loaded" not in by_pod["p-0"] and "failed" not in by_pod["p-0"]  # nothing per worker beyond the name
    assert loaded_by_worker(s) == {"p-0": ["syn-v1", "syn-v2"], "p-1": ["syn-v1", "syn-v2"], "p-2": ["syn-v1"],
                                   "p-3": [], "p-4": [], "p-5": ["syn-v1", "syn-v2"]}


def test_a_set_keeps_its_name_when_other_sets_come_and_go():
    before = status_for([["syn-v1"]] * 3)
    during = status_for([["syn-v1"], ["syn-v1", "syn-v2"], ["syn-v1"]])
    name = before["loadedSets"][0]["name"]
    assert {w["loadedSet"] for w in before["workers"]} == {name}
    assert [w["loadedSet"] == name for w in during["workers"]] == [True, False, True]
    assert name == hashlib.sha256(b"syn-v1").hexdigest()[:8]


def test_a_pool_without_workers_clears_its_loaded_sets():
    plan = plan_pool(pool(0), BASE, {"syn-v1": ADP}, [], nodes(), [], "img", NOW)
    assert st(plan)["loadedSets"] == [] and st(plan)["workers"] == []  # explicit: the merge patch replaces both


def test_sets_whose_short_hashes_collide_get_longer_names():
    a, b = ("a104074",), ("a109178",)
    assert hashlib.sha256(a[0].encode()).hexdigest()[:8] == hashlib.sha256(b[0].encode()).hexdigest()[:8]
    set_of, sets = group_loaded({"w0": a, "w1": b, "w2": a})
    assert set_of["w0"] == set_of["w2"] != set_of["w1"] and len(set_of["w0"]) == 9
    assert loaded_by_worker({"workers": [{"pod": w, "loadedSet": n} for w, n in set_of.items()],
                             "loadedSets": [s.model_dump(by_alias=True) for s in sets]}) == \
        {"w0": ["a104074"], "w1": ["a109178"], "w2": ["a104074"]}


def test_a_worker_naming_an_unlisted_set_reads_as_unknown():
    assert loaded_by_worker({"workers": [{"pod": "p-0", "loadedSet": "deadbeef"}, {"pod": "p-1"}]}) == \
        {"p-0": None, "p-1": []}
