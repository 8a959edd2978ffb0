"""The OpenAI-compatible HTTP face of a worker (aiohttp).

Why aiohttp: the engine runs on its own thread; the server only parses,
routes, hands a request to the engine and relays tokens from a per-request
asyncio queue, so one event loop serves thousands of open streams.
Tokenisation and chat templates run on a tokenizer thread, never on the
event loop (a multi-MiB prompt must not stall every open stream).

Every response says which adapter version served it: field ``adapter`` (and
``task``) in the body and header ``X-Loraplane-Adapter``. Errors use
OpenAI's shape and conventions: ``{"error": {"message", "type", "param",
"code"}}`` with ``code`` a string (``model_not_found``,
``context_length_exceeded``, ...) or null.

Parameters: every request field is either implemented or refused with a 400
naming it (never accepted and silently ignored); see ``_params``.

Every generation request is counted in ``loraplane_worker_requests_total``
with its real outcome: errors before generation (bad parameters, unknown
model, not ready, tokenisation), errors and timeouts in the middle of a
stream (the HTTP status was already 200 on the wire; the metric says 500 or
504), and client disconnects as "499" (not an error for canary analysis).
A request whose client went away is cancelled in the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass

from aiohttp import web

from . import grammar
from .engine import GenRequest
from .routing import BASE_ADAPTER, RouteError
from .runtime import Worker

log = logging.getLogger(__name__)

WORKER_KEY = web.AppKey("worker", Worker)
ROUTE_KEY_HEADER = "X-Loraplane-Route-Key"
ADAPTER_HEADER = "X-Loraplane-Adapter"
DISCONNECT_POLL_S = 0.25  # a closed connection is noticed within this; cheap for thousands of streams

CLIENT_GONE = "499"  # nginx's convention; operator/analysis.py counts it as a request, not an error


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ClientGone(Exception):
    """The client closed the connection before the response was complete."""


def _route_api_error(e: RouteError) -> ApiError:
    if e.status == 404:
        return ApiError(404, e.message, "invalid_request_error", "model", e.code or "model_not_found")
    if e.status == 503:
        return ApiError(503, e.message, "server_error", None, e.code, headers={"Retry-After": "1"})
    return ApiError(e.status, e.message, "invalid_request_error", None, e.code)


def _error(status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
           headers: dict | None = None) -> web.Response:
    return web.json_response(ApiError(status, message, type_, param, code).body(), status=status, headers=headers)


def _api_error_response(e: ApiError) -> web.Response:
    return web.json_response(e.body(), status=e.status, headers=e.headers)


@web.middleware
async def errors_middleware(request, handler):
    try:
        return await handler(request)
    except ApiError as e:
        return _api_error_response(e)
    except RouteError as e:
        return _api_error_response(_route_api_error(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "retry-after")}
        type_ = "invalid_request_error" if e.status < 500 else "server_error"
        return _error(e.status, e.reason or e.text or "error", type_, headers=headers)
    except (asyncio.CancelledError, ClientGone, ConnectionResetError):
        raise
    except Exception as e:  # noqa: BLE001 - a bug must still answer in OpenAI's format
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(500, f"internal error: {type(e).__name__}: {e}", "server_error")


# ------------------------------------------------------------------ counting
@dataclass
class Outcome:
    task: str = "-"
    adapter: str = "-"
    status: str | None = None  # set by the handler when the HTTP status on the wire is not the outcome


def counted(handler):
    """Count every outcome of a generation request in the worker's metrics."""

    async def wrapper(request: web.Request):
        w = request.app[WORKER_KEY]
        o = Outcome()
        t0 = time.monotonic()
        try:
            resp = await handler(request, o)
            if o.status is None:
                o.status = str(resp.status)
            return resp
        except ApiError as e:
            o.status = str(e.status)
            raise
        except RouteError as e:
            o.task, o.adapter = e.task or o.task, e.adapter or o.adapter
            o.status = str(e.status)
            raise
        except web.HTTPException as e:
            o.status = str(e.status)
            raise
        except (asyncio.CancelledError, ClientGone, ConnectionResetError):
            o.status = CLIENT_GONE
            raise
        except BaseException:
            o.status = "500"
            raise
        finally:
            w.metrics.requests.labels(o.task, o.adapter, o.status or "500").inc()
            w.metrics.request_duration.labels(o.task, o.adapter, o.status or "500").observe(time.monotonic() - t0)

    return wrapper


