"""Structured output and tool calling, as the official ``openai`` client sees
them: the real worker server on a tiny random-weight Mistral whose tokenizer
is byte-level BPE (the word-level tiny tokenizer cannot spell ``{``), with
real adapters. Random weights write garbage, so every schema-valid answer
here is the grammar's doing."""

from __future__ import annotations

import asyncio
import json
import threading

import openai
import pytest

LIMIT = 200
ROUTES = {"extract": [("ex-v1", 100)], "judge": [("judge-v1", 100)], "contracted": [("con-v1", 100)]}

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "verdict": {"enum": ["good", "bad", "unsure"]},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["red", "blue"]}, "maxItems": 3},
    },
    "required": ["name", "verdict", "ok", "tags"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                                     "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}},
                                       "required": ["zone"], "additionalProperties": False}}}
CHAT = [{"role": "user", "content": "tell me about the cat"}]
VERDICT = {"type": "object", "properties": {"verdict": {"enum": ["good", "bad"]}, "ok": {"type": "boolean"}},
           "required": ["verdict", "ok"], "additionalProperties": False}
TALLY = {"type": "object", "properties": {"n": {"enum": ["one", "two"]}}, "required": ["n"],
         "additionalProperties": False}


def check(value, schema) -> None:
    """A JSON-schema check for the keywords these tests use (jsonschema is not
    a dependency); an unknown keyword fails the test rather than passing."""
    known = {"type", "properties", "required", "additionalProperties", "enum", "items", "maxItems", "maxLength"}
    assert set(schema) <= known, f"checker does not know {set(schema) - known}"
    t = schema.get("type")
    types = {"object": dict, "string": str, "boolean": bool, "array": list}
    if t:
        assert isinstance(value, types[t]), f"{value!r} is not {t}"
    if "enum" in schema:
        assert value in schema["enum"], f"{value!r} not in {schema['enum']}"
    if t == "string" and "maxLength" in schema:
        assert len(value) <= schema["maxLength"]
    if t == "array":
        assert len(value) <= schema.get("maxItems", 10**9)
        for v in value:
            check(v, schema["items"])
    if t == "object":
        for k in schema.get("required", []):
            assert k in value, f"missing {k}"
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(props), f"extra keys {set(value) - set(props)}"
        for k, v in value.items():
            if k in props:
                check(v, props[k])


def test_checker_rejects_what_it_should():
    for bad in ({"name": "x", "verdict": "meh", "ok": True, "tags": []},
                {"name": "x", "verdict": "good", "ok": True},
                {"name": "x", "verdict": "good", "ok": True, "tags": [], "extra": 1},
                {"name": "far too long", "verdict": "good", "ok": True, "tags": []}):
        with pytest.raises(AssertionError):
            check(bad, PERSON)
    check({"name": "x", "verdict": "good", "ok": False, "tags": ["red"]}, PERSON)


@pytest.fixture(scope="module")
def bpe_store(tmp_path_factory):
    from loraplane.modelstore import ModelStore
    from loraplane.tiny_model import build_adapter, build_base

    tmp = tmp_path_factory.mktemp("bpe")
    base = build_base(tmp / "base", tokenizer="bpe")
    root = tmp / "store"
    store = ModelStore(root)
    store.publish(base, kind="base", name="tinybpe", version="v1")
    for name, seed in (("ex", 11), ("judge", 12), ("con", 13), ("badcon", 14)):
        adir = build_adapter(base, tmp / f"a-{name}", seed=seed)
        if name == "con":  # an output contract stored with the version (store-verified like its weights)
            (adir / "output_schema.json").write_text(json.dumps(VERDICT))
        if name == "badcon":
            (adir / "output_schema.json").write_text(json.dumps({"type": "nosuchtype"}))
        store.publish(adir, kind="adapter", name=name, version="v1", base_name="tinybpe", task=name)
    return root


