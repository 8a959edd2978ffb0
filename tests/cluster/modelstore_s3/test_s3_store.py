"""The ModelStore on a real S3 server (versitygw, see conftest.py): publish,
concurrent publish, a torn upload, a flipped byte, big-file streaming."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from loraplane.modelstore import ModelStore, StoreError, verify_dir
from loraplane.modelstore.s3 import MANIFEST, UPLOAD_DELAY_ENV, S3ModelStore, open_store


def _bucket_dir(s3_server, url: str) -> Path:
    bucket = url[len("s3://"):].split("/", 1)[0]
    return s3_server.data_dir / bucket


def test_conditional_put_is_honoured_by_the_server(s3_url):
    """The whole publish protocol rests on If-None-Match: * being enforced."""
    st = S3ModelStore(s3_url)
    assert st._put_bytes("store/probe", b"one", if_none_match=True) is True
    assert st._put_bytes("store/probe", b"two", if_none_match=True) is False
    assert st._get_bytes("store/probe") == b"one"


def test_publish_resolve_list_verify_and_materialise(s3_url, tiny_base_dir, make_tiny_adapter, tmp_path):
    st = open_store(s3_url)
    assert isinstance(st, S3ModelStore)
    local = ModelStore(tmp_path / "local")
    lm = local.publish(tiny_base_dir, kind="base", name="mistral", version="v1")
    m = st.publish(tiny_base_dir, kind="base", name="mistral", version="v1")
    # Same files, same per-file sha256, same checksum as the local store.
    assert m.checksum == lm.checksum and m.files == lm.files
    st.publish(make_tiny_adapter(seed=1), kind="adapter", name="synth", version="v1", base_name="mistral",
               task="synthesizer")
    assert st.current_version("default", "base", "mistral") == "v1"
    assert [(r["kind"], r["name"], r["version"], r["current"]) for r in st.list()] == [
        ("base", "mistral", "v1", True), ("adapter", "synth", "v1", True)]
    ad = st.resolve("default", "adapter", "synth")
    assert ad.manifest.adapter.base_checksum == m.checksum
    assert st.verify("default", "base", "mistral").ok
    with pytest.raises(StoreError, match="already exists"):
        st.publish(tiny_base_dir, kind="base", name="mistral", version="v1")
    # Materialise: a directory the local verifier and loader accept.
    got = st.materialise("default", "base", "mistral", None, tmp_path / "cache")
    assert not got.cache_hit and got.path.name == m.checksum
    assert verify_dir(got.path).ok
    # No staging objects are left behind.
    assert not any(".staging" in o.object_name for o in st._list("store/", True))


def test_concurrent_publishers_of_one_version_one_wins(s3_url, tiny_base_dir):
    stores = [S3ModelStore(s3_url) for _ in range(2)]
    results: list = [None, None]
    barrier = threading.Barrier(2)

    def run(i):
        barrier.wait()
        try:
            results[i] = stores[i].publish(tiny_base_dir, kind="base", name="mistral", version="v1")
        except StoreError as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    errors = [r for r in results if isinstance(r, StoreError)]
    wins = [r for r in results if not isinstance(r, StoreError)]
    assert len(wins) == 1 and len(errors) == 1, results
    assert "already exists" in str(errors[0]) or "being published by another publisher" in str(errors[0])
    assert stores[0].resolve("default", "base", "mistral", "v1").manifest.checksum == wins[0].checksum
    assert stores[0].verify("default", "base", "mistral", "v1").ok


PUBLISH_SCRIPT = """
import sys
from loraplane.modelstore.s3 import S3ModelStore
S3ModelStore(sys.argv[1]).publish(sys.argv[2], kind="base", name="mistral", version="v2")
"""


def test_publisher_killed_mid_upload_leaves_nothing_visible(s3_server, s3_url, tiny_base_dir):
    st = S3ModelStore(s3_url)
    st.publish(tiny_base_dir, kind="base", name="mistral", version="v1")
    env = dict(os.environ, **{UPLOAD_DELAY_ENV: "30"})
    proc = subprocess.Popen([sys.executable, "-c", PUBLISH_SCRIPT, s3_url, str(tiny_base_dir)], env=env)
    staging_prefix = "store/default/base_models/mistral/.staging/"
    deadline = time.monotonic() + 60
    try:
        while not any(True for _ in st._list(staging_prefix, True)):
            assert proc.poll() is None, "publisher exited early"
            assert time.monotonic() < deadline, "publisher never started uploading"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert st.versions("default", "base", "mistral") == ["v1"]
    assert st.current_version("default", "base", "mistral") == "v1"
    with pytest.raises(StoreError, match="not found"):
        st.resolve("default", "base", "mistral", "v2")
    # The leftover staging upload is swept once stale (fresh ones are kept).
    assert st.sweep_staging() == []
    (swept,) = st.sweep_staging(stale_after_s=0)
    assert swept.startswith(f"{s3_url}/default/base_models/mistral/.staging/v2.")
    assert not any(True for _ in st._list(staging_prefix, True))
    assert st.verify("default", "base", "mistral", "v1").ok
    # A later publish of v2 succeeds (nothing was claimed).
    st.publish(tiny_base_dir, kind="base", name="mistral", version="v2")
    assert st.versions("default", "base", "mistral") == ["v1", "v2"]


def test_flipped_byte_on_the_server_is_refused_at_materialise(s3_server, s3_url, tiny_base_dir, tmp_path):
    st = S3ModelStore(s3_url)
    m = st.publish(tiny_base_dir, kind="base", name="mistral", version="v1")
    obj = _bucket_dir(s3_server, s3_url) / "store/default/base_models/mistral/versions/v1/model.safetensors"
    assert obj.stat().st_size == m.files["model.safetensors"].size
    with open(obj, "r+b") as f:
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0x01]))
    rep = st.verify("default", "base", "mistral")
    assert not rep.ok and rep.corrupt == ["model.safetensors"]
    with pytest.raises(StoreError, match="corrupt: model.safetensors"):
        st.materialise("default", "base", "mistral", "v1", tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # nothing half-downloaded is left to load


def test_cache_hit_skips_download_and_rehash(s3_url, tiny_base_dir, tmp_path):
    st = S3ModelStore(s3_url)
    st.publish(tiny_base_dir, kind="base", name="mistral", version="v1")
    first = st.materialise("default", "base", "mistral", None, tmp_path / "cache")
    second_worker = S3ModelStore(s3_url)  # another process on the same node, same cache dir
    again = second_worker.materialise("default", "base", "mistral", None, tmp_path / "cache")
    assert not first.cache_hit and again.cache_hit and again.path == first.path
    assert again.bytes_downloaded == 0
    # only the manifest and the current pointer were read (no weight bytes)
    assert second_worker.stats.bytes_down < 10_000
    with pytest.raises(StoreError, match="expected"):
        st.materialise("default", "base", "mistral", None, tmp_path / "cache", expect_checksum="0" * 64)


BIG_SCRIPT = """
import json, resource, sys, time
from pathlib import Path
from loraplane.modelstore.s3 import S3ModelStore
url, src, cache = sys.argv[1:4]
st = S3ModelStore(url, part_size=5 << 20, workers=4, parallel_parts=4)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
sha, size, etag = st.upload_file(Path(src) / "big.bin", "store/big/big.bin")
t1 = time.perf_counter()
st.download_ranges([("store/big/big.bin", Path(cache) / "big.bin", size)])
t2 = time.perf_counter()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stat = st.client.stat_object(st.bucket, "store/big/big.bin")
print(json.dumps({"size": size, "sha": sha, "etag": etag, "server_etag": stat.etag.strip('"'),
                  "rss_growth_kib": after - before, "up_s": t1 - t0, "down_s": t2 - t1}))
