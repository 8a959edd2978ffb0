"""The OpenAI-compatible HTTP face of a worker (aiohttp).

Why aiohttp: the engine runs on its own thread; the server only parses,
routes, hands a request to the engine and relays tokens from a per-request
asyncio queue, so one event loop serves thousands of open streams.

Every response says which adapter version served it: field ``adapter`` (and
``task``) in the body and header ``X-Loraplane-Adapter``. Errors use the
OpenAI shape ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from aiohttp import web

from .engine import GenRequest
from .routing import BASE_ADAPTER, RouteError
from .runtime import Worker

WORKER_KEY = web.AppKey("worker", Worker)
ROUTE_KEY_HEADER = "X-Loraplane-Route-Key"
ADAPTER_HEADER = "X-Loraplane-Adapter"


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_


def _error(status: int, message: str, type_: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "code": status}}, status=status)


@web.middleware
async def errors_middleware(request, handler):
    try:
        return await handler(request)
    except ApiError as e:
        return _error(e.status, e.message, e.type)
    except RouteError as e:
        kind = {404: "model_not_found", 503: "unavailable"}.get(e.status, "invalid_request_error")
        return _error(e.status, e.message, kind)


def _num(body: dict, key: str, default, lo, hi, cast=float):
    v = body.get(key, default)
    if v is None:
        v = default
    try:
        v = cast(v)
    except (TypeError, ValueError):
        raise ApiError(400, f"{key} must be a number") from None
    if not (lo <= v <= hi):
        raise ApiError(400, f"{key}={v} is out of range [{lo}, {hi}]")
    return v


def _params(body: dict, w: Worker) -> dict:
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 16))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ApiError(400, f"max_tokens must be a positive integer, got {max_tokens!r}")
    if max_tokens > w.cfg.max_tokens_limit:
        raise ApiError(400, f"max_tokens={max_tokens} exceeds this worker's limit of {w.cfg.max_tokens_limit}")
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise ApiError(400, "stop must be a string or a list of at most 4 strings")
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported")
    return dict(
        max_tokens=max_tokens,
        temperature=_num(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_num(body, "top_p", 1.0, 1e-6, 1.0),
        stop=stop,
        ignore_eos=bool(body.get("ignore_eos", False)),  # extension (as in vLLM), for benchmarks
    )


async def _json(request) -> dict:
    try:
        body = await request.json()
    except Exception:  # noqa: BLE001
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ApiError(400, "model is required (a task name, an adapter name or the base name)")
    return body


async def completions(request: web.Request) -> web.StreamResponse:
    w = request.app[WORKER_KEY]
    body = await _json(request)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (batch prompts are not supported; send concurrent requests)")
    return await _serve(request, w, body, prompt=prompt, chat=False)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    w = request.app[WORKER_KEY]
    body = await _json(request)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs
    ):
        raise ApiError(400, "messages must be a non-empty list of {role, content} strings")
    return await _serve(request, w, body, messages=msgs, chat=True)


def _prompt_ids(w: Worker, prompt: str | None, messages: list | None) -> list[int]:
    tok = w.tokenizer
    if messages is not None:
        out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return list(ids)
    return tok(prompt).input_ids


async def _serve(request, w: Worker, body: dict, *, prompt=None, messages=None, chat: bool):
    t0 = time.monotonic()
    params = _params(body, w)
    key = request.headers.get(ROUTE_KEY_HEADER) or body.get("route_key")
    choice = w.route(body["model"], key=key)  # 404/503 via RouteError
    task = choice.task or "-"
    adapter_label = choice.adapter
    ids = _checked_prompt(w, prompt, messages, params["max_tokens"])
    delay, inject = w.fault_for(choice.adapter)
    if inject:
        w.metrics.requests.labels(task, adapter_label, "500").inc()
        w.metrics.request_duration.labels(task, adapter_label, "500").observe(time.monotonic() - t0)
        return _error(500, f"injected fault for adapter {choice.adapter} (test setting)", "server_error")
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    req = GenRequest(
        prompt_ids=ids, adapter=None if choice.adapter == BASE_ADAPTER else choice.adapter,
        sink=lambda kind, payload: loop.call_soon_threadsafe(q.put_nowait, (kind, payload)), **params,
    )
    w.engine.submit(req)  # no await between route() and here: the adapter cannot be unloaded in between
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    meta = {"id": rid, "created": int(time.time()), "model": body["model"], "adapter": choice.adapter,
            "task": choice.task}
    deadline = t0 + w.cfg.request_timeout_s
    status = "200"
    try:
        if body.get("stream"):
            return await _stream(request, q, req, meta, chat, deadline, delay)
        content, done = await _collect(q, req, deadline)
        if delay:
            await asyncio.sleep(delay)
        return web.json_response(_completion(meta, chat, content, done, len(ids)),
                                 headers={ADAPTER_HEADER: choice.adapter})
    except ApiError as e:
        status = str(e.status)
        raise
    except asyncio.CancelledError:
        req.cancelled = True
        status = "499"
        raise
    finally:
        w.metrics.requests.labels(task, adapter_label, status).inc()
        w.metrics.request_duration.labels(task, adapter_label, status).observe(time.monotonic() - t0)


def _checked_prompt(w: Worker, prompt: str | None, messages: list | None, max_tokens: int) -> list[int]:
    """The prompt's token ids, refused (400) when empty or too long for this worker or the model."""
    ids = _prompt_ids(w, prompt, messages)
    if not ids:
        raise ApiError(400, "prompt is empty after tokenization")
    if len(ids) > w.cfg.max_prompt_tokens:
        raise ApiError(400, f"prompt has {len(ids)} tokens; this worker accepts at most {w.cfg.max_prompt_tokens}")
    ctx = getattr(w.engine.model.config, "max_position_embeddings", None)
    if ctx and len(ids) + max_tokens > ctx:
        raise ApiError(400, f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the "
                            f"model's context of {ctx} tokens")
    return ids


