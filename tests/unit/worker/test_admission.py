"""KV-cache admission: the engine admits a request only while the KV cache
its batch can grow to (left-padded: rows x longest span) fits the budget;
beyond it requests wait, past the queue limit they are refused (the server
answers 429 with Retry-After), and a request that could never fit is refused
at once. The budget is checked against the bytes of the real cache tensors."""

from __future__ import annotations

import threading

import pytest
import torch

from loraplane.contracts.memory import ModelShape, kv_bytes_per_token
from loraplane.worker.engine import Engine, GenRequest, Overloaded, TooLargeForBudget

PROMPT = "tell me about the cat and the dog"


def _cache_bytes(eng: Engine) -> int:
    if eng._cache is None:
        return 0
    return sum(t.numel() * t.element_size() for layer in eng._cache.layers for t in (layer.keys, layer.values))


@pytest.fixture
def model_tok(tiny_base_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32).eval()
    return model, tok


def _engine(model, tok, **kw) -> Engine:
    from loraplane.worker.lora import LoraBank

    return Engine(model, tok, LoraBank(model, torch.float32, "cpu"), "cpu", max_wait_ms=1, **kw)


def test_kv_budget_bounds_the_real_cache_and_everyone_finishes(model_tok):
    model, tok = model_tok
    per_token = kv_bytes_per_token(ModelShape.from_config(model.config.to_dict()), 4)
    ids = tok(PROMPT).input_ids
    need = len(ids) + 20  # each request's span: prompt + max_tokens
    budget = per_token * need * 3  # three rows at a time
    eng = _engine(model, tok, max_batch_size=8, kv_budget_bytes=budget)
    seen_rows, seen_bytes = [], []
    decode = eng._decode

    def measured_decode():
        decode()
        seen_rows.append(len(eng._rows))
        seen_bytes.append(_cache_bytes(eng))
        # the formula is the truth: every byte of the cache is rows x width x per-token
        assert seen_bytes[-1] == per_token * len(eng._rows) * (eng._mask.shape[1] if eng._mask is not None else 0)

    eng._decode = measured_decode
    done = threading.Semaphore(0)
    reqs = [GenRequest(prompt_ids=ids, adapter=None, max_tokens=20, ignore_eos=True,
                       sink=lambda k, p: done.release() if k != "token" else None) for _ in range(8)]
    try:
        for r in reqs:
            eng.submit(r)
        for _ in reqs:
            assert done.acquire(timeout=60)
    finally:
        eng.stop()
    assert all(len(r.generated) == 20 for r in reqs)
    assert max(seen_rows) == 3  # admission, not the batch size (8), bounded the batch
    assert max(seen_bytes) <= budget and max(seen_bytes) > budget // 2


def test_queue_limit_and_never_fitting_requests_are_refused(model_tok):
    model, tok = model_tok
    per_token = kv_bytes_per_token(ModelShape.from_config(model.config.to_dict()), 4)
    ids = tok(PROMPT).input_ids
    eng = _engine(model, tok, max_batch_size=1, kv_budget_bytes=per_token * (len(ids) + 200), max_queue=2)
    done = threading.Semaphore(0)

    def req(max_tokens=200):
        return GenRequest(prompt_ids=ids, adapter=None, max_tokens=max_tokens, ignore_eos=True,
                          sink=lambda k, p: done.release() if k != "token" else None)

    try:
        with pytest.raises(TooLargeForBudget):
            eng.submit(req(max_tokens=201))  # could never be admitted: refused, not queued forever
        running = [req() for _ in range(3)]
        eng.submit(running[0])
        for _ in range(200):  # wait until the first one is admitted (off the queue)
            if eng._rows:
                break
            threading.Event().wait(0.01)
        eng.submit(running[1])
        eng.submit(running[2])
        with pytest.raises(Overloaded) as e:
            eng.submit(req())
        assert e.value.retry_after >= 1
        for r in running:
            r.cancelled = True
        for _ in running:
            assert done.acquire(timeout=60)
    finally:
        eng.stop()
