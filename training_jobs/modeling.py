"""Load base + tokenizer and wrap the base in a trainable LoRA (or QLoRA) model.

QLoRA = base quantized to 4-bit NF4 by bitsandbytes (double quantization,
bf16 compute), ``prepare_model_for_kbit_training`` (norms in fp32, input
grads for checkpointing), LoRA on top; on CUDA. Without CUDA it is refused
unless ``device: cpu`` is given explicitly: bitsandbytes (>= 0.45) has a slow
CPU 4-bit path, which lets the CPU test suite run the real QLoRA code. LoRA on CPU trains in
fp32 (bf16 on request); on CUDA LoRA defaults to bf16 where supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig


class MethodUnavailable(RuntimeError):
    """The requested method/device cannot run here (e.g. qlora without CUDA)."""


@dataclass
class Loaded:
    model: object  # peft.PeftModel
    tokenizer: object
    device: str
    dtype: str


def pick_device(cfg: TrainConfig) -> str:
    import torch

    if cfg.method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except Exception as exc:
            raise MethodUnavailable(f"method qlora needs bitsandbytes (pip install bitsandbytes): {exc}") from exc
        if cfg.device == "cpu":
            return "cpu"  # explicit opt-in: bitsandbytes' slow CPU 4-bit path, for tests and debugging
        if not torch.cuda.is_available():
            raise MethodUnavailable("method qlora needs a CUDA GPU (4-bit bitsandbytes training) and none is "
                                    "visible here; use method lora on CPU (or --device cpu to force "
                                    "bitsandbytes' slow CPU 4-bit path)")
        return "cuda"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise MethodUnavailable("device cuda requested but no CUDA GPU is visible")
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def pick_dtype(cfg: TrainConfig, device: str) -> str:
    import torch

    if cfg.dtype != "auto":
        return cfg.dtype
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return "bfloat16"
    if cfg.method == "qlora":
        return "bfloat16"  # 4-bit compute dtype; bitsandbytes' CPU path supports it
    return "float32"


def load_for_training(cfg: TrainConfig, base_path: Path) -> Loaded:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(cfg)
    dtype_name = pick_dtype(cfg, device)
    dtype = getattr(torch, dtype_name)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.method == "qlora":
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=dtype)
        model = AutoModelForCausalLM.from_pretrained(base_path, quantization_config=quant, dtype=dtype,
                                                     device_map={"": 0 if device == "cuda" else "cpu"})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype).to(device)
        if cfg.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    missing = [m for m in cfg.target_modules if not any(n.endswith(m) for n, _ in model.named_modules())]
    if missing:
        raise ValueError(f"target_modules {missing} do not exist in this base model")
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    return Loaded(peft_model, tokenizer, device, dtype_name)
