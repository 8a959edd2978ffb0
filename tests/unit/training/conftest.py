"""Tiny datasets for the trainer tests, generated per test (no files in git)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

FACTS = {"cat": "red", "dog": "blue", "sun": "green", "moon": "yellow"}


def write_dataset(path: Path, n: int = 24, seed: int = 0) -> Path:
    """Half instruction records, half chat records; the answer is a fixed fact
    per subject, so a LoRA can learn it in a few dozen steps."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        subject = rng.choice(sorted(FACTS))
        answer = f"the {subject} is {FACTS[subject]} ."
        if i % 2:
            rec = {"instruction": f"tell me about the {subject}", "output": answer}
        else:
            rec = {"messages": [{"role": "system", "content": "short answer"},
                                {"role": "user", "content": f"what about the {subject} ?"},
                                {"role": "assistant", "content": answer}]}
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def dataset_file(tmp_path) -> Path:
    return write_dataset(tmp_path / "train.jsonl")
