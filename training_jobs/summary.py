"""training_summary.json: what was trained, from what, how, and how it went.

Why: an adapter in the store must be traceable to its base checksum,
dataset hash and hyper-parameters (the seeds' provenance requirement), and
its losses tell a reviewer whether the run learned anything.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

SUMMARY_FILE = "training_summary.json"
SCHEMA_VERSION = 1


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "peft", "bitsandbytes", "safetensors", "tokenizers", "loraplane"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def build_summary(**fields: Any) -> dict[str, Any]:
    """The summary dict; REQUIRED keys must all be present."""
    missing = [k for k in REQUIRED if k not in fields]
    if missing:
        raise ValueError(f"training summary is missing {', '.join(missing)}")
    return {"schema_version": SCHEMA_VERSION, **fields, "library_versions": library_versions()}


REQUIRED = (
    "adapter", "method", "base", "dataset", "hyperparameters", "steps",
    "train_loss", "eval_loss", "tokens_trained", "duration_seconds", "started", "finished", "device",
)


def write_summary(adapter_dir: Path, summary: dict[str, Any]) -> Path:
    path = Path(adapter_dir) / SUMMARY_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path