async def _collect(q: asyncio.Queue, req: GenRequest, deadline: float) -> tuple[str, dict]:
    """The whole generated text and the engine's final record (non-streaming)."""
    text, done = [], None
    while done is None:
        kind, payload = await _next(q, req, deadline)
        if kind == "token":
            text.append(payload["text"])
        elif kind == "error":
            raise ApiError(500, payload["message"], "server_error")
        else:
            done = payload
    return "".join(text), done


def _completion(meta: dict, chat: bool, content: str, done: dict, prompt_tokens: int) -> dict:
    choice_body = ({"index": 0, "message": {"role": "assistant", "content": content}}
                   if chat else {"index": 0, "text": content, "logprobs": None})
    choice_body["finish_reason"] = done["finish_reason"]
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": done["completion_tokens"],
             "total_tokens": prompt_tokens + done["completion_tokens"]}
    return {**meta, "object": "chat.completion" if chat else "text_completion",
            "choices": [choice_body], "usage": usage}


async def _next(q: asyncio.Queue, req: GenRequest, deadline: float):
    left = deadline - time.monotonic()
    try:
        if left <= 0:
            raise asyncio.TimeoutError
        return await asyncio.wait_for(q.get(), left)
    except asyncio.TimeoutError:
        req.cancelled = True
        raise ApiError(504, "request timed out (worker request timeout)", "timeout") from None


async def _stream(request, q, req, meta, chat, deadline, delay) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       ADAPTER_HEADER: meta["adapter"]})
    await resp.prepare(request)
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None, first: bool = False) -> bytes:
        if chat:
            delta = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            c = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            c = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return b"data: " + json.dumps({**meta, "object": obj, "choices": [c]}).encode() + b"\n\n"

    try:
        await resp.write(chunk(None, None, first=True) if chat else b": started\n\n")
        while True:
            try:
                kind, payload = await _next(q, req, deadline)
            except ApiError as e:
                await resp.write(b"data: " + json.dumps({"error": {"message": e.message, "type": e.type,
                                                                    "code": e.status}}).encode() + b"\n\n")
                break
            if kind == "token":
                await resp.write(chunk(payload["text"], None))
            elif kind == "error":
                await resp.write(b"data: " + json.dumps({"error": {"message": payload["message"],
                                                                    "type": "server_error", "code": 500}}).encode() + b"\n\n")
                break
            else:
                if delay:
                    await asyncio.sleep(delay)
                await resp.write(chunk(None, payload["finish_reason"]))
                break
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        req.cancelled = True
        raise
    return resp


async def models(request):
    w = request.app[WORKER_KEY]
    data = []
    for task, backends in sorted(w.routes.items()):
        live = [(a, wt) for a, wt in backends if a in w.served and wt > 0]
        total = sum(wt for _, wt in live) or 1
        data.append({"id": task, "object": "model", "owned_by": "loraplane", "kind": "task",
                     "routes": [{"adapter": a, "weight": wt, "effective": round(wt / total, 4) if (a, wt) in live else 0.0}
                                for a, wt in backends]})
    for name, ref in sorted(w.served.items()):
        data.append({"id": name, "object": "model", "owned_by": ref.owner, "kind": "adapter", "task": ref.task,
                     "version": ref.version})
    if w.base_ref:
        data.append({"id": w.base_ref.name, "object": "model", "owned_by": w.base_ref.owner, "kind": "base",
                     "variant": w.variant})
    return web.json_response({"object": "list", "data": data})


async def healthz(request):
    w = request.app[WORKER_KEY]
    alive = w.engine is None or w.engine._thread.is_alive()
    return web.json_response({"ok": alive}, status=200 if alive else 500)


async def readyz(request):
    w = request.app[WORKER_KEY]
    st = w.status().model_dump()
    st["draining"] = w.draining
    st["variant_reason"] = w.variant_reason
    return web.json_response(st, status=200 if w.ready else 503)


async def metrics(request):
    w = request.app[WORKER_KEY]
    return web.Response(body=w.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})


def create_app(worker: Worker) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=8 * 1024 * 1024)
    app[WORKER_KEY] = worker
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
