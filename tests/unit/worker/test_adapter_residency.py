"""maxLoadedAdapters: at most N adapters stacked on the device, the rest in
host RAM and brought back for a request, least recently used evicted first;
never one a route gives weight > 0, never one with a request in flight."""

from __future__ import annotations

import asyncio
import re
import time

PROMPT = "tell me about the cat and the dog"
# four served names; a1 and a4 hold the same content (synth v1), so their answers must agree
ADAPTERS = [("a1", "synth", "v1", "t1"), ("a2", "synth", "v2", "t2"), ("a3", "critic", "v1", "t3"),
            ("a4", "synth", "v1", "t4")]


async def _post(c, model, **body):
    body = {"model": model, "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "ignore_eos": True} | body
    r = await c.post("/v1/completions", json=body)
    return r.status, await r.json()


def _resident(w) -> set[str]:
    return {n for n, s in w.adapter_states().items() if s["state"] == "loaded"}


def _metric(text: str, name: str, adapter: str) -> float:
    m = re.search(rf'^{name}{{adapter="{adapter}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_lru_eviction_restores_on_demand_and_keeps_pinned(worker_store, run, helpers):
    async def go():
        doc = helpers.desired({"t1": [("a1", 100)]}, adapters=ADAPTERS)
        async with helpers.running_worker(worker_store, doc, max_loaded_adapters=2) as (w, c):
            assert len(w.bank.adapters) == 2 and "a1" in _resident(w)  # pinned (weight 100)
            loaded = await (await c.get("/metrics")).text()  # loading a3 and a4 evicted a2 and a3: counted
            assert sum(_metric(loaded, "loraplane_worker_adapter_evictions_total", n) for n in ("a2", "a3")) == 2
            answers = {}
            for model in ("a2", "a3", "a4", "a2", "t1", "a4"):
                status, body = await _post(c, model)
                assert status == 200, body
                answers.setdefault(body["adapter"], set()).add(body["choices"][0]["text"])
                assert len(w.bank.adapters) <= 2 and "a1" in _resident(w)
                assert body["adapter"] in _resident(w)
            # LRU: after a2, a3, a4, a2 the least recently used unpinned one (a3) was the one evicted
            assert _resident(w) == {"a1", "a4"}
            states = (await (await c.get("/readyz")).json())["adapters"]
            metrics = await (await c.get("/metrics")).text()
            return answers, states, metrics, w.bank.host.keys()
    answers, states, metrics, host = run(go())
    assert all(len(texts) == 1 for texts in answers.values())  # restored content answers as before
    assert answers["a1"] == answers["a4"]  # same content, one resident from the start, one restored
    assert states["a3"]["state"] == "evicted" and states["a1"]["state"] == "loaded" and set(host) == {"a2", "a3"}
    assert _metric(metrics, "loraplane_worker_adapter_resident", "a3") == 0.0
    assert _metric(metrics, "loraplane_worker_adapter_resident", "a1") == 1.0
    assert _metric(metrics, "loraplane_worker_adapter_restores_total", "a2") >= 1
    assert _metric(metrics, "loraplane_worker_adapter_evictions_total", "a3") >= 1


def test_never_evicts_in_flight_or_weighted_versions(worker_store, run, helpers):
    async def go():
        doc = helpers.desired({"t1": [("a1", 100)]}, adapters=ADAPTERS)
        async with helpers.running_worker(worker_store, doc, max_loaded_adapters=2, request_timeout_s=20) as (w, c):
            assert (await _post(c, "a3"))[0] == 200  # resident: a1 (pinned) + a3
            long = asyncio.create_task(_post(c, "a3", max_tokens=300))
            while not w.engine.in_use("a3"):
                await asyncio.sleep(0.005)
            status, body = await _post(c, "a2")  # no room until a3's request is done: it waits, a3 is not evicted
            a2_done = time.monotonic()
            long_status, long_body = await long
            assert long_status == 200 and long_body["usage"]["completion_tokens"] == 300
            assert status == 200 and body["adapter"] == "a2"
            # a route now gives a2 weight: a1 and a2 are pinned, nothing can make room for a3
            await w.apply(helpers.desired({"t1": [("a1", 50), ("a2", 50)]}, adapters=ADAPTERS, generation=2))
            w.cfg.request_timeout_s = 1.0
            refused = await _post(c, "a3")
            return a2_done, refused, _resident(w)
    a2_done, refused, resident = run(go())
    assert refused[0] == 503 and refused[1]["error"]["code"] == "adapter_capacity"
    assert resident == {"a1", "a2"}
