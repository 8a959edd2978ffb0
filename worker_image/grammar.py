"""Structured output and tool calling: OpenAI ``response_format`` and
``tools``/``tool_choice`` turned into llguidance grammars, one matcher per
request, applied per batch row by the engine.

Why llguidance: measured against xgrammar, outlines-core and
lm-format-enforcer (docs/worker.md, ``perf/grammar_compare.py``); it has no
Python dependencies, is MIT-licensed, computes masks on the CPU for CPU and
CUDA logits alike, and its Lark grammars embed JSON schemas (``%json``), so
"free text or a tool call" is one grammar.

The tool-call form (what the model is constrained to write) is one JSON
object, ``{"name": "<function>", "arguments": <arguments>}``, with the
wrapper fixed text and ``arguments`` constrained by that function's
``parameters`` schema. With ``tool_choice: "auto"`` the grammar is
``call | TEXT`` where TEXT is any text not starting with ``{``: the first
token decides, and an answer that starts with ``{`` is a tool call.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import threading
import weakref
from dataclasses import dataclass, field

NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CALL_PREFIX = '{{"name": "{}", "arguments": '
_ID_CHARS = string.ascii_letters + string.digits
# One JSON layout, json.dumps' default: no free whitespace (a model that may
# write whitespace forever can exhaust max_tokens inside a valid prefix).
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _styled(schema: dict) -> dict:
    return {**schema, "x-guidance": JSON_STYLE}


class GrammarRequestError(ValueError):
    """The request's response_format/tools are invalid or unsupported (a 400)."""

    def __init__(self, param: str, message: str, code: str = "invalid_value"):
        super().__init__(message)
        self.param, self.message, self.code = param, message, code


@dataclass
class Constraint:
    """What a request asked for, before it is compiled for a tokenizer."""

    param: str  # "response_format" or "tools": the parameter a compile error names
    lark: str | None = None
    json_schema: dict | None = None
    tool_names: list[str] = field(default_factory=list)  # non-empty: the output may be a tool call
    tools_only: bool = False  # required / named: the output must be a tool call


def _bad(param: str, why: str, code: str = "invalid_value") -> GrammarRequestError:
    return GrammarRequestError(param, f"{param}: {why}", code)


def from_response_format(rf) -> Constraint | None:
    """``{"type": "text"}`` (None), ``json_object`` or ``json_schema``."""
    if rf is None:
        return None
    if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
        raise _bad("response_format", "must be an object with a type")
    kind = rf["type"]
    if kind == "text":
        if set(rf) != {"type"}:
            raise _bad("response_format", "type text takes no other fields")
        return None
    if kind == "json_object":
        if set(rf) != {"type"}:
            raise _bad("response_format", "type json_object takes no other fields")
        return Constraint("response_format", json_schema={"type": "object"})
    if kind == "json_schema":
        js = rf.get("json_schema")
        if set(rf) != {"type", "json_schema"} or not isinstance(js, dict):
            raise _bad("response_format", "type json_schema needs a json_schema object")
        unknown = set(js) - {"name", "schema", "strict", "description"}
        if unknown:
            raise _bad("response_format", f"json_schema has unknown fields {sorted(unknown)}")
        if not isinstance(js.get("name"), str) or not NAME_RE.match(js["name"]):
            raise _bad("response_format", "json_schema.name must match ^[a-zA-Z0-9_-]{1,64}$")
        if js.get("strict") not in (None, True, False):
            raise _bad("response_format", "json_schema.strict must be a boolean")
        schema = js.get("schema", {"type": "object"})
        if not isinstance(schema, dict):
            raise _bad("response_format", "json_schema.schema must be a JSON schema object")
        return Constraint("response_format", json_schema=schema)
    raise _bad("response_format", f"type {kind!r} is not one of text, json_object, json_schema")


