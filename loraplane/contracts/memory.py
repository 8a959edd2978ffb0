"""A worker's memory from the model's shape: one formula for what the
operator reserves and what the worker enforces.

Why one pure module (no torch) both sides import: the operator's ledger
must reserve what the worker will actually hold, and the worker must keep
itself inside that reservation. Two formulas drift; this one is compared with
the summed bytes of real tensors and KV caches in tests/unit/worker
(``test_memory.py``) and in docs/perf.md.

What is counted:

* **weights** per variant: fp32 4 bytes a parameter, fp16/bf16 2; bnb-int8
  keeps each decoder ``Linear`` weight in int8 plus one fp32 scale per output
  row, everything else (embeddings, norms, the LM head) in fp16; bnb-4bit
  (NF4, double quantisation, blocks of 64) keeps 0.5 byte a weight plus one
  uint8 absmax per block of 64 and one fp32 absmax (and offset) per 256
  blocks, everything else in fp16.
* **KV cache**: ``2 x layers x kv_heads x head_dim x dtype bytes`` a token.
  The worker's batch is left-padded, so a batch of ``B`` rows holds
  ``B x max(span)`` tokens of cache, not the sum of its rows' spans; the
  admission check (``kv_tokens_held``) uses exactly that.
* **adapters as held**: each adapter's own A/B tensors plus the stacked copy
  every wrapped layer keeps (all resident adapters, each padded to the
  largest rank among them).
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20

#: bytes of one element of the compute / KV dtype of each variant (bnb variants compute in fp16)
COMPUTE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "bnb-int8": 2, "bnb-4bit": 2}


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only (Llama/Mistral-style) model that decide its memory."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool = False

    @classmethod
    def from_config(cls, cfg: dict) -> "ModelShape":
        """From a Hugging Face ``config.json`` (dict)."""
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        return cls(layers=int(cfg["num_hidden_layers"]), hidden=hidden, intermediate=int(cfg["intermediate_size"]),
                   heads=heads, kv_heads=int(cfg.get("num_key_value_heads") or heads),
                   head_dim=int(cfg.get("head_dim") or hidden // heads), vocab=int(cfg["vocab_size"]),
                   tied_embeddings=bool(cfg.get("tie_word_embeddings", False)))

    def linear_kinds(self) -> dict[str, tuple[int, int]]:
        """Name -> (in, out) of each Linear in one decoder layer."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_shapes(self) -> list[tuple[int, int]]:
        return list(self.linear_kinds().values())

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes())

    @property
    def other_params(self) -> int:
        """Embeddings, LM head (unless tied), the layers' two norms and the final norm."""
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.vocab * self.hidden + head + (2 * self.layers + 1) * self.hidden


def weight_bytes(shape: ModelShape, variant: str) -> int:
    """Bytes of the base weights as loaded in ``variant``."""
    if variant in ("fp32", "fp16", "bf16"):
        return (shape.linear_params + shape.other_params) * COMPUTE_BYTES[variant]
    others = shape.other_params * 2  # bnb variants keep non-Linear weights and the LM head in fp16
    if variant == "bnb-int8":
        rows = shape.layers * sum(out for _, out in shape.linear_shapes())
        return shape.linear_params + 4 * rows + others
    if variant == "bnb-4bit":
        blocks = -(-shape.linear_params // 64)  # per tensor in reality; every dimension here is a multiple of 64
        nested = -(-blocks // 256)
        return shape.linear_params // 2 + blocks + 8 * nested + others
    raise ValueError(f"unknown variant {variant!r}")


def kv_bytes_per_token(shape: ModelShape, dtype_bytes: int) -> int:
    """Keys and values of every layer for one token."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes


def kv_tokens_held(spans: list[int]) -> int:
    """Tokens of KV cache a left-padded batch of rows with these spans holds."""
    return len(spans) * max(spans, default=0)


#: what PEFT LoRA adapters trained by loraplane target (training_jobs, tiny_model)
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def adapter_bytes(shape: ModelShape, ranks: list[int], dtype_bytes: int,
                  targets: tuple[str, ...] = DEFAULT_TARGETS) -> int:
    """Resident adapters of these ranks on these Linear kinds (every layer):
    their own (A, B) tensors plus the stacked copy, where every adapter is
    padded to the largest rank among the resident ones."""
    if not ranks:
        return 0
    kinds = shape.linear_kinds()
    per_rank = shape.layers * sum(sum(kinds[t]) for t in targets)  # elements of A and B for rank 1
    own = sum(ranks) * per_rank
    stacked = len(ranks) * max(ranks) * per_rank
    return (own + stacked) * dtype_bytes


def worker_bytes(shape: ModelShape, variant: str, kv_cache_bytes: int, adapter_ranks: list[int],
                 targets: tuple[str, ...] = DEFAULT_TARGETS) -> int:
    """Weights + the KV budget + resident adapters (not the CUDA context or
    activations: the pool's headroom covers those)."""
    return (weight_bytes(shape, variant) + kv_cache_bytes
            + adapter_bytes(shape, adapter_ranks, COMPUTE_BYTES[variant], targets))
