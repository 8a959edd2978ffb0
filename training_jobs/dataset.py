"""JSONL training data: parse and validate records, then tokenize with the
prompt masked out of the loss.

Why validate everything first: a Job that fails on line 9,000 after an hour
of training wastes a GPU; parsing is cheap, so every line is checked before
the model is loaded, and a bad line is reported by file, line number and
reason. Nothing is trained or published from a file with a bad line.

Record formats (one JSON object per line; blank lines are skipped):
- instruction: {"instruction": str, "input": str (optional), "output": str}
- chat: {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
  with at least one assistant message; the loss covers every assistant turn
  (only the last one when the chat template is not prefix-stable).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100


class DatasetError(ValueError):
    """A dataset line (or the file) cannot be used; the message names where and why."""


@dataclass(frozen=True)
class Example:
    messages: tuple[tuple[str, str], ...]  # (role, content)
    source: str  # "file:line", for error messages


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    source: str = ""

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _nonempty_str(obj: dict, key: str, where: str, required: bool = True) -> str:
    if key not in obj:
        if required:
            raise DatasetError(f"{where}: missing field {key!r}")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise DatasetError(f"{where}: field {key!r} is empty")
    return value


def parse_record(obj: Any, where: str) -> Example:
    """One decoded JSON value -> Example, or DatasetError naming the problem."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DatasetError(f"{where}: 'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise DatasetError(f"{where}: messages[{i}] must be an object")
            role = m.get("role")
            if role not in ROLES:
                raise DatasetError(f"{where}: messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
            content = _nonempty_str(m, "content", f"{where}: messages[{i}]")
            out.append((role, content))
        if not any(r == "assistant" for r, _ in out):
            raise DatasetError(f"{where}: no assistant message to learn from")
        return Example(tuple(out), where)
    if "instruction" in obj or "output" in obj:
        instruction = _nonempty_str(obj, "instruction", where)
        extra = _nonempty_str(obj, "input", where, required=False)
        output = _nonempty_str(obj, "output", where)
        prompt = instruction + ("\n\n" + extra if extra.strip() else "")
        return Example((("user", prompt), ("assistant", output)), where)
    raise DatasetError(
        f"{where}: unknown record shape (keys: {', '.join(sorted(obj)) or 'none'}); "
        "expected 'messages' or 'instruction'/'output'"
    )


def parse_jsonl_text(text: str, name: str) -> list[Example]:
    examples = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        examples.append(parse_record(obj, where))
    if not examples:
        raise DatasetError(f"{name}: no records")
    return examples


@dataclass
class LoadedDataset:
    examples: list[Example]
    files: list[dict] = field(default_factory=list)  # {path, sha256, records}
    sha256: str = ""  # over all files, in order


def load_dataset(paths: list[Path]) -> LoadedDataset:
    """Read, hash and validate every file (all-or-nothing)."""
    examples: list[Example] = []
    files = []
    total = hashlib.sha256()
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise DatasetError(f"{p}: dataset file not found")
        raw = p.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        total.update(digest.encode())
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise DatasetError(f"{p}:{line}: not valid UTF-8") from None
        ex = parse_jsonl_text(text, str(p))
        examples.extend(ex)
        files.append({"path": str(p), "sha256": digest, "records": len(ex)})
    # One file: its own sha256, so it can be checked with sha256sum.
    return LoadedDataset(examples, files, files[0]["sha256"] if len(files) == 1 else total.hexdigest())


def split_eval(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train indices, eval indices). Keeps at least one training
    example; an eval split rounds up to one example once there are two."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    n_eval = 0
    if fraction > 0 and n >= 2:
        n_eval = min(n - 1, max(1, round(n * fraction)))
    return sorted(idx[n_eval:]), sorted(idx[:n_eval])


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    # Plain fallback for tokenizers without a chat template.
    text = "".join(f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages)
    return text + ("### Assistant:\n" if add_generation_prompt else "")


def assistant_spans(tokenizer, ex: Example) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and return the character spans of assistant turns.

    Every assistant turn is learned when the template is prefix-stable
    (rendering the first k turns is a prefix of rendering all of them), true
    of most templates. Some are not (Mistral v0.3 moves the system prompt into
    the LAST user turn); then only the final assistant turn is learned, which
    is still exact. Anything else is reported rather than trained on wrongly.
    """
    msgs = [{"role": r, "content": c} for r, c in ex.messages]
    try:
        full = _render(tokenizer, msgs, add_generation_prompt=False)

        def span(i: int) -> tuple[int, int] | None:
            prompt = _render(tokenizer, msgs[:i], add_generation_prompt=True) if i else ""
            upto = full if i == len(msgs) - 1 else _render(tokenizer, msgs[: i + 1], add_generation_prompt=False)
            if not (full.startswith(prompt) and full.startswith(upto) and len(prompt) <= len(upto)):
                return None
            return len(prompt), len(upto)

        turns = [i for i, (role, _) in enumerate(ex.messages) if role == "assistant"]
        spans = [span(i) for i in turns]
        if any(sp is None for sp in spans):
            last = span(turns[-1]) if turns[-1] == len(msgs) - 1 else None
            if last is None:
                raise DatasetError(f"{ex.source}: the chat template does not render this conversation "
                                   "prefix-stably; cannot tell prompt from answer")
            spans = [last]
    except DatasetError:
        raise
    except Exception as exc:  # template errors (e.g. roles must alternate)
        raise DatasetError(f"{ex.source}: chat template rejected the messages: {exc}") from None
    return full, spans


def tokenize_example(tokenizer, ex: Example, seq_len: int) -> TokenizedExample:
    """Token ids + labels where only assistant tokens (and a closing EOS) count."""
    text, spans = assistant_spans(tokenizer, ex)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = []
    for tok, (s, e) in zip(ids, enc["offset_mapping"]):
        in_answer = any(a <= s < b for a, b in spans) and e > s
        labels.append(tok if in_answer else IGNORE_INDEX)
    eos = tokenizer.eos_token_id
    if eos is not None and ex.messages[-1][0] == "assistant" and (not ids or ids[-1] != eos):
        ids.append(eos)
        labels.append(eos)  # teach the model to stop
    return TokenizedExample(ids[:seq_len], labels[:seq_len], ex.source)


def tokenize_all(tokenizer, examples: list[Example], seq_len: int) -> tuple[list[TokenizedExample], int]:
    """Tokenize; drop examples whose answer lies wholly past seq_len. Returns (kept, dropped)."""
    if not getattr(tokenizer, "is_fast", False):
        raise DatasetError("the tokenizer must be a fast tokenizer (offsets are needed to mask the prompt)")
    kept, dropped = [], 0
    for ex in examples:
        t = tokenize_example(tokenizer, ex, seq_len)
        if t.n_label_tokens == 0:
            dropped += 1
        else:
            kept.append(t)
    return kept, dropped


def collate(batch: list[TokenizedExample], pad_id: int) -> dict[str, list[list[int]]]:
    """Right-pad a micro-batch; padding never counts in the loss."""
    width = max(len(t.input_ids) for t in batch)
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for t in batch:
        pad = width - len(t.input_ids)
        out["input_ids"].append(t.input_ids + [pad_id] * pad)
        out["attention_mask"].append([1] * len(t.input_ids) + [0] * pad)
        out["labels"].append(t.labels + [IGNORE_INDEX] * pad)
    return out
