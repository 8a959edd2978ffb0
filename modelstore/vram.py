"""Approximate VRAM per variant from a parameter count read without loading weights.

Formula (documented in docs/modelstore.md)::

    vram_mib(variant) = ceil(parameters * BYTES_PER_PARAM[variant] / 2**20) + OVERHEAD_MIB

with fp16 = 2.0 bytes/param, bnb-int8 = 1.05 (int8 weights plus per-row
scales and the fp16 layers bitsandbytes leaves unquantized), bnb-4bit = 0.55
(NF4 nibbles plus block absmax constants and unquantized norms/embeddings),
and OVERHEAD_MIB = 512 for the CUDA context and cuBLAS workspace. For
Mistral-7B (7.25e9 parameters) this gives ~14.0 GiB fp16, ~7.6 GiB int8 and
~4.2 GiB 4-bit, in line with the seeds' "~6-9 GB int8 on a 3090". It covers
weights only: KV cache and activations are budgeted separately by the
operator. The parameter count comes from safetensors headers (8-byte length
+ JSON with shapes) so no tensor is read; config.json is the fallback.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from .errors import StoreError

BYTES_PER_PARAM = {"fp16": 2.0, "bnb-int8": 1.05, "bnb-4bit": 0.55}
OVERHEAD_MIB = 512
MIB = 1 << 20
# Sanity bounds for `check`: weights alone can never take less than
# LOW bytes/param, and a figure above HIGH bytes/param + 4 GiB is implausible.
SANE_BYTES_PER_PARAM = {"fp16": (1.9, 3.0), "bnb-int8": (0.95, 2.0), "bnb-4bit": (0.45, 1.2)}
SANE_SLACK_MIB = 4096
_MAX_HEADER = 100 * MIB


def estimate_vram_mib(parameters: int, variant: str) -> int:
    if variant not in BYTES_PER_PARAM:
        raise StoreError(f"unknown variant {variant!r}; expected one of {sorted(BYTES_PER_PARAM)}")
    if parameters <= 0:
        raise StoreError(f"parameter count must be positive, got {parameters}")
    return math.ceil(parameters * BYTES_PER_PARAM[variant] / MIB) + OVERHEAD_MIB


def estimate_variants(parameters: int) -> dict[str, int]:
    return {v: estimate_vram_mib(parameters, v) for v in BYTES_PER_PARAM}


def vram_problem(variant: str, vram_mib: int, parameters: int) -> str | None:
    """Why ``vram_mib`` is implausible for ``variant`` at ``parameters``, or None."""
    if variant not in SANE_BYTES_PER_PARAM:
        return f"unknown variant {variant!r}"
    low_b, high_b = SANE_BYTES_PER_PARAM[variant]
    low = math.floor(parameters * low_b / MIB)
    high = math.ceil(parameters * high_b / MIB) + SANE_SLACK_MIB
    if not low <= vram_mib <= high:
        return (
            f"{variant} vram_mib={vram_mib} is outside the sane range [{low}, {high}] "
            f"for {parameters} parameters"
        )
    return None


def safetensors_parameters(path: Path) -> int:
    """Number of elements in a .safetensors file, from its header only."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise StoreError(f"{path}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER:
            raise StoreError(f"{path}: safetensors header of {n} bytes is implausible")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise StoreError(f"{path}: unreadable safetensors header: {e}") from None
    total = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        total += math.prod(info["shape"])
    return total


def config_parameters(config: dict) -> int | None:
    """Estimate for llama/mistral-style decoders from config.json, else None."""
    try:
        h = config["hidden_size"]
        i = config["intermediate_size"]
        layers = config["num_hidden_layers"]
        heads = config["num_attention_heads"]
        kv = config.get("num_key_value_heads", heads)
        vocab = config["vocab_size"]
    except KeyError:
        return None
    head_dim = config.get("head_dim") or h // heads
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    mlp = 3 * h * i
    norms = 2 * h
    embed = vocab * h
    lm_head = 0 if config.get("tie_word_embeddings") else vocab * h
    return embed + layers * (attn + mlp + norms) + h + lm_head


def count_parameters(model_dir: Path) -> tuple[int, str]:
    """(parameters, how it was found) for a saved model dir; no weights loaded."""
    shards = sorted(model_dir.glob("*.safetensors"))
    if shards:
        return sum(safetensors_parameters(p) for p in shards), "safetensors-header"
    cfg = model_dir / "config.json"
    if cfg.is_file():
        n = config_parameters(json.loads(cfg.read_text()))
        if n:
            return n, "config.json"
    raise StoreError(
        f"{model_dir}: cannot determine the parameter count (no *.safetensors and no "
        "decoder fields in config.json); VRAM per variant would be a guess"
    )