"""


def test_big_file_streams_multipart_in_bounded_memory(s3_url, tmp_path):
    """A file 16x the part size goes up in parts and comes back by ranges; peak RSS
    grows by far less than the file (a 14.5 GB base must not need 2x RAM)."""
    import hashlib
    import json

    src = tmp_path / "src"
    src.mkdir()
    size = 80 * (1 << 20) + 12345  # 16 parts of 5 MiB and a tail
    h = hashlib.sha256()
    with open(src / "big.bin", "wb") as f:
        for i in range(size // (1 << 20) + 1):
            block = os.urandom(min(1 << 20, size - i * (1 << 20)))
            h.update(block)
            f.write(block)
    cache = tmp_path / "cache"
    cache.mkdir()
    out = subprocess.run([sys.executable, "-c", BIG_SCRIPT, s3_url, str(src), str(cache)],
                         capture_output=True, text=True, timeout=300, env=os.environ)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["size"] == size and r["sha"] == h.hexdigest()
    assert r["etag"] == r["server_etag"] and r["etag"].endswith("-17"), r  # multipart: 17 parts
    assert hashlib.sha256((cache / "big.bin").read_bytes()).hexdigest() == h.hexdigest()
    # (parts in flight + 1) x 5 MiB plus HTTP buffers, not the 80 MiB file
    assert r["rss_growth_kib"] < 48 * 1024, r
    mb = size / 1e6
    print(f"\nS3 upload {mb / r['up_s']:.0f} MB/s, download {mb / r['down_s']:.0f} MB/s "
          f"({mb:.0f} MB, 5 MiB parts, 4 in flight), RSS growth {r['rss_growth_kib'] / 1024:.1f} MiB")


def test_cli_on_an_s3_root(s3_url, tiny_base_dir):
    import json

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "loraplane.cli", "modelstore", *args, "--root", s3_url],
                              capture_output=True, text=True, timeout=300, env=os.environ)

    out = cli("publish", str(tiny_base_dir), "--kind", "base", "--name", "mistral", "--version", "v1", "--json")
    assert out.returncode == 0, out.stderr
    checksum = json.loads(out.stdout)["checksum"]
    rows = json.loads(cli("list", "--json").stdout)
    assert [(r["name"], r["version"], r["current"], r["checksum"]) for r in rows] == [("mistral", "v1", True, checksum)]
    shown = json.loads(cli("show", "base", "mistral", "--json").stdout)
    assert shown["path"].startswith(s3_url) and shown["manifest"]["checksum"] == checksum
    assert cli("verify", "base", "mistral").returncode == 0
    again = cli("publish", str(tiny_base_dir), "--kind", "base", "--name", "mistral", "--version", "v1")
    assert again.returncode == 2 and "already exists" in again.stderr
    gc = cli("gc", "--keep", "1")
    assert gc.returncode == 2 and "local-only" in gc.stderr
    gc = cli("gc", "--json")
    assert gc.returncode == 0 and json.loads(gc.stdout)["staging_removed"] == []
    assert cli("check").returncode == 2


def test_a_failed_publish_releases_its_claim_and_cleans_up(s3_url, tiny_base_dir, monkeypatch):
    """An error after the claim (here: the server-side copy fails half-way) leaves
    no claim, no partial version and no staging: the version can be published again."""
    st = S3ModelStore(s3_url)
    real = S3ModelStore._copy_all

    def half_then_fail(self, pairs):
        real(self, pairs[:1])
        raise StoreError("injected: copy failed")

    monkeypatch.setattr(S3ModelStore, "_copy_all", half_then_fail)
    with pytest.raises(StoreError, match="injected"):
        st.publish(tiny_base_dir, kind="base", name="mistral", version="v1")
    left = [o.object_name for o in st._list("store/", True)]
    assert left == [], left
    monkeypatch.setattr(S3ModelStore, "_copy_all", real)
    st.publish(tiny_base_dir, kind="base", name="mistral", version="v1")
    assert st.verify("default", "base", "mistral", "v1").ok
