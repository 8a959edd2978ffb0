"""The worker under failure, over HTTP (tiny Mistral, CPU): engine faults answer
in OpenAI's error format and never stall a swap; every request outcome is
counted with its real status (pre-generation errors, failed or timed-out
streams, client disconnects apart); a same-name content swap never fails a
request; tokenisation runs off the event loop; the CPU guard refuses a large
base unless asked."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time

import pytest

from loraplane.worker.engine import Fault

PROMPT = "tell me about the cat and the dog"
ONE = {"synthesizer": [("synth-v1", 100)]}
ONE_ADAPTER = [("synth-v1", "synth", "v1", "synthesizer")]


def _count(metrics: str, status: str, adapter: str | None = None, task: str | None = None) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith("loraplane_worker_requests_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels["status"] == status and (adapter is None or labels["adapter"] == adapter) \
                and (task is None or labels["task"] == task):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _metrics(c) -> str:
    return await (await c.get("/metrics")).text()


async def _post(c, path="/v1/completions", **body):
    body = {"model": "synth-v1", "prompt": PROMPT, "max_tokens": 4, "temperature": 0} | body
    r = await c.post(path, json={k: v for k, v in body.items() if v is not None})
    return r.status, await r.json()


async def _idle(w, timeout=5.0) -> float:
    """Seconds until the engine has nothing queued or running."""
    t0 = time.monotonic()
    while w.engine.busy:
        assert time.monotonic() - t0 < timeout, "the engine kept working for a request nobody waits for"
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


# ------------------------------------------------------------------ item 1 over HTTP
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_engine_fault_answers_openai_error_and_swap_does_not_stall(worker_store, run, helpers, phase):
    async def go():
        async with helpers.running_worker(worker_store, helpers.desired(ONE, adapters=ONE_ADAPTER)) as (w, c):
            w.engine.fault = Fault(phase, times=1)
            t0 = time.monotonic()
            status, body = await _post(c, max_tokens=8)
            took = time.monotonic() - t0
            assert w.engine.in_use("synth-v1") == 0
            ok = await _post(c)
            # same name, new content: the old content must be freed although a request failed on it
            st = await asyncio.wait_for(w.apply(helpers.desired(
                ONE, adapters=[("synth-v1", "synth", "v2", "synthesizer")], generation=2)), 10)
            for _ in range(100):
                if "synth-v1" not in w.bank.adapters:
                    break
                await asyncio.sleep(0.05)
            return status, body, took, ok, st, set(w.bank.adapters), await _metrics(c)
    status, body, took, ok, st, bank, m = run(go())
    assert status == 500 and took < 5
    assert body["error"]["type"] == "server_error" and phase in body["error"]["message"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert ok[0] == 200
    assert st.loaded == ["synth-v1"] and bank == {next(iter(bank))} and "synth-v1" not in bank
    assert _count(m, "500", "synth-v1") == 1


# ------------------------------------------------------------------ item 4: counting
def test_pre_generation_errors_are_counted(worker_store, run, helpers):
    async def go():
        async with helpers.running_worker(worker_store, None) as (w, c):
            not_ready = await _post(c)
            await w.apply(helpers.desired(ONE, adapters=ONE_ADAPTER))
            bad_param = await _post(c, temperature=7)
            unknown = await _post(c, model="nope")
            bad_key = await _post(c, route_key=5)

            class Broken:  # a tokenizer that crashes: a 500 counted against the routed version
                def __call__(self, *a, **k):
                    raise RuntimeError("tokenizer exploded")

            saved, w.tokenizer = w.tokenizer, Broken()
            crashed = await _post(c)
            w.tokenizer = saved
            return not_ready, bad_param, unknown, bad_key, crashed, await _metrics(c)
    not_ready, bad_param, unknown, bad_key, crashed, m = run(go())
    assert not_ready[0] == 503 and bad_param[0] == 400 and unknown[0] == 404 and bad_key[0] == 400
    assert crashed[0] == 500 and crashed[1]["error"]["type"] == "server_error"
    assert _count(m, "503") == 1
    assert _count(m, "400") == 2
    assert _count(m, "404") == 1
    assert _count(m, "500", "synth-v1", "-") == 1


def test_stream_failing_or_timing_out_midway_counts_as_error(worker_store, run, helpers):
    async def go():
        async with helpers.running_worker(worker_store, helpers.desired(ONE, adapters=ONE_ADAPTER),
                                          max_tokens_limit=4000) as (w, c):
            body = {"model": "synthesizer", "prompt": PROMPT, "max_tokens": 400, "ignore_eos": True, "stream": True}
            w.engine.fault = Fault("decode", times=1)
            r = await c.post("/v1/completions", json=body)
            failed = r.status, await r.text()
            w.cfg.request_timeout_s = 0.3
            r = await c.post("/v1/completions", json=body | {"max_tokens": 1500})
            timed_out = r.status, await r.text()
            w.cfg.request_timeout_s = 60
            await _idle(w)
            return failed, timed_out, await _metrics(c)
    failed, timed_out, m = run(go())
    assert failed[0] == 200 and timed_out[0] == 200  # the status line was sent before the failure
    for _, raw in (failed, timed_out):
        events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
        assert "error" in events[-1] and set(events[-1]["error"]) == {"message", "type", "param", "code"}
    assert _count(m, "500", "synth-v1", "synthesizer") == 1
    assert _count(m, "504", "synth-v1", "synthesizer") == 1
    assert _count(m, "200") == 0


def test_client_disconnect_stops_generation_and_is_counted_apart(worker_store, run, helpers, caplog):
    import aiohttp

    async def go():
        async with helpers.running_worker(worker_store, helpers.desired(ONE, adapters=ONE_ADAPTER),
                                          max_tokens_limit=2000) as (w, c):
            body = {"model": "synth-v1", "prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True}
            # non-streaming: the client gives up after 0.5 s
            seen: list = []
            orig_submit = w.engine.submit

            def spy(req, **kw):
                seen.append(req)
                return orig_submit(req, **kw)
            w.engine.submit = spy
            with pytest.raises(asyncio.TimeoutError):
                await c.post("/v1/completions", json=body, timeout=aiohttp.ClientTimeout(total=0.5))
            stop1 = await _idle(w)
            # streaming: read two events, then drop the connection
            r = await c.post("/v1/completions", json=body | {"stream": True})
            await r.content.readline()
            await r.content.readline()
            r.close()
            stop2 = await _idle(w)
            for _ in range(100):  # the handlers count their outcome as they return: on a loaded box, later
                m = await _metrics(c)
                if _count(m, "499", "synth-v1") >= 2:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            return stop1, stop2, [len(q.generated) for q in seen], await _metrics(c)
    with caplog.at_level(logging.DEBUG):
        stop1, stop2, generated, m = run(go())
    assert stop1 < 2 and stop2 < 2
    assert len(generated) == 2 and all(n < 2000 for n in generated)
    assert _count(m, "499", "synth-v1") == 2
    assert _count(m, "500") == 0 and _count(m, "200") == 0
    tracebacks = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


# ------------------------------------------------------------------ item 5
def test_same_name_content_swap_never_fails_a_request(worker_store, run, helpers):
    async def go():
        async with helpers.running_worker(worker_store, helpers.desired(ONE, adapters=ONE_ADAPTER),
                                          max_tokens_limit=4000) as (w, c):
            words = helpers.words_only(w.tokenizer)  # never an empty text: the two contents' texts can be compared
            before = await _post(c, model="synthesizer", max_tokens=8, logit_bias=words)
            results, stop = [], asyncio.Event()

            async def client_loop():
                while not stop.is_set():
                    results.append(await _post(c, model="synthesizer", max_tokens=6))

            loops = [asyncio.create_task(client_loop()) for _ in range(4)]
            # a long request on the old content is in flight during the swap
            long = asyncio.create_task(_post(c, model="synth-v1", max_tokens=300, ignore_eos=True))
            while w.engine.busy < 2:
                await asyncio.sleep(0.005)
            t0 = time.monotonic()
            await w.apply(helpers.desired(ONE, adapters=[("synth-v1", "synth", "v2", "synthesizer")], generation=2))
            apply_s = time.monotonic() - t0
            long_done_at_swap = long.done()
            after = await _post(c, model="synthesizer", max_tokens=8, logit_bias=words)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*loops)
            long_res = await long
            for _ in range(100):
                if len(w.bank.adapters) == 1:
                    break
                await asyncio.sleep(0.05)
            return before, after, results, long_res, long_done_at_swap, apply_s, dict(w.bank.adapters), \
                await _metrics(c)
    before, after, results, long_res, long_done_at_swap, apply_s, bank, m = run(go())
    assert results and all(s == 200 for s, _ in results), [b for s, b in results if s != 200]
    assert long_res[0] == 200 and long_res[1]["usage"]["completion_tokens"] == 300
    assert not long_done_at_swap  # the swap did not wait for the in-flight request
    assert before[1]["choices"][0]["text"] != after[1]["choices"][0]["text"]  # new content serves
    assert after[1]["adapter"] == "synth-v1" and len(bank) == 1 and "synth-v1" not in bank  # old content freed
    assert _count(m, "503") == 0


# ------------------------------------------------------------------ item 5: errors and tokenisation
def test_errors_are_in_openai_format(worker_store, run, helpers):
    async def go():
        out = {}
        async with helpers.running_worker(worker_store, helpers.desired(ONE, adapters=ONE_ADAPTER)) as (w, c):
            out["unknown"] = await _post(c, model="nope")
            out["route_key"] = await _post(c, route_key={"user": 1})
            out["bad_temp"] = await _post(c, temperature="hot")
            out["ctx"] = await _post(c, prompt="cat " * 3000)
            saved = w.tokenizer.chat_template
            w.tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
            out["template"] = await _post(c, "/v1/chat/completions", messages=[{"role": "user", "content": "hi"}],
                                          prompt=None)
            w.tokenizer.chat_template = saved
            r = await c.get("/v1/nothing-here")
            out["route404"] = r.status, await r.json()
            r = await c.get("/v1/completions")
            out["method"] = r.status, await r.json()
        return out
    o = run(go())
    for k, (status, body) in o.items():
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, k
        assert body["error"]["code"] is None or isinstance(body["error"]["code"], str), k
        assert status >= 400, k
    assert o["unknown"][0] == 404
    assert o["unknown"][1]["error"] | {"message": ""} == {"message": "", "type": "invalid_request_error",
                                                          "param": "model", "code": "model_not_found"}
    assert o["route_key"][0] == 400 and o["route_key"][1]["error"]["param"] == "route_key"
    assert o["bad_temp"][0] == 400 and o["bad_temp"][1]["error"]["param"] == "temperature"
    assert o["ctx"][0] == 400 and o["ctx"][1]["error"]["code"] == "context_length_exceeded"
    assert o["template"][0] == 400 and o["template"][1]["error"]["param"] == "messages"
    assert "alternate" in o["template"][1]["error"]["message"]
    assert o["route404"][0] == 404 and o["method"][0] == 405


def test_tokenisation_runs_off_the_event_loop(worker_store, run, helpers, monkeypatch):
    from loraplane.worker import server

    threads = []
    orig = server._prompt_ids

    def spy(*a):
        threads.append(threading.current_thread())
        return orig(*a)
    monkeypatch.setattr(server, "_prompt_ids", spy)

    async def go():
        async with helpers.running_worker(worker_store, helpers.desired(ONE, adapters=ONE_ADAPTER)) as (w, c):
            loop_thread = threading.current_thread()
            a = await _post(c)
            b = await _post(c, "/v1/chat/completions", prompt=None, messages=[{"role": "user", "content": "hi"}])
            return loop_thread, a, b
    loop_thread, a, b = run(go())
    assert a[0] == b[0] == 200 and len(threads) == 2
    assert all(t is not loop_thread for t in threads)


def test_large_base_refused_on_cpu_unless_allowed(worker_store, tiny_base_dir, run, helpers):
    from loraplane.worker.loader import count_parameters

    from transformers import AutoModelForCausalLM

    n = count_parameters(tiny_base_dir)
    assert n == AutoModelForCausalLM.from_pretrained(tiny_base_dir).num_parameters()

    async def go():
        doc = helpers.desired(ONE, adapters=ONE_ADAPTER)
        async with helpers.running_worker(worker_store, doc, cpu_max_params=n - 1) as (w, c):
            refused = w.status(), (await c.get("/readyz")).status, await _post(c)
        async with helpers.running_worker(worker_store, doc, cpu_max_params=n - 1, allow_large_cpu_model=True) as (w, c):
            allowed = w.status(), await _post(c)
        return refused, allowed
    (st, ready, req), (st2, ok) = run(go())
    assert "__base__" in st.failed and "--allow-large-cpu-model" in st.failed["__base__"]
    assert "on the CPU" in st.failed["__base__"] and ready == 503
    assert req[0] == 503 and "--allow-large-cpu-model" in req[1]["error"]["message"]
    assert st2.ready and ok[0] == 200


def test_stream_only_fault_fails_streams_midway_and_is_counted(worker_store, run, helpers, monkeypatch):
    """LORAPLANE_FAULT_ADAPTER_STREAM_ERROR_RATE (test-only): a canary version that
    fails streamed responses after their first token, and serves the rest."""
    from loraplane.worker.runtime import WorkerConfig

    monkeypatch.setenv("LORAPLANE_FAULT_ADAPTER_STREAM_ERROR_RATE", "synth-v2=1")
    cfg = WorkerConfig.faults_from_env()
    routes = {"synthesizer": [("synth-v1", 50), ("synth-v2", 50)]}

    async def go():
        async with helpers.running_worker(worker_store, helpers.desired(routes),
                                          fault_stream_error_rate=cfg.fault_stream_error_rate) as (w, c):
            out, words = {}, helpers.words_only(w.tokenizer)  # every token a word: the first chunk has text
            for model in ("synth-v1", "synth-v2"):
                r = await c.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 6,
                                                          "ignore_eos": True, "stream": True, "logit_bias": words})
                out[model] = r.status, await r.text()
            out["plain"] = await _post(c, model="synth-v2")
            await _idle(w)
            return out, await _metrics(c)
    out, m = run(go())
    assert cfg.fault_stream_error_rate == {"synth-v2": 1.0}
    good, bad = out["synth-v1"][1], out["synth-v2"][1]
    assert "error" not in good and good.rstrip().endswith("[DONE]")
    events = [json.loads(line[6:]) for line in bad.splitlines() if line.startswith("data: {")]
    assert len(events) >= 2 and events[0]["choices"][0]["text"]  # a first chunk went out before the fault
    assert "injected stream fault" in events[-1]["error"]["message"]
    assert out["plain"][0] == 200
    assert _count(m, "500", "synth-v2") == 1 and _count(m, "200", "synth-v2") == 1
    assert _count(m, "200", "synth-v1") == 1
