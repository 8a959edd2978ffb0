"""``loraplane worker``: run an inference worker.

The desired document comes from ``--desired-file`` (polled) or the
ConfigMap named by ``LORAPLANE_DESIRED_CONFIGMAP`` (watched). SIGTERM
drains: /readyz turns 503 at once (the Service stops sending), new requests
get 503, in-flight ones finish (up to ``--drain-timeout``), then the process
exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from typing import get_args

from loraplane.contracts.desired import DESIRED_CONFIGMAP_ENV, Variant


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store-root", default=os.environ.get("MODEL_STORE_ROOT"), help="ModelStore root (env MODEL_STORE_ROOT)")
    p.add_argument("--desired-file", default=os.environ.get("LORAPLANE_DESIRED_FILE"),
                   help=f"desired-state JSON file, polled by mtime (else env {DESIRED_CONFIGMAP_ENV}=<ns>/<name>)")
    p.add_argument("--host", default=os.environ.get("LORAPLANE_HOST", "0.0.0.0"))
    p.add_argument("--port", type=int, default=int(os.environ.get("LORAPLANE_PORT", "8000")), help="(env LORAPLANE_PORT)")
    p.add_argument("--variant", default=os.environ.get("LORAPLANE_VARIANT") or None, choices=get_args(Variant),
                   help="override the document's base variant for this worker (env LORAPLANE_VARIANT, set by the "
                        "operator from the pod's VRAM reservation)")
    p.add_argument("--vram-mib", type=int, default=int(os.environ.get("LORAPLANE_VRAM_MIB", "0")) or None,
                   help="CUDA memory this worker may use (env LORAPLANE_VRAM_MIB): enforced with "
                        "torch.cuda.set_per_process_memory_fraction so a worker OOMs inside its reservation "
                        "instead of starving a neighbour on a shared GPU")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long an idle engine waits to gather a batch")
    p.add_argument("--max-prompt-tokens", type=int, default=2048)
    p.add_argument("--max-tokens-limit", type=int, default=1024)
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds")
    p.add_argument("--drain-timeout", type=float, default=25.0, help="seconds to finish in-flight requests on SIGTERM (keep below the Pod's "
                        "terminationGracePeriodSeconds, 30 by default)")
    p.add_argument("--quick-verify-base", action="store_true", help="verify base files by size only (not sha256)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("LORAPLANE_THREADS", "0")) or None,
                   help="torch intra-op CPU threads (env LORAPLANE_THREADS; default: torch's choice; set to the CPU "
                        "limit of the Pod)")
    p.add_argument("--allow-large-cpu-model", action="store_true",
                   default=os.environ.get("LORAPLANE_ALLOW_LARGE_CPU_MODEL", "").lower() in ("1", "true", "yes"),
                   help="serve a base above 1B parameters on the CPU (env LORAPLANE_ALLOW_LARGE_CPU_MODEL=1); "
                        "without it such a base is refused with a clear error instead of loading in fp32 on the CPU")
    p.add_argument("--kv-cache-mib", type=int, default=int(os.environ.get("LORAPLANE_KV_CACHE_MIB", "2048")),
                   help="KV cache the running batch may hold (env LORAPLANE_KV_CACHE_MIB; the pool's gpu.kvCacheMiB); "
                        "requests beyond it wait; 0: no budget, the batch size alone bounds it")
    p.add_argument("--max-queue", type=int, default=int(os.environ.get("LORAPLANE_MAX_QUEUE", "256")),
                   help="requests that may wait for admission; beyond, 429 with Retry-After (env LORAPLANE_MAX_QUEUE)")
    p.add_argument("--max-loaded-adapters", type=int,
                   default=int(os.environ.get("LORAPLANE_MAX_LOADED_ADAPTERS", "0")) or None,
                   help="adapters stacked on the device at once, the rest in host RAM, least recently used evicted; "
                        "routes with weight > 0 are pinned (env LORAPLANE_MAX_LOADED_ADAPTERS; default: no cap)")
    p.add_argument("--log-level", default="INFO")


async def _main(args) -> int:
    from aiohttp import web

    from .runtime import Worker, WorkerConfig
    from .server import create_app
    from .sources import ConfigMapSource, FileSource, PodReporter

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = WorkerConfig.faults_from_env(
        store_root=args.store_root, device=device, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
        max_prompt_tokens=args.max_prompt_tokens, max_tokens_limit=args.max_tokens_limit,
        request_timeout_s=args.request_timeout, verify_full=not args.quick_verify_base,
        variant=args.variant, vram_mib=args.vram_mib, allow_large_cpu_model=args.allow_large_cpu_model,
        kv_cache_mib=args.kv_cache_mib or None, max_queue=args.max_queue,
        max_loaded_adapters=args.max_loaded_adapters,
    )
    if cfg.fault_delay_ms or cfg.fault_error_rate or cfg.fault_stream_error_rate:
        logging.warning("TEST FAULTS ENABLED: delay=%s error_rate=%s stream_error_rate=%s", cfg.fault_delay_ms,
                        cfg.fault_error_rate, cfg.fault_stream_error_rate)
    worker = Worker(cfg, reporter=PodReporter())
    runner = web.AppRunner(create_app(worker), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    logging.info("worker listening on %s:%s (device %s)", args.host, args.port, device)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = []
    cm_ref = os.environ.get(DESIRED_CONFIGMAP_ENV)
    if args.desired_file:
        tasks.append(asyncio.create_task(FileSource(args.desired_file, worker.apply).run()))
    elif cm_ref:
        ConfigMapSource(cm_ref, worker.apply, loop).start()
    else:
        logging.error("no desired state: pass --desired-file or set %s", DESIRED_CONFIGMAP_ENV)
        await runner.cleanup()
        return 2
    tasks.append(asyncio.create_task(_retry_base(worker)))
    await stop.wait()
    logging.info("draining (up to %.0fs)", args.drain_timeout)
    clean = await worker.drain(args.drain_timeout)
    await worker.reporter(worker.status())
    for t in tasks:
        t.cancel()
    await runner.cleanup()
    worker.close()
    logging.info("stopped (%s)", "drained" if clean else "drain timed out")
    return 0 if clean else 1


async def _retry_base(worker, every_s: float = 15.0) -> None:
    """A base that failed to load (store not mounted yet, transient I/O) is retried
    without waiting for the next document change."""
    while True:
        await asyncio.sleep(every_s)
        if worker.engine is None and worker.applied is not None and not worker.draining and not worker.base_refusal:
            logging.info("retrying the base model load")
            await worker.apply(worker.applied)


def run(args) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_main(args))
