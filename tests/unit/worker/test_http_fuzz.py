"""Hostile input to the worker's HTTP API (issue 12 item 8): hypothesis-made
JSON bodies (wrong types, huge numbers, lone surrogates, unknown and missing
fields), raw bytes, odd content types, route-key headers, methods and paths,
sent over TCP to a running worker on the tiny model. Every answer is a 4xx
in OpenAI's error format (or a valid completion when the fuzz happened to
build a valid request), never a 5xx, never a non-JSON body, never a hang; the
worker answers a normal request afterwards. Derandomized, so a run is
reproducible; the counts are printed (``-s``) and written to
``$LORAPLANE_FUZZ_REPORT`` when set."""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import os
import threading
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraplane.worker.server import CHAT_ONLY, COMMON, COMPLETION_ONLY

ROUTES = {"synthesizer": [("synth-v1", 100), ("synth-v2", 0)], "critic": [("critic-v1", 100)]}
FIELDS = sorted(COMMON | CHAT_ONLY | COMPLETION_ONLY) + ["top_k", "", "model\x00", "prompt ", "__proto__"]
COUNTS: collections.Counter = collections.Counter()
EXAMPLES = int(os.environ.get("LORAPLANE_FUZZ_EXAMPLES", "200"))  # per test (a quarter, of every field, in the third)


def _serve(store_root, doc):
    """A worker's app on 127.0.0.1:<free port>, its event loop on a thread; stop() ends it."""
    from aiohttp import web

    from loraplane.worker.runtime import Worker, WorkerConfig
    from loraplane.worker.server import create_app

    loop, state, ready = asyncio.new_event_loop(), {}, threading.Event()

    def run():
        asyncio.set_event_loop(loop)

        async def start():
            w = Worker(WorkerConfig(store_root=str(store_root), max_tokens_limit=8, request_timeout_s=20))
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

    def stop():
        asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        state["w"].close()
    state["stop"] = stop
    return state


@pytest.fixture(scope="module")
def server(worker_store):
    """The tiny base with three adapters (word-level tokenizer)."""
    state = _serve(worker_store, _desired())
    yield state
    state["stop"]()
    report = os.environ.get("LORAPLANE_FUZZ_REPORT")
    print(f"\nworker HTTP fuzz: {sum(v for k, v in COUNTS.items() if k.startswith('status '))} requests, "
          f"{dict(sorted(COUNTS.items()))}")
    if report:
        with open(report, "w") as f:
            json.dump(dict(COUNTS), f, indent=1, sort_keys=True)


@pytest.fixture(scope="module")
def bpe_server(tmp_path_factory):
    """The tiny base with its byte-level BPE tokenizer: grammars compile, so
    fuzzed ``response_format`` and ``tools`` reach llguidance."""
    from loraplane.contracts.desired import DesiredState
    from loraplane.modelstore import ModelStore
    from loraplane.tiny_model import build_base

    tmp = tmp_path_factory.mktemp("fuzz-bpe")
    ModelStore(tmp / "store").publish(build_base(tmp / "base", tokenizer="bpe"), kind="base", name="tinybpe",
                                      version="v1")
    state = _serve(tmp / "store", DesiredState.model_validate({
        "pool": "p", "generation": 1, "base": {"name": "tinybpe", "version": "v1", "variant": "fp32"},
        "adapters": [], "routes": {}}))
    yield state
    state["stop"]()


def _desired():
    from loraplane.contracts.desired import DesiredState

    adapters = [("synth-v1", "synth", "v1", "synthesizer"), ("synth-v2", "synth", "v2", "synthesizer"),
                ("critic-v1", "critic", "v1", "critic")]
    return DesiredState.model_validate({
        "pool": "p", "generation": 1, "base": {"name": "tiny", "version": "v1", "variant": "fp32"},
        "adapters": [{"name": n, "storeName": s, "version": v, "task": t} for n, s, v, t in adapters],
        "routes": {t: [{"adapter": a, "weight": w} for a, w in bs] for t, bs in ROUTES.items()},
    })


def _send(server, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)  # a hang fails the test
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def _check(method: str, status: int, headers: dict, data: bytes) -> None:
    COUNTS[f"status {status // 100}xx"] += 1
    COUNTS[f"code {status}"] += 1
    assert status < 500, (status, data[:500])
    if method == "HEAD":
        return  # no body, by HTTP
    if headers.get("Content-Type", "").startswith("text/event-stream"):
        assert status == 200 and data.startswith((b"data: ", b": started")) and data.endswith(b"data: [DONE]\n\n")
        assert b'"error"' not in data, data[-500:]
        return
    body = json.loads(data)  # never a non-JSON body
    if status >= 400:
        err = body["error"]
        assert isinstance(err["message"], str) and err["message"], body
        assert isinstance(err["type"], str) and err["param"] is None or isinstance(err["param"], str), body
        assert err["code"] is None or isinstance(err["code"], str), body
    else:
        assert isinstance(body, dict) and ("choices" in body or "data" in body or "object" in body
                                           or "ok" in body or "ready" in body), body


