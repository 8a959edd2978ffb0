"""The worker end to end on the tiny Mistral with real adapters (CPU)."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch


PROMPT = "tell me about the cat and the dog"
ROUTES = {"synthesizer": [("synth-v1", 100), ("synth-v2", 0)], "critic": [("critic-v1", 100)]}


def _reference(base_dir, adapter_dir, prompt, n):
    """Greedy tokens of stock PEFT with only that adapter: the ground truth."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


async def _complete(client, model, prompt=PROMPT, max_tokens=8, **kw):
    r = await client.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": max_tokens,
                                                   "temperature": 0, **kw})
    return r.status, await r.json(), r.headers


def test_two_adapters_differ_and_match_reference_runs(worker_store, tiny_base_dir, make_tiny_adapter, run, helpers):
    desired, running_worker = helpers.desired, helpers.running_worker
    async def go():
        async with running_worker(worker_store, desired(ROUTES)) as (w, c):
            # concurrently, so both land in one mixed-adapter batch
            (s1, b1, h1), (s2, b2, _), (s3, b3, _) = await asyncio.gather(
                _complete(c, "synth-v1"), _complete(c, "synth-v2"), _complete(c, "synthesizer"))
            return s1, b1, h1, s2, b2, s3, b3
    s1, b1, h1, s2, b2, s3, b3 = run(go())
    assert s1 == s2 == s3 == 200
    t1, t2 = b1["choices"][0]["text"], b2["choices"][0]["text"]
    assert t1 != t2
    assert t1 == _reference(tiny_base_dir, make_tiny_adapter(seed=1), PROMPT, 8)
    assert t2 == _reference(tiny_base_dir, make_tiny_adapter(seed=2), PROMPT, 8)
    assert b1["adapter"] == "synth-v1" and h1["X-Loraplane-Adapter"] == "synth-v1"
    assert b3["adapter"] == "synth-v1" and b3["task"] == "synthesizer"  # 100/0 route


def test_weight_zero_never_served_over_http(worker_store, run, helpers):
    desired, running_worker = helpers.desired, helpers.running_worker
    async def go():
        async with running_worker(worker_store, desired(ROUTES)) as (w, c):
            res = await asyncio.gather(*[_complete(c, "synthesizer", max_tokens=2) for _ in range(40)])
            return [b["adapter"] for _, b, _ in res]
    assert set(run(go())) == {"synth-v1"}


def test_hot_swap_under_steady_traffic_fails_nothing(worker_store, run, helpers):
    desired, running_worker = helpers.desired, helpers.running_worker
    async def go():
        async with running_worker(worker_store, desired({"synthesizer": [("synth-v1", 100)]},
                                  adapters=[("synth-v1", "synth", "v1", "synthesizer")])) as (w, c):
            base_model = w.engine.model
            results, stop = [], asyncio.Event()

            async def client_loop():
                while not stop.is_set():
                    results.append(await _complete(c, "synthesizer", max_tokens=6))

            loops = [asyncio.create_task(client_loop()) for _ in range(4)]
            await asyncio.sleep(0.3)
            await w.apply(desired({"synthesizer": [("synth-v2", 100)]},
                                  adapters=[("synth-v2", "synth", "v2", "synthesizer")], generation=2))
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*loops)
            for _ in range(50):  # the old version is freed once drained
                if "synth-v1" not in w.bank.adapters:
                    break
                await asyncio.sleep(0.05)
            return results, w, base_model
    results, w, base_model = run(go())
    assert results and all(s == 200 for s, _, _ in results), [b for s, b, _ in results if s != 200]
    served = [b["adapter"] for _, b, _ in results]
    assert served[0] == "synth-v1" and served[-1] == "synth-v2"
    assert w.engine.model is base_model  # the base was not reloaded
    assert set(w.bank.adapters) == {"synth-v2"} and w.status().loaded == ["synth-v2"]


def test_corrupted_adapter_refused_and_never_served(worker_store, run, helpers):
    desired, running_worker = helpers.desired, helpers.running_worker
    adapters = [("synth-v1", "synth", "v1", "synthesizer"), ("bad-v1", "broken", "v1", "synthesizer")]

    async def go():
        doc = desired({"synthesizer": [("synth-v1", 50), ("bad-v1", 50)]}, adapters=adapters)
        async with running_worker(worker_store, doc) as (w, c):
            res = await asyncio.gather(*[_complete(c, "synthesizer", max_tokens=2) for _ in range(20)])
            pinned = await _complete(c, "bad-v1")
            metrics = await (await c.get("/metrics")).text()
            return w.status(), [b["adapter"] for _, b, _ in res], pinned, metrics
    st, served, pinned, metrics = run(go())
    assert "bad-v1" in st.failed and "verification failed" in st.failed["bad-v1"]
    assert st.loaded == ["synth-v1"] and set(served) == {"synth-v1"}
    assert pinned[0] == 503
    assert 'loraplane_worker_adapter_load_failures_total{adapter="bad-v1"' in metrics


