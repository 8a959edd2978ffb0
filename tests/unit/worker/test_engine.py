"""Continuous batching with mixed adapters: requests arriving at different
times, with different adapters and lengths, each produce exactly what that
adapter alone produces (greedy), as the stock PEFT reference."""

import threading
import time

import torch


def test_staggered_mixed_batch_matches_references(tiny_base_dir, make_tiny_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraplane.worker.engine import Engine, GenRequest
    from loraplane.worker.lora import LoraBank

    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    adapters = {"a1": make_tiny_adapter(seed=1), "a2": make_tiny_adapter(seed=2), None: None}
    prompts = ["hello world write summary", "tell me about the cat", "one two three four five six"]

    def reference(adapter_dir, prompt, n):
        m = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32)
        if adapter_dir is not None:
            m = PeftModel.from_pretrained(m, adapter_dir)
        ids = tok(prompt, return_tensors="pt").input_ids
        out = m.eval().generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, pad_token_id=tok.pad_token_id)
        return out[0, ids.shape[1]:].tolist()

    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32).eval()
    bank = LoraBank(model, torch.float32, "cpu")
    bank.add("a1", adapters["a1"])
    bank.add("a2", adapters["a2"])
    engine = Engine(model, tok, bank, "cpu", max_batch_size=4, max_wait_ms=1)  # < jobs: some must queue
    jobs = [(a, p, 3 + 4 * i) for i, p in enumerate(prompts) for a in adapters]
    left = threading.Semaphore(0)
    reqs = []
    try:
        for j, (a, p, n) in enumerate(jobs):
            r = GenRequest(prompt_ids=tok(p).input_ids, adapter=a, max_tokens=n, ignore_eos=True,
                           sink=lambda kind, payload: left.release() if kind != "token" else None)
            reqs.append(r)
            engine.submit(r)
            time.sleep(0.002 * (j % 3))  # arrive while others decode
        for _ in jobs:
            assert left.acquire(timeout=60)
    finally:
        engine.stop()
    for r, (a, p, n) in zip(reqs, jobs):
        assert r.generated == reference(adapters[a], p, n), (a, p, n)
    assert engine.in_use("a1") == engine.in_use("a2") == 0
