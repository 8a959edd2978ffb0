"""A tiny random-weight Mistral, a tiny tokenizer and real PEFT adapters, built
locally in seconds.

Why: nothing may download weights in tests or the demo, yet the code paths
for a real checkpoint must stay the same. A ``MistralConfig`` with a few
layers saved with ``save_pretrained`` loads exactly like
Mistral-7B-Instruct, and LoRA adapters saved from it are real PEFT adapter
directories (``adapter_config.json`` + ``adapter_model.safetensors``).
"""

from __future__ import annotations

from pathlib import Path

# Words the tokenizer knows; anything else maps to <unk>. Enough for prompts
# in tests and the demo to tokenize into several distinct ids.
_CORPUS = (
    "the a an of to in and is it that for on with as was by at be this from or "
    "model adapter base task route canary weight worker pool gpu memory node "
    "hello world write summary check fact critic journalist editor analyst "
    "reasoning synthesizer ranker news story report answer question data train "
    "test one two three four five six seven eight nine ten good bad fast slow "
    "user assistant system you i we they what why how when where who please "
    "tell me about cat dog sun moon red blue green yes no short long text"
).split()

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + ' ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)

TINY_CONFIG = dict(
    vocab_size=512,
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)


def build_tokenizer():
    """A word-level fast tokenizer with a chat template and pad/eos tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for word in _CORPUS:
        vocab.setdefault(word, len(vocab))
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789.,!?:;'\"-":
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_bpe_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer (every byte is a token, as in GPT-2/Llama 3)
    trained offline on synthetic words and JSON up to ``vocab_size`` entries,
    with the same chat template and special tokens as ``build_tokenizer``.

    Why: the word-level tokenizer cannot spell arbitrary text (no ``{``), so
    structured output (JSON grammars) needs a vocabulary that can; 512 keeps
    it inside the tiny model's embedding, 32000 is Mistral's size
    (perf/grammar_compare.py)."""
    import json
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rnd = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"

    def word():
        return "".join(rnd.choice(letters) for _ in range(rnd.randint(2, 9)))

    def lines():
        for _ in range(60000 if vocab_size > 4096 else 2000):
            ws = [rnd.choice(_CORPUS) if rnd.random() < 0.5 else word() for _ in range(12)]
            yield " ".join(ws)
            yield json.dumps({word(): rnd.randint(0, 10**6), word(): ws[:3], "name": ws[0], "ok": rnd.random() < .5})

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>", "<|tool|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", additional_special_tokens=specials[4:])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_base(out_dir: str | Path, seed: int = 0, tokenizer: str = "words", **overrides) -> Path:
    """Save a random-weight Mistral and its tokenizer to ``out_dir``.
    ``tokenizer``: ``"words"`` (``build_tokenizer``) or ``"bpe"``
    (``build_bpe_tokenizer``, for structured output)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = build_bpe_tokenizer(TINY_CONFIG["vocab_size"]) if tokenizer == "bpe" else build_tokenizer()
    config = MistralConfig(
        **(TINY_CONFIG | overrides),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = MistralForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_adapter(
    base_dir: str | Path,
    out_dir: str | Path,
    seed: int = 1,
    r: int = 16,
    alpha: int = 32,
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
) -> Path:
    """Save a real PEFT LoRA adapter for the base in ``base_dir``.

    ``init_lora_weights=False`` gives random (non-zero) B matrices, so each
    seed makes outputs differ from the base and from other adapters.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        lora_dropout=0.0,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(base, cfg)
    peft_model.save_pretrained(out, safe_serialization=True)
    return out
