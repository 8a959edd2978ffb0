"""Pool and resolve cores: plans from a world, no cluster."""

import datetime as dt
import json

from loraplane.operator.core import inventory, placement as pl
from loraplane.operator.api.observed_types import NodeView, PodView
from loraplane.operator.api.adapter_types import AdapterStatus
from loraplane.operator.api.basemodel_types import BaseModelStatus
from loraplane.operator.api.resources import AdapterResource, BaseModelResource, WorkerPoolResource, as_read, parse
from loraplane.operator.core import pool as pool_core
from loraplane.operator.core import resolve
from loraplane.operator.core.resolve import JobState, World
from loraplane.contracts.desired import DesiredState

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
CK = "a" * 64


def backoff(n):
    return 5.0 * 2 ** (n - 1)


def obj(kind, name, spec, status=None, gen=1):
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": gen},
            "spec": spec, "status": status or {}}


BASE = obj("BaseModel", "m", {"storeName": "mistral", "version": "v1", "store": {"hostPath": {"path": "/s"}}},
           {"phase": "Ready", "checksum": CK, "variants": [{"name": "bnb-int8", "vramMiB": 7680},
                                                          {"name": "fp16", "vramMiB": 14336}]})
ADP = obj("Adapter", "syn-v1", {"baseModelRef": "m", "task": "synthesizer", "version": "v1",
                                "source": {"storeName": "syn"}},
          {"phase": "Ready", "checksum": "b" * 64, "vramMiB": 100})


def pool(replicas=6, routes=None, **gpu):
    return obj("WorkerPool", "p", {"baseModelRef": "m", "variants": ["bnb-int8", "fp16"], "replicas": replicas,
                                   "gpu": gpu, "routes": routes if routes is not None else
                                   {"synthesizer": [{"adapter": "syn-v1", "weight": 100}]}})


def plan_pool(pool_obj, base, adapters, pods, *args, **kw):
    """The core on parsed objects, as the controller calls it (pods parsed once: ``PodView``)."""
    return pool_core.plan_pool(parse(WorkerPoolResource, pool_obj), base and parse(BaseModelResource, base),
                               {n: parse(AdapterResource, a) for n, a in adapters.items()}, views(pods), *args, **kw)


def views(pods):
    return [PodView.from_api(p) for p in pods]


def st(plan):
    """A pool plan's status as the controller patches it."""
    return as_read(plan.status)


def stored(obj):
    """The object as the API server holds it after our merge patches: null means deleted."""
    if isinstance(obj, dict):
        return {k: stored(v) for k, v in obj.items() if v is not None}
    return [stored(v) for v in obj] if isinstance(obj, list) else obj


def wire(plan):
    """A resolve plan with its typed status dumped as the controller patches it (``as_read``)."""
    assert isinstance(plan.status, (BaseModelStatus, AdapterStatus))  # the core returns typed status
    plan.status = as_read(plan.status)
    return plan


def plan_basemodel(bm, world, backoff_):
    return wire(resolve.plan_basemodel(parse(BaseModelResource, stored(bm)), world, backoff_))


def plan_adapter(a, world, backoff_):
    if isinstance(world.base, dict):
        world.base = parse(BaseModelResource, stored(world.base))
    return wire(resolve.plan_adapter(parse(AdapterResource, stored(a)), world, backoff_))


def nodes(n=2, gpus=2):
    return [pl.NodeInfo(f"n{i}", {}, gpus, 24576) for i in range(n)]


