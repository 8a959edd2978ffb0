"""OpenAI conformance as the official ``openai`` Python client sees it: the
real worker server (aiohttp on a TCP port, tiny Mistral on the CPU, real
adapters) driven by ``openai.OpenAI`` / ``openai.AsyncOpenAI``."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import urllib.request

import openai
import pytest

PROMPT = "tell me about the cat and the dog"
ROUTES = {"synthesizer": [("synth-v1", 100), ("synth-v2", 0)], "critic": [("critic-v1", 100)]}
LIMIT = 40  # the worker's --max-tokens-limit here


@pytest.fixture(scope="module")
def server(worker_store):
    """The worker's app on 127.0.0.1:<free port>, its event loop on a thread."""
    from aiohttp import web

    from loraplane.worker.runtime import Worker, WorkerConfig
    from loraplane.worker.server import create_app


    loop = asyncio.new_event_loop()
    state: dict = {}
    ready = threading.Event()

    def run():
        asyncio.set_event_loop(loop)

        async def start():
            w = Worker(WorkerConfig(store_root=str(worker_store), max_tokens_limit=LIMIT))
            await w.apply(state["doc"])
            runner = web.AppRunner(create_app(w))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            state.update(w=w, runner=runner, port=site._server.sockets[0].getsockname()[1])

        try:
            loop.run_until_complete(start())
        finally:
            ready.set()
        loop.run_forever()

    state["doc"] = _desired(ROUTES)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(120) and "port" in state, "worker did not start"
    state["url"] = f"http://127.0.0.1:{state['port']}"
    yield state
    asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)
    state["w"].close()


def _desired(routes):
    from loraplane.contracts.desired import DesiredState

    adapters = [("synth-v1", "synth", "v1", "synthesizer"), ("synth-v2", "synth", "v2", "synthesizer"),
                ("critic-v1", "critic", "v1", "critic")]
    return DesiredState.model_validate({
        "pool": "p", "generation": 1, "base": {"name": "tiny", "version": "v1", "variant": "fp32"},
        "adapters": [{"name": n, "storeName": s, "version": v, "task": t} for n, s, v, t in adapters],
        "routes": {t: [{"adapter": a, "weight": w} for a, w in bs] for t, bs in routes.items()},
    })


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="x", max_retries=0, timeout=60)


def _metric(server, status: str) -> float:
    text = urllib.request.urlopen(server["url"] + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("loraplane_worker_requests_total{") and f'status="{status}"' in line)


def _wait_idle(server, timeout=5.0) -> float:
    w, t0 = server["w"], time.monotonic()
    while w.engine.busy:
        assert time.monotonic() - t0 < timeout, "generation continued after the client went away"
        time.sleep(0.01)
    return time.monotonic() - t0


CHAT = [{"role": "user", "content": "hello world"}]


# ------------------------------------------------------------------ what already behaved
def test_models_list_and_retrieve(client):
    models = client.models.list().data
    ids = {m.id for m in models}
    assert {"synthesizer", "critic", "synth-v1", "synth-v2", "critic-v1", "tiny"} <= ids
    assert all(isinstance(m.created, int) and m.created > 0 and m.object == "model" for m in models)
    m = client.models.retrieve("synth-v2")
    assert m.id == "synth-v2" and m.owned_by == "default" and isinstance(m.created, int)
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("nope")
    assert e.value.code == "model_not_found"


def test_chat_and_completions_with_and_without_streaming(client):
    whole = client.chat.completions.create(model="critic", messages=CHAT, max_tokens=6, temperature=0)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens <= 6 and whole.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model="critic", messages=CHAT, max_tokens=6, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason

    comp = client.completions.create(model="synth-v1", prompt=PROMPT, max_tokens=5, temperature=0)
    assert comp.object == "text_completion" and isinstance(comp.choices[0].text, str)
    streamed = list(client.completions.create(model="synth-v1", prompt=PROMPT, max_tokens=5, temperature=0,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == comp.choices[0].text


def test_stop_and_max_tokens(client, server, helpers):
    # random weights emit ids outside the tiny vocabulary (decoded as nothing): banned, so 12 words come
    bias, model = helpers.words_only(server["w"].tokenizer), "synth-v1"
    free = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0, logit_bias=bias,
                                     extra_body={"ignore_eos": True})
    assert free.usage.completion_tokens == 12 and free.choices[0].finish_reason == "length"
    word = free.choices[0].text.split()[2]
    stopped = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0, stop=[word],
                                        logit_bias=bias, extra_body={"ignore_eos": True})
    text = free.choices[0].text
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].text == text[: text.find(word)]


def test_n_above_one_refused_and_n_null_accepted(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="critic", messages=CHAT, max_tokens=2, n=2)
    assert e.value.param == "n"
    ok = client.chat.completions.create(model="critic", messages=CHAT, max_tokens=2, n=None)
    assert len(ok.choices) == 1


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-task", messages=CHAT, max_tokens=2)
    assert e.value.code == "model_not_found" and e.value.type == "invalid_request_error" and e.value.param == "model"


