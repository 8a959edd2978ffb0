import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from loraplane.modelstore import StoreError, verify_dir
from loraplane.modelstore.layout import STAGING
from loraplane.modelstore.publish import COPY_DELAY_ENV


def test_adapter_manifest_has_peft_fields_and_base_checksum(published, tmp_path, make_tiny_adapter):
    base = published.resolve("default", "base", "mistral")
    ad = published.resolve("default", "adapter", "synth")
    a = ad.manifest.adapter
    assert (a.base_name, a.base_version, a.base_checksum) == ("mistral", "v1", base.manifest.checksum)
    assert (a.peft_type, a.r, a.alpha, a.task) == ("LORA", 16, 32, "synthesizer")
    assert a.target_modules == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert a.training_summary is None
    # training_summary.json is stored and linked when present.
    src = tmp_path / "with-summary"
    shutil.copytree(make_tiny_adapter(seed=1), src)
    (src / "training_summary.json").write_text(json.dumps({"loss": 1.23}))
    m = published.publish(src, kind="adapter", name="synth", version="v2", base_name="mistral")
    assert m.adapter.training_summary == "training_summary.json"
    assert "training_summary.json" in m.files


def test_adapter_needs_existing_base_and_adapter_config(store, make_tiny_adapter, tiny_base_dir):
    with pytest.raises(StoreError, match="base_name"):
        store.publish(make_tiny_adapter(seed=1), kind="adapter", name="a", version="v1")
    with pytest.raises(StoreError, match="no current version|not found"):
        store.publish(make_tiny_adapter(seed=1), kind="adapter", name="a", version="v1", base_name="nope")
    store.publish(tiny_base_dir, kind="base", name="b", version="v1")
    with pytest.raises(StoreError, match="adapter_config.json"):
        store.publish(tiny_base_dir, kind="adapter", name="a", version="v1", base_name="b")


def test_verify_ok_then_flipped_byte_is_named(published):
    rep = published.verify("default", "base", "mistral")
    assert rep.ok and rep.files_checked == 6, rep.summary()
    path = published.resolve("default", "base", "mistral").path / "model.safetensors"
    with open(path, "r+b") as f:
        f.seek(5_000_000)
        b = f.read(1)
        f.seek(5_000_000)
        f.write(bytes([b[0] ^ 0x01]))
    rep = published.verify("default", "base", "mistral", workers=2)
    assert not rep.ok and rep.corrupt == ["model.safetensors"]
    assert "sha256" in rep.reasons["model.safetensors"] and "model.safetensors" in rep.summary()
    # quick mode only compares sizes: a same-size flip passes it by design.
    assert published.verify("default", "base", "mistral", full=False).ok


def test_verify_reports_missing_extra_truncated_and_symlink(published, tmp_path):
    vdir = published.resolve("default", "adapter", "synth").path
    (vdir / "README.md").unlink()
    (vdir / "stray.bin").write_bytes(b"x")
    with open(vdir / "adapter_config.json", "ab") as f:
        f.write(b" ")
    os.symlink("/etc/passwd", vdir / "sneaky")
    for full in (True, False):
        rep = verify_dir(vdir, full=full)
        assert rep.missing == ["README.md"]
        assert rep.extra == ["stray.bin"]
        assert rep.corrupt == ["adapter_config.json", "sneaky"]
        assert "size" in rep.reasons["adapter_config.json"] and "symlink" in rep.reasons["sneaky"]
    (vdir / "manifest.json").unlink()
    rep = verify_dir(vdir)
    assert not rep.ok and "manifest missing" in rep.error


def test_existing_version_refused_then_force_replaces(published, make_tiny_adapter):
    old = published.resolve("default", "adapter", "synth").manifest.checksum
    with pytest.raises(StoreError, match="already exists"):
        published.publish(make_tiny_adapter(seed=2), kind="adapter", name="synth", version="v1", base_name="mistral")
    m = published.publish(make_tiny_adapter(seed=2), kind="adapter", name="synth", version="v1",
                          base_name="mistral", force=True)
    assert m.checksum != old
    sv = published.resolve("default", "adapter", "synth", "v1")
    assert sv.manifest.checksum == m.checksum and published.verify("default", "adapter", "synth").ok
    name_dir = published.layout.name_dir("default", "adapter", "synth")
    assert list((name_dir / STAGING).iterdir()) == []  # old copy cleaned up