def running(pods):
    for p in pods:
        p["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    return pods


def test_pool_places_six_int8_workers_on_three_gpus_and_writes_desired():
    plan = plan_pool(pool(), BASE, {"syn-v1": ADP}, [], nodes(), [], "img", NOW)
    assert len(plan.create) == 6 and not plan.delete
    res = inventory.reservations(views(plan.create), nodes())
    assert len({(r.node, r.gpu) for r in res}) == 3
    assert all(r.mib == 7680 + 100 + 2048 + 1024 for r in res)
    d = DesiredState.from_json(plan.desired_json)
    assert d.base.variant == "bnb-int8" and d.adapters[0].store_name == "syn" and d.routes["synthesizer"]
    assert st(plan)["conditions"][0]["type"] == "Ready" and st(plan)["conditions"][0]["status"] == "False"


def test_pool_is_idempotent_and_ready_once_pods_run():
    first = plan_pool(pool(), BASE, {"syn-v1": ADP}, [], nodes(), [], "img", NOW)
    pods = running(first.create)
    again = plan_pool(pool(), BASE, {"syn-v1": ADP}, pods, nodes(), inventory.reservations(views(pods), nodes()),
                      "img", NOW)
    assert not again.create and not again.delete
    conds = {c["type"]: c["status"] for c in st(again)["conditions"]}
    assert conds == {"Ready": "True", "Progressing": "False", "Degraded": "False"}
    assert st(again)["readyReplicas"] == 6 and st(again)["selector"] == "loraplane.io/pool=p"


def test_pool_scale_down_and_unplaceable_message():
    pods = running(plan_pool(pool(3), BASE, {"syn-v1": ADP}, [], nodes(1), [], "img", NOW).create)
    res = inventory.reservations(views(pods), nodes(1))
    down = plan_pool(pool(2), BASE, {"syn-v1": ADP}, pods, nodes(1), res, "img", NOW)
    assert down.delete == ["p-2"]  # alone on its GPU
    up = plan_pool(pool(5), BASE, {"syn-v1": ADP}, pods, nodes(1), res, "img", NOW)
    assert len(up.create) == 1 and st(up)["unplaced"] == 1
    prog = next(c for c in st(up)["conditions"] if c["type"] == "Progressing")
    assert prog["reason"] == "Unplaceable" and "needs 10.6 GiB (bnb-int8); the best GPU has" in prog["message"]


def test_pool_waits_for_base_and_reports_missing_adapters():
    plan = plan_pool(pool(), {**BASE, "status": {"phase": "Verifying"}}, {}, [], nodes(), [], "img", NOW)
    assert not plan.create and st(plan)["conditions"][0]["reason"] == "WaitingForBaseModel"
    plan = plan_pool(pool(1), BASE, {}, [], nodes(), [], "img", NOW)
    deg = next(c for c in st(plan)["conditions"] if c["type"] == "Degraded")
    assert deg["status"] == "True" and "syn-v1 (route synthesizer) not found" in deg["message"]


def test_basemodel_missing_secret_backs_off_without_a_job():
    bm = obj("BaseModel", "m", {"storeName": "x", "version": "v1", "store": {"persistentVolumeClaim": {
        "claimName": "c", "readOnly": False}}, "source": {"huggingFace": {"repo": "a/b", "revision": "r",
                                                                          "tokenSecretRef": {"name": "hf"}}}})
    plan = plan_basemodel(bm, World(now=NOW, secret_missing="Secret hf not found"), backoff)
    assert plan.create_job is None and plan.requeue_after == 5
    assert plan.status["attempts"] == 1 and plan.status["conditions"][0]["reason"] == "SecretMissing"
    bm["status"] = plan.status
    early = plan_basemodel(bm, World(now=NOW + dt.timedelta(seconds=1), secret_missing="Secret hf not found"),
                           backoff)  # woken by an event before the retry is due: not another attempt
    assert early.status["attempts"] == 1 and early.requeue_after == 4
    plan2 = plan_basemodel(bm, World(now=NOW + dt.timedelta(seconds=5), secret_missing="Secret hf not found"),
                           backoff)
    assert plan2.status["attempts"] == 2 and plan2.requeue_after == 10


def test_basemodel_verify_job_flow():
    bm = obj("BaseModel", "m", {"storeName": "x", "version": "v1", "store": {"hostPath": {"path": "/s"}}})
    p = plan_basemodel(bm, World(now=NOW), backoff)
    assert p.create_job == "verify" and p.job_name == "bm-m-verify-g1-a0"
    bm["status"] = p.status
    failed = plan_basemodel(bm, World(now=NOW, jobs={"bm-m-verify-g1-a0": JobState("bm-m-verify-g1-a0", "verify",
                                                                              "Failed", "3 files corrupt")}), backoff)
    assert failed.status["phase"] == "Failed" and "3 files corrupt" in failed.status["conditions"][0]["message"]
    bm["status"] = failed.status
    early = plan_basemodel(bm, World(now=NOW), backoff)
    assert early.create_job is None and early.requeue_after == 5
    later = plan_basemodel(bm, World(now=NOW + dt.timedelta(seconds=6)), backoff)
    assert later.job_name == "bm-m-verify-g1-a1"
    bm["status"] = later.status
    ok = plan_basemodel(bm, World(now=NOW, jobs={"bm-m-verify-g1-a1": JobState("bm-m-verify-g1-a1", "verify",
                                                                          "Succeeded")},
                                  summary={"kind": "base", "checksum": CK, "variants": {"fp16": 14000}}), backoff)
    assert ok.status["phase"] == "Ready" and ok.status["variants"] == [{"name": "fp16", "vramMiB": 14000}]
    assert ok.status["storePath"] == "default/base_models/x/versions/v1"


def test_adapter_checksum_mismatch_is_degraded():
    a = obj("Adapter", "syn-v1", ADP["spec"])
    p = plan_adapter(a, World(now=NOW, base=BASE), backoff)
    assert p.create_job == "verify"
    a["status"] = p.status
    done = {p.job_name: JobState(p.job_name, "verify", "Succeeded")}
    bad = plan_adapter(a, World(now=NOW, base=BASE, jobs=done,
                                summary={"kind": "adapter", "checksum": "c" * 64, "baseChecksum": "d" * 64}), backoff)
    assert bad.status["phase"] == "Degraded"
    assert bad.status["conditions"][2]["reason"] == "BaseChecksumMismatch"
    good = plan_adapter(a, World(now=NOW, base=BASE, jobs=done, summary={
        "kind": "adapter", "checksum": "c" * 64, "baseChecksum": CK, "vramMiB": 3}), backoff)
    assert good.status["phase"] == "Ready" and good.status["vramMiB"] == 3


def test_inventory_charges_whole_gpus_to_other_pods():
    ns = [pl.NodeInfo("n0", {}, 2, 24576)]
    mine = plan_pool(pool(1), BASE, {"syn-v1": ADP}, [], ns, [], "img", NOW).create
    other = {"metadata": {"name": "train", "namespace": "x"}, "spec": {"nodeName": "n0", "containers": [
        {"resources": {"limits": {"nvidia.com/gpu": "1"}}}]}, "status": {"phase": "Running"}}
    res = inventory.reservations(views(mine + [other]), ns)
    assert sorted((r.gpu, r.mib) for r in res) == [(0, 10852), (1, 24576)]
    node = NodeView.from_api({"metadata": {"name": "n", "labels": {pl.GPU_COUNT: "2", pl.GPU_MEMORY: "24576"}},
                                "spec": {"unschedulable": True, "taints": [{"key": "k", "effect": "NoSchedule"}]},
                                "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert node.gpu_count == 2 and node.unschedulable and node.ready and node.taints[0].key == "k"
    assert json.loads(mine[0]["metadata"]["annotations"]["loraplane.io/reservation"])["gpu"] == 0


def test_metrics_follow_the_ledger():
    from prometheus_client import REGISTRY

    from loraplane.operator.controllers import metrics
    nodes_ = [pl.NodeInfo("mx", {}, 2, 24576)]
    metrics.observe_ledger(nodes_, [pl.Reservation("mx", 1, 10000, "ns/p-0")])
    assert REGISTRY.get_sample_value("loraplane_gpu_vram_allocated_bytes", {"node": "mx", "gpu": "1"}) == 10000 * 2**20
    assert REGISTRY.get_sample_value("loraplane_gpu_vram_free_bytes", {"node": "mx", "gpu": "0"}) == 24576 * 2**20


def test_need_reserves_room_for_adapters_not_verified_yet():
    from loraplane.operator.core.pool import PENDING_ADAPTER_MIB
    pending = {**ADP, "status": {"phase": "Verifying"}}
    plan = plan_pool(pool(1), BASE, {"syn-v1": pending}, [], nodes(), [], "img", NOW)
    assert st(plan)["needMiB"] == 7680 + PENDING_ADAPTER_MIB + 2048 + 1024
    assert DesiredState.from_json(plan.desired_json).adapters == []  # not served until Ready