# ------------------------------------------------------------------ strategies
any_char = st.characters(blacklist_categories=())  # lone surrogates included
# text biased to what breaks tokenizers and templates: lone surrogates, NUL, braces, multi-byte characters
text = st.text(any_char, max_size=30) | st.lists(st.sampled_from(["a", " ", "\ud800", "\udfff", "\x00", "{", "{{",
                                                                  "\u00e9", "\u20ac", "\U0001f600", "<s>"]),
                                                 max_size=12).map("".join)
#: values that sit on a boundary: int64 and uint64 edges, beyond them, float extremes, empty containers
edges = st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1, 10**30, -1, 0, 1, 1e308, -1e308, 5e-324,
                         float("inf"), float("nan"), "", "1", [], {}, [""], {"": ""}, True, False, None])
leaf = (edges | st.none() | st.booleans() | st.integers(-(2**80), 2**80)
        | st.floats(allow_nan=True, allow_infinity=True) | text)
json_value = edges | text | st.recursive(leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(text, c, max_size=4),
                                         max_leaves=12)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x", 3]),
                                 "content": json_value}, optional={"tool_calls": json_value, "name": json_value})


@st.composite
def bodies(draw):
    """A valid request, then some fields replaced by fuzz and some deleted."""
    chat = draw(st.booleans())
    body = {"model": draw(st.sampled_from(["synthesizer", "synth-v1", "critic", "tiny", "nope", ""])),
            "max_tokens": 4, "temperature": 0}
    if chat:
        body["messages"] = draw(st.lists(message, min_size=0, max_size=3)) if draw(st.booleans()) else \
            [{"role": "user", "content": draw(text)}]
    else:
        body["prompt"] = draw(text | json_value)
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        body[field] = draw(json_value)
    for field in draw(st.lists(st.sampled_from(sorted(body)), max_size=2, unique=True)):
        body.pop(field, None)
    return ("/v1/chat/completions" if chat else "/v1/completions"), body


content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", "",
                                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=zz",
                                 "application/json; charset=latin-1", "application/json; charset=bogus-9"])
latin1_header = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
                        max_size=40)


