"""The worker on CUDA in each variant: the base loads in the variant asked for
(or reports its fallback), two adapters serve different text in one batch,
and GPU memory shows in the metrics."""

from __future__ import annotations

import asyncio

import pytest
import torch

from loraplane.contracts.desired import DesiredState

PROMPT = "tell me about the cat and the dog"


def desired() -> DesiredState:
    return DesiredState.model_validate({
        "pool": "gpu", "generation": 1,
        "base": {"name": "tiny", "version": "v1", "variant": "fp16"},
        "adapters": [{"name": f"synth-v{i}", "storeName": "synth", "version": f"v{i}", "task": "synthesizer"}
                     for i in (1, 2)],
        "routes": {"synthesizer": [{"adapter": "synth-v1", "weight": 50}, {"adapter": "synth-v2", "weight": 50}]},
    })


async def serve_both(store_root, variant):
    from aiohttp.test_utils import TestClient, TestServer

    from loraplane.worker.runtime import Worker, WorkerConfig
    from loraplane.worker.server import create_app

    worker = Worker(WorkerConfig(store_root=str(store_root), device="cuda", variant=variant))
    await worker.apply(desired())
    client = TestClient(TestServer(create_app(worker)))
    await client.start_server()
    try:
        async def complete(model):
            r = await client.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 8,
                                                           "temperature": 0})
            return r.status, await r.json()

        results = await asyncio.gather(complete("synth-v1"), complete("synth-v2"))
        metrics = await (await client.get("/metrics")).text()
        return worker.status(), results, metrics
    finally:
        await client.close()
        worker.close()


@pytest.mark.parametrize("variant", ["fp16", "bnb-int8", "bnb-4bit"])
def test_variant_serves_two_adapters_on_cuda(gpu_store, variant):
    if variant.startswith("bnb"):
        pytest.importorskip("bitsandbytes")
    status, results, metrics = asyncio.run(serve_both(gpu_store, variant))
    assert status.variant == variant, f"fell back: {status}"
    (s1, b1), (s2, b2) = results
    assert s1 == s2 == 200
    assert b1["adapter"] == "synth-v1" and b2["adapter"] == "synth-v2"
    assert b1["choices"][0]["text"] != b2["choices"][0]["text"]
    assert "loraplane_worker_gpu_memory_bytes" in metrics
    assert torch.cuda.max_memory_allocated() > 0
