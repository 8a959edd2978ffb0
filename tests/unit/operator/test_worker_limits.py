"""The worker's own limits come from the pool (issue 13, items 2 and 3, operator side): the
KV budget the worker admits against is the ``gpu.kvCacheMiB`` placement reserves, and
``spec.maxLoadedAdapters`` caps the adapters a worker keeps stacked. Both roll the workers."""

from __future__ import annotations

import pydantic
import pytest

from loraplane.operator.api.common_types import StoreVolume
from loraplane.operator.api.workerpool_types import WorkerPoolSpec
from loraplane.operator.core import manifests

from .test_cores import ADP, BASE, NOW, nodes, plan_pool, pool, running


def env_of(pod: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def first_pod(pool_obj) -> dict:
    return plan_pool(pool_obj, BASE, {"syn-v1": ADP}, [], nodes(), [], "img", NOW).create[0]


def with_cap(pool_obj, cap):
    pool_obj["spec"]["maxLoadedAdapters"] = cap
    return pool_obj


@pytest.mark.parametrize("kv", [None, 1024, 0, 6144])
def test_the_worker_admits_against_the_kv_cache_placement_reserves(kv):
    pod = first_pod(pool(1) if kv is None else pool(1, kvCacheMiB=kv))
    want = 2048 if kv is None else kv
    assert env_of(pod)["LORAPLANE_KV_CACHE_MIB"] == str(want)
    need = int(env_of(pod)["LORAPLANE_VRAM_MIB"])
    assert need == 7680 + 100 + want + 1024  # bnb-int8 weights + adapter + the same KV + headroom


def test_max_loaded_adapters_reaches_the_worker_only_when_set():
    assert "LORAPLANE_MAX_LOADED_ADAPTERS" not in env_of(first_pod(pool(1)))
    assert env_of(first_pod(with_cap(pool(1), 4)))["LORAPLANE_MAX_LOADED_ADAPTERS"] == "4"


def test_the_cli_reads_what_the_pod_sets(monkeypatch):
    import argparse

    from loraplane.worker.cli import configure
    for k, v in env_of(first_pod(with_cap(pool(1, kvCacheMiB=1536), 3))).items():
        if v is not None:
            monkeypatch.setenv(k, v)
    p = argparse.ArgumentParser()
    configure(p)  # the worker's defaults are read from the environment when its flags are declared
    args = p.parse_args([])
    assert (args.kv_cache_mib, args.max_loaded_adapters) == (1536, 3)


def test_a_limit_change_rolls_the_workers_and_defaults_keep_the_hash():
    pods = running([first_pod(pool(1))])
    same = plan_pool(pool(1), BASE, {"syn-v1": ADP}, pods, nodes(), [], "img", NOW)
    assert not same.create and not same.delete
    for changed in (with_cap(pool(1), 8), pool(1, kvCacheMiB=4096)):
        p = plan_pool(changed, BASE, {"syn-v1": ADP}, pods, nodes(), [], "img", NOW)
        assert p.create or p.delete
    store = StoreVolume.model_validate({"hostPath": {"path": "/s"}})
    a, b = (manifests.worker_spec_hash(WorkerPoolSpec.model_validate(with_cap(pool(1), c)["spec"]), "i", store,
                                       "fp16") for c in (2, 3))
    assert a != b


@pytest.mark.parametrize("cap", [0, -1, 1025])
def test_max_loaded_adapters_is_bounded(cap):
    with pytest.raises(pydantic.ValidationError, match="maxLoadedAdapters"):
        WorkerPoolSpec.model_validate(with_cap(pool(1), cap)["spec"])


# --- the reservation counts the adapters a capped worker can hold at once ------------------------
def adapter(name: str, mib: int) -> dict:
    a = {**ADP, "metadata": {**ADP["metadata"], "name": name}, "status": {**ADP["status"], "vramMiB": mib}}
    return {**a, "spec": {**ADP["spec"], "source": {"storeName": name}}}


SIZES = {"a": 100, "b": 300, "c": 200}
ONE_ROUTE = {"t": [{"adapter": "a", "weight": 100}, {"adapter": "b", "weight": 0}, {"adapter": "c", "weight": 0}]}


def adapters_reserved(cap, routes=ONE_ROUTE, sizes=SIZES) -> int:
    p = pool(1, routes=routes)
    if cap is not None:
        with_cap(p, cap)
    plan = plan_pool(p, BASE, {n: adapter(n, m) for n, m in sizes.items()}, [], nodes(), [], "img", NOW)
    return plan.status.need_mib - 7680 - 2048 - 1024


@pytest.mark.parametrize("cap, mib", [(None, 600), (1, 100), (2, 400), (3, 600), (64, 600)])
def test_a_capped_worker_reserves_its_pinned_adapters_and_the_largest_others_up_to_the_cap(cap, mib):
    assert adapters_reserved(cap) == mib


def test_weighted_backends_are_reserved_even_beyond_the_cap():
    """The worker stacks every backend with weight > 0 whatever the cap (docs/worker.md)."""
    routes = {"t": [{"adapter": "a", "weight": 50}, {"adapter": "b", "weight": 50}], "u": [{"adapter": "c", "weight": 100}]}
    assert adapters_reserved(1, routes) == 600
