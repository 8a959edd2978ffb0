"""Serving benchmark for the worker: the seeds' simulate_concurrent_inference,
done properly, with every goal measured as a ratio against a baseline taken
in the same run on the same model.

Ratios reported:
1. mixed 8-adapter batch vs single-adapter batch (engine tokens/s; goal >= 0.9),
   next to the same ratio for stock PEFT ``generate(adapter_names=...)``;
2. batched serving vs one request at a time, 16 concurrent HTTP clients (goal >= 5x);
3. adapter hot swap vs cold worker start (goal <= 2%).
Plus a concurrency sweep (p50/p95/p99 latency, tokens/s) over HTTP with
requests spread across 8 adapters, written as CSV, JSON and a PNG plot.

Weights are random (speed does not depend on their values); nothing is
downloaded. Run:  python -m loraplane.perf.bench_serving --help
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PROMPTS = ["tell me about the cat and the dog", "write a short news story about the worker pool",
           "what is the model and why is it fast", "one two three four five six seven eight nine ten"]


def build_store(root: Path, n_adapters: int, overrides: dict, rank: int) -> None:
    from loraplane.modelstore import ModelStore
    from loraplane.tiny_model import build_adapter, build_base

    src = root.parent / "src"
    base = build_base(src / "base", **overrides)
    store = ModelStore(root)
    store.publish(base, kind="base", name="bench", version="v1")
    for i in range(1, n_adapters + 2):  # one spare version for the hot swap
        a = build_adapter(base, src / f"a{i}", seed=i, r=rank)
        store.publish(a, kind="adapter", name=f"task{i}", version="v1", base_name="bench", task=f"task{i}")
        store.publish(a, kind="adapter", name=f"task{i}", version="v2", base_name="bench", task=f"task{i}", force=True)


def desired(n: int, generation: int = 1, swap_first: bool = False):
    from loraplane.contracts.desired import DesiredState

    adapters, routes = [], {}
    for i in range(1, n + 1):
        ver = "v2" if (swap_first and i == 1) else "v1"
        name = f"task{i}-{ver}"
        adapters.append({"name": name, "storeName": f"task{i}", "version": ver, "task": f"task{i}"})
        routes[f"task{i}"] = [{"adapter": name, "weight": 100}]
    return DesiredState.model_validate({"pool": "bench", "generation": generation,
                                        "base": {"name": "bench", "version": "v1", "variant": "fp32"},
                                        "adapters": adapters, "routes": routes})


# ---------------------------------------------------------------- engine-level
def engine_tokens_per_s(worker, adapters: list[str], max_tokens: int) -> float:
    """Submit one batch (one row per entry of ``adapters``) and time it to the last token."""
    from loraplane.worker.engine import GenRequest

    tok = worker.tokenizer
    done = threading.Semaphore(0)
    reqs = []
    for i, a in enumerate(adapters):
        reqs.append(GenRequest(prompt_ids=tok(PROMPTS[i % len(PROMPTS)]).input_ids, adapter=a, max_tokens=max_tokens,
                               ignore_eos=True, temperature=0.0,
                               sink=lambda kind, p: done.release() if kind != "token" else None))
    t0 = time.perf_counter()
    for r in reqs:
        worker.engine.submit(r)
    for _ in reqs:
        done.acquire()
    dt = time.perf_counter() - t0
    return sum(len(r.generated) for r in reqs) / dt


def peft_tokens_per_s(model, tok, adapters: list[str], max_tokens: int) -> float:
    import torch

    tok.padding_side = "left"
    enc = tok([PROMPTS[i % len(PROMPTS)] for i in range(len(adapters))], return_tensors="pt", padding=True)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, adapter_names=adapters, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id)
    dt = time.perf_counter() - t0
    return (out.shape[1] - enc.input_ids.shape[1]) * len(adapters) / dt


def mixed_vs_single(worker, store_root: Path, n: int, batch: int, max_tokens: int, repeats: int) -> dict:
    names = [f"task{i}-v1" for i in range(1, n + 1)]
    mixed_rows = [names[i % n] for i in range(batch)]
    single_rows = [names[0]] * batch
    engine_tokens_per_s(worker, single_rows, 4)  # warm-up
    single, mixed = [], []
    for _ in range(repeats):  # interleaved so drift hits both equally
        single.append(engine_tokens_per_s(worker, single_rows, max_tokens))
        mixed.append(engine_tokens_per_s(worker, mixed_rows, max_tokens))
    out = {"batch": batch, "adapters": n, "max_tokens": max_tokens,
           "single_tok_s": statistics.median(single), "mixed_tok_s": statistics.median(mixed),
           "single_runs": single, "mixed_runs": mixed}
    out["ratio"] = out["mixed_tok_s"] / out["single_tok_s"]
    # stock PEFT on the same base and adapters, same shapes
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraplane.modelstore import ModelStore

    store = ModelStore(store_root)
    base_path = store.resolve("default", "base", "bench", "v1").path
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval()
    pm = None
    for i, name in enumerate(names):
        p = store.resolve("default", "adapter", f"task{i + 1}", "v1").path
        pm = PeftModel.from_pretrained(model, p, adapter_name=name) if pm is None else pm
        if i:
            pm.load_adapter(p, adapter_name=name)
    pm.eval()
    tok = AutoTokenizer.from_pretrained(base_path)
    peft_tokens_per_s(pm, tok, single_rows, 4)
    ps, pmx = [], []
    for _ in range(repeats):
        ps.append(peft_tokens_per_s(pm, tok, single_rows, max_tokens))
        pmx.append(peft_tokens_per_s(pm, tok, mixed_rows, max_tokens))
    out["peft_single_tok_s"], out["peft_mixed_tok_s"] = statistics.median(ps), statistics.median(pmx)
    out["peft_ratio"] = out["peft_mixed_tok_s"] / out["peft_single_tok_s"]
    return out


# ---------------------------------------------------------------- HTTP level
async def http_level(worker, n: int, args) -> dict:
    from aiohttp.test_utils import TestServer

    from loraplane.perf.loadgen import run_load, summarize
    from loraplane.worker.server import create_app

    server = TestServer(create_app(worker), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")

    def body(i: int) -> dict:
        return {"model": f"task{i % n + 1}", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": args.max_tokens,
                "temperature": 0, "ignore_eos": True}

    out: dict = {"sweep": []}
    try:
        await run_load(url, 4, 8, body)  # warm-up
        for c in args.concurrency:
            res, wall = await run_load(url, c, max(args.requests, 2 * c), body)
            row = {"concurrency": c, **summarize(res, wall)}
            out["sweep"].append(row)
            print(f"  c={c:3d} p50={row['p50_s']*1e3:7.1f}ms p95={row['p95_s']*1e3:7.1f}ms "
                  f"p99={row['p99_s']*1e3:7.1f}ms tok/s={row['tokens_per_s']:8.1f} errors={row['errors']}", flush=True)
        # batched vs one at a time, 16 clients
        reqs = max(args.requests, 32)
        res_b, wall_b = await run_load(url, 16, reqs, body)
        saved = worker.engine.max_batch_size
        worker.engine.max_batch_size = 1
        try:
            res_1, wall_1 = await run_load(url, 16, reqs, body)
        finally:
            worker.engine.max_batch_size = saved
        b, one = summarize(res_b, wall_b), summarize(res_1, wall_1)
        out["batched_vs_serial"] = {"clients": 16, "requests": reqs, "batched": b, "one_at_a_time": one,
                                    "ratio": b["tokens_per_s"] / one["tokens_per_s"]}
    finally:
        await server.close()
    return out


# ---------------------------------------------------------------- start vs swap
async def swap_vs_cold(store_root: Path, n: int, repeats: int) -> dict:
    from loraplane.worker.runtime import Worker, WorkerConfig

    colds, swaps = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        w = Worker(WorkerConfig(store_root=str(store_root)))
        await w.apply(desired(n))
        colds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await w.apply(desired(n, generation=2, swap_first=True))  # task1: v1 -> v2, verified, no base reload
        swaps.append(time.perf_counter() - t0)
        assert "task1-v2" in w.served and "task1-v1" not in w.served and not w.failed, w.status()
        w.close()
    cold_process = process_cold_start(store_root, n)
    return {"cold_in_process_s": statistics.median(colds), "hot_swap_s": statistics.median(swaps),
            "cold_process_s": cold_process,
            "ratio_vs_process": statistics.median(swaps) / cold_process,
            "ratio_vs_in_process": statistics.median(swaps) / statistics.median(colds)}


def process_cold_start(store_root: Path, n: int) -> float:
    """Seconds from exec of `loraplane worker` to /readyz == 200 (what a new Pod pays)."""
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "desired.json"
        f.write_text(desired(n).to_json())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "loraplane.cli", "worker", "--store-root", str(store_root),
                                 "--desired-file", str(f), "--port", str(port), "--host", "127.0.0.1",
                                 "--device", "cpu", "--threads", "1", "--log-level", "WARNING"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                        if r.status == 200:
                            return time.perf_counter() - t0
                except OSError:
                    pass
                if proc.poll() is not None or time.perf_counter() - t0 > 300:
                    raise RuntimeError("worker process did not become ready")
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


# ---------------------------------------------------------------- outputs
def write_outputs(result: dict, tag: str) -> list[Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"serving-{tag}"
    paths = [stem.with_suffix(".json"), stem.with_suffix(".csv"), stem.with_suffix(".png")]
    paths[0].write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    rows = result["http"]["sweep"]
    with paths[1].open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [r["concurrency"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for q in ("p50_s", "p95_s", "p99_s"):
        ax1.plot(c, [r[q] * 1e3 for r in rows], marker="o", label=q[:3])
    ax1.set(xscale="log", xlabel="concurrent clients", ylabel="latency (ms)", title="request latency")
    ax1.legend()
    ax2.plot(c, [r["tokens_per_s"] for r in rows], marker="o")
    ax2.set(xscale="log", xlabel="concurrent clients", ylabel="generated tokens/s", title="throughput")
    fig.suptitle(f"loraplane worker, {result['config']['model']} ({tag})")
    fig.tight_layout()
    fig.savefig(paths[2], dpi=80)
    return paths


async def amain(args) -> dict:
    import torch

    from loraplane.worker.runtime import Worker, WorkerConfig

    torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (("hidden_size", args.hidden), ("num_hidden_layers", args.layers),
                                   ("intermediate_size", args.intermediate)) if v}
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    root = tmp / "store"
    build_store(root, args.adapters, overrides, args.rank)
    n = args.adapters
    print(f"store ready at {root}", flush=True)
    result: dict = {"config": {"adapters": n, "rank": args.rank, "batch": args.batch, "max_tokens": args.max_tokens,
                               "concurrency": args.concurrency, "requests": args.requests, "threads": args.threads,
                               "model": "tiny-mistral " + json.dumps(overrides or {"default": True}),
                               "host": platform.node(), "cpu_count": os.cpu_count(),
                               "torch": torch.__version__}}
    worker = Worker(WorkerConfig(store_root=str(root), max_batch_size=max(args.batch, max(args.concurrency)),
                                 max_wait_ms=args.max_wait_ms, max_tokens_limit=4096))
    await worker.apply(desired(n))
    assert not worker.failed, worker.failed
    print("1) mixed vs single adapter (engine)", flush=True)
    result["mixed_vs_single"] = await asyncio.get_running_loop().run_in_executor(
        None, mixed_vs_single, worker, root, n, args.batch, args.max_tokens, args.repeats)
    m = result["mixed_vs_single"]
    print(f"  loraplane: single {m['single_tok_s']:.1f} tok/s, mixed {m['mixed_tok_s']:.1f} tok/s, "
          f"ratio {m['ratio']:.3f}; stock PEFT ratio {m['peft_ratio']:.3f}", flush=True)
    print("2) HTTP sweep + batched vs one-at-a-time", flush=True)
    result["http"] = await http_level(worker, n, args)
    print(f"  batched/one-at-a-time (16 clients): {result['http']['batched_vs_serial']['ratio']:.2f}x", flush=True)
    worker.close()
    print("3) hot swap vs cold start", flush=True)
    result["swap"] = await swap_vs_cold(root, n, args.repeats)
    s = result["swap"]
    print(f"  hot swap {s['hot_swap_s']*1e3:.1f} ms, cold process start {s['cold_process_s']:.2f} s "
          f"(ratio {s['ratio_vs_process']:.4f}); in-process cold {s['cold_in_process_s']:.3f} s "
          f"(ratio {s['ratio_vs_in_process']:.3f})", flush=True)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch", type=int, default=16, help="rows in the mixed/single engine batch")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--requests", type=int, default=32, help="requests per sweep point (at least 2x concurrency)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads; 1 is stable on a shared CPU (2 threads on 2 busy cores thrash)")
    p.add_argument("--hidden", type=int, default=None, help="override the tiny model's hidden_size")
    p.add_argument("--intermediate", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--tag", default=time.strftime("%Y%m%d") + "-cpu")
    args = p.parse_args(argv)
    result = asyncio.run(amain(args))
    result["command"] = "python -m loraplane.perf.bench_serving " + " ".join(argv if argv is not None else sys.argv[1:])
    for path in write_outputs(result, args.tag):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
