import json

import pytest

from loraplane.modelstore.check import base_problems
from loraplane.modelstore.gc import plan_gc
from loraplane.modelstore.manifest import MANIFEST


def test_check_ok_on_healthy_store(published):
    for dry in (True, False):
        rep = published.check(dry_run=dry)
        assert rep.ok, rep.summary()
        assert rep.versions_checked == 2 and rep.dry_run is dry


def test_check_catches_adapter_whose_base_checksum_does_not_match(published, tmp_path, tiny_base_dir):
    import shutil
    # Republish base v1 with different content: the adapter was trained on the old bytes.
    changed = tmp_path / "base2"
    shutil.copytree(tiny_base_dir, changed)
    cfg = json.loads((changed / "generation_config.json").read_text())
    cfg["temperature"] = 0.123
    (changed / "generation_config.json").write_text(json.dumps(cfg))
    published.publish(changed, kind="base", name="mistral", version="v1", force=True)
    rep = published.check(dry_run=True)
    assert not rep.ok
    [p] = rep.problems
    assert p.where == "default/adapters/synth/versions/v1"
    assert "does not match the checksum the adapter was trained against" in p.message


def test_check_catches_missing_base(published):
    published.gc(keep=0, protect=None)  # base v1 is current and used: kept
    assert published.check(dry_run=True).ok
    import shutil
    shutil.rmtree(published.resolve("default", "base", "mistral").path)
    rep = published.check(dry_run=True)
    msgs = " | ".join(p.message for p in rep.problems)
    assert "current points to missing version 'v1'" in msgs and "base mistral@v1 unusable" in msgs


def test_dry_run_reads_no_weights_but_full_check_hashes(published, monkeypatch):
    path = published.resolve("default", "adapter", "synth").path / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    monkeypatch.setenv("MODEL_STORE_DRY_RUN", "1")
    assert published.check().ok  # same size: a stat-only dry run cannot see it, by design
    monkeypatch.delenv("MODEL_STORE_DRY_RUN")
    rep = published.check()
    assert not rep.ok and "adapter_model.safetensors" in rep.problems[0].message


def test_check_flags_insane_vram_and_invalid_manifest(published):
    vdir = published.resolve("default", "base", "mistral").path
    raw = json.loads((vdir / MANIFEST).read_text())
    raw["variants"]["fp16"]["vram_mib"] = 100_000
    (vdir / MANIFEST).write_text(json.dumps(raw))
    rep = published.check(dry_run=True)
    assert any("fp16 vram_mib=100000 is outside the sane range" in p.message for p in rep.problems)
    (vdir / MANIFEST).write_text("{not json")
    rep = published.check(dry_run=True)
    assert any(p.where.endswith("mistral/versions/v1") and "invalid manifest" in p.message for p in rep.problems)


def test_base_problems_variant_order():
    from types import SimpleNamespace as NS
    m = NS(parameters=7_248_023_552, variants={"fp16": NS(vram_mib=14338), "bnb-int8": NS(vram_mib=15000),
                                                "bnb-4bit": NS(vram_mib=4300)})
    assert any("bnb-int8 needs more VRAM" in p for p in base_problems(m))


def test_plan_gc_pure():
    vs = ["v1", "v2", "v3", "v4", "v5"]
    assert plan_gc(vs, "v5", 2, lambda v: False) == ["v1", "v2", "v3"]
    assert plan_gc(vs, "v1", 2, lambda v: v == "v2") == ["v3"]
    assert plan_gc(vs, "v3", 0, lambda v: False) == ["v1", "v2", "v4", "v5"]
    with pytest.raises(ValueError):
        plan_gc(vs, None, -1, lambda v: False)


def test_gc_keeps_current_protected_and_used_bases(published, make_tiny_adapter, tiny_base_dir):
    for i in (2, 3, 4):
        published.publish(make_tiny_adapter(seed=i), kind="adapter", name="synth", version=f"v{i}", base_name="mistral")
    published.set_current("default", "adapter", "synth", "v1")  # rolled back to the oldest
    published.publish(tiny_base_dir, kind="base", name="mistral", version="v2")  # no adapter uses v2
    rep = published.gc(keep=1, protect={"default/adapters/synth/v2"}, dry_run=True)
    assert sorted(rep.deleted) == ["default/adapters/synth/v3"]
    assert len(published.list()) == 6  # dry run deleted nothing
    rep = published.gc(keep=1, protect=lambda o, k, n, v: v == "v2" and k == "adapter")
    assert sorted(r.version for r in published.list(kind="adapter")) == ["v1", "v2", "v4"]
    # base v1 is kept although not newest: stored adapters were trained on it.
    assert sorted(r.version for r in published.list(kind="base")) == ["v1", "v2"]
    assert published.check(dry_run=False).ok


def test_stray_dirs_do_not_break_list_and_are_reported(published):
    (published.root / "lost+found").mkdir()  # normal on an ext4 PVC: silently skipped
    (published.root / "bad owner").mkdir()
    (published.root / "default/adapters/bad name").mkdir()
    assert len(published.list()) == 2
    rep = published.check(dry_run=True)
    assert sorted(p.where for p in rep.problems) == ["bad owner", "default/adapters/bad name"]
