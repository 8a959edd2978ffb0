"""Failure paths of the engine: an exception (or CUDA OOM) in prefill, in the
merge of new rows into the running batch, or in a decode step fails exactly
the requests it affects, promptly, releases every adapter reference, and the
engine keeps serving; an unload of the adapter afterwards completes.

Faults are raised by the engine's test-only hook (``Engine.fault``, env
``LORAPLANE_FAULT_PHASE``), at the point of each phase where state is most
fragile (after the forward pass, so the KV cache has already been written)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from loraplane.worker.engine import Engine, Fault, GenRequest, parse_fault

PROMPT = "tell me about the cat and the dog"


class Rec:
    """Collects one request's events; ``done`` is set on its final event."""

    def __init__(self):
        self.events: list[tuple[str, dict]] = []
        self.done = threading.Event()

    def __call__(self, kind, payload):
        self.events.append((kind, payload))
        if kind != "token":
            self.done.set()

    @property
    def final(self):
        return self.events[-1] if self.events else None


@pytest.fixture(scope="module")
def engine(tiny_base_dir, make_tiny_adapter):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraplane.worker.lora import LoraBank

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32).eval()
    bank = LoraBank(model, torch.float32, "cpu")
    eng = Engine(model, tok, bank, "cpu", max_batch_size=8, max_wait_ms=1)
    eng.test_adapter_dir = make_tiny_adapter(seed=1)
    yield eng
    eng.stop()


def _install(eng, name="a1"):
    eng.call(lambda: eng.bank.add(name, eng.test_adapter_dir)).result(30)


def _submit(eng, adapter="a1", max_tokens=4, ignore_eos=True):
    rec = Rec()
    r = GenRequest(prompt_ids=eng.tokenizer(PROMPT).input_ids, adapter=adapter, max_tokens=max_tokens,
                   ignore_eos=ignore_eos, sink=rec)
    eng.submit(r)
    return r, rec


def _wait_decoding(eng, r, timeout=30):
    deadline = time.monotonic() + timeout
    while len(r.generated) < 2:
        assert time.monotonic() < deadline, "request never started decoding"
        time.sleep(0.005)


def _check_recovered(eng):
    """refcounts zero, a following request succeeds, an unload completes."""
    deadline = time.monotonic() + 10
    while eng.in_use("a1") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert eng.in_use("a1") == 0
    _, ok = _submit(eng, max_tokens=3)
    assert ok.done.wait(30) and ok.final[0] == "done", ok.events
    assert ok.final[1]["completion_tokens"] == 3
    assert eng.in_use("a1") == 0
    eng.unload_when_idle("a1").result(10)  # would wait forever on a leaked reference
    assert "a1" not in eng.bank.adapters
    assert eng._thread.is_alive()


@pytest.mark.parametrize("oom", [False, True], ids=["exception", "oom"])
def test_fault_in_prefill_fails_the_new_requests_only(engine, oom):
    _install(engine)
    try:
        engine.fault = Fault("prefill", times=1, oom=oom)
        r, rec = _submit(engine)
        assert rec.done.wait(10), "a request whose prefill failed was never answered"
        kind, payload = rec.final
        assert kind == "error" and "prefill" in payload["message"], rec.events
        if oom:
            assert payload["code"] == "out_of_memory"
        _check_recovered(engine)
    finally:
        engine.fault = None


def test_fault_in_merge_fails_the_joining_requests_not_the_running_batch(engine):
    _install(engine)
    try:
        long, long_rec = _submit(engine, max_tokens=300)  # still running when the joining request merges
        _wait_decoding(engine, long)
        engine.fault = Fault("merge", times=1)
        joining, rec = _submit(engine)
        assert rec.done.wait(10), "a request whose merge failed was never answered"
        assert rec.final[0] == "error" and "merge" in rec.final[1]["message"], rec.events
        assert long_rec.done.wait(60)
        assert long_rec.final[0] == "done" and long_rec.final[1]["completion_tokens"] == 300, long_rec.final
        _check_recovered(engine)
    finally:
        engine.fault = None


def test_fault_in_decode_fails_the_running_batch(engine):
    _install(engine)
    try:
        a, rec_a = _submit(engine, max_tokens=200)
        b, rec_b = _submit(engine, adapter=None, max_tokens=200)
        _wait_decoding(engine, a)
        _wait_decoding(engine, b)
        engine.fault = Fault("decode", times=1)
        for rec in (rec_a, rec_b):
            assert rec.done.wait(10), "a request whose decode failed was never answered"
            assert rec.final[0] == "error" and "decode" in rec.final[1]["message"], rec.events
        _check_recovered(engine)
    finally:
        engine.fault = None


def test_parse_fault():
    assert parse_fault(None) is None and parse_fault(" ") is None
    assert parse_fault("decode") == Fault("decode", times=None)
    assert parse_fault("prefill:2") == Fault("prefill", times=2)
    assert parse_fault("merge:oom:1") == Fault("merge", times=1, oom=True)
    with pytest.raises(ValueError):
        parse_fault("sampling")
    with pytest.raises(ValueError):
        parse_fault("decode:sometimes")