def _encode(body, how: str) -> bytes:
    if how == "ascii":
        return json.dumps(body, ensure_ascii=True).encode()
    if how == "raw-utf8":  # lone surrogates become invalid UTF-8 bytes
        return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(body, ensure_ascii=True).encode()[: max(1, len(json.dumps(body)) // 2)]  # truncated


SETTINGS = settings(derandomize=True, max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@SETTINGS
@given(req=bodies(), how=st.sampled_from(["ascii", "ascii", "raw-utf8", "truncated"]), ctype=content_types,
       route_key=st.none() | latin1_header)
def test_fuzzed_json_bodies_get_openai_4xx(server, req, how, ctype, route_key):
    path, body = req
    headers = {"Content-Type": ctype} if ctype else {}
    if route_key is not None:
        headers["X-Loraplane-Route-Key"] = route_key.strip() or "k"
    status, h, data = _send(server, "POST", path, _encode(body, how), headers)
    _check("POST", status, h, data)


@SETTINGS
@given(method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "POST", "TRACE"]),
       path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/models", "/healthz", "/metrics"])
       | text.map(lambda t: "/v1/models/" + urllib.parse.quote(t.encode("utf-8", "surrogatepass"), safe=""))
       | text.map(lambda t: "/" + urllib.parse.quote(t.encode("utf-8", "surrogatepass"), safe="/")),
       raw=st.binary(max_size=200))
def test_fuzzed_methods_paths_and_raw_bytes(server, method, path, raw):
    status, h, data = _send(server, method, path, raw or None, {"Content-Type": "application/json"})
    if path in ("/metrics",) and status == 200:
        COUNTS[f"status {status // 100}xx"] += 1
        COUNTS[f"code {status}"] += 1
        return  # Prometheus text, by design
    _check(method, status, h, data)


@settings(SETTINGS, max_examples=max(1, EXAMPLES // 4))
@given(values=st.fixed_dictionaries({f: json_value for f in sorted(COMMON | CHAT_ONLY | COMPLETION_ONLY)}),
       chat=st.booleans(), stream=st.booleans())
def test_each_field_with_wrong_types(server, values, chat, stream):
    """Every field, one at a time, on an otherwise valid request (so the fuzz
    reaches each field's own check, not just the first refusal)."""
    for field, value in values.items():
        body = {"model": "synthesizer", "max_tokens": 4, "stream": stream}
        body |= {"messages": [{"role": "user", "content": "hello world"}]} if chat else {"prompt": "hello world"}
        body[field] = value
        path = "/v1/chat/completions" if chat else "/v1/completions"
        status, h, data = _send(server, "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        _check("POST", status, h, data)


schema = st.recursive(
    st.fixed_dictionaries({}, optional={"type": st.sampled_from(["string", "integer", "number", "boolean", "null",
                                                                  "object", "array", "nope"]) | json_value,
                                        "enum": json_value, "pattern": text, "minimum": leaf, "maximum": leaf,
                                        "minLength": leaf, "maxItems": leaf, "$ref": text, "format": text}),
    lambda c: st.fixed_dictionaries({"type": st.just("object")}, optional={
        "properties": st.dictionaries(text, c, max_size=3), "required": json_value,
        "additionalProperties": st.booleans() | c}) | st.fixed_dictionaries({"anyOf": st.lists(c, max_size=3)})
    | st.fixed_dictionaries({"type": st.just("array"), "items": c}),
    max_leaves=8)


@settings(SETTINGS, max_examples=max(1, EXAMPLES // 2))
@given(rf=st.none() | st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": st.fixed_dictionaries(
                                    {"name": st.just("x") | text, "schema": schema},
                                    optional={"strict": st.booleans()})})
       | st.fixed_dictionaries({"type": st.sampled_from(["json_schema", "json_object", "text"]) | json_value},
                               optional={"json_schema": json_value}),
       tools=st.none() | st.lists(st.fixed_dictionaries(
           {"type": st.just("function") | json_value,
            "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "g_1"]) | text},
                                              optional={"parameters": schema | json_value,
                                                        "description": text})}), max_size=2) | json_value,
       tool_choice=st.none() | st.sampled_from(["auto", "none", "required"]) | json_value,
       chat=st.booleans(), stream=st.booleans())
def test_fuzzed_grammars_and_tools(bpe_server, rf, tools, tool_choice, chat, stream):
    """response_format, tools and tool_choice made of fuzz (schemas with odd
    types, patterns, bounds, refs) on a tokenizer llguidance can compile for."""
    body = {"model": "tinybpe", "max_tokens": 4, "stream": stream, "response_format": rf}
    if chat:
        body |= {"messages": [{"role": "user", "content": "hello"}], "tools": tools, "tool_choice": tool_choice}
    else:
        body["prompt"] = "hello"
    path = "/v1/chat/completions" if chat else "/v1/completions"
    status, h, data = _send(bpe_server, "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    _check("POST", status, h, data)


@pytest.mark.parametrize("body", [
    {"prompt": "hello \ud800 world"},  # a lone surrogate (valid JSON escape, not encodable text)
    {"messages": [{"role": "user", "content": "hi \udfff"}]},
    {"prompt": "hello", "seed": 2**64, "temperature": 1},  # beyond what a torch generator takes
    {"prompt": "hello", "seed": -(2**63) - 1, "temperature": 1},
], ids=["prompt-surrogate", "message-surrogate", "seed-2^64", "seed-below-int64"])
def test_found_by_the_fuzz(server, body):
    """Inputs the fuzz found that answered 500: now a 400 naming the field."""
    body = {"model": "synthesizer", "max_tokens": 4} | body
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    status, h, data = _send(server, "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    _check("POST", status, h, data)
    assert status == 400 and json.loads(data)["error"]["param"] in ("prompt", "messages", "seed")


def test_huge_body_and_keeps_answering(server):
    status, h, data = _send(server, "POST", "/v1/completions", b'{"prompt": "' + b"a" * (9 << 20) + b'"}',
                            {"Content-Type": "application/json"})
    _check("POST", status, h, data)
    assert status == 413
    body = {"model": "synthesizer", "prompt": "hello world", "max_tokens": 4}
    status, _, data = _send(server, "POST", "/v1/completions", json.dumps(body).encode(),
                            {"Content-Type": "application/json"})
    assert status == 200 and json.loads(data)["choices"][0]["finish_reason"] in ("stop", "length")
    assert server["w"].engine._thread.is_alive()