def test_huge_prompt_refused_cleanly(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="critic", messages=[{"role": "user", "content": "cat " * 25_000}],
                                       max_tokens=2)
    assert e.value.code == "context_length_exceeded" and e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="synth-v1", prompt=("hello world " * 10_000)[:100_000], max_tokens=2)
    assert e.value.code == "context_length_exceeded"


def test_fifty_concurrent_requests(server):
    async def go():
        c = openai.AsyncOpenAI(base_url=server["url"] + "/v1", api_key="x", max_retries=0, timeout=120)
        try:
            return await asyncio.gather(*[
                c.chat.completions.create(model=("synthesizer", "critic", "synth-v2")[i % 3],
                                          messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=4)
                for i in range(50)])
        finally:
            await c.close()
    res = asyncio.run(go())
    assert len(res) == 50 and all(r.choices[0].finish_reason in ("stop", "length") for r in res)


# ------------------------------------------------------------------ inputs that were refused
def test_text_parts_and_tool_messages_accepted(client):
    parts = client.chat.completions.create(
        model="critic", max_tokens=3, temperature=0,
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]}])
    plain = client.chat.completions.create(model="critic", messages=CHAT, max_tokens=3, temperature=0)
    assert parts.choices[0].message.content == plain.choices[0].message.content
    tool = client.chat.completions.create(model="critic", max_tokens=3, messages=[
        {"role": "user", "content": "what is the weather"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sun"}])
    assert tool.choices[0].message.role == "assistant"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="critic", max_tokens=3, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}])
    assert e.value.param == "messages[0].content"


