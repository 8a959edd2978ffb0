"""Batched multi-LoRA layers against stock PEFT, per row, in every mode."""

import json
import shutil

import pytest
import torch

from loraplane.worker.lora import AdapterFormatError, LoraBank


def _logits(base_dir, adapter_dir, ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        m = PeftModel.from_pretrained(m, adapter_dir)
    with torch.no_grad():
        return m.eval()(input_ids=ids).logits


@pytest.mark.parametrize("mode", ["stacked", "gather"])
def test_mixed_rows_match_peft_and_unload_frees(tiny_base_dir, make_tiny_adapter, mode):
    from transformers import AutoModelForCausalLM

    a1, a2 = make_tiny_adapter(seed=1), make_tiny_adapter(seed=5, r=8)  # different ranks
    ids = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 23, 24], [30, 31, 32, 33, 34]])
    ref1, ref2, ref0 = _logits(tiny_base_dir, a1, ids), _logits(tiny_base_dir, a2, ids), _logits(tiny_base_dir, None, ids)
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32).eval()
    bank = LoraBank(model, torch.float32, "cpu", mixed_mode=mode)
    bank.add("a1", a1)
    bank.add("a2", a2)
    with torch.inference_mode():
        bank.set_batch(["a1", "a2", "a1"])
        out = model(input_ids=ids).logits
        torch.testing.assert_close(out[0], ref1[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out[1], ref2[1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out[2], ref1[2], atol=1e-4, rtol=1e-4)
        bank.set_batch(["a2", None, "a2"])  # a base row in a mixed batch
        out = model(input_ids=ids).logits
        torch.testing.assert_close(out[1], ref0[1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out[2], ref2[2], atol=1e-4, rtol=1e-4)
    size = bank.nbytes
    bank.remove("a1")
    assert 0 < bank.nbytes < size and list(bank.adapters) == ["a2"]
    with torch.inference_mode():
        bank.set_batch(["a2"] * 3)
        torch.testing.assert_close(model(input_ids=ids).logits, ref2, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["stacked", "gather", "auto"])
def test_batch_using_some_resident_adapters_and_evict_restore(tiny_base_dir, make_tiny_adapter, mode):
    """A batch that uses a subset of the resident slots (the stacked path
    selects just those), and an adapter evicted to host RAM and restored,
    still match stock PEFT row by row."""
    from transformers import AutoModelForCausalLM

    dirs = {"a1": make_tiny_adapter(seed=1), "a2": make_tiny_adapter(seed=5, r=8), "a3": make_tiny_adapter(seed=3)}
    ids = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 23, 24], [30, 31, 32, 33, 34]])
    refs = {n: _logits(tiny_base_dir, d, ids) for n, d in dirs.items()}
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32).eval()
    bank = LoraBank(model, torch.float32, "cpu", mixed_mode=mode)
    for n, d in dirs.items():
        bank.add(n, d)
    rows = ["a3", "a1", "a3"]
    for step in ("resident", "restored"):
        with torch.inference_mode():
            bank.set_batch(rows)
            out = model(input_ids=ids).logits
        for i, n in enumerate(rows):
            torch.testing.assert_close(out[i], refs[n][i], atol=1e-4, rtol=1e-4, msg=f"{step} row {i} ({n})")
        bank.evict(["a1"])
        bank.rebuild()
        assert list(bank.adapters) == ["a2", "a3"] and list(bank.host) == ["a1"]
        bank.restore("a1")
        assert "a1" in bank.adapters and not bank.host
    # at the cap, a restore takes the evicted adapter's slot in place (no restack)
    bank.evict(["a2"])
    bank.rebuild()
    for name, into, rows in (("a2", "a3", ["a2", "a1", "a2"]), ("a3", "a1", ["a3", "a2", "a3"])):
        stacks = [layer.lora_A for layer in bank._wrapped.values()]
        bank.restore(name, into=into)
        assert into in bank.host and name in bank.adapters and len(bank.adapters) == 2
        assert all(layer.lora_A is a for layer, a in zip(bank._wrapped.values(), stacks))  # written in place
        with torch.inference_mode():
            bank.set_batch(rows)
            out = model(input_ids=ids).logits
        for i, n in enumerate(rows):
            torch.testing.assert_close(out[i], refs[n][i], atol=1e-4, rtol=1e-4, msg=f"in place row {i} ({n})")


def test_unsupported_adapters_refused(tiny_base_dir, make_tiny_adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32)
    bank = LoraBank(model, torch.float32, "cpu")
    dora = tmp_path / "dora"
    shutil.copytree(make_tiny_adapter(seed=1), dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps(cfg | {"use_dora": True}))
    with pytest.raises(AdapterFormatError, match="DoRA"):
        bank.add("d", dora)
    with pytest.raises(AdapterFormatError, match="missing"):
        bank.add("e", tmp_path)
    assert bank.adapters == {}
    with pytest.raises(ValueError):
        LoraBank(model, torch.float32, "cpu", mixed_mode="fast")