# ------------------------------------------------------------------ parameters
COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "stop", "n", "seed",
          "logit_bias", "logprobs", "presence_penalty", "frequency_penalty", "user",
          "route_key", "ignore_eos"}  # the last two: loraplane extensions
CHAT_ONLY = {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "response_format",
             "parallel_tool_calls", "functions", "function_call"}
COMPLETION_ONLY = {"prompt", "echo", "best_of", "suffix", "response_format"}  # response_format: as in vLLM


def _refuse(param: str, why: str) -> ApiError:
    return ApiError(400, f"{param}: {why}", "invalid_request_error", param, "unsupported_parameter")


def _invalid(param: str, why: str) -> ApiError:
    return ApiError(400, f"{param}: {why}", "invalid_request_error", param, "invalid_value")


def _num(body: dict, key: str, default, lo, hi, lo_open=False):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _invalid(key, f"must be a number, got {v!r}")
    if not (lo < v if lo_open else lo <= v) or v > hi:
        raise _invalid(key, f"{v} is out of range {'(' if lo_open else '['}{lo}, {hi}]")
    return float(v)


def _int(body: dict, key: str):
    v = body.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
        raise _invalid(key, f"must be an integer, got {v!r}")
    return v


def _params(body: dict, w: Worker, chat: bool) -> tuple[dict, bool, bool]:
    """Validate every field: implemented ones are converted for the engine,
    the rest are refused with a 400 naming the parameter. Returns (engine
    parameters, stream, include_usage)."""
    _refuse_unsupported(body, chat)
    stream, include_usage = _stream_flags(body)
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise _invalid("ignore_eos", "must be a boolean")
    return dict(
        max_tokens=_max_tokens(body, w, chat),
        temperature=_num(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_num(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        stop=_stop(body),
        ignore_eos=ignore_eos,  # extension (as in vLLM), for benchmarks
        seed=_seed(body),
        logit_bias=_logit_bias(body, w),
        logprobs=_logprobs(body, chat),
    ), stream, include_usage


def _refuse_unsupported(body: dict, chat: bool) -> None:
    """Unknown fields, and known ones this worker does not implement unless
    they ask for the default, are a 400 naming the field (never ignored)."""
    allowed = COMMON | (CHAT_ONLY if chat else COMPLETION_ONLY)
    for k in body:
        if k not in allowed:
            raise ApiError(400, f"Unrecognized request argument supplied: {k} (not supported by this worker)",
                           "invalid_request_error", k, "unsupported_parameter")
    if chat:
        for k in ("functions", "function_call"):
            if body.get(k) is not None:
                raise _refuse(k, "the deprecated functions API is not supported; use tools")
        if body.get("parallel_tool_calls") not in (None, True, False):
            raise _invalid("parallel_tool_calls", "must be a boolean")
    else:
        if body.get("echo"):
            raise _refuse("echo", "echoing the prompt is not supported by this worker")
        if body.get("best_of") not in (None, 1):
            raise _refuse("best_of", "only best_of=1 is supported")
        if body.get("suffix") not in (None, ""):
            raise _refuse("suffix", "insertion (suffix) is not supported by this worker")
    for k in ("presence_penalty", "frequency_penalty"):
        if body.get(k) not in (None, 0, 0.0):
            raise _refuse(k, "penalties are not supported by this worker (only 0)")
    n = body.get("n")
    if n is not None and n != 1:
        raise ApiError(400, f"n: only n=1 is supported, got {n!r} (send concurrent requests)",
                       "invalid_request_error", "n", "unsupported_value")


def _seed(body: dict) -> int | None:
    """A 64-bit seed (what a torch generator takes: signed or unsigned)."""
    seed = _int(body, "seed")
    if seed is not None and not -(2**63) <= seed < 2**64:
        raise _invalid("seed", f"{seed} is not a 64-bit integer")
    return seed


def _max_tokens(body: dict, w: Worker, chat: bool) -> int | None:
    """The completion budget; None for chat without one (the rest of the
    context, settled in ``_check_length`` once the prompt is tokenised)."""
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(key)
    if max_tokens is None:
        return None if chat else 16  # completions: OpenAI's default of 16
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _invalid(key, f"must be a positive integer, got {max_tokens!r}")
    if max_tokens > w.cfg.max_tokens_limit:
        raise _invalid(key, f"{max_tokens} exceeds this worker's limit of {w.cfg.max_tokens_limit}")
    return max_tokens


def _stop(body: dict) -> list[str]:
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise _invalid("stop", "must be a string or a list of at most 4 strings")
    return stop


def _stream_flags(body: dict) -> tuple[bool, bool]:
    """(stream, stream_options.include_usage)."""
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise _invalid("stream", "must be a boolean")
    so = body.get("stream_options")
    if so is None:
        return bool(stream), False
    if not stream:
        raise _invalid("stream_options", "only allowed when stream is true")
    if not isinstance(so, dict) or set(so) - {"include_usage"}:
        raise _invalid("stream_options", "only {\"include_usage\": bool} is supported")
    return True, bool(so.get("include_usage"))


def _logit_bias(body: dict, w: Worker) -> dict[int, float] | None:
    """``logit_bias``: token ids inside the logits' width, biases in [-100, 100]."""
    bias = body.get("logit_bias")
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise _invalid("logit_bias", "must be an object mapping token ids to a bias in [-100, 100]")
    vocab = getattr(w.engine.model.config, "vocab_size", None) if w.engine is not None else None  # logits' width
    out = {}
    for k, v in bias.items():
        try:
            tid = int(k)
        except (TypeError, ValueError):
            raise _invalid("logit_bias", f"key {k!r} is not a token id") from None
        if tid < 0 or (vocab is not None and tid >= vocab):
            raise _invalid("logit_bias", f"token id {tid} is outside the vocabulary (0..{vocab})")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -100 <= v <= 100:
            raise _invalid("logit_bias", f"bias for {k} must be a number in [-100, 100], got {v!r}")
        out[tid] = float(v)
    return out or None


def _logprobs(body: dict, chat: bool) -> int | None:
    """None: off; k: the chosen token's logprob and k alternatives (chat:
    ``logprobs`` bool + ``top_logprobs``; completions: ``logprobs`` 0..5)."""
    if not chat:
        lp = _int(body, "logprobs")
        if lp is not None and not 0 <= lp <= 5:
            raise _invalid("logprobs", f"{lp} is out of range [0, 5]")
        return lp
    lp = body.get("logprobs")
    if lp not in (None, True, False):
        raise _invalid("logprobs", "must be a boolean")
    top = _int(body, "top_logprobs")
    if top is not None and not 0 <= top <= 20:
        raise _invalid("top_logprobs", f"{top} is out of range [0, 20]")
    if top is not None and not lp:
        raise _invalid("top_logprobs", "requires logprobs to be true")
    return (top or 0) if lp else None


def _check_text(value: str, param: str) -> None:
    """JSON can carry lone surrogates (``"\\ud800"``), which are not text: no tokenizer encodes them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _invalid(param, f"contains a lone surrogate ({value[e.start]!r} at {e.start}): not valid Unicode text") \
            from None


async def _json(request) -> dict:
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge as e:
        raise ApiError(413, f"request body too large ({e.text})", "invalid_request_error") from None
    except Exception:  # noqa: BLE001
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ApiError(400, "model is required (a task name, an adapter name or the base name)",
                       "invalid_request_error", "model")
    return body


ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def _messages(body: dict) -> list[dict]:
    """OpenAI chat messages -> what a chat template renders. Text content parts
    are joined; an assistant message may have no content (tool_calls)."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "messages must be a non-empty list", "invalid_request_error", "messages")
    out = []
    for i, m in enumerate(msgs):
        param = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"{param} must be an object with a role in {sorted(ROLES)}",
                           "invalid_request_error", param)
        role, content = m["role"], m.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") not in ("text", "refusal") \
                        or not isinstance(part.get(part.get("type")), str):
                    raise ApiError(400, f"{param}.content[{j}]: only text content parts are supported",
                                   "invalid_request_error", f"{param}.content")
                texts.append(part[part["type"]])
            content = "".join(texts) if role != "system" and role != "developer" else "\n".join(texts)
        elif content is None:
            if role != "assistant" or not (m.get("tool_calls") or m.get("function_call")):
                raise ApiError(400, f"{param}.content is required", "invalid_request_error", f"{param}.content")
            content = ""
        elif not isinstance(content, str):
            raise ApiError(400, f"{param}.content must be a string or a list of text parts",
                           "invalid_request_error", f"{param}.content")
        msg = {"role": "system" if role == "developer" else role, "content": content}
        for k in ("name", "tool_calls", "tool_call_id"):
            if m.get(k) is not None:
                msg[k] = m[k]
        out.append(msg)
    return out


def _constraint(body: dict, chat: bool):
    """response_format / tools + tool_choice -> (grammar.Constraint or None, tools for the template)."""
    try:
        rf = grammar.from_response_format(body.get("response_format"))
        if not chat:
            return rf, None
        tc, tools = grammar.from_tools(body.get("tools"), body.get("tool_choice"))
    except grammar.GrammarRequestError as e:
        raise ApiError(400, e.message, "invalid_request_error", e.param, e.code) from None
    if rf is not None and tc is not None:
        raise _refuse("response_format", "response_format together with tools (tool_choice other than none) is "
                                         "not supported by this worker")
    return rf or tc, tools


def _template_messages(messages: list[dict]) -> list[dict]:
    """Chat templates (Mistral's, Llama's) expect tool call arguments as
    objects; OpenAI sends them as JSON strings."""
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            fixed = []
            for c in calls:
                fn = c.get("function") if isinstance(c, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    try:
                        c = {**c, "function": {**fn, "arguments": json.loads(fn["arguments"])}}
                    except ValueError:
                        pass
                fixed.append(c)
            m = {**m, "tool_calls": fixed}
        out.append(m)
    return out


def _prepare(w: Worker, prompt: str | None, messages: list | None, tools, constraint):
    """Tokenizer thread: the prompt's ids and this request's grammar matcher."""
    ids = _prompt_ids(w.tokenizer, prompt, messages, tools)
    matcher = None
    if constraint is not None:
        try:
            matcher = grammar.compile_matcher(constraint, w.tokenizer, _vocab(w), w.engine.eos_ids)
        except grammar.GrammarRequestError as e:
            raise ApiError(400, e.message, "invalid_request_error", e.param, e.code) from None
    return ids, matcher


def _vocab(w: Worker) -> int:
    return getattr(w.engine.model.config, "vocab_size", None) or len(w.tokenizer)


def _prompt_ids(tok, prompt: str | None, messages: list | None, tools=None) -> list[int]:
    """Tokenizer thread: prompt or rendered chat -> ids. A template that
    cannot render these messages is the request's fault (400)."""
    if messages is not None:
        import jinja2

        try:
            kw = {"tools": tools} if tools else {}
            out = tok.apply_chat_template(_template_messages(messages), add_generation_prompt=True, tokenize=True,
                                          **kw)
        except (jinja2.TemplateError, TypeError, ValueError, KeyError) as e:
            raise ApiError(400, f"the model's chat template cannot render these messages: {e}",
                           "invalid_request_error", "messages") from None
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return list(ids)
    return tok(prompt).input_ids


# ------------------------------------------------------------------ handlers
@counted
async def completions(request: web.Request, o: Outcome) -> web.StreamResponse:
    w = request.app[WORKER_KEY]
    body = await _json(request)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (batch prompts are not supported; send concurrent requests)",
                       "invalid_request_error", "prompt")
    _check_text(prompt, "prompt")
    return await _serve(request, w, o, body, prompt=prompt, chat=False)


@counted
async def chat_completions(request: web.Request, o: Outcome) -> web.StreamResponse:
    w = request.app[WORKER_KEY]
    body = await _json(request)
    return await _serve(request, w, o, body, messages=_messages(body), chat=True)


async def _serve(request, w: Worker, o: Outcome, body: dict, *, prompt=None, messages=None, chat: bool):
    """Validate, route, tokenise, queue; then answer in one body or as a stream."""
    t0 = time.monotonic()
    params, stream, include_usage = _params(body, w, chat)
    constraint, tools = _constraint(body, chat)
    key = request.headers.get(ROUTE_KEY_HEADER) or body.get("route_key")
    if key is not None and not isinstance(key, str):
        raise _invalid("route_key", f"must be a string, got {type(key).__name__}")
    choice = w.route(body["model"], key=key)  # 404/503 via RouteError
    o.task, o.adapter = choice.task or "-", choice.adapter
    contract = w.contracts.get(choice.adapter)
    if constraint is None and contract is not None and body.get("response_format") is None and not tools:
        # the version's output contract, unless the request asked for a format (text included) or tools
        constraint = grammar.Constraint("response_format", json_schema=contract)
    delay, inject = w.fault_for(choice.adapter)
    req, q = await _submit(w, o, choice.adapter, params, (prompt, messages, tools, constraint), inject,
                           t0 + w.cfg.request_timeout_s)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    meta = {"id": rid, "created": int(time.time()), "model": body["model"], "adapter": choice.adapter,
            "task": choice.task}
    ans = _Answer(req=req, q=q, meta=meta, chat=chat, deadline=t0 + w.cfg.request_timeout_s, delay=delay,
                  calls=grammar.ToolCallParser(constraint.tool_names)
                  if constraint is not None and constraint.tool_names else None)
    watcher = asyncio.create_task(_watch_client(request, req, q))
    try:
        if stream:
            return await _stream(request, o, ans, include_usage, w.stream_fault_for(choice.adapter))
        return await _whole(ans)
    except ClientGone:
        o.status = CLIENT_GONE
        return web.Response(status=499)  # nobody reads it; the outcome is counted as a disconnect
    except asyncio.CancelledError:
        req.cancelled = True
        raise
    finally:
        watcher.cancel()
        if not req.finished:
            req.cancelled = True


async def _submit(w: Worker, o: Outcome, adapter: str, params: dict, prepared: tuple, inject: bool,
                  deadline: float):
    """Tokenise (tokenizer thread) and queue the request in the engine; the
    chosen version is held from routing until the engine owns the reference,
    so it cannot be freed (or evicted) in between. Returns (request, its event queue)."""
    prompt, messages, tools, constraint = prepared
    bank_key = w.bank_key(adapter)
    # no await since route(): hold the chosen version's content so it cannot be freed while we tokenise
    w.engine.hold(bank_key)
    submitted = False
    try:
        ids, matcher = await w.run_tokenizer(_prepare, w, prompt, messages, tools, constraint)
        _check_length(w, ids, params, messages is not None)
        if inject:
            raise ApiError(500, f"injected fault for adapter {adapter} (test setting)", "server_error")
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def sink(kind, payload):
            try:
                loop.call_soon_threadsafe(q.put_nowait, (kind, payload))
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                req.cancelled = True

        req = GenRequest(prompt_ids=ids, adapter=bank_key, label=adapter, task=o.task, sink=sink,
                         grammar=matcher, **params)
        await _resident(w, bank_key, deadline)
        _queue(w, req, messages is not None)
        submitted = True
    finally:
        if not submitted:
            w.engine.unhold(bank_key)
    return req, q


async def _resident(w: Worker, bank_key: str | None, deadline: float) -> None:
    """An evicted adapter is brought back first; 503 when no resident one can make room in time."""
    from .engine import NoRoom

    try:
        await w.ensure_resident(bank_key, deadline)
    except NoRoom as e:
        raise ApiError(503, f"adapter capacity: {e}; retry shortly", "server_error", None, "adapter_capacity",
                       headers={"Retry-After": "1"}) from None


def _queue(w: Worker, req: GenRequest, chat: bool) -> None:
    """Hand the request to the engine: 429 with Retry-After when the wait
    queue is full (OpenAI's client raises RateLimitError and retries after
    it), 400 when it could never fit the KV budget."""
    from .engine import Overloaded, TooLargeForBudget

    try:
        w.engine.submit(req, held=True)
    except Overloaded as e:
        w.metrics.rejected.inc()
        raise ApiError(429, f"{e}; retry after {e.retry_after} s", "requests", None, "rate_limit_exceeded",
                       headers={"Retry-After": str(e.retry_after)}) from None
    except TooLargeForBudget as e:
        raise ApiError(400, str(e), "invalid_request_error", "messages" if chat else "prompt",
                       "context_length_exceeded") from None


@dataclass
class _Answer:
    """What answering one queued request needs, streamed or not."""

    req: GenRequest
    q: asyncio.Queue
    meta: dict
    chat: bool
    deadline: float
    delay: float
    calls: grammar.ToolCallParser | None


async def _whole(a: _Answer) -> web.Response:
    """Collect the engine's events into one OpenAI completion body."""
    text, entries, done = [], [], None
    while done is None:
        kind, payload = await _next(a.q, a.req, a.deadline)
        if kind == "token":
            text.append(payload["text"])
            entries += payload.get("logprobs", [])
        elif kind == "error":
            raise _engine_error(payload)
        else:
            entries += payload.get("logprobs", [])
            done = payload
    if a.delay:
        await asyncio.sleep(a.delay)
    content = "".join(text)
    lp = _logprobs_body(entries, a.chat, a.req.logprobs) if a.req.logprobs is not None else None
    finish = done["finish_reason"]
    if a.chat:
        message = {"role": "assistant", "content": content, "refusal": None}
        finish = _tool_call_message(a.calls, content, finish, message) if a.calls is not None else finish
        choice_body = {"index": 0, "message": message, "logprobs": lp}
    else:
        choice_body = {"index": 0, "text": content, "logprobs": lp}
    choice_body["finish_reason"] = finish
    resp = {**a.meta, "object": "chat.completion" if a.chat else "text_completion",
            "choices": [choice_body], "usage": _usage(len(a.req.prompt_ids), done["completion_tokens"])}
    return web.json_response(resp, headers={ADAPTER_HEADER: a.meta["adapter"]})


def _tool_call_message(calls: grammar.ToolCallParser, content: str, finish: str, message: dict) -> str:
    """Turn a constrained answer in the call form into ``message.tool_calls``
    (content null); the finish reason, ``tool_calls`` for a complete call."""
    events = calls.feed(content)
    more, closed = calls.finish()
    events += more
    if calls.call is None:
        return finish
    args = "".join(e[1] for e in events if e[0] == "args")
    message["content"] = None
    message["tool_calls"] = [{"id": calls.call[0], "type": "function",
                              "function": {"name": calls.call[1], "arguments": args}}]
    return "tool_calls" if closed and finish == "stop" else finish


def _check_length(w: Worker, ids: list[int], params: dict, chat: bool) -> None:
    param = "messages" if chat else "prompt"
    if not ids:
        raise ApiError(400, "prompt is empty after tokenization", "invalid_request_error", param)
    ctx = getattr(w.engine.model.config, "max_position_embeddings", None) or 10**9
    if len(ids) > w.cfg.max_prompt_tokens:
        raise ApiError(400, f"This worker accepts at most {w.cfg.max_prompt_tokens} prompt tokens; your prompt has "
                            f"{len(ids)} tokens (the model's context is {ctx}).", "invalid_request_error", param,
                       "context_length_exceeded")
    if params["max_tokens"] is None:  # chat without max_tokens: the rest of the context, up to the worker's limit
        budget = w.engine.kv_budget_tokens
        room = min(ctx, budget if budget is not None else ctx) - len(ids)
        if room < 1:
            raise ApiError(400, f"prompt ({len(ids)} tokens) fills the model's context of {ctx} tokens",
                           "invalid_request_error", param, "context_length_exceeded")
        params["max_tokens"] = min(w.cfg.max_tokens_limit, room)
    elif len(ids) + params["max_tokens"] > ctx:
        raise ApiError(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                            f"{len(ids) + params['max_tokens']} tokens ({len(ids)} in the prompt, "
                            f"{params['max_tokens']} for the completion).", "invalid_request_error", param,
                       "context_length_exceeded")


def _engine_error(payload: dict) -> ApiError:
    return ApiError(500, payload["message"], "server_error", None, payload.get("code"))


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _logprobs_body(entries: list[dict], chat: bool, k: int) -> dict:
    """Engine entries -> OpenAI's chat (``content``) or completions shape."""
    if chat:
        def one(tok, lp):
            return {"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8"))}
        return {"content": [one(e["token"], e["logprob"]) | {"top_logprobs": [one(t, v) for t, v in e["top"]]}
                            for e in entries], "refusal": None}
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [dict(e["top"]) for e in entries] if k else None,
            "text_offset": [e["offset"] for e in entries]}


