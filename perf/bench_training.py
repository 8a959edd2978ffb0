"""Training throughput on CPU with the tiny Mistral: LoRA (the real trainer)
against baselines measured in the same run on the same batches.

Why these baselines: tokens/s alone depends on the machine; as ratios,
"LoRA vs full fine-tune" shows what freezing the base buys (no optimizer
state or weight gradients for the base), and "LoRA vs forward-only" shows
the cost of training over just running the model (backward is ~2x a
forward pass, so a ratio near 1/3 means the trainer adds little overhead).

    .venv/bin/python -m loraplane.perf.bench_training [--steps 30] [--batch-size 8] [--seq-len 64]

Tokens = non-padding input tokens processed. LoRA figures come from the
trainer's own ``training_summary.json`` (``train()`` end to end; the
timed part excludes model loading and the final save).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
import time
from pathlib import Path

WORDS = ("the cat dog sun moon is red blue green good bad fast slow tell me about what why how "
         "one two three four five six seven eight nine ten report story answer question").split()


def make_dataset(path: Path, n: int, seed: int = 0, words: int = 24) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            q = " ".join(rng.choice(WORDS) for _ in range(words // 2))
            a = " ".join(rng.choice(WORDS) for _ in range(words // 2))
            f.write(json.dumps({"instruction": q, "output": a}) + "\n")
    return path


def _batches(base_dir: Path, data: Path, steps: int, batch_size: int, seq_len: int):
    from transformers import AutoTokenizer

    from loraplane.training import plan
    from loraplane.training.dataset import load_dataset, tokenize_all

    tok = AutoTokenizer.from_pretrained(base_dir)
    examples, _ = tokenize_all(tok, load_dataset([data]).examples, seq_len)
    return tok, [[examples[i] for i in plan.micro_batch(s, len(examples), batch_size, 0)] for s in range(steps)]


def baseline(base_dir: Path, data: Path, steps: int, batch_size: int, seq_len: int, mode: str) -> float:
    """tokens/s of full fine-tuning ("full") or forward passes only ("forward")."""
    import torch
    from transformers import AutoModelForCausalLM

    from loraplane.training.trainer import _batch_tensors, _loss_sum

    tok, batches = _batches(base_dir, data, steps, batch_size, seq_len)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if mode == "full" else None
    tensors = [_batch_tensors(b, tok.pad_token_id, "cpu") for b in batches]

    def one(t):
        if mode == "forward":
            with torch.no_grad():
                _loss_sum(model, t)
            return
        loss, n = _loss_sum(model, t)
        (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train() if mode == "full" else model.eval()
    # Timed from the first step, as the trainer's own figure is (no warm-up excluded).
    tokens, t0 = 0, time.perf_counter()
    for t in tensors:
        one(t)
        tokens += int(t["attention_mask"].sum())
    return tokens / (time.perf_counter() - t0)


def lora(base_dir: Path, data: Path, work: Path, steps: int, batch_size: int, seq_len: int,
         gradient_checkpointing: bool = False) -> dict:
    from loraplane.training.config import build_config
    from loraplane.training.trainer import train

    cfg = build_config({"base_dir": base_dir, "dataset": [data], "output_dir": work, "max_steps": steps,
                        "batch_size": batch_size, "seq_len": seq_len, "eval_split": 0.0, "logging_steps": steps,
                        "save_steps": 10_000, "resume": False, "gradient_checkpointing": gradient_checkpointing})
    return train(cfg, out=io.StringIO()).summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="best of N for each figure")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 by default: steadier figures on a shared machine)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)

    from loraplane.tiny_model import build_base

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = build_base(tmp / "base")
        data = make_dataset(tmp / "data.jsonl", n=max(64, args.batch_size * 8))
        res = {"lora": [], "lora_gc": [], "full": [], "forward": []}
        for r in range(args.repeats):
            s = lora(base, data, tmp / f"lora{r}", args.steps, args.batch_size, args.seq_len)
            res["lora"].append(s["tokens_per_second"])
            params = s["parameters"]
            s = lora(base, data, tmp / f"gc{r}", args.steps, args.batch_size, args.seq_len, True)
            res["lora_gc"].append(s["tokens_per_second"])
            res["full"].append(baseline(base, data, args.steps, args.batch_size, args.seq_len, "full"))
            res["forward"].append(baseline(base, data, args.steps, args.batch_size, args.seq_len, "forward"))
        best = {k: max(v) for k, v in res.items()}
    print(f"tiny Mistral (CPU, torch threads={torch.get_num_threads()}), "
          f"{args.steps} steps x batch {args.batch_size}, seq<={args.seq_len}, best of {args.repeats}")
    print(f"{'mode':<34}{'tokens/s':>10}{'vs full FT':>12}{'vs forward':>12}")
    rows = [("LoRA r=16 q/k/v/o (trainer)", best["lora"]),
            ("LoRA + gradient checkpointing", best["lora_gc"]),
            ("full fine-tune (baseline)", best["full"]),
            ("forward only (baseline)", best["forward"])]
    for name, v in rows:
        print(f"{name:<34}{v:>10.0f}{v / best['full']:>11.2f}x{v / best['forward']:>11.2f}x")
    print(f"LoRA trains {params['trainable']:,} of {params['total']:,} parameters "
          f"({100 * params['trainable'] / params['total']:.1f}%); full fine-tune trains all "
          f"(AdamW state: 2 floats per trained parameter)")
    print(json.dumps({"tokens_per_second": {k: round(v, 1) for k, v in best.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
