"""Benchmark: the ModelStore on a local directory vs on a real S3 server
(versitygw built by ``make s3-server``, posix backend on the same disk), in
the same run: publish and materialise MB/s against a plain file copy, and
a cache-hit materialise against a cold download.

The checkpoint is synthetic: ``--files`` safetensors files of random bytes
(one F16 tensor each) plus a config.json, ``--total-mb`` in all. Each figure
is the best of ``--repeat`` runs (fresh version names, so nothing is reused
except where measured: the cache hit).

    .venv/bin/python -m loraplane.perf.bench_s3 --total-mb 256 --files 4 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from loraplane.devcluster import s3_build
from loraplane.modelstore import ModelStore
from loraplane.modelstore.s3 import S3ModelStore, client_from_env

MB = 1_000_000
ACCESS, SECRET = "bench", "bench-secret-0123456789"


def make_checkpoint(d: Path, total_mb: int, files: int) -> int:
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    per = total_mb * MB // files // 2 * 2
    for i in range(files):
        header = json.dumps({"w": {"dtype": "F16", "shape": [per // 2], "data_offsets": [0, per]}}).encode()
        with open(d / f"model-{i:05d}-of-{files:05d}.safetensors", "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            left = per
            while left:
                n = min(left, 4 << 20)
                f.write(os.urandom(n))
                left -= n
    return sum(p.stat().st_size for p in d.iterdir())


def start_server(data: Path) -> tuple[subprocess.Popen, dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(s3_build.binary()), "--access", ACCESS, "--secret", SECRET, "--port",
                             f"127.0.0.1:{port}", "--quiet", "posix", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": ACCESS,
           "AWS_SECRET_ACCESS_KEY": SECRET}
    return proc, env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--total-mb", type=int, default=256)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    proc = None
    try:
        src = work / "src"
        size = make_checkpoint(src, args.total_mb, args.files)
        (work / "s3").mkdir()
        proc, env = start_server(work / "s3")
        os.environ.update(env)
        client_from_env(env).make_bucket("bench")
        local = ModelStore(work / "local")
        remote = S3ModelStore("s3://bench/store")
        best: dict[str, float] = {}

        def timed(key: str, fn) -> None:
            t0 = time.perf_counter()
            fn()
            best[key] = min(best.get(key, float("inf")), time.perf_counter() - t0)

        for r in range(args.repeat):
            dst = work / f"copy{r}"
            timed("plain copy (shutil.copytree)", lambda: shutil.copytree(src, dst))
            timed("publish, local dir", lambda: local.publish(src, kind="base", name="m", version=f"v{r}"))
            timed("publish, S3", lambda: remote.publish(src, kind="base", name="m", version=f"v{r}"))
            cache = work / f"cache{r}"
            timed("materialise from S3, cold", lambda: remote.materialise("default", "base", "m", f"v{r}", cache))
            timed("materialise from S3, cache hit",
                  lambda: S3ModelStore("s3://bench/store").materialise("default", "base", "m", f"v{r}", cache))
            shutil.rmtree(dst)
        rows = {k: {"seconds": round(v, 3), "MB_per_s": round(size / MB / v, 1)} for k, v in best.items()}
        print(f"ModelStore local vs S3 (versitygw posix, same disk): {size / MB:.0f} MB in {args.files} files "
              f"+ config, best of {args.repeat}, {os.cpu_count()} CPUs")
        print(f"{'operation':36} {'seconds':>8} {'MB/s':>8}")
        for k, v in rows.items():
            print(f"{k:36} {v['seconds']:8.3f} {v['MB_per_s']:8.1f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"bytes": size, "files": args.files, "results": rows}, indent=2))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