async def _watch_client(request: web.Request, req: GenRequest, q: asyncio.Queue) -> None:
    """Cancel the generation when the client goes away (aiohttp does not
    cancel handlers on disconnect by default), non-streaming included."""
    while not req.finished:
        t = request.transport
        if t is None or t.is_closing():
            req.cancelled = True
            q.put_nowait(("disconnect", {}))
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


async def _next(q: asyncio.Queue, req: GenRequest, deadline: float):
    left = deadline - time.monotonic()
    try:
        if left <= 0:
            raise asyncio.TimeoutError
        item = await asyncio.wait_for(q.get(), left)
    except asyncio.TimeoutError:
        req.cancelled = True
        raise ApiError(504, "request timed out (worker request timeout)", "server_error", None, "timeout") from None
    if item[0] == "disconnect":
        raise ClientGone()
    return item


async def _stream(request, o: Outcome, a: _Answer, include_usage: bool, fail_midway: bool) -> web.StreamResponse:
    """Relay the engine's events as server-sent events. The status line is
    200 before generation starts; a later failure is an error event, and the
    metric records the real outcome (``o.status``)."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       ADAPTER_HEADER: a.meta["adapter"]})
    chunks = _Chunks(a, include_usage)
    try:
        await resp.prepare(request)
        await resp.write(chunks.chunk(None, None, first=True) if a.chat else b": started\n\n")
        while True:
            try:
                kind, payload = await _next(a.q, a.req, a.deadline)
            except ApiError as e:  # timeout: the status line said 200; the event and the metric say 504
                o.status = str(e.status)
                await resp.write(_error_event(e))
                break
            if kind == "token":
                for data in chunks.tokens(payload):
                    await resp.write(data)
                if fail_midway:  # test-only: a canary that fails streamed traffic only
                    a.req.cancelled = True
                    o.status = "500"
                    await resp.write(_error_event(ApiError(
                        500, f"injected stream fault for adapter {a.meta['adapter']} (test setting)", "server_error")))
                    break
            elif kind == "error":
                e = _engine_error(payload)
                o.status = str(e.status)
                await resp.write(_error_event(e))
                break
            else:
                if a.delay:
                    await asyncio.sleep(a.delay)
                for data in chunks.done(payload):
                    await resp.write(data)
                break
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except (ConnectionResetError, ClientGone):  # the client dropped the stream: counted apart, no traceback
        a.req.cancelled = True
        o.status = CLIENT_GONE
    return resp


def _error_event(e: ApiError) -> bytes:
    return b"data: " + json.dumps(e.body()).encode() + b"\n\n"


class _Chunks:
    """OpenAI's streamed chunk shapes (chat deltas or completion texts) for one answer."""

    def __init__(self, a: _Answer, include_usage: bool):
        self.a = a
        self.obj = "chat.completion.chunk" if a.chat else "text_completion"
        self.include_usage = include_usage
        self.extra = {"usage": None} if include_usage else {}

    def chunk(self, text: str | None, finish: str | None, first: bool = False, entries=None,
              tool_calls=None) -> bytes:
        a = self.a
        lp = _logprobs_body(entries or [], a.chat, a.req.logprobs) if a.req.logprobs is not None and entries \
            else None
        if a.chat:
            delta = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            if tool_calls:
                delta["tool_calls"] = tool_calls
            c = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
        else:
            c = {"index": 0, "text": text or "", "logprobs": lp, "finish_reason": finish}
        return b"data: " + json.dumps({**a.meta, "object": self.obj, "choices": [c], **self.extra}).encode() + b"\n\n"

    def tokens(self, payload: dict) -> list[bytes]:
        """A token event: one text chunk, or the tool-call deltas it completes."""
        if self.a.calls is None:
            return [self.chunk(payload["text"], None, entries=payload.get("logprobs"))]
        return _call_chunks(self.a.calls.feed(payload["text"]), self.chunk)

    def done(self, payload: dict) -> list[bytes]:
        """The final event: the rest of a tool call, the finish reason, then the usage chunk if asked."""
        out = []
        finish = payload["finish_reason"]
        calls = self.a.calls
        if calls is not None:
            events, closed = calls.finish()
            out += _call_chunks(events, self.chunk)
            if calls.call is not None and closed and finish == "stop":
                finish = "tool_calls"
        out.append(self.chunk(None, finish, entries=payload.get("logprobs")))
        if self.include_usage:
            usage = _usage(len(self.a.req.prompt_ids), payload["completion_tokens"])
            out.append(b"data: " + json.dumps({**self.a.meta, "object": self.obj, "choices": [],
                                               "usage": usage}).encode() + b"\n\n")
        return out