def test_streaming_chat_and_completions(worker_store, run, helpers):
    desired, running_worker = helpers.desired, helpers.running_worker
    async def go():
        async with running_worker(worker_store, desired(ROUTES)) as (w, c):
            r = await c.post("/v1/chat/completions", json={
                "model": "critic", "messages": [{"role": "user", "content": "hello world"}],
                "max_tokens": 5, "temperature": 0, "stream": True})
            raw = await r.text()
            whole = await c.post("/v1/chat/completions", json={
                "model": "critic", "messages": [{"role": "user", "content": "hello world"}],
                "max_tokens": 5, "temperature": 0})
            r2 = await c.post("/v1/completions", json={"model": "synth-v2", "prompt": PROMPT, "max_tokens": 4,
                                                       "stream": True, "temperature": 0.8, "top_p": 0.9})
            return r.status, r.headers, raw, await whole.json(), r2.status, await r2.text()
    status, headers, raw, whole, s2, raw2 = run(go())
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert text == whole["choices"][0]["message"]["content"] and chunks[0]["adapter"] == "critic-v1"
    assert s2 == 200 and raw2.rstrip().endswith("data: [DONE]")


def test_errors_limits_and_metrics(worker_store, run, helpers):
    desired, running_worker = helpers.desired, helpers.running_worker
    async def go():
        out = {}
        async with running_worker(worker_store, None) as (w, c):
            out["not_ready"] = (await c.post("/v1/completions", json={"model": "synthesizer", "prompt": "a"})).status
            out["readyz_before"] = (await c.get("/readyz")).status
            await w.apply(desired(ROUTES))
            out["readyz_after"] = (await c.get("/readyz")).status
            out["unknown"] = await _complete(c, "nope")
            out["too_many"] = await _complete(c, "synthesizer", max_tokens=10**6)
            out["long_prompt"] = await _complete(c, "synthesizer", prompt="cat " * 3000)
            w.cfg.max_prompt_tokens = 5000
            out["ctx"] = await _complete(c, "synthesizer", prompt="cat " * 1500, max_tokens=1000)
            w.cfg.max_prompt_tokens = 2048
            out["bad_json"] = (await c.post("/v1/completions", data=b"{")).status
            out["models"] = await (await c.get("/v1/models")).json()
            out["health"] = (await c.get("/healthz")).status
            out["ok"] = await _complete(c, "synthesizer", max_tokens=3, stop=["zzz"])
            out["metrics"] = await (await c.get("/metrics")).text()
        return out
    o = run(go())
    assert o["not_ready"] == 503 and o["readyz_before"] == 503 and o["readyz_after"] == 200
    assert o["unknown"][0] == 404 and "nope" in o["unknown"][1]["error"]["message"]
    assert o["too_many"][0] == 400 and "max_tokens" in o["too_many"][1]["error"]["message"]
    assert o["long_prompt"][0] == 400 and "tokens" in o["long_prompt"][1]["error"]["message"]
    assert o["ctx"][0] == 400 and "context" in o["ctx"][1]["error"]["message"]
    assert o["bad_json"] == 400 and o["health"] == 200 and o["ok"][0] == 200
    ids = {m["id"] for m in o["models"]["data"]}
    assert {"synthesizer", "critic", "synth-v1", "synth-v2", "critic-v1", "tiny"} <= ids
    m = o["metrics"]
    for name in ("loraplane_worker_request_duration_seconds_bucket", "loraplane_worker_time_to_first_token_seconds",
                 "loraplane_worker_generated_tokens_total", "loraplane_worker_queue_depth",
                 "loraplane_worker_batch_size", "loraplane_worker_adapter_load_seconds", "loraplane_worker_oom_total"):
        assert name in m, name
    assert 'loraplane_worker_requests_total{adapter="synth-v1",status="200",task="synthesizer"} 1.0' in m


def test_stop_strings_and_fault_injection(worker_store, run, helpers):
    desired, running_worker = helpers.desired, helpers.running_worker
    async def go():
        async with running_worker(worker_store, desired(ROUTES), fault_error_rate={"critic-v1": 1.0}) as (w, c):
            # random weights emit ids outside the tiny vocabulary (decoded as nothing): banned, so 12 words come
            bias = helpers.words_only(w.tokenizer)
            free = await _complete(c, "synth-v1", max_tokens=12, logit_bias=bias)
            text = free[1]["choices"][0]["text"]
            word = text.split()[2]
            stopped = await _complete(c, "synth-v1", max_tokens=12, stop=[word], logit_bias=bias)
            fault = await _complete(c, "critic")
            return text, word, stopped, fault
    text, word, stopped, fault = run(go())
    assert stopped[0] == 200 and stopped[1]["choices"][0]["finish_reason"] == "stop"
    assert stopped[1]["choices"][0]["text"] == text[: text.find(word)]
    assert fault[0] == 500 and "injected" in fault[1]["error"]["message"]


