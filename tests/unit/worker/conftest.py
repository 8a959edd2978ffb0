"""Worker fixtures: a ModelStore holding the tiny base and real adapters, and
a helper that runs a worker behind aiohttp's in-process test client."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from loraplane.contracts.desired import DesiredState


@pytest.fixture(scope="session")
def worker_store(tiny_base_dir, make_tiny_adapter, tmp_path_factory) -> Path:
    from loraplane.modelstore import ModelStore

    root = tmp_path_factory.mktemp("worker-store")
    store = ModelStore(root)
    store.publish(tiny_base_dir, kind="base", name="tiny", version="v1")
    for name, seed in (("synth", 1), ("synth", 2), ("critic", 3)):
        version = f"v{seed}" if name == "synth" else "v1"
        store.publish(make_tiny_adapter(seed=seed), kind="adapter", name=name, version=version,
                      base_name="tiny", task=name)
    # a corrupted copy: published fine, then a byte flipped on disk
    store.publish(make_tiny_adapter(seed=4), kind="adapter", name="broken", version="v1", base_name="tiny", task="synthesizer")
    f = store.resolve("default", "adapter", "broken", "v1").path / "adapter_model.safetensors"
    f.chmod(0o644)
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    return root


def desired(routes: dict, adapters: list[tuple[str, str, str, str]] | None = None, generation: int = 1) -> DesiredState:
    """adapters: (served name, store name, version, task)."""
    adapters = adapters if adapters is not None else [
        ("synth-v1", "synth", "v1", "synthesizer"), ("synth-v2", "synth", "v2", "synthesizer"),
        ("critic-v1", "critic", "v1", "critic")]
    return DesiredState.model_validate({
        "pool": "p", "generation": generation,
        "base": {"name": "tiny", "version": "v1", "variant": "fp32"},
        "adapters": [{"name": n, "storeName": s, "version": v, "task": t} for n, s, v, t in adapters],
        "routes": {t: [{"adapter": a, "weight": w} for a, w in bs] for t, bs in routes.items()},
    })


@contextlib.asynccontextmanager
async def running_worker(store_root, doc: DesiredState | None, **cfg):
    from aiohttp.test_utils import TestClient, TestServer

    from loraplane.worker.runtime import Worker, WorkerConfig
    from loraplane.worker.server import create_app

    from aiohttp.web import AppRunner

    class ProductionTestServer(TestServer):
        """aiohttp's TestServer cancels a handler when its client disconnects;
        ``loraplane worker`` (a plain AppRunner) does not. Test what runs."""

        async def _make_runner(self, **kwargs):
            kwargs["handler_cancellation"] = False
            return AppRunner(self.app, **kwargs)

    w = Worker(WorkerConfig(store_root=str(store_root), **cfg))
    if doc is not None:
        await w.apply(doc)
    client = TestClient(ProductionTestServer(create_app(w)))
    await client.start_server()
    try:
        yield w, client
    finally:
        await client.close()
        w.close()


@pytest.fixture
def run():
    def _run(coro):
        return asyncio.run(coro)
    return _run


def words_only(tok) -> dict[str, int]:
    """A ``logit_bias`` that keeps the random-weight tiny model to real words.
    Its logits span 512 ids but its word-level tokenizer has about 150: the
    other ids (and the special tokens) decode to nothing, so a free completion
    can be empty. With these banned every generated token is a word."""
    from loraplane.tiny_model import TINY_CONFIG

    banned = set(range(len(tok), TINY_CONFIG["vocab_size"])) | set(tok.all_special_ids)
    return {str(i): -100 for i in sorted(banned)}


@pytest.fixture
def helpers():
    """The helpers above as a fixture (importlib mode cannot import conftest)."""
    class H:
        pass
    h = H()
    h.desired = desired
    h.running_worker = running_worker
    h.words_only = words_only
    return h


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core box: 2 intra-op threads spin against other
    processes and run ~30x slower; one thread is stable. Restored afterwards."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
