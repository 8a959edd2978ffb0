"""`loraplane worker` as a real process with ``--store-root s3://...``: it
materialises the base and adapter into the node-local cache (keyed by
checksum), verifies them and serves; a second worker on the same cache serves
without downloading the weights again (the server's access log shows no GET
of a weight file)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from loraplane.modelstore.s3 import S3ModelStore
from loraplane.contracts.desired import DesiredState


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, data=None):
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _serve_once(url: str, cache, desired_file) -> float:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("POD_NAME", "LORAPLANE_DESIRED_CONFIGMAP")}
    env["LORAPLANE_MODEL_CACHE"] = str(cache)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "loraplane.cli", "worker", "--store-root", url,
                             "--desired-file", str(desired_file), "--port", str(port), "--host", "127.0.0.1",
                             "--device", "cpu", "--threads", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        status, body = None, None
        while time.monotonic() < deadline:
            try:
                status, body = _get(base + "/readyz")
                if status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.2)
        assert status == 200, body
        ready_s = time.monotonic() - t0
        code, out = _get(base + "/v1/completions", {"model": "synthesizer", "prompt": "hello", "max_tokens": 3})
        assert code == 200 and out["adapter"] == "synth-v1", out
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        return ready_s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_worker_loads_from_s3_through_the_node_cache(s3_server, s3_url, tiny_base_dir, make_tiny_adapter, tmp_path):
    st = S3ModelStore(s3_url)
    base = st.publish(tiny_base_dir, kind="base", name="tiny", version="v1")
    ad = st.publish(make_tiny_adapter(seed=1), kind="adapter", name="synth", version="v1", base_name="tiny",
                    task="synthesizer")
    doc = DesiredState.model_validate({
        "pool": "p", "generation": 1, "base": {"name": "tiny", "version": "v1", "variant": "fp32"},
        "adapters": [{"name": "synth-v1", "storeName": "synth", "version": "v1", "task": "synthesizer"}],
        "routes": {"synthesizer": [{"adapter": "synth-v1", "weight": 100}]}})
    f = tmp_path / "desired.json"
    f.write_text(doc.to_json())
    cache = tmp_path / "node-cache"

    mark = s3_server.log_mark()
    cold = _serve_once(s3_url, cache, f)
    cold_log = s3_server.requests_since(mark)
    assert sorted(p.name for p in cache.iterdir()) == sorted([base.checksum, ad.checksum])
    assert any(" s3_GetObject " in ln and "model.safetensors" in ln for ln in cold_log)

    mark = s3_server.log_mark()
    warm = _serve_once(s3_url, cache, f)
    warm_log = s3_server.requests_since(mark)
    weight_gets = [ln for ln in warm_log if " s3_GetObject " in ln and ".safetensors" in ln]
    assert weight_gets == []  # the second worker read manifests and pointers only
    print(f"\nworker ready from S3: cold download {cold:.1f} s, cache hit {warm:.1f} s")


def test_cache_hit_is_not_rehashed_by_the_worker(s3_url, tiny_base_dir, make_tiny_adapter, tmp_path, monkeypatch):
    """A worker reading through the node cache loads a verified entry without
    hashing it again; a cold one hashes each file once (in materialise)."""
    import asyncio

    from loraplane.modelstore import hashing
    from loraplane.modelstore import s3 as s3mod
    from loraplane.worker.runtime import Worker, WorkerConfig

    st = S3ModelStore(s3_url)
    base = st.publish(tiny_base_dir, kind="base", name="tiny", version="v1")
    st.publish(make_tiny_adapter(seed=1), kind="adapter", name="synth", version="v1", base_name="tiny",
               task="synthesizer")
    doc = DesiredState.model_validate({
        "pool": "p", "generation": 1, "base": {"name": "tiny", "version": "v1", "variant": "fp32"},
        "adapters": [{"name": "synth-v1", "storeName": "synth", "version": "v1", "task": "synthesizer"}],
        "routes": {"synthesizer": [{"adapter": "synth-v1", "weight": 100}]}})
    monkeypatch.setenv("LORAPLANE_MODEL_CACHE", str(tmp_path / "cache"))
    hashed: list[str] = []
    real = hashing.sha256_file

    def counting(path, *a, **kw):
        hashed.append(str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(hashing, "sha256_file", counting)  # verify_dir's hashing (hash_files)
    monkeypatch.setattr(s3mod, "sha256_file", counting)    # materialise's hashing

    def start() -> list[str]:
        hashed.clear()
        w = Worker(WorkerConfig(store_root=s3_url))
        try:
            asyncio.run(w.apply(doc))
            assert w.ready, w.status() if hasattr(w, "status") else None
        finally:
            w.close()
        return list(hashed)

    cold = start()
    n_files = len(base.files)
    assert sum(1 for p in cold if base.checksum[:16] in p) == n_files  # each base file hashed once, not twice
    warm = start()
    assert warm == []
