"""Many adapters per worker (issue 13 item 7): throughput of mixed batches
over 1, 8, 64 and 256 distinct adapters against single-adapter batches,
measured interleaved in the same run on the same worker, with
``maxLoadedAdapters`` below 256 so the 256 case evicts and restores
adapters as it goes; and the latency of a request whose adapter was evicted
(cold) against one whose adapter is resident (warm), over HTTP.

Requests go through the worker's own path (hold, ``ensure_resident`` —
restore from host RAM, LRU eviction — then the engine), so restores and
their stack rebuilds are inside the measured time. Weights are random
(speed does not depend on their values); adapters are 8 distinct PEFT LoRAs
published under as many names as needed (each name is read and held
separately, as distinct versions are). Run:
``python -m loraplane.perf.bench_adapters --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from loraplane.perf.bench_serving import PROMPTS, RESULTS


def build_store(root: Path, names: int, overrides: dict, rank: int) -> None:
    from loraplane.modelstore import ModelStore
    from loraplane.tiny_model import build_adapter, build_base

    src = root.parent / "src"
    base = build_base(src / "base", **overrides)
    store = ModelStore(root)
    store.publish(base, kind="base", name="bench", version="v1")
    distinct = [build_adapter(base, src / f"a{i}", seed=i + 1, r=rank) for i in range(8)]
    for i in range(names):
        store.publish(distinct[i % 8], kind="adapter", name=f"ad{i}", version="v1", base_name="bench", task=f"t{i}")


def desired(names: int):
    """Every adapter served by name, no routes: none is pinned, so any can be evicted."""
    from loraplane.contracts.desired import DesiredState

    adapters = [{"name": f"ad{i}", "storeName": f"ad{i}", "version": "v1", "task": f"t{i}"} for i in range(names)]
    return DesiredState.model_validate({"pool": "bench", "generation": 1,
                                        "base": {"name": "bench", "version": "v1", "variant": "fp32"},
                                        "adapters": adapters, "routes": {}})


async def workload(worker, names: list[str], requests: int, max_tokens: int, offset: int = 0) -> float:
    """All ``requests`` at once, request i for ``names[(offset + i) % len(names)]``,
    through hold -> ensure_resident -> engine; tokens per second to the last."""
    from loraplane.worker.engine import GenRequest

    loop = asyncio.get_running_loop()
    ids = [worker.tokenizer(p).input_ids for p in PROMPTS]

    async def one(i: int) -> int:
        key = names[(offset + i) % len(names)]
        done = loop.create_future()
        worker.engine.hold(key)
        try:
            await worker.ensure_resident(key, time.monotonic() + 600)
        except BaseException:
            worker.engine.unhold(key)
            raise

        def sink(kind, payload):
            if kind != "token":
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(payload))

        req = GenRequest(prompt_ids=ids[i % len(ids)], adapter=key, max_tokens=max_tokens, ignore_eos=True,
                         sink=sink)
        worker.engine.submit(req, held=True)
        final = await done
        assert final["finish_reason"] == "length", final
        return len(req.generated)

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*[one(i) for i in range(requests)]))
    return tokens / (time.perf_counter() - t0)


async def mixed_vs_single(worker, args) -> list[dict]:
    """Per number of distinct adapters: median tok/s of the mixed workload and
    of the single-adapter one, interleaved (drift hits both)."""
    all_names = [f"ad{i}" for i in range(args.names)]
    await workload(worker, all_names[:1], 32, 4)  # warm-up
    rows = []
    for n in args.distinct:
        single, mixed = [], []
        restores0 = _counter(worker, "adapter_restores")
        for r in range(args.repeats):
            # ABBA order (drift on a shared host hits both), and each mixed run starts where the last
            # stopped, so with more adapters than fit, every run needs evicted ones back
            pair = [("single", all_names[:1], 0), ("mixed", all_names[:n], r * args.requests)]
            for kind, names, offset in (pair if r % 2 == 0 else pair[::-1]):
                tps = await workload(worker, names, args.requests, args.max_tokens, offset)
                (single if kind == "single" else mixed).append(tps)
        ratios = [m / s for m, s in zip(mixed, single)]
        row = {"distinct": n, "single_tok_s": statistics.median(single), "mixed_tok_s": statistics.median(mixed),
               "single_runs": single, "mixed_runs": mixed, "pair_ratios": ratios,
               "restores": _counter(worker, "adapter_restores") - restores0}
        row["ratio"] = statistics.median(ratios)  # median of adjacent pairs: robust to the host's load swings
        rows.append(row)
        print(f"  {n:3d} adapters: mixed {row['mixed_tok_s']:8.1f} tok/s vs single {row['single_tok_s']:8.1f} "
              f"-> {row['ratio']:.2f}x (median of {len(ratios)} pairs, min {min(ratios):.2f}, max {max(ratios):.2f}; "
              f"restores {row['restores']:.0f})", flush=True)
    return rows


def _counter(worker, name: str) -> float:
    metric = getattr(worker.metrics, name)
    return sum(s.value for fam in metric.collect() for s in fam.samples if s.name.endswith("_total"))


async def cold_vs_warm(worker, args) -> dict:
    """Sequential HTTP requests, alternating: one for an adapter that is
    evicted now (cold: restored first) and one for a resident one (warm)."""
    from aiohttp.test_utils import TestServer

    from loraplane.perf.loadgen import percentile
    from loraplane.worker.server import create_app
    import aiohttp

    server = TestServer(create_app(worker), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/v1/completions"))
    cold, warm = [], []
    try:
        async with aiohttp.ClientSession() as s:
            async def timed(name: str) -> float:
                body = {"model": name, "prompt": PROMPTS[0], "max_tokens": args.max_tokens, "temperature": 0,
                        "ignore_eos": True}
                t0 = time.perf_counter()
                async with s.post(url, json=body) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
                return time.perf_counter() - t0

            for i in range(args.latency_requests):
                resident = sorted(list(worker.bank.adapters), key=lambda k: worker.engine.last_used.get(k, 0.0))
                evicted = sorted(list(worker.bank.host))
                assert evicted, "nothing is evicted: maxLoadedAdapters must be below the number of adapters"
                cold.append(await timed(evicted[i % len(evicted)]))
                warm.append(await timed(resident[-1]))  # the most recently used: resident for sure
    finally:
        await server.close()
    out = {"requests_each": len(cold), "cold_p50_s": percentile(cold, 50), "cold_p95_s": percentile(cold, 95),
           "warm_p50_s": percentile(warm, 50), "warm_p95_s": percentile(warm, 95)}
    out["p95_ratio"] = out["cold_p95_s"] / out["warm_p95_s"]
    print(f"  cold p95 {out['cold_p95_s'] * 1e3:.1f} ms vs warm p95 {out['warm_p95_s'] * 1e3:.1f} ms "
          f"-> {out['p95_ratio']:.2f}x", flush=True)
    return out


async def amain(args) -> dict:
    import torch

    from loraplane.worker.runtime import Worker, WorkerConfig

    torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (("hidden_size", args.hidden), ("intermediate_size", args.intermediate),
                                   ("num_hidden_layers", args.layers)) if v}
    tmp = Path(tempfile.mkdtemp(prefix="loraplane-bench-adapters-"))
    root = tmp / "store"
    t0 = time.perf_counter()
    build_store(root, args.names, overrides, args.rank)
    print(f"store with {args.names} adapters built in {time.perf_counter() - t0:.1f} s", flush=True)
    worker = Worker(WorkerConfig(store_root=str(root), max_batch_size=args.batch, max_wait_ms=args.max_wait_ms,
                                 max_loaded_adapters=args.max_loaded, max_queue=None, max_tokens_limit=4096,
                                 verify_full=True))
    t0 = time.perf_counter()
    await worker.apply(desired(args.names))
    assert not worker.failed, worker.failed
    print(f"worker loaded {len(worker.served)} adapters ({len(worker.bank.adapters)} resident) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    try:
        result = {"config": {k: v for k, v in vars(args).items()}, "host": platform.node(),
                  "torch": torch.__version__, "mixed_vs_single": await mixed_vs_single(worker, args),
                  "cold_vs_warm": await cold_vs_warm(worker, args),
                  "evictions": _counter(worker, "adapter_evictions")}
    finally:
        worker.close()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", type=int, default=256, help="adapters loaded on the worker")
    p.add_argument("--distinct", type=int, nargs="+", default=[1, 8, 64, 256])
    p.add_argument("--max-loaded", type=int, default=128, help="maxLoadedAdapters (below --names: eviction)")
    p.add_argument("--batch", type=int, default=64, help="the engine's max batch size")
    p.add_argument("--requests", type=int, default=128, help="requests per workload")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--latency-requests", type=int, default=40, help="cold and warm requests each")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden", type=int, default=None, help="override the tiny model's hidden_size")
    p.add_argument("--intermediate", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--tag", default=time.strftime("%Y%m%d") + "-cpu")
    args = p.parse_args(argv)
    result = asyncio.run(amain(args))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"adapters-{args.tag}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