def test_sticky_route_key_timeout_and_draining(worker_store, run, helpers):
    desired, running_worker = helpers.desired, helpers.running_worker
    routes = {"synthesizer": [("synth-v1", 50), ("synth-v2", 50)]}

    async def go():
        out = {}
        async with running_worker(worker_store, desired(routes)) as (w, c):
            picks = {}
            for user in ("alice", "bob", "carol", "dave"):
                got = set()
                for _ in range(5):
                    r = await c.post("/v1/completions", json={"model": "synthesizer", "prompt": "hi", "max_tokens": 1},
                                     headers={"X-Loraplane-Route-Key": user})
                    got.add((await r.json())["adapter"])
                picks[user] = got
            out["picks"] = picks
            w.cfg.request_timeout_s = 0.0
            out["timeout"] = (await c.post("/v1/completions", json={"model": "synth-v1", "prompt": "hi",
                                                                      "max_tokens": 50})).status
            w.cfg.request_timeout_s = 60
            assert await w.drain(5.0)
            out["draining"] = (await c.post("/v1/completions", json={"model": "synth-v1", "prompt": "hi"})).status
            out["readyz"] = (await c.get("/readyz")).status
        return out
    o = run(go())
    assert all(len(v) == 1 for v in o["picks"].values()), o["picks"]  # each key sticks to one version
    assert o["timeout"] == 504 and o["draining"] == 503 and o["readyz"] == 503


def test_configmap_handler_applies_document(run, helpers):
    import types

    from loraplane.worker.sources import ConfigMapSource

    doc = helpers.desired({"synthesizer": [("synth-v1", 100)]}, adapters=[("synth-v1", "synth", "v1", "synthesizer")])
    seen = []

    async def apply(d):
        seen.append(d)

    async def go():
        loop = asyncio.get_running_loop()
        src = ConfigMapSource("ns/pool-desired", apply, loop)
        cm = types.SimpleNamespace(data={"desired.json": doc.to_json()})
        await loop.run_in_executor(None, src._handle, cm)
        await loop.run_in_executor(None, src._handle, types.SimpleNamespace(data={"other": "x"}))
        await loop.run_in_executor(None, src._handle, types.SimpleNamespace(data={"desired.json": "{bad"}))
    run(go())
    assert seen == [doc]
    with pytest.raises(ValueError):
        ConfigMapSource("no-namespace", apply, None)


def test_short_request_does_not_wait_for_long_one(worker_store, run, helpers):
    """Continuous batching: a request joining a running batch leaves it when done."""
    desired, running_worker = helpers.desired, helpers.running_worker

    async def go():
        async with running_worker(worker_store, desired(ROUTES), max_tokens_limit=4096) as (w, c):
            order = []

            async def call(name, n):
                r = await c.post("/v1/completions", json={"model": "synth-v1", "prompt": PROMPT, "max_tokens": n,
                                                          "temperature": 0, "ignore_eos": True})
                body = await r.json()
                order.append((name, body["usage"]["completion_tokens"]))

            long = asyncio.create_task(call("long", 400))
            while w.engine.busy == 0:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)  # the long one is decoding
            await call("short", 2)
            long_done_already = long.done()
            await long
            return order, long_done_already
    order, long_done_already = run(go())
    assert not long_done_already
    assert order == [("short", 2), ("long", 400)]


def test_variant_override_and_base_change_reported(worker_store, run, helpers):
    desired, running_worker = helpers.desired, helpers.running_worker

    async def go():
        async with running_worker(worker_store, desired(ROUTES), variant="bnb-int8") as (w, c):
            first = w.status()
            ok = await _complete(c, "synth-v1", max_tokens=2)
            doc = desired(ROUTES, generation=2)
            doc.base.version = "v9"
            st = await w.apply(doc)
            still = await _complete(c, "synth-v1", max_tokens=2)
            return first, w.variant_reason, ok[0], st, still[0]
    first, reason, ok, st, still = run(go())
    assert first.variant == "fp32" and "bnb-int8" in reason and ok == 200  # CPU: reported fallback
    assert "__base__" in st.failed and "restart" in st.failed["__base__"]
    assert still == 200 and st.loaded == ["critic-v1", "synth-v1", "synth-v2"]  # keeps serving the old set