def test_chat_without_max_tokens_generates_up_to_the_worker_limit(client):
    r = client.chat.completions.create(model="critic", messages=CHAT, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == LIMIT and r.choices[0].finish_reason == "length"


# ------------------------------------------------------------------ parameters now implemented
def test_seed_makes_sampling_deterministic(client):
    def draw(seed):  # text and per-token logprobs (ids outside the tiny vocabulary decode to nothing)
        ch = client.completions.create(model="synth-v1", prompt=PROMPT, max_tokens=16, temperature=1.0, seed=seed,
                                       logprobs=0, extra_body={"ignore_eos": True}).choices[0]
        return ch.text, [round(v, 5) for v in ch.logprobs.token_logprobs]
    a, b, c = draw(7), draw(7), draw(8)
    assert a == b and a != c


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="critic", messages=CHAT, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3 and t.bytes == list(t.token.encode())
        assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5  # greedy: the chosen token is the top one
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
    chunks = list(client.chat.completions.create(model="critic", messages=CHAT, max_tokens=6, temperature=0,
                                                 logprobs=True, extra_body={"ignore_eos": True}, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in content]
    assert all(t.top_logprobs == [] for t in streamed)
    plain = client.chat.completions.create(model="critic", messages=CHAT, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_completions_logprobs(client):
    r = client.completions.create(model="synth-v1", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(len(d) <= 2 and max(d.values()) <= 0 for d in lp.top_logprobs)
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0


def test_stream_options_include_usage(client):
    chunks = list(client.chat.completions.create(model="critic", messages=CHAT, max_tokens=4, stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 4 and last.usage.total_tokens > 4
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(client.completions.create(model="synth-v1", prompt=PROMPT, max_tokens=2, stream=True))
    assert all(c.usage is None for c in plain)


def test_logit_bias(client, server):
    tok = server["w"].tokenizer
    cat = tok.convert_tokens_to_ids("cat")
    forced = client.completions.create(model="synth-v1", prompt=PROMPT, max_tokens=4, temperature=0,
                                       logit_bias={str(cat): 100}, extra_body={"ignore_eos": True})
    assert forced.choices[0].text.split() == ["cat"] * 4
    free = client.completions.create(model="synth-v1", prompt=PROMPT, max_tokens=1, temperature=0,
                                     logprobs=0, extra_body={"ignore_eos": True})
    first = tok.convert_tokens_to_ids(free.choices[0].logprobs.tokens[0]) if free.choices[0].text else None
    if first is not None and first != tok.unk_token_id:
        banned = client.completions.create(model="synth-v1", prompt=PROMPT, max_tokens=1, temperature=0,
                                           logit_bias={str(first): -100}, extra_body={"ignore_eos": True})
        assert banned.choices[0].text != free.choices[0].text
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="synth-v1", prompt=PROMPT, max_tokens=1, logit_bias={"999999": 1})
    assert e.value.param == "logit_bias"


@pytest.mark.parametrize("kind,kwargs,param", [
    ("completions", {"echo": True}, "echo"),
    ("completions", {"best_of": 2}, "best_of"),
    ("completions", {"suffix": "end"}, "suffix"),
    ("chat", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ("chat", {"tool_choice": "required"}, "tool_choice"),
    ("chat", {"response_format": {"type": "json_object"}}, "response_format"),
    ("chat", {"presence_penalty": 0.5}, "presence_penalty"),
    ("chat", {"frequency_penalty": 1.0}, "frequency_penalty"),
    ("chat", {"extra_body": {"top_k": 5}}, "top_k"),
    ("completions", {"extra_body": {"repetition_penalty": 1.1}}, "repetition_penalty"),
    ("chat", {"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
])
def test_unsupported_parameters_refused_by_name(client, kind, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        if kind == "chat":
            client.chat.completions.create(model="critic", messages=CHAT, max_tokens=2, **kwargs)
        else:
            client.completions.create(model="synth-v1", prompt=PROMPT, max_tokens=2, **kwargs)
    assert e.value.param == param and param in str(e.value.message)
    assert e.value.type == "invalid_request_error"


def test_defaults_that_ask_for_nothing_are_accepted(client):
    r = client.chat.completions.create(model="critic", messages=CHAT, max_tokens=2, presence_penalty=0,
                                       response_format={"type": "text"}, tool_choice="none", user="u1")
    assert r.choices[0].message.role == "assistant"
    r = client.completions.create(model="synth-v1", prompt=PROMPT, max_tokens=2, echo=False, best_of=1)
    assert r.choices


# ------------------------------------------------------------------ clients that go away
def test_client_timeout_stops_generation(server, caplog):
    impatient = openai.OpenAI(base_url=server["url"] + "/v1", api_key="x", max_retries=0, timeout=0.3)
    before = _metric(server, "499")
    w = server["w"]
    saved = w.cfg.max_tokens_limit
    w.cfg.max_tokens_limit = 2000
    try:
        with pytest.raises(openai.APITimeoutError):
            impatient.completions.create(model="synth-v1", prompt=PROMPT, max_tokens=2000,
                                         extra_body={"ignore_eos": True})
        assert _wait_idle(server) < 2
    finally:
        w.cfg.max_tokens_limit = saved
    deadline = time.monotonic() + 2
    while _metric(server, "499") < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(server, "499") == before + 1


def test_dropped_stream_is_a_disconnect_without_traceback(server, client, caplog):
    w = server["w"]
    saved = w.cfg.max_tokens_limit
    w.cfg.max_tokens_limit = 2000
    before = {s: _metric(server, s) for s in ("499", "200", "500")}
    try:
        with caplog.at_level(logging.DEBUG):
            stream = client.chat.completions.create(model="critic", messages=CHAT, max_tokens=2000, stream=True,
                                                    extra_body={"ignore_eos": True})
            for i, _ in enumerate(stream):
                if i == 3:
                    break
            stream.close()
            assert _wait_idle(server) < 2
            time.sleep(0.3)
    finally:
        w.cfg.max_tokens_limit = saved
    assert _metric(server, "499") == before["499"] + 1
    assert _metric(server, "200") == before["200"] and _metric(server, "500") == before["500"]
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def test_error_bodies_match_openai(server):
    import json as _json

    req = urllib.request.Request(server["url"] + "/v1/chat/completions", method="POST",
                                 data=_json.dumps({"model": "nope", "messages": CHAT}).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    body = _json.loads(e.value.read())
    assert e.value.code == 404
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "model_not_found"
    assert body["error"]["param"] == "model" and re.search("nope", body["error"]["message"])


# ------------------------------------------------------------------ admission
def test_full_wait_queue_is_a_rate_limit_error_with_retry_after(client, server):
    """Past the wait-queue limit the worker answers 429 in OpenAI's format with
    Retry-After: the official client raises RateLimitError (and, with its
    default retries, waits Retry-After and tries again). Queued ones finish."""
    eng = server["w"].engine
    saved = eng.max_queue
    gate = threading.Event()
    before = _metric(server, "429")
    try:
        eng.max_queue = 2
        eng.call(lambda: gate.wait(20))  # the engine thread is busy: nothing is admitted meanwhile
        queued = [client.completions.create(model="synth-v1", prompt=PROMPT, max_tokens=4, stream=True)
                  for _ in range(2)]  # a stream returns once its request is queued
        with pytest.raises(openai.RateLimitError) as e:
            client.completions.create(model="synth-v1", prompt=PROMPT, max_tokens=4)
        assert e.value.status_code == 429 and e.value.code == "rate_limit_exceeded"
        assert e.value.response.headers["retry-after"] == "1"
        assert e.value.body["type"] == "requests" and "queue limit 2" in e.value.message
    finally:
        eng.max_queue = saved
        gate.set()
    for s in queued:
        chunks = list(s)
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert _metric(server, "429") == before + 1
