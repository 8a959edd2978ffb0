"""The worker: base model + engine + the adapter set reconciled to the desired
document, and the status it reports.

Why reconcile in this order — load new adapters, then switch routes, then
drain and unload removed ones: while a new version loads, the old routes keep
serving; once routes switch, the old version gets no new requests and is
freed only after its last in-flight request finishes. A hot swap therefore
never fails a request and never reloads the base.

Readiness: ready once the base is loaded and the current generation has been
reconciled, every desired adapter being either loaded or refused. A refused
(e.g. corrupted) adapter is never served and is reported in ``failed`` so
the operator can act; it does not take healthy versions of the pool out of
service.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import itertools
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from loraplane.contracts.desired import ADVERTISE_URL_ENV, AdapterRef, DesiredState, WorkerStatus
from loraplane.contracts.memory import MIB
from .routing import BASE_ADAPTER, Choice, RouteError, choose

#: An adapter version's output contract stored with it in the ModelStore (a JSON schema).
OUTPUT_SCHEMA_FILE = "output_schema.json"

log = logging.getLogger(__name__)

FAULT_DELAY_ENV = "LORAPLANE_FAULT_ADAPTER_DELAY_MS"
FAULT_ERROR_ENV = "LORAPLANE_FAULT_ADAPTER_ERROR_RATE"
FAULT_STREAM_ERROR_ENV = "LORAPLANE_FAULT_ADAPTER_STREAM_ERROR_RATE"
ALLOW_LARGE_CPU_ENV = "LORAPLANE_ALLOW_LARGE_CPU_MODEL"


def parse_faults(text: str | None) -> dict[str, float]:
    """``"synth-v2=250,synth-v1=0"`` -> {"synth-v2": 250.0, ...}. Test-only knob."""
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"fault setting {part!r} is not name=value")
        out[name.strip()] = float(value)
    return out


@dataclass
class WorkerConfig:
    store_root: str | None = None
    device: str = "cpu"
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_prompt_tokens: int = 2048
    max_tokens_limit: int = 1024
    request_timeout_s: float = 120.0
    verify_full: bool = True
    variant: str | None = None  # overrides the document's base.variant (per-pod placement decision)
    vram_mib: int | None = None  # CUDA memory cap for this process
    fault_delay_ms: dict[str, float] = field(default_factory=dict)
    fault_error_rate: dict[str, float] = field(default_factory=dict)
    fault_stream_error_rate: dict[str, float] = field(default_factory=dict)  # fail streams after the first token
    fault_seed: int | None = None
    # CPU guard: a base above this many parameters is refused on the CPU (fp32 on a CPU is ~4 bytes a
    # parameter and minutes a token for a 7B) unless ``allow_large_cpu_model`` says it is meant.
    cpu_max_params: int = 1_000_000_000
    allow_large_cpu_model: bool = False
    # KV cache the running batch may hold (admission, see engine.Engine); None: batch size only.
    # The default is the WorkerPool's ``gpu.kvCacheMiB`` default, which the operator reserves.
    kv_cache_mib: int | None = 2048
    max_queue: int | None = 256  # requests waiting for admission before 429
    # adapters stacked on the device at once; the rest wait in host RAM (LRU, routes with weight > 0 pinned)
    max_loaded_adapters: int | None = None

    @classmethod
    def faults_from_env(cls, **kw) -> "WorkerConfig":
        return cls(fault_delay_ms=parse_faults(os.environ.get(FAULT_DELAY_ENV)),
                   fault_error_rate=parse_faults(os.environ.get(FAULT_ERROR_ENV)),
                   fault_stream_error_rate=parse_faults(os.environ.get(FAULT_STREAM_ERROR_ENV)), **kw)


class AdapterRefused(Exception):
    pass


class Worker:
    def __init__(self, cfg: WorkerConfig, metrics=None, reporter: Callable[[WorkerStatus], Awaitable[None]] | None = None):
        from .metrics import WorkerMetrics

        self.cfg = cfg
        self.metrics = metrics or WorkerMetrics()
        self.reporter = reporter
        self.engine = None
        self.bank = None
        self.tokenizer = None
        self.base_ref = None
        self.base_manifest = None
        self.variant: str | None = None
        self.variant_reason: str | None = None
        self.served: dict[str, AdapterRef] = {}  # loaded and routable
        self.checksums: dict[str, str] = {}
        self.contracts: dict[str, dict] = {}  # served name -> its output contract (a JSON schema), if any
        self.failed: dict[str, str] = {}
        self.applied: DesiredState | None = None
        self.routes: dict[str, list[tuple[str, int]]] = {}
        self.pending_routes: dict[str, list[tuple[str, int]]] = {}  # the routes of the document being applied
        self.reconciled = False
        self.draining = False
        self._lock = asyncio.Lock()
        self._rng = random.Random(cfg.fault_seed)
        self._route_rng = random.Random()
        self._unloads: set[asyncio.Future] = set()
        self.bank_keys: dict[str, str] = {}  # served adapter name -> key of its content in the LoRA bank
        self._key_serial = itertools.count(2)
        self.created = int(time.time())
        self.loaded_at: dict[str, int] = {}  # served name -> when its current content was loaded
        self.base_refusal: str | None = None  # a base that retrying cannot fix (e.g. too large for the CPU)
        # tokenisation and chat templates run here, off the event loop; one thread, because a fast
        # tokenizer shared between threads can fail with "Already borrowed"
        self._tok_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="loraplane-tokenize")

    # ---------------------------------------------------------------- state
    @property
    def ready(self) -> bool:
        return self.engine is not None and self.reconciled and not self.draining

    def status(self) -> WorkerStatus:
        return WorkerStatus(variant=self.variant, loaded=sorted(self.served), failed=dict(self.failed),
                            ready=self.ready, generation=self.applied.generation if self.applied else 0,
                            endpoint=os.environ.get(ADVERTISE_URL_ENV) or None)

    def base_names(self) -> list[str]:
        return [self.base_ref.name] if self.base_ref else []

    # ------------------------------------------------------------ reconcile
    async def apply(self, desired: DesiredState) -> WorkerStatus:
        async with self._lock:
            # readiness is not withdrawn during a later reconcile: the old set keeps serving meanwhile
            try:
                await self._apply(desired)
            finally:
                self.metrics.ready.set(1 if self.ready else 0)
            st = self.status()
        if self.reporter:
            try:
                await self.reporter(st)
            except Exception as e:  # noqa: BLE001 - reporting must not stop serving
                log.warning("could not report status: %s", e)
        return st

    async def _apply(self, desired: DesiredState) -> None:
        if not await self._base_ok(desired):
            self.applied = desired
            return
        wanted = {a.name: a for a in desired.adapters}
        self.pending_routes = {t: [(b.adapter, b.weight) for b in bs] for t, bs in desired.routes.items()}
        # 1. load new names and names whose content changed (a refused one is retried only when its ref changes)
        for name, ref in wanted.items():
            await self._load_adapter(name, ref)
        for name in list(self.failed):
            if name != BASE_ADAPTER and name not in wanted:
                self.failed.pop(name)
                self.metrics.forget_adapter(name)
        # 2. switch routes (atomic on the event loop: no await between these lines)
        self.applied = desired
        self.routes = {t: [(b.adapter, b.weight) for b in bs] for t, bs in desired.routes.items()}
        removed = [n for n in self.served if n not in wanted]
        for n in removed:
            self.served.pop(n)
            self.contracts.pop(n, None)
            self.checksums.pop(n, None)
            self.loaded_at.pop(n, None)
        # 3. drain and free removed versions in the background
        for n in removed:
            self._unload_later(self.bank_keys.pop(n))
            self.metrics.forget_adapter(n)
        self.reconciled = True
        self._update_adapter_gauges()

    async def _base_ok(self, desired: DesiredState) -> bool:
        """Load the base on first use; False (reported in ``failed``) when it
        cannot load or the document asks for another base than the loaded one."""
        if self.engine is None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._load_base, desired)
                self.failed.pop(BASE_ADAPTER, None)
            except Exception as e:  # noqa: BLE001
                self.failed[BASE_ADAPTER] = f"base {desired.base.name}@{desired.base.version}: {e}"
                self.metrics.base_load_failures.labels(type(e).__name__).inc()
                log.error("%s", self.failed[BASE_ADAPTER])
                return False
        elif (desired.base.owner, desired.base.name, desired.base.version, self._requested(desired)) != (
            self.base_ref.owner, self.base_ref.name, self.base_ref.version, self._requested_variant
        ):
            # Changing the base is a new worker, not a swap: report, keep serving the old set.
            self.failed[BASE_ADAPTER] = (
                f"desired base {desired.base.name}@{desired.base.version} ({self._requested(desired)}) differs from "
                f"the loaded {self.base_ref.name}@{self.base_ref.version} ({self._requested_variant}); "
                "restart the worker"
            )
            return False
        return True

    async def _load_adapter(self, name: str, ref: AdapterRef) -> None:
        """Serve ``ref`` under ``name`` unless it is already served or was refused as it is."""
        loop = asyncio.get_running_loop()
        key = f"{ref.owner}/{ref.store_name}@{ref.version}#{ref.checksum}"
        if ref.output_json_schema is not None:
            key += "~" + hashlib.sha256(json.dumps(ref.output_json_schema, sort_keys=True).encode()).hexdigest()[:12]
        if name in self.served and self.checksums.get(name) == key:
            return
        if name in self.failed and self.failed[name].startswith(key + ": "):
            return
        t0 = time.perf_counter()
        # Same name, new content: the new content is stacked under its own bank key next to the
        # old one, then the name switches to it (no await in between), and the old content is
        # freed once its in-flight requests finish. Requests never see the name missing (no 503).
        old_key = self.bank_keys.get(name)
        bank_key = name if old_key is None and name not in self.bank.adapters else f"{name}#{next(self._key_serial)}"
        try:
            lora = await loop.run_in_executor(None, self._read_adapter, ref, bank_key)
            contract = await self.run_tokenizer(self._output_contract, ref)
            pinned = self.pinned_keys() | ({bank_key} if name in self._weighted(self.pending_routes) else set())
            evicted = await asyncio.wrap_future(self.engine.call(
                lambda lora=lora: self.engine.place(lora, self.cfg.max_loaded_adapters, pinned)))
            self._count_evictions(evicted or [])
        except Exception as e:  # noqa: BLE001 - refused, reported, never served
            reason = f"{key}: {e}"
            self.failed[name] = reason
            if self.served.pop(name, None) is not None:  # the desired content is refused: stop serving the name
                self.metrics.adapter_swap_failures.labels(name).inc()
                self.checksums.pop(name, None)
                self.contracts.pop(name, None)
                self.loaded_at.pop(name, None)
                self._unload_later(self.bank_keys.pop(name))
            self.metrics.adapter_load_failures.labels(name, type(e).__name__).inc()
            log.error("adapter %s refused: %s", name, reason)
            return
        self.metrics.adapter_load.observe(time.perf_counter() - t0)
        self.failed.pop(name, None)
        self.served[name] = ref
        if contract is None:
            self.contracts.pop(name, None)
        else:
            self.contracts[name] = contract
        self.bank_keys[name] = bank_key
        self.checksums[name] = key
        self.loaded_at[name] = int(time.time())
        if old_key is not None:
            self._unload_later(old_key)

    # ------------------------------------------------ residency (maxLoadedAdapters)
    @staticmethod
    def _weighted(routes: dict[str, list[tuple[str, int]]]) -> set[str]:
        return {a for backends in routes.values() for a, wt in backends if wt > 0}

    def pinned_keys(self) -> set[str]:
        """Bank keys never evicted: versions a route (current, or of the
        document being applied) gives weight > 0."""
        names = self._weighted(self.routes) | self._weighted(self.pending_routes)
        return {self.bank_keys[n] for n in names if n in self.bank_keys}

    async def ensure_resident(self, key: str | None, deadline: float) -> None:
        """Make sure a held adapter is stacked on the device before its request
        is queued: an evicted one comes back from host RAM, least recently used
        unpinned idle ones making room. Waits (until ``deadline``) while every
        resident adapter is pinned or busy; then raises NoRoom."""
        from .engine import NoRoom

        if key is None or key in self.bank.adapters:  # read after hold(): it cannot be evicted now
            return
        t0 = time.monotonic()
        while True:
            try:
                victims = await asyncio.wrap_future(
                    self.engine.make_resident(key, self.cfg.max_loaded_adapters, self.pinned_keys()))
                if victims is None:
                    return  # a concurrent request for the same adapter restored it
                break
            except NoRoom:
                if time.monotonic() + 0.02 > deadline:
                    raise
                await asyncio.sleep(0.02)
        names = {k: n for n, k in self.bank_keys.items()}
        m = self.metrics
        m.adapter_restore.observe(time.monotonic() - t0)
        m.adapter_restores.labels(names.get(key, key)).inc()
        m.adapter_resident.labels(names.get(key, key)).set(1)
        for v in victims:  # only the series that changed: a full refresh per restore costs O(adapters)
            m.adapter_evictions.labels(names.get(v, v)).inc()
            m.adapter_resident.labels(names.get(v, v)).set(0)
        m.adapters_loaded.set(len(self.bank.adapters))
        m.adapter_bytes.set(self.bank.nbytes)

    def _count_evictions(self, keys: list[str]) -> None:
        names = {k: n for n, k in self.bank_keys.items()}
        for k in keys:
            self.metrics.adapter_evictions.labels(names.get(k, k)).inc()

    def adapter_states(self) -> dict[str, dict]:
        """Per served adapter: resident on the device or evicted to host RAM, and requests in flight."""
        out, resident = {}, set(list(self.bank.adapters))  # one atomic copy: the engine thread restacks
        for name in sorted(self.served):
            key = self.bank_keys.get(name, name)
            out[name] = {"state": "loaded" if key in resident else "evicted",
                         "inFlight": self.engine.in_use(key)}
        return out

    def bank_key(self, adapter: str) -> str | None:
        """The engine's key for a served adapter's current content (None: the base)."""
        return None if adapter == BASE_ADAPTER else self.bank_keys.get(adapter, adapter)

    def _unload_later(self, bank_key: str) -> None:
        fut = asyncio.wrap_future(self.engine.unload_when_idle(bank_key))
        self._unloads.add(fut)
        fut.add_done_callback(self._unloaded)

    def _unloaded(self, fut) -> None:
        self._unloads.discard(fut)
        self._update_adapter_gauges()

    def _update_adapter_gauges(self) -> None:
        if self.bank is not None:
            keys = set(list(self.bank.adapters))  # one atomic copy: the engine thread restacks meanwhile
            self.metrics.adapters_loaded.set(len(keys))
            self.metrics.adapter_bytes.set(self.bank.nbytes)
            for name in self.served:
                resident = self.bank_keys.get(name, name) in keys
                self.metrics.adapter_resident.labels(name).set(1 if resident else 0)

    def _load_base(self, desired: DesiredState) -> None:
        import torch

        from loraplane.modelstore import verify_dir

        from .engine import Engine
        from .loader import bnb_problem, compute_dtype, count_parameters, load_base, open_model_store, plan_variant
        from .lora import LoraBank

        t0 = time.perf_counter()
        ref = desired.base
        self.base_refusal = None
        store = open_model_store(self.cfg.store_root)
        sv = store.resolve(ref.owner, "base", ref.name, ref.version)
        if ref.checksum and sv.manifest.checksum != ref.checksum:
            raise AdapterRefused(f"store checksum {sv.manifest.checksum[:12]} != desired {ref.checksum[:12]}")
        device = torch.device(self.cfg.device)
        if device.type == "cpu" and not self.cfg.allow_large_cpu_model:
            params = count_parameters(sv.path)
            if params > self.cfg.cpu_max_params:
                self.base_refusal = (
                    f"refusing to load {ref.name}@{ref.version} ({params / 1e9:.1f}B parameters) on the CPU: no GPU "
                    f"is in use (device {self.cfg.device}) and bases above {self.cfg.cpu_max_params / 1e9:g}B "
                    f"parameters are not served on a CPU unless asked for (--allow-large-cpu-model or "
                    f"{ALLOW_LARGE_CPU_ENV}=1)")
                raise AdapterRefused(self.base_refusal)
        # an S3 version comes from the node cache, sha256-verified when it entered it: sizes suffice
        report = verify_dir(sv.path, full=self.cfg.verify_full and not getattr(store, "verifies_content", False))
        if not report.ok:
            raise AdapterRefused(f"verification failed: {report.summary()}")
        requested = self._requested(desired)
        if device.type == "cuda" and self.cfg.vram_mib:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, self.cfg.vram_mib * 2**20 / total), device)
        plan = plan_variant(requested, device.type, bnb_problem() if requested.startswith("bnb") else None)
        if plan.reason:
            log.warning("variant: %s", plan.reason)
        model, tokenizer = load_base(sv.path, plan.variant, str(device))
        bank = LoraBank(model, compute_dtype(plan.variant), device)
        kv = self.cfg.kv_cache_mib * MIB if self.cfg.kv_cache_mib is not None else None
        self.engine = Engine(model, tokenizer, bank, device, max_batch_size=self.cfg.max_batch_size,
                             max_wait_ms=self.cfg.max_wait_ms, observer=self.metrics, kv_budget_bytes=kv,
                             max_queue=self.cfg.max_queue)
        if self.engine.kv_budget_tokens is not None:
            self.metrics.kv_budget_tokens.set(self.engine.kv_budget_tokens)
        self.bank, self.tokenizer, self.base_ref, self.base_manifest = bank, tokenizer, ref, sv.manifest
        self.variant, self.variant_reason = plan.variant, plan.reason
        self._requested_variant = requested
        self.metrics.base_load.set(time.perf_counter() - t0)

    def _requested(self, desired: DesiredState) -> str:
        return self.cfg.variant or desired.base.variant

    def _read_adapter(self, ref: AdapterRef, bank_key: str | None = None):
        from loraplane.modelstore import verify_dir

        from .loader import open_model_store

        store = open_model_store(self.cfg.store_root)
        sv = store.resolve(ref.owner, "adapter", ref.store_name, ref.version)
        if ref.checksum and sv.manifest.checksum != ref.checksum:
            raise AdapterRefused(f"store checksum {sv.manifest.checksum[:12]} != desired {ref.checksum[:12]}")
        report = verify_dir(sv.path, full=not getattr(store, "verifies_content", False))
        if not report.ok:
            raise AdapterRefused(f"verification failed: {report.summary()}")
        info = sv.manifest.adapter
        if info is not None and info.base_checksum and self.base_manifest is not None \
                and info.base_checksum != self.base_manifest.checksum:
            raise AdapterRefused(f"trained on base {info.base_name}@{info.base_version}, not the loaded base")
        return self.bank.read(bank_key or ref.name, sv.path)

    def _output_contract(self, ref: AdapterRef) -> dict | None:
        """Tokenizer thread: the version's output contract (the desired state's,
        else ``output_schema.json`` stored with the version), compiled once for
        this tokenizer so a contract that cannot be enforced refuses the version."""
        from . import grammar
        from .loader import open_model_store

        schema = ref.output_json_schema
        if schema is None:
            sv = open_model_store(self.cfg.store_root).resolve(ref.owner, "adapter", ref.store_name, ref.version)
            f = Path(sv.path) / OUTPUT_SCHEMA_FILE
            if not f.is_file():
                return None
            try:
                schema = json.loads(f.read_text())
            except ValueError as e:
                raise AdapterRefused(f"output contract {OUTPUT_SCHEMA_FILE} is not JSON: {e}") from None
        if not isinstance(schema, dict):
            raise AdapterRefused("output contract must be a JSON schema object")
        try:
            grammar.compile_matcher(grammar.Constraint("output", json_schema=schema), self.tokenizer,
                                    getattr(self.engine.model.config, "vocab_size", None) or len(self.tokenizer),
                                    self.engine.eos_ids)
        except grammar.GrammarRequestError as e:
            raise AdapterRefused(f"output contract cannot be enforced: {e.message}") from None
        return schema

    # -------------------------------------------------------------- routing
    def route(self, model: str, key: str | None = None) -> Choice:
        if self.draining:
            raise RouteError(503, "worker is draining (shutting down)", "worker_draining")
        if not self.ready:
            raise RouteError(503, self.base_refusal or "worker is not ready: base or desired adapters still loading",
                             "worker_not_ready")
        tasks = {n: a.task for n, a in self.served.items()}
        if self.applied:
            tasks = {a.name: a.task for a in self.applied.adapters} | tasks
        return choose(model, routes=self.routes, adapter_tasks=tasks, loaded=self.served,
                      base_names=self.base_names(), rand=self._route_rng.random(), key=key)

    def fault_for(self, adapter: str) -> tuple[float, bool]:
        """(extra delay seconds, inject an error?) for a request served by ``adapter``."""
        delay = self.cfg.fault_delay_ms.get(adapter, 0.0) / 1000.0
        rate = self.cfg.fault_error_rate.get(adapter, 0.0)
        return delay, (rate > 0 and self._rng.random() < rate)

    def stream_fault_for(self, adapter: str) -> bool:
        """Fail this streamed response of ``adapter`` after its first token? (test-only)"""
        rate = self.cfg.fault_stream_error_rate.get(adapter, 0.0)
        return rate > 0 and self._rng.random() < rate

    async def drain(self, timeout: float) -> bool:
        """Stop taking requests; wait for in-flight ones. True when all finished."""
        self.draining = True
        self.metrics.ready.set(0)
        deadline = time.monotonic() + timeout
        while self.engine is not None and self.engine.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.engine is None or not self.engine.busy

    async def run_tokenizer(self, fn: Callable, *args):
        """Run ``fn(*args)`` (tokenisation, chat template) on the tokenizer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._tok_pool, fn, *args)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        self._tok_pool.shutdown(wait=False)