@pytest.fixture(scope="module")
def server(bpe_store):
    from aiohttp import web

    from loraplane.contracts.desired import DesiredState
    from loraplane.worker.runtime import Worker, WorkerConfig
    from loraplane.worker.server import create_app

    loop = asyncio.new_event_loop()
    state: dict = {}
    ready = threading.Event()
    doc = DesiredState.model_validate({
        "pool": "p", "generation": 1, "base": {"name": "tinybpe", "version": "v1", "variant": "fp32"},
        "adapters": [{"name": "ex-v1", "storeName": "ex", "version": "v1", "task": "extract"},
                     {"name": "judge-v1", "storeName": "judge", "version": "v1", "task": "judge",
                      "outputJsonSchema": TALLY},
                     {"name": "con-v1", "storeName": "con", "version": "v1", "task": "contracted"},
                     {"name": "badcon-v1", "storeName": "badcon", "version": "v1", "task": "contracted"}],
        "routes": {t: [{"adapter": a, "weight": w} for a, w in bs] for t, bs in ROUTES.items()},
    })

    def run():
        asyncio.set_event_loop(loop)

        async def start():
            w = Worker(WorkerConfig(store_root=str(bpe_store), max_tokens_limit=LIMIT, max_wait_ms=50))
            await w.apply(doc)
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

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(120) and "port" in state, "worker did not start"
    state["url"] = f"http://127.0.0.1:{state['port']}/v1"
    yield state
    asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)
    state["w"].close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["url"], api_key="x", max_retries=0, timeout=120)


def _schema_format(schema=PERSON):
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


def test_unconstrained_output_is_not_json(client):
    """The premise: without a grammar this model does not write JSON."""
    r = client.chat.completions.create(model="extract", messages=CHAT, max_tokens=30, temperature=0)
    with pytest.raises(ValueError):
        json.loads(r.choices[0].message.content)


@pytest.mark.parametrize("model", ["extract", "judge", "ex-v1", "tinybpe"])
def test_json_schema_chat_is_valid_on_every_adapter(client, model):
    for temperature in (0, 1.0):
        r = client.chat.completions.create(model=model, messages=CHAT, max_tokens=LIMIT, temperature=temperature,
                                           seed=3, response_format=_schema_format())
        c = r.choices[0]
        assert c.finish_reason == "stop", c
        check(json.loads(c.message.content), PERSON)


def test_json_schema_on_completions_and_streaming(client):
    r = client.completions.create(model="extract", prompt="the cat", max_tokens=LIMIT, temperature=0.7, seed=1,
                                  extra_body={"response_format": _schema_format()})
    assert r.choices[0].finish_reason == "stop"
    check(json.loads(r.choices[0].text), PERSON)
    chunks = list(client.chat.completions.create(model="judge", messages=CHAT, max_tokens=LIMIT, temperature=0,
                                                 response_format=_schema_format(), stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(json.loads(text), PERSON)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_json_object_mode(client):
    r = client.chat.completions.create(model="extract", messages=CHAT, max_tokens=LIMIT, temperature=0,
                                       response_format={"type": "json_object"})
    c = r.choices[0]
    if c.finish_reason == "stop":
        assert isinstance(json.loads(c.message.content), dict)
    else:  # an unbounded object may run out of budget; it must still be a JSON object's beginning
        assert c.finish_reason == "length" and c.message.content.startswith("{")


def test_max_tokens_ends_mid_json_with_length(client):
    r = client.chat.completions.create(model="extract", messages=CHAT, max_tokens=5, temperature=0,
                                       response_format=_schema_format())
    c = r.choices[0]
    assert c.finish_reason == "length" and r.usage.completion_tokens == 5
    assert c.message.content.startswith('{"name"')
    with pytest.raises(ValueError):
        json.loads(c.message.content)  # the truncated prefix is returned as is


def test_per_row_grammars_in_one_mixed_adapter_batch(server):
    """Different grammars, no grammar and different adapters share decode steps."""
    w = server["w"]
    other = {"type": "object", "properties": {"n": {"enum": ["one", "two"]}}, "required": ["n"],
             "additionalProperties": False}
    seen: list[int] = []
    orig = w.engine.obs.batch
    w.engine.obs.batch = lambda size, kind: (seen.append(size), orig(size, kind))

    async def go():
        c = openai.AsyncOpenAI(base_url=server["url"], api_key="x", max_retries=0, timeout=120)
        a, b = {"response_format": _schema_format()}, {"response_format": _schema_format(other)}
        plan = [("extract", a), ("judge", b), ("tinybpe", {}), ("extract", b), ("judge", {}), ("tinybpe", a)]
        jobs = [(kw, c.chat.completions.create(model=m, messages=CHAT, max_tokens=60, temperature=0, **kw))
                for m, kw in plan]
        outs = await asyncio.gather(*[j for _, j in jobs])
        return [(kw, o) for (kw, _), o in zip(jobs, outs)]

    try:
        results = asyncio.run(go())
    finally:
        w.engine.obs.batch = orig
    assert max(seen) >= 4, f"the requests did not share a batch: {seen}"
    kinds = set()
    for kw, r in results:
        text = r.choices[0].message.content
        rf = kw.get("response_format")
        if rf is None:
            kinds.add("free")
            continue
        schema = rf["json_schema"]["schema"]
        kinds.add(json.dumps(schema))
        assert r.choices[0].finish_reason == "stop"
        check(json.loads(text), schema)
    assert len(kinds) == 3


@pytest.mark.parametrize("rf", [
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nosuchtype"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": 5}}}},
    {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}},
    {"type": "yaml"},
])
def test_invalid_schema_is_an_openai_400(client, server, rf):
    busy_before = server["w"].engine.busy
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="extract", messages=CHAT, max_tokens=4, response_format=rf)
    assert e.value.status_code == 400 and e.value.param == "response_format"
    assert e.value.type == "invalid_request_error" and "response_format" in e.value.message
    assert server["w"].engine.busy == busy_before


