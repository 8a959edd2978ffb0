"""Constrained vs unconstrained decoding throughput in the worker's engine,
same run, interleaved, best of ``--repeat``: tiny random-weight Mistral with a
512-token byte-level BPE (and optionally hidden size 1024), single-adapter and
mixed-adapter batches.

    .venv/bin/python -m loraplane.perf.bench_structured [--hidden 256,1024] [--rows 8] [--tokens 64]

Fairness: every row generates exactly ``--tokens`` tokens in both modes.
Unconstrained rows use ``ignore_eos``; constrained rows decode a JSON array of
integers (``{"type": "array", "items": {"type": "integer"}}``) whose closing
``]`` is banned with ``logit_bias`` (so the grammar never completes and every
step computes a real mask: digits, separators, EOS disallowed); the same bias
is given to the unconstrained rows. Throughput =
completion tokens / wall time of the whole batch; ratio = constrained /
unconstrained. On a loaded shared machine the wall-clock ratio is noise
(steps vary by 2x run to run), so the engine's steps are also timed: the
grammar's cost per step is the difference of the mean time in ``_sample``
(mask + sampling + grammar advance) between the modes, and the "accounted"
ratio is step / (step + that cost), with step the unconstrained decode step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

SCHEMA = {"type": "array", "items": {"type": "integer"}}


def _engine(base_dir: Path, adapters: list[Path]):
    import torch

    from loraplane.worker.engine import Engine
    from loraplane.worker.loader import load_base
    from loraplane.worker.lora import LoraBank

    model, tok = load_base(base_dir, "fp32", "cpu")
    bank = LoraBank(model, torch.float32, torch.device("cpu"))
    for i, a in enumerate(adapters):
        bank.add(f"a{i}", a)
    return Engine(model, tok, bank, "cpu", max_batch_size=64, max_wait_ms=50), tok


def _timed(engine) -> None:
    """Time every decode step and every sampling call of ``engine``."""
    engine.timings = {"decode": [], "sample": []}
    decode, sample = engine._decode, engine._sample

    def timed_decode():
        t = time.perf_counter()
        decode()
        engine.timings["decode"].append(time.perf_counter() - t)

    def timed_sample(logits, rows):
        t = time.perf_counter()
        out = sample(logits, rows)
        engine.timings["sample"].append(time.perf_counter() - t)
        return out

    engine._decode, engine._sample = timed_decode, timed_sample


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _run(engine, tok, rows: int, tokens: int, constrained: bool, mixed: bool) -> tuple[float, int]:
    from loraplane.worker import grammar
    from loraplane.worker.engine import GenRequest

    prompt = tok.apply_chat_template([{"role": "user", "content": "tell me about the cat"}],
                                     add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    vocab = engine.model.config.vocab_size
    ban = {i: -100.0 for i in range(len(tok)) if "]" in tok.decode([i])}
    done = threading.Semaphore(0)
    reqs = []
    for i in range(rows):
        kw = {"logit_bias": ban}  # both modes pay for the same bias
        if constrained:
            kw["grammar"] = grammar.compile_matcher(grammar.Constraint("response_format", json_schema=SCHEMA), tok,
                                                    vocab, engine.eos_ids)
        else:
            kw["ignore_eos"] = True
        reqs.append(GenRequest(prompt_ids=prompt, adapter=f"a{i % 2}" if mixed else "a0", max_tokens=tokens,
                               sink=lambda kind, p: done.release() if kind in ("done", "error") else None, **kw))
    engine.timings = {"decode": [], "sample": []}
    t0 = time.perf_counter()
    for r in reqs:
        engine.submit(r)
    for _ in reqs:
        done.acquire()
    wall = time.perf_counter() - t0
    n = sum(len(r.generated) for r in reqs)
    engine.last = {k: _median(v) for k, v in engine.timings.items()}
    if constrained:
        for r in reqs:
            assert r.grammar_error is None and len(r.generated) == tokens, (r.grammar_error, len(r.generated))
            text = tok.decode(r.generated, skip_special_tokens=True)
            assert text.startswith("[") and "]" not in text, text
    return wall, n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", default="256,1024")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    import torch

    from loraplane.tiny_model import build_adapter, build_base

    results = []
    torch.set_num_threads(args.threads)
    print(f"rows={args.rows} tokens/row={args.tokens} best of {args.repeat}, torch threads={torch.get_num_threads()}")
    print("| model | batch | unconstrained tok/s | constrained tok/s | wall ratio | decode step (ms) | "
          "_sample unconstrained / constrained (ms) | accounted ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for hidden in [int(h) for h in args.hidden.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            over = {} if hidden == 256 else {"hidden_size": hidden, "intermediate_size": int(hidden * 2.6875)}
            base = build_base(Path(tmp) / "base", tokenizer="bpe", **over)
            adapters = [build_adapter(base, Path(tmp) / f"a{i}", seed=i + 1) for i in range(2)]
            engine, tok = _engine(base, adapters)
            _timed(engine)
            try:
                _run(engine, tok, args.rows, 4, True, True)  # warm up both paths
                _run(engine, tok, args.rows, 4, False, True)
                for mixed in (False, True):
                    best = {True: 0.0, False: 0.0}
                    steps = {True: [], False: []}
                    samples = {True: [], False: []}
                    for _ in range(args.repeat):
                        for constrained in (False, True):
                            wall, n = _run(engine, tok, args.rows, args.tokens, constrained, mixed)
                            best[constrained] = max(best[constrained], n / wall)
                            steps[constrained].append(engine.last["decode"])
                            samples[constrained].append(engine.last["sample"])
                    ratio = best[True] / best[False]
                    step = min(steps[False])
                    s_u, s_c = min(samples[False]), min(samples[True])
                    accounted = step / (step + max(0.0, s_c - s_u))
                    batch = "mixed (2 adapters)" if mixed else "single adapter"
                    print(f"| h={hidden} | {batch} | {best[False]:.0f} | {best[True]:.0f} | {ratio:.2f} | "
                          f"{step * 1e3:.1f} | {s_u * 1e3:.2f} / {s_c * 1e3:.2f} | {accounted:.3f} |", flush=True)
                    results.append({"hidden": hidden, "mixed": mixed, "unconstrained_tok_s": best[False],
                                    "constrained_tok_s": best[True], "wall_ratio": ratio,
                                    "decode_step_s": step, "sample_unconstrained_s": s_u,
                                    "sample_constrained_s": s_c, "accounted_ratio": accounted})
            finally:
                engine.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