def from_tools(tools, tool_choice) -> tuple[Constraint | None, list[dict] | None]:
    """``tools`` + ``tool_choice`` -> (constraint or None, the tools for the chat template)."""
    if tools is None or tools == []:  # some clients send an empty list for "no tools"
        if tool_choice not in (None, "none"):
            raise _bad("tool_choice", "needs tools")
        return None, None
    if not isinstance(tools, list) or not tools:
        raise _bad("tools", "must be a non-empty list of function tools")
    schemas: dict[str, dict] = {}
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            raise GrammarRequestError("tools", f"tools[{i}]: only {{\"type\": \"function\", \"function\": {{...}}}} "
                                               "tools are supported", "unsupported_value")
        fn = t["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise _bad("tools", f"tools[{i}].function.name must match ^[a-zA-Z0-9_-]{{1,64}}$")
        if name in schemas:
            raise _bad("tools", f"function {name!r} is declared twice")
        params = fn.get("parameters", {"type": "object", "properties": {}, "additionalProperties": False})
        if not isinstance(params, dict):
            raise _bad("tools", f"tools[{i}].function.parameters must be a JSON schema object")
        schemas[name] = params
    if tool_choice is None:
        tool_choice = "auto"
    if tool_choice == "none":
        return None, tools
    if tool_choice in ("auto", "required"):
        names = list(schemas)
    elif isinstance(tool_choice, dict) and tool_choice.get("type") == "function" \
            and isinstance(tool_choice.get("function"), dict):
        name = tool_choice["function"].get("name")
        if name not in schemas:
            raise _bad("tool_choice", f"function {name!r} is not in tools")
        names = [name]
    else:
        raise _bad("tool_choice", 'must be "none", "auto", "required" or {"type": "function", "function": '
                                  '{"name": ...}}')
    rules = []
    for k, name in enumerate(names):
        rules.append(f"call_{k}: {json.dumps(CALL_PREFIX.format(name))} args_{k} \"}}\"")
        rules.append(f"args_{k}: %json {json.dumps(_styled(schemas[name]))}")
    call = "call: " + " | ".join(f"call_{k}" for k in range(len(names)))
    only = tool_choice != "auto"
    start = "start: call" if only else "start: call | TEXT\nTEXT: /[^{][\\s\\S]*/"
    lark = "\n".join([start, call, *rules]) + "\n"
    return Constraint("tools", lark=lark, tool_names=names, tools_only=only), tools


# ------------------------------------------------------------------ compiling
_tokenizers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _ll_tokenizer(tokenizer, n_vocab: int, eos_ids: list[int]):
    """One llguidance tokenizer per HF tokenizer (its token trie; ~0.1-0.4 s for 32k tokens)."""
    import llguidance.hf

    with _lock:
        hit = _tokenizers.get(tokenizer)
        if hit is None:
            try:
                hit = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=eos_ids or None)
            except Exception as e:  # noqa: BLE001 - e.g. a word-level tokenizer with no byte form
                hit = e
            _tokenizers[tokenizer] = hit
    return hit


def compile_matcher(c: Constraint, tokenizer, n_vocab: int, eos_ids: list[int]):
    """A fresh ``llguidance.LLMatcher`` for one request (tokenizer thread).
    An invalid schema or grammar raises GrammarRequestError (a 400)."""
    import llguidance

    lltok = _ll_tokenizer(tokenizer, n_vocab, sorted(eos_ids))
    if isinstance(lltok, Exception):
        raise GrammarRequestError(c.param, f"{c.param}: structured output is not available for this model: its "
                                           f"tokenizer cannot be used for constrained decoding ({lltok})",
                                  "unsupported_parameter")
    if c.json_schema is not None:
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(c.json_schema, overrides=JSON_STYLE)
        except (ValueError, TypeError) as e:
            raise _bad(c.param, f"invalid schema: {e}") from None
    else:
        grammar = llguidance.LLMatcher.grammar_from_lark(c.lark)
    err = llguidance.LLMatcher.validate_grammar(grammar, lltok)
    if err:
        raise _bad(c.param, f"invalid schema: {err}")
    m = llguidance.LLMatcher(lltok, grammar)
    if m.is_error():
        raise _bad(c.param, f"invalid schema: {m.get_error()}")
    return m


# ------------------------------------------------------------------ parsing the output
def call_id() -> str:
    """9 letters and digits: Mistral's chat templates refuse any other tool call id."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(9))


class ToolCallParser:
    """Splits generated text into content or one tool call, incrementally
    (streaming) or at once. Events: ("content", text), ("call", id, name),
    ("args", text)."""

    def __init__(self, names: list[str]):
        self.prefixes = {CALL_PREFIX.format(n): n for n in names}
        self.buf = ""
        self.mode: str | None = None  # None: undecided, "content", "call"
        self.sent = 0  # characters of arguments sent
        self.args_start = 0
        self.call: tuple[str, str] | None = None  # (id, name)

    def feed(self, text: str) -> list[tuple]:
        self.buf += text
        out: list[tuple] = []
        if self.mode is None:
            if not self.buf:
                return out
            if not self.buf.startswith("{"):
                self.mode = "content"
            else:
                for p, name in self.prefixes.items():
                    if self.buf.startswith(p):
                        self.mode, self.args_start = "call", len(p)
                        self.call = (call_id(), name)
                        out.append(("call", *self.call))
                        break
                else:
                    if not any(p.startswith(self.buf) for p in self.prefixes):
                        self.mode = "content"  # not the call form (cannot happen under the grammar)
        if self.mode == "content":
            out.append(("content", self.buf))
            self.buf = ""
        elif self.mode == "call":
            args = self.buf[self.args_start:]
            upto = len(args) - 1  # hold back one character: the wrapper's closing brace
            if upto > self.sent:
                out.append(("args", args[self.sent:upto]))
                self.sent = upto
        return out

    def finish(self) -> tuple[list[tuple], bool]:
        """Events still held back, and whether the call's wrapper was closed."""
        out: list[tuple] = []
        if self.mode is None:
            if self.buf:
                out.append(("content", self.buf))
            return out, False
        if self.mode != "call":
            return out, False
        args = self.buf[self.args_start:]
        closed = args.endswith("}") and _is_json(args[:-1])
        end = len(args) - 1 if closed else len(args)
        if end > self.sent:
            out.append(("args", args[self.sent:end]))
            self.sent = end
        return out, closed


def _is_json(s: str) -> bool:
    try:
        json.loads(s)
        return True
    except ValueError:
        return False
