"""The memory formula (loraplane/contracts/memory.py) against the summed
bytes of real tensors, on the CPU (issue 13 item 2).

Rows: base weights per variant (tiny and h=1024 shapes loaded for real;
Mistral-7B built on the meta device, where tensors have shapes and dtypes
but no storage; bnb int8 and 4-bit quantized by bitsandbytes' CPU backend
on the small shapes), KV cache per token (a real forward's cache on the small
shapes, a meta-device forward on the 7B shape), and adapters as the worker
holds them (own tensors + slot-major stacks padded to the largest rank).
Run: ``python -m loraplane.perf.memory_table`` (prints a Markdown table).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

MISTRAL_7B = dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
                  max_position_embeddings=32768)
H1024 = dict(hidden_size=1024, intermediate_size=2752, num_hidden_layers=4)
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def quantized_bytes(model) -> int:
    """Parameters plus bitsandbytes' side tensors (int8 row scales; 4-bit absmax, nested absmax, offset)."""
    total = _nbytes(model.parameters())
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if getattr(w, "SCB", None) is not None:
            total += _nbytes([w.SCB])
        qs = getattr(w, "quant_state", None)
        if qs is not None:
            total += _nbytes([qs.absmax])
            if qs.nested:
                total += _nbytes([qs.state2.absmax, qs.offset])
    return total


def weight_rows(base_dirs: dict[str, Path]) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, MistralConfig, MistralForCausalLM

    from loraplane.contracts.memory import ModelShape, weight_bytes

    rows = []
    for name, d in base_dirs.items():
        for variant, dt in DTYPES.items():
            m = AutoModelForCausalLM.from_pretrained(d, dtype=getattr(torch, dt))
            rows.append(_row(name, variant, "weights", weight_bytes(ModelShape.from_config(m.config.to_dict()),
                                                                   variant), _nbytes(m.parameters())))
        for variant in ("bnb-int8", "bnb-4bit"):
            try:
                q = (BitsAndBytesConfig(load_in_8bit=True) if variant == "bnb-int8" else BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.float16))
                m = AutoModelForCausalLM.from_pretrained(d, quantization_config=q, device_map="cpu",
                                                         dtype=torch.float16)
            except Exception as e:  # noqa: BLE001 - reported as a row the CPU cannot produce
                rows.append(_row(name, variant, "weights", None, None, f"not on this CPU: {type(e).__name__}"))
                continue
            rows.append(_row(name, variant, "weights", weight_bytes(ModelShape.from_config(m.config.to_dict()),
                                                                    variant), quantized_bytes(m)))
    cfg = MistralConfig(**MISTRAL_7B)
    for variant, dt in DTYPES.items():
        with torch.device("meta"):
            m = MistralForCausalLM(cfg).to(getattr(torch, dt))
        rows.append(_row("mistral-7b (meta)", variant, "weights",
                         weight_bytes(ModelShape.from_config(cfg.to_dict()), variant), _nbytes(m.parameters())))
    for variant in ("bnb-int8", "bnb-4bit"):
        rows.append(_row("mistral-7b (meta)", variant, "weights",
                         weight_bytes(ModelShape.from_config(cfg.to_dict()), variant), None,
                         "not measured: bitsandbytes cannot quantize meta tensors (7B real on the CPU: 14 GB)"))
    return rows


def kv_rows(base_dirs: dict[str, Path], batch: int = 3, tokens: int = 11) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache, MistralConfig, MistralForCausalLM

    from loraplane.contracts.memory import ModelShape, kv_bytes_per_token

    def cache_bytes(model, device=None) -> int:
        ids = torch.zeros((batch, tokens), dtype=torch.long, device=device)
        cache = DynamicCache()
        with torch.inference_mode():
            model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return _nbytes([t for layer in cache.layers for t in (layer.keys, layer.values)])

    rows = []
    for name, d in base_dirs.items():
        for variant, dt in (("fp32", "float32"), ("fp16", "float16")):
            m = AutoModelForCausalLM.from_pretrained(d, dtype=getattr(torch, dt)).eval()
            want = kv_bytes_per_token(ModelShape.from_config(m.config.to_dict()), 4 if dt == "float32" else 2)
            rows.append(_row(name, variant, f"KV cache, {batch}x{tokens} tokens", want * batch * tokens,
                             cache_bytes(m)))
    cfg = MistralConfig(**MISTRAL_7B)
    with torch.device("meta"):
        m = MistralForCausalLM(cfg).to(torch.float16).eval()
    want = kv_bytes_per_token(ModelShape.from_config(cfg.to_dict()), 2)
    rows.append(_row("mistral-7b (meta)", "fp16", f"KV cache, {batch}x{tokens} tokens", want * batch * tokens,
                     cache_bytes(m, "meta")))
    return rows


def adapter_rows(base_dir: Path, adapter_dirs: list[Path], ranks: list[int]) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from loraplane.contracts.memory import ModelShape, adapter_bytes
    from loraplane.worker.lora import LoraBank

    m = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    bank = LoraBank(m, torch.float32, "cpu")
    for i, d in enumerate(adapter_dirs):
        bank.add(f"a{i}", d)
    stacks = [t for layer in bank._wrapped.values() for t in (layer.lora_A, layer.lora_B) if t is not None]
    measured = bank.nbytes + _nbytes(stacks)
    want = adapter_bytes(ModelShape.from_config(m.config.to_dict()), ranks, 4)
    return [_row("tiny", "fp32", f"{len(ranks)} adapters, ranks {ranks} (own + stacked)", want, measured)]


def _row(model: str, variant: str, what: str, formula: int | None, measured: int | None, note: str = "") -> dict:
    err = None if formula is None or measured is None else (formula - measured) / measured
    return {"model": model, "variant": variant, "what": what, "formula": formula, "measured": measured,
            "error": err, "note": note}


def all_rows(workdir: Path) -> list[dict]:
    from loraplane.tiny_model import build_adapter, build_base

    bases = {"tiny (h=256)": build_base(workdir / "tiny"), "h=1024": build_base(workdir / "h1024", **{
        "hidden_size": H1024["hidden_size"], "intermediate_size": H1024["intermediate_size"],
        "num_hidden_layers": H1024["num_hidden_layers"]})}
    ranks = [16, 8, 16]
    adapters = [build_adapter(bases["tiny (h=256)"], workdir / f"a{i}", seed=i + 1, r=r) for i, r in enumerate(ranks)]
    return weight_rows(bases) + kv_rows(bases) + adapter_rows(bases["tiny (h=256)"], adapters, ranks)


def markdown(rows: list[dict]) -> str:
    out = ["| model | variant | what | formula (bytes) | measured (bytes) | error |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        f = f"{r['formula']:,}" if r["formula"] is not None else "—"
        m = f"{r['measured']:,}" if r["measured"] is not None else r["note"]
        e = f"{100 * r['error']:+.3f}%" if r["error"] is not None else "—"
        out.append(f"| {r['model']} | {r['variant']} | {r['what']} | {f} | {m} | {e} |")
    return "\n".join(out)


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        print(markdown(all_rows(Path(d))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
