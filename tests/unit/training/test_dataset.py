import json

import pytest

from loraplane.tiny_model import build_tokenizer
from loraplane.training.dataset import (
    IGNORE_INDEX, DatasetError, Example, collate, load_dataset, parse_jsonl_text, split_eval, tokenize_example,
)


@pytest.mark.parametrize("line, reason", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"instruction": "x"}), "missing field 'output'"),
    (json.dumps({"instruction": "x", "output": 3}), "'output' must be a string"),
    (json.dumps({"instruction": " ", "output": "y"}), "'instruction' is empty"),
    (json.dumps({"messages": []}), "non-empty list"),
    (json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "role must be one of"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}), "no assistant message"),
    (json.dumps({"prompt": "x"}), "unknown record shape"),
])
def test_bad_line_is_named_with_its_number_and_reason(line, reason):
    good = json.dumps({"instruction": "a", "output": "b"})
    text = "\n".join([good, "", good, line, good])
    with pytest.raises(DatasetError) as err:
        parse_jsonl_text(text, "data.jsonl")
    assert "data.jsonl:4:" in str(err.value)
    assert reason in str(err.value)


def test_instruction_and_chat_records_parse():
    text = "\n".join([
        json.dumps({"instruction": "say", "input": "hi", "output": "hello"}),
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
    ])
    a, b = parse_jsonl_text(text, "d")
    assert a.messages == (("user", "say\n\nhi"), ("assistant", "hello"))
    assert b.messages == (("user", "q"), ("assistant", "a")) and b.source == "d:2"


def test_load_dataset_hashes_and_rejects_missing_file(tmp_path):
    import hashlib

    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    ds = load_dataset([p])
    assert ds.sha256 == hashlib.sha256(p.read_bytes()).hexdigest() and ds.files[0]["records"] == 1
    with pytest.raises(DatasetError, match="not found"):
        load_dataset([tmp_path / "nope.jsonl"])


def test_only_assistant_tokens_are_labelled():
    tok = build_tokenizer()
    ex = Example((("user", "tell me about the cat"), ("assistant", "the cat is red"),
                  ("user", "and the dog"), ("assistant", "blue")), "x:1")
    t = tokenize_example(tok, ex, seq_len=128)
    labelled = [tok.convert_ids_to_tokens(i) for i, lab in zip(t.input_ids, t.labels) if lab != IGNORE_INDEX]
    assert labelled == ["the", "cat", "is", "red", "blue", "</s>"]
    # The prompt (roles, user words) carries no loss.
    assert all(lab == IGNORE_INDEX for lab in t.labels[:6])


def test_truncation_keeps_lengths_aligned():
    tok = build_tokenizer()
    ex = Example((("user", "one two three four five"), ("assistant", "six seven")), "x:1")
    t = tokenize_example(tok, ex, seq_len=4)
    assert len(t.input_ids) == len(t.labels) == 4 and t.n_label_tokens == 0


def test_split_eval_is_deterministic_and_disjoint():
    tr, ev = split_eval(20, 0.1, seed=3)
    assert (tr, ev) == split_eval(20, 0.1, seed=3)
    assert len(ev) == 2 and not set(tr) & set(ev) and sorted(tr + ev) == list(range(20))
    assert split_eval(1, 0.5, 0) == ([0], [])
    assert len(split_eval(3, 0.01, 0)[1]) == 1


def test_collate_pads_right_and_masks_padding():
    from loraplane.training.dataset import TokenizedExample

    out = collate([TokenizedExample([1, 2, 3], [-100, 2, 3]), TokenizedExample([4], [4])], pad_id=0)
    assert out["input_ids"] == [[1, 2, 3], [4, 0, 0]]
    assert out["attention_mask"] == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"] == [[-100, 2, 3], [4, -100, -100]]


def test_template_that_moves_the_system_prompt_learns_only_the_last_answer():
    # Like Mistral v0.3: the system prompt is prepended to the LAST user turn,
    # so earlier prefixes do not match the full rendering.
    tok = build_tokenizer()
    tok.chat_template = (
        "{% set sys = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
        "{% set conv = messages[1:] if sys else messages %}"
        "{% set last_user = namespace(i=-1) %}"
        "{% for m in conv %}{% if m['role'] == 'user' %}{% set last_user.i = loop.index0 %}{% endif %}{% endfor %}"
        "{% for m in conv %}"
        "{% if m['role'] == 'user' %}{{ '<|user|> ' }}{% if loop.index0 == last_user.i and sys %}"
        "{{ sys + ' ' }}{% endif %}{{ m['content'] + ' ' }}"
        "{% else %}{{ '<|assistant|> ' + m['content'] + ' ' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
    )
    ex = Example((("system", "short answer"), ("user", "tell me about the cat"), ("assistant", "red"),
                  ("user", "and the dog"), ("assistant", "blue")), "x:1")
    t = tokenize_example(tok, ex, seq_len=128)
    labelled = [tok.convert_ids_to_tokens(i) for i, lab in zip(t.input_ids, t.labels) if lab != IGNORE_INDEX]
    assert labelled == ["blue", "</s>"]
