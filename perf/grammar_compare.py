"""Compare grammar libraries for constrained decoding on CPU: compile time and
per-token mask overhead (mask + advance), on the tiny model's vocabulary and
on a 32k byte-level BPE vocabulary (Mistral's size) built offline.

    .venv/bin/python -m loraplane.perf.grammar_compare [--libs xgrammar,llguidance,...]

Each library is fed the tokens of the same valid JSON document (the JSON
schema below) and computes the full vocabulary mask before every token, as a
decoding loop does; a library that is not installed is reported as such.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "score": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "verdict": {"enum": ["good", "bad"]},
    },
    "required": ["name", "score", "tags", "verdict"],
    "additionalProperties": False,
}
DOC = json.dumps({"name": "the cat and the dog", "score": 42, "tags": ["red", "blue", "green"], "verdict": "good"})


def bpe_tokenizer(vocab_size: int):
    from loraplane.tiny_model import build_bpe_tokenizer

    return build_bpe_tokenizer(vocab_size)


def _run_xgrammar(tok, n_vocab, ids):
    import torch
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=n_vocab)
    cg = xgr.GrammarCompiler(info, max_threads=1).compile_json_schema(json.dumps(SCHEMA))
    compile_s = time.perf_counter() - t0
    m = xgr.GrammarMatcher(cg)
    bm = xgr.allocate_token_bitmask(1, n_vocab)
    logits = torch.zeros(1, n_vocab)
    steps = []
    for t in ids:
        s = time.perf_counter()
        m.fill_next_token_bitmask(bm, 0)
        xgr.apply_token_bitmask_inplace(logits, bm)
        ok = m.accept_token(t)
        steps.append(time.perf_counter() - s)
        assert ok, f"xgrammar refused token {t}"
    return compile_s, steps


def _run_llguidance(tok, n_vocab, ids):
    import llguidance
    import llguidance.hf
    import llguidance.torch as lt
    import torch

    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tok, n_vocab=n_vocab)
    m = llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_json_schema(SCHEMA))
    compile_s = time.perf_counter() - t0
    bm = lt.allocate_token_bitmask(1, n_vocab)
    logits = torch.zeros(1, n_vocab)
    steps = []
    for t in ids:
        s = time.perf_counter()
        lt.fill_next_token_bitmask(m, bm, 0)
        lt.apply_token_bitmask_inplace(logits, bm)
        ok = m.consume_token(t)
        steps.append(time.perf_counter() - s)
        assert ok and not m.is_error(), m.get_error()
    return compile_s, steps


def _run_outlines_core(tok, n_vocab, ids):
    import torch
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    t0 = time.perf_counter()
    eos = tok.eos_token_id
    vocab: dict[str, list[int]] = {}
    special = set(tok.all_special_ids)
    for i in range(len(tok)):
        if i in special:
            continue
        vocab.setdefault(tok.decode([i]), []).append(i)
    index = Index(build_regex_from_schema(json.dumps(SCHEMA)), Vocabulary(eos, vocab))
    compile_s = time.perf_counter() - t0
    g = Guide(index)
    mask = torch.zeros((n_vocab + 31) // 32, dtype=torch.int32)
    logits = torch.zeros(1, n_vocab)
    steps = []
    for t in ids:
        s = time.perf_counter()
        g.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())
        bits = ((mask[:, None] >> torch.arange(32, dtype=torch.int32)) & 1).flatten()[:n_vocab].bool()
        logits.masked_fill_(~bits[None, :], float("-inf"))
        g.advance(t)
        steps.append(time.perf_counter() - s)
    return compile_s, steps


def _run_lmfe(tok, n_vocab, ids):
    import sys

    import transformers.tokenization_utils_base as tub

    # lm-format-enforcer 0.11 imports transformers.tokenization_utils, gone in transformers 5
    sys.modules.setdefault("transformers.tokenization_utils", tub)
    from lmformatenforcer import JsonSchemaParser, TokenEnforcer
    from lmformatenforcer.integrations.transformers import build_token_enforcer_tokenizer_data

    t0 = time.perf_counter()
    te = TokenEnforcer(build_token_enforcer_tokenizer_data(tok, vocab_size=n_vocab), JsonSchemaParser(SCHEMA))
    compile_s = time.perf_counter() - t0
    steps = []
    for k, t in enumerate(ids):
        s = time.perf_counter()
        allowed = te.get_allowed_tokens(ids[:k]).allowed_tokens
        steps.append(time.perf_counter() - s)
        assert t in allowed, f"lm-format-enforcer refused token {t}"
    return compile_s, steps


LIBS = {"xgrammar": _run_xgrammar, "llguidance": _run_llguidance, "outlines-core": _run_outlines_core,
        "lm-format-enforcer": _run_lmfe}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--libs", default=",".join(LIBS))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    vocabs = {"tiny BPE (512)": bpe_tokenizer(512), "BPE 32k": bpe_tokenizer(32000)}
    print("| library | vocabulary | compile (ms) | mask+advance per token, median (us) | p95 (us) | tokens |")
    print("| --- | --- | --- | --- | --- | --- |")
    for lib in args.libs.split(","):
        for vname, tok in vocabs.items():
            n_vocab = len(tok)
            ids = tok(DOC, add_special_tokens=False).input_ids
            assert tok.decode(ids) == DOC
            try:
                compile_s, steps = LIBS[lib](tok, n_vocab, ids)
            except ImportError as e:
                print(f"| {lib} | {vname} | not installed ({e.name}) | | | |")
                continue
            except Exception as e:  # noqa: BLE001 - a failure is a result here
                print(f"| {lib} | {vname} | FAILED: {type(e).__name__}: {str(e)[:80]} | | | |")
                continue
            steps.sort()
            p95 = steps[int(0.95 * (len(steps) - 1))]
            print(f"| {lib} | {vname} ({n_vocab}) | {compile_s * 1e3:.0f} | {statistics.median(steps) * 1e6:.0f} "
                  f"| {p95 * 1e6:.0f} | {len(ids)} |", flush=True)


if __name__ == "__main__":
    main()