def _args(call):
    return json.loads(call.function.arguments)


def test_tool_call_required_and_named(client):
    r = client.chat.completions.create(model="extract", messages=CHAT, max_tokens=LIMIT, temperature=0,
                                       tools=[WEATHER, TIME], tool_choice="required")
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    (call,) = c.message.tool_calls
    assert call.type == "function" and len(call.id) == 9 and call.id.isalnum()
    schema = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]["function"]["parameters"]
    assert isinstance(call.function.arguments, str)
    check(_args(call), schema)
    r = client.chat.completions.create(model="judge", messages=CHAT, max_tokens=LIMIT, temperature=1.0, seed=5,
                                       tools=[WEATHER, TIME],
                                       tool_choice={"type": "function", "function": {"name": "get_time"}})
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_time" and r.choices[0].finish_reason == "tool_calls"
    check(_args(call), TIME["function"]["parameters"])


def test_tool_call_streamed_as_openai_deltas(client):
    whole = client.chat.completions.create(model="extract", messages=CHAT, max_tokens=LIMIT, temperature=0,
                                           tools=[WEATHER], tool_choice="required")
    chunks = list(client.chat.completions.create(model="extract", messages=CHAT, max_tokens=LIMIT, temperature=0,
                                                 tools=[WEATHER], tool_choice="required", stream=True))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) >= 2, "arguments were not streamed in pieces"
    first = deltas[0]
    assert first.index == 0 and first.id and first.type == "function" and first.function.name == "get_weather"
    assert all(d.index == 0 and d.id is None and d.function.name is None for d in deltas[1:])
    args = "".join(d.function.arguments or "" for d in deltas)
    assert args == whole.choices[0].message.tool_calls[0].function.arguments
    check(json.loads(args), WEATHER["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)


def test_tool_choice_auto_first_token_decides(client, server):
    """auto: free text (never starting with "{") or the call form; a model
    that starts with "{" is held to a complete, schema-valid call."""
    brace = server["w"].tokenizer.convert_tokens_to_ids("{")
    for bias, want in (({}, "text"), ({str(brace): 100}, "call")):
        r = client.chat.completions.create(model="extract", messages=CHAT, max_tokens=LIMIT, temperature=0,
                                           tools=[WEATHER, TIME], tool_choice="auto", logit_bias=bias or None)
        c = r.choices[0]
        if want == "call":
            assert c.finish_reason == "tool_calls" and c.message.content is None
            (call,) = c.message.tool_calls
            check(_args(call), {"get_weather": WEATHER, "get_time": TIME}[call.function.name]["function"]["parameters"])
        else:
            assert c.message.tool_calls is None and c.finish_reason in ("stop", "length")
            assert c.message.content and not c.message.content.startswith("{")


def test_tool_results_go_back_through_the_chat_template(client):
    r = client.chat.completions.create(model="extract", messages=CHAT, max_tokens=LIMIT, temperature=0,
                                       tools=[WEATHER], tool_choice="required")
    call = r.choices[0].message.tool_calls[0]
    follow = CHAT + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ]
    r2 = client.chat.completions.create(model="extract", messages=follow, max_tokens=8, temperature=0,
                                        tools=[WEATHER], tool_choice="none")
    assert r2.choices[0].message.tool_calls is None and r2.choices[0].message.content is not None
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens


@pytest.mark.parametrize("kwargs,param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nosuch"}}}]}, "tools"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
])
def test_bad_tools_are_400s(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="extract", messages=CHAT, max_tokens=4, **kwargs)
    assert e.value.param == param, e.value.message


def test_empty_tools_list_means_no_tools(client):
    r = client.chat.completions.create(model="extract", messages=CHAT, max_tokens=4, tools=[], tool_choice="none")
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="extract", messages=CHAT, max_tokens=4, tools=[], tool_choice="auto")
    assert e.value.param == "tool_choice"


