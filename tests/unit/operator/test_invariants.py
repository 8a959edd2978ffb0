"""The invariant checker (operator/core/invariants.py): a healthy snapshot has no
violation, and each test breaks exactly one invariant and expects exactly it,
naming the objects involved."""

from __future__ import annotations

import copy
import json

import pytest

from loraplane.operator.api.workerpool_types import group_loaded
from loraplane.operator.core import invariants as inv

NS = "ml"
COND = [{"type": t, "status": s, "reason": "R", "message": "", "observedGeneration": 1}
        for t, s in (("Ready", "True"), ("Progressing", "False"), ("Degraded", "False"))]
MANAGED = {"app.kubernetes.io/managed-by": "loraplane"}


def owner(kind, name, uid):
    return [{"apiVersion": "loraplane.io/v1alpha1", "kind": kind, "name": name, "uid": uid, "controller": True}]


def node(name="n1", gpus=2, mib=24576):
    return {"metadata": {"name": name, "labels": {"nvidia.com/gpu.count": str(gpus), "nvidia.com/gpu.memory": str(mib)}},
            "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def worker(i, gpu=0, mib=7680, loaded=("a1",), node_name="n1", ready=True, pool="p"):
    return {"metadata": {"name": f"{pool}-{i}", "namespace": NS,
                         "labels": {"loraplane.io/pool": pool, **MANAGED},
                         "annotations": {"loraplane.io/reservation": json.dumps(
                             {"node": node_name, "gpu": gpu, "vramMiB": mib, "variant": "bnb-int8"}),
                             "loraplane.io/worker-status": json.dumps({"ready": True, "loaded": list(loaded)})},
                         "ownerReferences": owner("WorkerPool", pool, "u-pool")},
            "spec": {"nodeName": node_name},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def job(name, owner_kind="Adapter", owner_name="a1", uid="u-a1", done=True, reservation=None):
    j = {"metadata": {"name": name, "namespace": NS, "uid": f"u-{name}",
                      "labels": {"loraplane.io/owner": f"{owner_kind.lower()}.{owner_name}", **MANAGED},
                      "annotations": {}, "ownerReferences": owner(owner_kind, owner_name, uid)},
         "status": {"conditions": [{"type": "Complete", "status": "True"}] if done else []}}
    if reservation:
        j["metadata"]["annotations"]["loraplane.io/reservation"] = json.dumps(reservation)
    return j


def healthy() -> inv.Snapshot:
    pool = {"metadata": {"name": "p", "namespace": NS, "uid": "u-pool", "generation": 1},
            "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "readyReplicas": 2, "conditions": copy.deepcopy(COND),
                       "workers": [{"pod": f"p-{i}", "node": "n1", "gpu": 0, "ready": True, "loadedSet": "s1"}
                                   for i in (0, 1)],
                       "loadedSets": [{"name": "s1", "adapters": ["a1"], "workers": 2}],
                       "effectiveRoutes": {"t": [{"adapter": "a1", "weight": 100}]}}}
    cm = {"metadata": {"name": "p-desired", "namespace": NS, "labels": {"loraplane.io/pool": "p", **MANAGED},
                       "ownerReferences": owner("WorkerPool", "p", "u-pool")},
          "data": {"desired.json": json.dumps({"routes": {"t": [{"adapter": "a1", "weight": 100}]}})}}
    svc = {"metadata": {"name": "p", "namespace": NS, "labels": {"loraplane.io/pool": "p", **MANAGED},
                        "ownerReferences": owner("WorkerPool", "p", "u-pool")}}
    resolved = lambda kind, name: {"metadata": {"name": name, "namespace": NS, "uid": f"u-{name}",  # noqa: E731
                                                "generation": 1},
                                   "status": {"phase": "Ready", "observedGeneration": 1,
                                              "conditions": copy.deepcopy(COND)}}
    return inv.Snapshot(nodes=[node()], pods=[worker(0), worker(1)], jobs=[job("adp-a1-verify-g1-a0")],
                        configmaps=[cm], services=[svc], pools=[pool], adapters=[resolved("Adapter", "a1")],
                        basemodels=[resolved("BaseModel", "m")])


def describe_workers(snap):
    """status.workers and status.loadedSets as the operator would write them for the pods now in ``snap``."""
    workers, loaded = [], {}
    for p in snap.pods:
        rep = json.loads(p["metadata"]["annotations"].get("loraplane.io/worker-status") or "{}")
        ready = p["status"]["conditions"][0]["status"] == "True" and rep.get("ready", True) is not False
        workers.append({"pod": p["metadata"]["name"], "node": "n1", "gpu": 0, "ready": ready})
        loaded[p["metadata"]["name"]] = rep.get("loaded") or []
    set_of, sets = group_loaded(loaded)
    for w in workers:
        if w["pod"] in set_of:
            w["loadedSet"] = set_of[w["pod"]]
    snap.pools[0]["status"].update(workers=workers, loadedSets=[s.model_dump(by_alias=True) for s in sets])
    return snap


def only(snap, invariant, strength):
    found = inv.check(snap)
    assert found, "the broken invariant was not reported"
    assert {(v.invariant, v.strength) for v in found} == {(invariant, strength)}, [str(v) for v in found]
    return found


def test_a_healthy_cluster_has_no_violation():
    assert inv.check(healthy()) == []


def test_two_reservations_over_one_cards_memory_are_an_overcommit():
    snap = healthy()
    snap.pods.append(worker(2, mib=10000))  # 7680 * 2 + 10000 > 24576 on n1/gpu0
    snap.pools[0]["spec"]["replicas"] = 3
    snap.pools[0]["status"]["readyReplicas"] = 3
    found = only(describe_workers(snap), inv.GPU_OVERCOMMITTED, inv.ALWAYS)
    assert "25360 MiB reserved > 24576" in found[0].message
    assert found[0].objects == ("holder ml/p-0", "holder ml/p-1", "holder ml/p-2")


def test_a_reservation_on_a_card_the_node_lacks_is_an_overcommit():
    snap = healthy()
    snap.pods[1] = worker(1, gpu=2)
    snap.pools[0]["status"]["workers"][1]["gpu"] = 2
    assert "GPU index the node does not have" in only(snap, inv.GPU_OVERCOMMITTED, inv.ALWAYS)[0].message


def test_an_unfinished_training_job_without_its_pod_still_holds_vram():
    snap = healthy()
    snap.jobs.append(job("adp-t-train-g1-a0", owner_name="t", done=False,
                         reservation={"node": "n1", "gpu": 0, "vramMiB": 12000, "variant": "training-lora"}))
    snap.adapters.append({**copy.deepcopy(snap.adapters[0]), "metadata": {"name": "t", "namespace": NS, "uid": "u-a1",
                                                                          "generation": 1}})
    found = inv.check(snap)
    assert {(v.invariant, v.strength) for v in found} == {(inv.GPU_OVERCOMMITTED, inv.ALWAYS),
                                                          (inv.RESERVATION_WITHOUT_POD, inv.SETTLED)}
    assert "ml/adp-t-train-g1-a0" in next(v for v in found if v.invariant == inv.GPU_OVERCOMMITTED).objects[0]


def test_a_live_worker_without_a_reservation_is_reported():
    snap = healthy()
    del snap.pods[1]["metadata"]["annotations"]["loraplane.io/reservation"]
    snap.pools[0]["status"]["workers"][1].pop("node")
    assert only(snap, inv.POD_WITHOUT_RESERVATION, inv.ALWAYS)[0].objects == ("Pod ml/p-1",)


def test_a_pod_bound_to_another_node_than_its_reservation_is_reported():
    snap = healthy()
    snap.nodes.append(node("n2"))
    snap.pods[1]["spec"]["nodeName"] = "n2"
    assert "reserved on n1 but bound to n2" in only(snap, inv.POD_WITHOUT_RESERVATION, inv.ALWAYS)[0].message


def test_a_finished_pod_needs_no_reservation():
    snap = healthy()
    done = worker(7)
    del done["metadata"]["annotations"]["loraplane.io/reservation"]
    done["status"]["phase"] = "Succeeded"
    snap.pods.append(done)
    assert inv.check(snap) == []


def test_status_listing_a_worker_whose_pod_is_gone_is_a_reservation_without_pod():
    snap = healthy()
    snap.pools[0]["status"]["workers"].append({"pod": "p-9", "node": "n1", "gpu": 1})
    found = only(snap, inv.RESERVATION_WITHOUT_POD, inv.SETTLED)
    assert found[0].objects == ("WorkerPool ml/p", "Pod ml/p-9")


@pytest.mark.parametrize("kind_list,index", [("jobs", 0), ("configmaps", 0), ("services", 0)])
def test_a_child_whose_owner_is_gone_is_an_orphan(kind_list, index):
    snap = healthy()
    getattr(snap, kind_list)[index]["metadata"]["ownerReferences"][0]["uid"] = "u-old"
    found = only(snap, inv.ORPHAN, inv.SETTLED)
    assert "was replaced" in found[0].message


def test_a_managed_object_without_an_owner_is_an_orphan():
    snap = healthy()
    del snap.services[0]["metadata"]["ownerReferences"]
    assert only(snap, inv.ORPHAN, inv.SETTLED)[0].objects == ("Service ml/p",)


def test_a_worker_of_a_deleted_pool_is_an_orphan():
    snap = healthy()
    snap.pods.append(worker(0, pool="gone", gpu=1))
    snap.pods[-1]["metadata"]["ownerReferences"] = owner("WorkerPool", "gone", "u-gone")
    found = only(snap, inv.ORPHAN, inv.SETTLED)
    assert "does not exist" in found[0].message and found[0].objects[0] == "Pod ml/gone-0"


def test_more_live_workers_than_replicas_is_reported():
    snap = healthy()
    snap.pools[0]["spec"]["replicas"] = 1
    assert only(snap, inv.EXCESS_WORKERS, inv.SETTLED)[0].message == "2 live workers for replicas=1"


def test_two_unfinished_verify_jobs_of_one_owner_are_duplicates():
    snap = healthy()
    snap.jobs = [job("adp-a1-verify-g1-a0", done=False), job("adp-a1-verify-g1-a1", done=False)]
    found = only(snap, inv.DUPLICATE_JOB, inv.ALWAYS)
    assert found[0].objects == ("Job ml/adp-a1-verify-g1-a0", "Job ml/adp-a1-verify-g1-a1")


def test_a_finished_job_and_one_of_another_step_are_not_duplicates():
    snap = healthy()
    snap.jobs = [job("adp-a1-verify-g1-a0"), job("adp-a1-verify-g1-a1", done=False),
                 job("bm-m-publish-g1-a0", "BaseModel", "m", "u-m", done=False)]
    assert inv.check(snap) == []


def test_job_step_reads_both_name_shapes():
    assert inv.job_step({"metadata": {"name": "adp-x-train-g3-a0"}}) == "train"
    assert inv.job_step({"metadata": {"name": "a-very-long-adapter-name-abcdef-1a2b3c4d-verify"}}) == "verify"


@pytest.mark.parametrize("where", ["status", "configmap"])
def test_weight_on_a_version_one_ready_worker_has_not_loaded_is_reported(where):
    snap = healthy()
    if where == "status":
        snap.pools[0]["status"]["effectiveRoutes"]["t"] = [{"adapter": "a1", "weight": 90},
                                                           {"adapter": "a2", "weight": 10}]
    else:
        snap.configmaps[0]["data"]["desired.json"] = json.dumps(
            {"routes": {"t": [{"adapter": "a1", "weight": 90}, {"adapter": "a2", "weight": 10}]}})
    snap.pods[0] = worker(0, loaded=("a1", "a2"))
    found = only(describe_workers(snap), inv.ROUTE_TO_UNLOADED, inv.ALWAYS)
    assert found[0].objects == ("WorkerPool ml/p", "Pod ml/p-1") and "a2" in found[0].message


def test_a_ready_worker_that_has_not_reported_yet_is_only_unsettled():
    snap = healthy()
    del snap.pods[1]["metadata"]["annotations"]["loraplane.io/worker-status"]
    found = only(describe_workers(snap), inv.ROUTE_TO_UNLOADED, inv.SETTLED)
    assert "not reported by 1/2 ready workers" in found[0].message


def test_a_not_ready_worker_need_not_have_loaded_the_routed_versions():
    snap = healthy()
    snap.pods[1] = worker(1, loaded=(), ready=False)
    snap.pools[0]["status"]["readyReplicas"] = 1
    snap.pools[0]["status"]["conditions"][0]["status"] = "False"
    assert inv.check(describe_workers(snap)) == []


def test_observed_generation_ahead_of_generation_is_always_wrong():
    snap = healthy()
    snap.adapters[0]["status"]["observedGeneration"] = 2
    assert only(snap, inv.GENERATION, inv.ALWAYS)[0].objects == ("Adapter ml/a1",)


def test_a_spec_change_not_yet_observed_is_only_unsettled():
    snap = healthy()
    snap.basemodels[0]["metadata"]["generation"] = 2
    found = inv.check(snap)
    assert {(v.invariant, v.strength) for v in found} == {(inv.GENERATION, inv.SETTLED),
                                                          (inv.CONDITIONS, inv.SETTLED)}
    assert inv.always(found) == []


def test_a_phase_that_contradicts_the_ready_condition_is_reported():
    snap = healthy()
    snap.adapters[0]["status"]["phase"] = "Failed"
    assert "phase Failed but Ready=True" in only(snap, inv.CONDITIONS, inv.ALWAYS)[0].message


def test_a_ready_pool_short_of_ready_workers_is_reported():
    snap = healthy()
    snap.pods[1] = worker(1, ready=False)
    snap.pools[0]["status"]["readyReplicas"] = 1
    found = only(describe_workers(snap), inv.CONDITIONS, inv.ALWAYS)
    assert "Ready=True with 1 ready workers of 2" in found[0].message


def test_a_duplicated_condition_type_is_reported():
    snap = healthy()
    snap.pools[0]["status"]["conditions"].append(dict(COND[1]))
    assert "appears twice" in only(snap, inv.CONDITIONS, inv.ALWAYS)[0].message


def test_a_status_that_does_not_describe_the_workers_is_unsettled():
    snap = healthy()
    snap.pools[0]["status"]["workers"][1].update(ready=False)  # written before p-1 reported
    del snap.pools[0]["status"]["workers"][1]["loadedSet"]
    found = only(snap, inv.STALE_STATUS, inv.SETTLED)
    assert found[0].objects == ("WorkerPool ml/p", "Pod ml/p-1")


def test_a_status_naming_the_wrong_loaded_set_is_unsettled():
    snap = healthy()
    snap.pods[1] = worker(1, loaded=("a1", "a2"))  # p-1 loaded a2 since the status was written
    found = only(snap, inv.STALE_STATUS, inv.SETTLED)
    assert found[0].objects == ("WorkerPool ml/p", "Pod ml/p-1")
    assert inv.check(describe_workers(snap)) == []


def test_a_worker_naming_a_loaded_set_that_is_not_listed_is_unsettled():
    snap = healthy()
    snap.pools[0]["status"]["workers"][0]["loadedSet"] = "gone"
    found = only(snap, inv.STALE_STATUS, inv.SETTLED)
    assert found[0].objects == ("WorkerPool ml/p", "Pod ml/p-0")