def test_concurrent_publish_of_one_version_one_wins(store, tiny_base_dir, make_tiny_adapter):
    store.publish(tiny_base_dir, kind="base", name="mistral", version="v1")
    barrier = threading.Barrier(2, timeout=30)
    results: dict[int, object] = {}

    def publisher(seed):
        waited = []

        def progress(phase, done, total):  # both stage before either commits
            if not waited:
                waited.append(1)
                barrier.wait()

        try:
            results[seed] = store.publish(make_tiny_adapter(seed=seed), kind="adapter", name="synth",
                                          version="v1", base_name="mistral", progress=progress)
        except StoreError as e:
            results[seed] = e

    threads = [threading.Thread(target=publisher, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    errors = [r for r in results.values() if isinstance(r, StoreError)]
    wins = [r for r in results.values() if not isinstance(r, StoreError)]
    assert len(errors) == 1 and len(wins) == 1, results
    assert "already exists" in str(errors[0]) and "v1" in str(errors[0])
    sv = store.resolve("default", "adapter", "synth", "v1")
    assert sv.manifest.checksum == wins[0].checksum
    assert store.verify("default", "adapter", "synth").ok
    assert list((store.layout.name_dir("default", "adapter", "synth") / STAGING).iterdir()) == []


PUBLISH_SCRIPT = """
import sys
from loraplane.modelstore import ModelStore
ModelStore(sys.argv[1]).publish(sys.argv[2], kind="base", name="mistral", version="v2")
"""


def test_publish_killed_mid_copy_leaves_previous_version(published, tiny_base_dir):
    env = dict(os.environ, **{COPY_DELAY_ENV: "30"})
    proc = subprocess.Popen([sys.executable, "-c", PUBLISH_SCRIPT, str(published.root), str(tiny_base_dir)], env=env)
    staging = published.layout.name_dir("default", "base", "mistral") / STAGING
    deadline = time.monotonic() + 60
    try:
        # Wait until the publisher has copied at least one file into staging.
        while not any(p.is_file() for p in staging.rglob("*")):
            assert proc.poll() is None, "publisher exited early"
            assert time.monotonic() < deadline, "publisher never started copying"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert [r.version for r in published.list(kind="base")] == ["v1"]
    assert published.current_version("default", "base", "mistral") == "v1"
    assert published.resolve("default", "base", "mistral").version == "v1"
    assert published.verify("default", "base", "mistral").ok
    assert published.check(dry_run=True).ok
    # The leftover staging dir is hidden and swept by gc once stale.
    assert any(staging.iterdir())
    from loraplane.modelstore.gc import collect_garbage
    rep = collect_garbage(published, keep=5, stale_after=0)
    assert len(rep.staging_removed) == 1 and not any(staging.iterdir())


def test_set_current_rolls_back(published, make_tiny_adapter):
    published.publish(make_tiny_adapter(seed=2), kind="adapter", name="synth", version="v2", base_name="mistral")
    assert published.current_version("default", "adapter", "synth") == "v2"
    published.set_current("default", "adapter", "synth", "v1")
    assert published.resolve("default", "adapter", "synth").version == "v1"
    with pytest.raises(StoreError, match="not found"):
        published.set_current("default", "adapter", "synth", "v7")
    m = published.publish(make_tiny_adapter(seed=3), kind="adapter", name="synth", version="v3",
                          base_name="mistral", set_current=False)
    assert m.version == "v3" and published.current_version("default", "adapter", "synth") == "v1"


def test_resolve_verified_refuses_corrupted_adapter(published):
    assert published.resolve_verified("default", "adapter", "synth").version == "v1"
    path = published.resolve("default", "adapter", "synth").path / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x80
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="refusing default/adapter/synth@v1.*corrupt: adapter_model.safetensors"):
        published.resolve_verified("default", "adapter", "synth")


def test_force_without_renameat2_still_replaces(published, make_tiny_adapter, monkeypatch):
    import loraplane.modelstore.publish as pub
    monkeypatch.setattr(pub, "exchange", lambda a, b: False)
    m = published.publish(make_tiny_adapter(seed=2), kind="adapter", name="synth", version="v1",
                          base_name="mistral", force=True)
    assert published.resolve("default", "adapter", "synth", "v1").manifest.checksum == m.checksum
    assert published.verify("default", "adapter", "synth").ok


def test_failed_publish_cleans_staging_and_keeps_current(published, tiny_base_dir, monkeypatch):
    import loraplane.modelstore.publish as pub
    real = pub.copy_and_hash
    seen = []

    def flaky(src, dst, **kw):
        seen.append(src)
        if len(seen) == 3:
            raise OSError(28, "No space left on device")
        return real(src, dst, **kw)

    monkeypatch.setattr(pub, "copy_and_hash", flaky)
    with pytest.raises(StoreError, match="mistral@v2 failed, nothing was committed: .*No space left"):
        published.publish(tiny_base_dir, kind="base", name="mistral", version="v2", workers=1)
    assert [r.version for r in published.list(kind="base")] == ["v1"]
    assert published.current_version("default", "base", "mistral") == "v1"
    assert list((published.layout.name_dir("default", "base", "mistral") / STAGING).iterdir()) == []


ADAPTER_SCRIPT = """
import sys
from loraplane.modelstore import ModelStore, StoreError
try:
    m = ModelStore(sys.argv[1]).publish(sys.argv[2], kind="adapter", name="synth", version="v9", base_name="mistral")
    print("WON", m.checksum)
except StoreError as e:
    print("LOST", e)
    sys.exit(3)
"""


def test_concurrent_publish_from_two_processes(published, make_tiny_adapter):
    env = dict(os.environ, **{COPY_DELAY_ENV: "0.3"})
    procs = [subprocess.Popen([sys.executable, "-c", ADAPTER_SCRIPT, str(published.root), str(make_tiny_adapter(seed=s))],
                              env=env, stdout=subprocess.PIPE, text=True) for s in (1, 2)]
    outs = [(p.communicate(timeout=60)[0], p.returncode) for p in procs]
    assert sorted(rc for _, rc in outs) == [0, 3], outs
    won = next(o for o, rc in outs if rc == 0).split()[1]
    lost = next(o for o, rc in outs if rc == 3)
    assert "version 'v9' already exists" in lost
    assert published.resolve("default", "adapter", "synth", "v9").manifest.checksum == won
    assert published.verify("default", "adapter", "synth", "v9").ok