def test_word_level_tokenizer_refuses_structured_output(worker_store):
    """The word-level tiny base cannot spell JSON: a 400, not garbage."""
    from loraplane.worker.grammar import Constraint, GrammarRequestError, compile_matcher
    from loraplane.tiny_model import build_tokenizer

    with pytest.raises(GrammarRequestError) as e:
        compile_matcher(Constraint("response_format", json_schema={"type": "object"}), build_tokenizer(), 512, [2])
    assert e.value.param == "response_format" and e.value.code == "unsupported_parameter"


# ------------------------------------------------------------------ an adapter's output contract
def test_store_contract_applies_by_default(client):
    for kw in ({}, {"stream": True}):
        r = client.chat.completions.create(model="contracted", messages=CHAT, max_tokens=LIMIT, temperature=1.0,
                                           seed=2, **kw)
        if kw:
            text = "".join(c.choices[0].delta.content or "" for c in r if c.choices)
        else:
            assert r.choices[0].finish_reason == "stop"
            text = r.choices[0].message.content
        check(json.loads(text), VERDICT)
    r = client.completions.create(model="con-v1", prompt="the cat", max_tokens=LIMIT, temperature=0)
    check(json.loads(r.choices[0].text), VERDICT)


def test_desired_state_contract_applies_by_default(client):
    r = client.chat.completions.create(model="judge", messages=CHAT, max_tokens=LIMIT, temperature=0)
    check(json.loads(r.choices[0].message.content), TALLY)


def test_request_overrides_the_contract(client):
    r = client.chat.completions.create(model="contracted", messages=CHAT, max_tokens=LIMIT, temperature=0,
                                       response_format=_schema_format())
    check(json.loads(r.choices[0].message.content), PERSON)
    r = client.chat.completions.create(model="contracted", messages=CHAT, max_tokens=20, temperature=0,
                                       response_format={"type": "text"})
    assert not r.choices[0].message.content.startswith("{")
    r = client.chat.completions.create(model="contracted", messages=CHAT, max_tokens=LIMIT, temperature=0,
                                       tools=[TIME], tool_choice="required")
    assert r.choices[0].finish_reason == "tool_calls"


def test_invalid_contract_refuses_the_version(server):
    w = server["w"]
    assert "badcon-v1" not in w.served and "con-v1" in w.served
    assert "output contract" in w.failed["badcon-v1"] and "nosuchtype" in w.failed["badcon-v1"].lower()


def test_grammar_dead_end_fails_only_that_row(server):
    """A grammar that allows no next token (cannot happen with a byte-complete
    tokenizer; a fake stands in) fails its own row with code grammar_error;
    a constrained row in the same batch finishes with valid JSON."""
    import ctypes

    from loraplane.worker import grammar
    from loraplane.worker.engine import GenRequest

    class DeadEnd:
        def __init__(self):
            self.consumed = 0

        def unsafe_compute_mask_ptr(self, ptr, size):
            if self.consumed >= 2:
                ctypes.memset(ptr, 0, size)

        def is_error(self):
            return False

        def consume_token(self, t):
            self.consumed += 1
            return True

        def is_stopped(self):
            return False

    w = server["w"]
    eng = w.engine
    prompt = w.tokenizer("the cat").input_ids
    events: dict[int, list] = {0: [], 1: []}
    done = threading.Semaphore(0)

    def sink(i):
        def s(kind, payload):
            events[i].append((kind, payload))
            if kind in ("done", "error"):
                done.release()
        return s

    good = grammar.compile_matcher(grammar.Constraint("response_format", json_schema=PERSON), w.tokenizer,
                                   eng.model.config.vocab_size, eng.eos_ids)
    reqs = [GenRequest(prompt_ids=prompt, adapter=None, max_tokens=LIMIT, sink=sink(0), grammar=DeadEnd()),
            GenRequest(prompt_ids=prompt, adapter=None, max_tokens=LIMIT, sink=sink(1), grammar=good)]
    for r in reqs:
        eng.submit(r)
    assert done.acquire(timeout=60) and done.acquire(timeout=60)
    kind, payload = events[0][-1]
    assert kind == "error" and payload["code"] == "grammar_error" and "allows no next token" in payload["message"]
    assert payload["completion_tokens"] == 2
    kind, payload = events[1][-1]
    assert kind == "done" and payload["finish_reason"] == "stop"
    check(json.loads("".join(p["text"] for k, p in events[1] if k == "token")), PERSON)
