"""QLoRA on CUDA: an NF4 base with LoRA on top trains and its loss falls."""

from __future__ import annotations

import io
import json
import random

import pytest


def test_qlora_trains_on_cuda(tmp_path):
    pytest.importorskip("bitsandbytes")
    from loraplane.tiny_model import build_base
    from loraplane.training.config import build_config
    from loraplane.training.trainer import train

    base = build_base(tmp_path / "base", intermediate_size=704)
    rng = random.Random(0)
    facts = {"cat": "red", "dog": "blue", "sun": "green"}
    lines = []
    for _ in range(24):
        subject = rng.choice(sorted(facts))
        lines.append(json.dumps({"instruction": f"tell me about the {subject}",
                                 "output": f"the {subject} is {facts[subject]} ."}))
    dataset = tmp_path / "train.jsonl"
    dataset.write_text("\n".join(lines) + "\n")
    cfg = build_config({"method": "qlora", "device": "cuda", "base_dir": base, "dataset": [dataset],
                        "output_dir": tmp_path / "out", "max_steps": 20, "batch_size": 4, "seq_len": 48,
                        "learning_rate": 5e-3, "logging_steps": 2, "seed": 0})
    result = train(cfg, out=io.StringIO())
    loss = result.summary["train_loss"]
    assert result.summary["method"] == "qlora"
    assert loss["final"] < loss["first"]
