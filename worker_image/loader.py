"""Loading the base model in a variant, from a verified ModelStore version.

Why here and not in the engine: variant choice and its fallbacks are a
deployment decision (what the GPU and the installed bitsandbytes allow);
the engine just gets a model. ``plan_variant`` is pure so the fallback rules
are unit-tested without CUDA.

Rules (the seeds' behaviour, made explicit):
* CPU: ``fp32`` (or ``bf16`` when asked); fp16/bnb variants fall back to fp32.
* CUDA: ``bnb-int8``/``bnb-4bit`` need an importable, working bitsandbytes;
  ``BNB_DISABLE=1`` or a broken install falls back to ``fp16``. The
  fallback is reported (status ``variant`` + reason), never silent.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

QUANTIZED = ("bnb-int8", "bnb-4bit")


@dataclass(frozen=True)
class VariantPlan:
    requested: str
    variant: str  # what will actually be loaded
    reason: str | None  # why it differs from the request, if it does


def bnb_problem(env: dict | None = None) -> str | None:
    """Why bitsandbytes cannot be used here, or None when it can."""
    env = os.environ if env is None else env
    if env.get("BNB_DISABLE", "").lower() in ("1", "true", "yes"):
        return "BNB_DISABLE is set"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "broken"
        return f"bitsandbytes cannot be imported: {type(e).__name__}: {e}"
    return None


def plan_variant(requested: str, device_type: str, bnb_issue: str | None) -> VariantPlan:
    """Pure: which variant to load for a request on a device."""
    if device_type != "cuda":
        if requested in ("fp32", "bf16"):
            return VariantPlan(requested, requested, None)
        return VariantPlan(requested, "fp32", f"{requested} is not served on {device_type}; using fp32")
    if requested in QUANTIZED and bnb_issue:
        return VariantPlan(requested, "fp16", f"{requested} unavailable ({bnb_issue}); fell back to fp16")
    return VariantPlan(requested, requested, None)


MODEL_CACHE_ENV = "LORAPLANE_MODEL_CACHE"


def open_model_store(root: str | None):
    """The store a worker reads: a directory (hostPath/PVC) as it is, or
    ``s3://bucket/prefix`` materialised into the node-local cache
    ``$LORAPLANE_MODEL_CACHE`` (an emptyDir or hostPath; default under the
    temp dir), keyed by manifest checksum so workers on one node share it."""
    from loraplane.modelstore import ModelStore
    from loraplane.modelstore.s3 import CachingS3Store, is_s3_url

    if is_s3_url(root):
        import tempfile

        cache = os.environ.get(MODEL_CACHE_ENV) or os.path.join(tempfile.gettempdir(), "loraplane-model-cache")
        return CachingS3Store(root, cache)
    return ModelStore(root)


def count_parameters(path: Path) -> int:
    """Parameters of the checkpoint in ``path``, from the safetensors headers
    (no tensor is read); ``*.bin`` checkpoints are estimated at 2 bytes a
    parameter. Used to refuse a large base on the CPU before loading it."""
    import json
    import struct

    total = 0
    for f in sorted(Path(path).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for key, info in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for d in info["shape"]:
                count *= d
            total += count
    if total == 0:
        total = sum(f.stat().st_size for f in Path(path).glob("*.bin")) // 2
    return total


def compute_dtype(variant: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}.get(variant, torch.float16)


def load_base(path: Path, variant: str, device: str):
    """Load model + tokenizer from a (verified) directory in ``variant``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"dtype": compute_dtype(variant)}
    if variant in QUANTIZED:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if variant == "bnb-int8"
            else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_compute_dtype=torch.float16, bnb_4bit_use_double_quant=True)
        )
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if variant not in QUANTIZED:
        model = model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