def _call_chunks(events: list[tuple], chunk) -> list[bytes]:
    """ToolCallParser events -> OpenAI chunks: content deltas, then one tool
    call delta with id, type and name, then argument deltas (index 0)."""
    out = []
    for e in events:
        if e[0] == "content":
            if e[1]:
                out.append(chunk(e[1], None))
        elif e[0] == "call":
            out.append(chunk(None, None, tool_calls=[{"index": 0, "id": e[1], "type": "function",
                                                      "function": {"name": e[2], "arguments": ""}}]))
        elif e[1]:
            out.append(chunk(None, None, tool_calls=[{"index": 0, "function": {"arguments": e[1]}}]))
    return out


# ------------------------------------------------------------------ models
def _model_objects(w: Worker) -> list[dict]:
    data = []
    for task, backends in sorted(w.routes.items()):
        live = [(a, wt) for a, wt in backends if a in w.served and wt > 0]
        total = sum(wt for _, wt in live) or 1
        data.append({"id": task, "object": "model", "created": w.created, "owned_by": "loraplane", "kind": "task",
                     "routes": [{"adapter": a, "weight": wt, "effective": round(wt / total, 4) if (a, wt) in live else 0.0}
                                for a, wt in backends]})
    for name, ref in sorted(w.served.items()):
        data.append({"id": name, "object": "model", "created": w.loaded_at.get(name, w.created),
                     "owned_by": ref.owner, "kind": "adapter", "task": ref.task, "version": ref.version})
    if w.base_ref:
        data.append({"id": w.base_ref.name, "object": "model", "created": w.created, "owned_by": w.base_ref.owner,
                     "kind": "base", "variant": w.variant})
    return data


async def models(request):
    return web.json_response({"object": "list", "data": _model_objects(request.app[WORKER_KEY])})


async def model(request):
    name = request.match_info["model"]
    for m in _model_objects(request.app[WORKER_KEY]):
        if m["id"] == name:
            return web.json_response(m)
    raise ApiError(404, f"The model {name!r} does not exist on this worker", "invalid_request_error", "model",
                   "model_not_found")


async def healthz(request):
    w = request.app[WORKER_KEY]
    alive = w.engine is None or w.engine._thread.is_alive()
    return web.json_response({"ok": alive}, status=200 if alive else 500)


async def readyz(request):
    w = request.app[WORKER_KEY]
    st = w.status().model_dump()
    st["draining"] = w.draining
    st["variant_reason"] = w.variant_reason
    st["base_refusal"] = w.base_refusal
    st["adapters"] = w.adapter_states() if w.engine is not None else {}  # loaded (on the device) or evicted
    st["maxLoadedAdapters"] = w.cfg.max_loaded_adapters
    st["kvBudgetTokens"] = w.engine.kv_budget_tokens if w.engine is not None else None
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
    app.router.add_get("/v1/models/{model}", model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
