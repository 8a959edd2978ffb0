import json

import pytest
from safetensors import safe_open

from loraplane.modelstore import StoreError, load_manifest, manifest_json_schema
from loraplane.modelstore.manifest import MANIFEST
from loraplane.modelstore.vram import (
    config_parameters, estimate_vram_mib, safetensors_parameters, vram_problem,
)

# Mistral-7B-Instruct-v0.3 config.json fields (public); 7,248,023,552 parameters.
MISTRAL_7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=32768, tie_word_embeddings=False)


def test_config_parameter_estimate_matches_mistral_7b():
    assert config_parameters(MISTRAL_7B) == 7_248_023_552


def test_vram_formula_for_mistral_7b():
    n = 7_248_023_552
    fp16, int8, nf4 = (estimate_vram_mib(n, v) for v in ("fp16", "bnb-int8", "bnb-4bit"))
    assert fp16 == 13825 + 512  # ceil(n*2/MiB) + overhead
    assert 6 * 1024 < int8 < 9 * 1024  # the seeds' "~6-9 GB int8 on a 3090"
    assert nf4 < int8 < fp16
    for v, mib in (("fp16", fp16), ("bnb-int8", int8), ("bnb-4bit", nf4)):
        assert vram_problem(v, mib, n) is None
    assert "outside the sane range" in vram_problem("fp16", 4000, n)
    assert "outside the sane range" in vram_problem("bnb-4bit", 40000, n)
    with pytest.raises(StoreError):
        estimate_vram_mib(n, "fp8")


def test_safetensors_header_count_equals_tensor_numel(tiny_base_dir):
    path = tiny_base_dir / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        expected = sum(f.get_tensor(k).numel() for k in f.keys())
    assert safetensors_parameters(path) == expected > 1_000_000


def test_manifest_roundtrip_and_tamper(published):
    sv = published.resolve("default", "base", "mistral")
    m = sv.manifest
    assert m.schema_version == 1 and m.kind == "base" and m.license == "Apache-2.0"
    assert set(m.variants) == {"fp16", "bnb-int8", "bnb-4bit"}
    assert m.tokenizer.chat_template and "tokenizer.json" in m.tokenizer.files
    assert m.total_size == sum(f.size for f in m.files.values())
    raw = json.loads((sv.path / MANIFEST).read_text())
    # Changing one file's hash without the total checksum is caught at load.
    raw["files"]["config.json"]["sha256"] = "0" * 64
    (sv.path / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(StoreError, match="checksum does not match"):
        load_manifest(sv.path)
    raw = json.loads(json.dumps(m.model_dump(mode="json")))
    raw["surprise"] = 1
    (sv.path / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(StoreError, match="surprise"):
        load_manifest(sv.path)


def test_json_schema_names_fields():
    schema = manifest_json_schema()
    for field in ("schema_version", "checksum", "files", "variants", "adapter"):
        assert field in schema["properties"]
