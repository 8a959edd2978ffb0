"""The generation engine: one thread that owns the model and runs a
step-level (continuous) batching loop.

Why this shape:
* Every torch call happens on the engine thread, so loading/unloading an
  adapter (which rewrites the stacked LoRA tensors) can never race a forward
  pass: control work runs *between* steps, and hot swap stalls decoding for
  one rebuild only, never drops a request.
* Continuous batching: requests join the running batch as soon as they
  arrive (their prompts are prefilled together, then their KV caches are
  merged into the batch's, left-padded) and leave it the step they finish,
  so a short request never waits for a long one to complete. The only wait
  is ``max_wait_ms`` when the engine is idle, to let a burst gather into one
  prefill.
* Each batch row carries its own adapter; ``LoraBank.set_batch`` tells the
  batched-LoRA layers which, so a batch mixes adapters in one pass.
* An adapter is unloaded only when no queued or running request uses it
  (reference counts), so a swap never fails an in-flight request.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import DynamicCache

from .lora import LoraBank
from .sampling import find_stop, safe_emit_length, sample

log = logging.getLogger(__name__)

_ids = itertools.count(1)


@dataclass
class GenRequest:
    """One generation. ``sink(kind, payload)`` is called from the engine thread."""

    prompt_ids: list[int]
    adapter: str | None  # None = base model only
    max_tokens: int
    sink: Callable[[str, dict], None]
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # benchmarks: always generate max_tokens
    id: int = field(default_factory=lambda: next(_ids))
    enqueued: float = field(default_factory=time.monotonic)
    generated: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of text already sent
    cancelled: bool = False
    first_token_at: float | None = None


class StepObserver:
    """Hooks for metrics; the default does nothing."""

    def batch(self, size: int, kind: str) -> None: ...
    def first_token(self, req: GenRequest, seconds: float) -> None: ...
    def tokens(self, req: GenRequest, n: int) -> None: ...
    def oom(self) -> None: ...
    def queue_depth(self, n: int) -> None: ...


class Engine:
    def __init__(
        self,
        model,
        tokenizer,
        bank: LoraBank,
        device,
        *,
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        observer: StepObserver | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.bank = bank
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.obs = observer or StepObserver()
        self.eos_ids = self._eos_ids()
        self._cv = threading.Condition()
        self._waiting: collections.deque[GenRequest] = collections.deque()
        self._control: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = collections.deque()
        self._refs: collections.Counter[str] = collections.Counter()
        self._pending_unload: dict[str, concurrent.futures.Future] = {}
        self._stop = False
        self._rows: list[GenRequest] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [B, L] 1 = real token
        self._next: torch.Tensor | None = None  # [B] token to feed next step
        self._thread = threading.Thread(target=self._loop, name="loraplane-engine", daemon=True)
        self._thread.start()

    def _eos_ids(self) -> set[int]:
        ids = set()
        eos = getattr(self.model.generation_config, "eos_token_id", None) or self.tokenizer.eos_token_id
        for e in eos if isinstance(eos, (list, tuple)) else [eos]:
            if e is not None:
                ids.add(int(e))
        return ids

    # ------------------------------------------------------------ public API
    def submit(self, req: GenRequest) -> None:
        with self._cv:
            if self._stop:
                raise RuntimeError("engine is stopped")
            if req.adapter is not None:
                self._refs[req.adapter] += 1
            self._waiting.append(req)
            self.obs.queue_depth(len(self._waiting))
            self._cv.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn`` on the engine thread between steps."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            self._control.append((fn, fut))
            self._cv.notify()
        return fut

    def unload_when_idle(self, name: str) -> concurrent.futures.Future:
        """Remove adapter ``name`` once no queued or running request uses it."""
        with self._cv:
            fut = self._pending_unload.get(name)
            if fut is None:
                fut = self._pending_unload[name] = concurrent.futures.Future()
            self._cv.notify()
        return fut

    def in_use(self, name: str) -> int:
        with self._cv:
            return self._refs[name]

    @property
    def busy(self) -> int:
        with self._cv:
            return len(self._waiting) + len(self._rows)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._stop or self._waiting or self._control or self._rows or self._due_unloads()):
                    self._cv.wait(0.5)
                if self._stop:
                    break
                control = list(self._control)
                self._control.clear()
            for fn, fut in control:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as e:  # noqa: BLE001 - handed to the caller
                        fut.set_exception(e)
            self._run_unloads()
            try:
                self._admit()
                if self._rows:
                    self._decode()
            except torch.cuda.OutOfMemoryError as e:
                self.obs.oom()
                self._fail_all(f"out of GPU memory: {e}")
                torch.cuda.empty_cache()
            except Exception as e:  # noqa: BLE001 - fail the batch, keep serving
                log.exception("engine step failed")
                self._fail_all(f"generation failed: {type(e).__name__}: {e}")
        self._fail_all("worker is shutting down")
        with self._cv:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for r in waiting:
            self._finish(r, "error", error="worker is shutting down")

    def _due_unloads(self) -> bool:
        return any(self._refs[n] == 0 for n in self._pending_unload)

    def _run_unloads(self) -> None:
        with self._cv:
            due = [n for n in self._pending_unload if self._refs[n] == 0]
            futs = [self._pending_unload.pop(n) for n in due]
        for name, fut in zip(due, futs):
            try:
                self.bank.remove(name)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                fut.set_result(True)
            except BaseException as e:  # noqa: BLE001
                fut.set_exception(e)

    # ------------------------------------------------------------ admission
    def _admit(self) -> None:
        room = self.max_batch_size - len(self._rows)
        if room <= 0:
            return
        with self._cv:
            if not self._waiting:
                return
            if not self._rows and len(self._waiting) < room and self.max_wait > 0:
                deadline = self._waiting[0].enqueued + self.max_wait
                while len(self._waiting) < room and not self._stop:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            new = []
            while self._waiting and len(new) < room:
                r = self._waiting.popleft()
                if r.cancelled:
                    self._release(r)
                    r.sink("done", {"finish_reason": "cancelled", "completion_tokens": 0})
                    continue
                new.append(r)
            self.obs.queue_depth(len(self._waiting))
        if new:
            self._prefill(new)

    def _prefill(self, new: list[GenRequest]) -> None:
        n = len(new)
        L = max(len(r.prompt_ids) for r in new)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((n, L), pad, dtype=torch.long)
        mask = torch.zeros((n, L), dtype=torch.long)
        for i, r in enumerate(new):
            p = r.prompt_ids
            ids[i, L - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, L - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        self.bank.set_batch([r.adapter for r in new])
        self.obs.batch(n, "prefill")
        cache = DynamicCache()
        with torch.inference_mode():
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=pos,
                past_key_values=cache, use_cache=True, logits_to_keep=1,
            )
        toks = self._sample(out.logits[:, -1, :], new)
        now = time.monotonic()
        for r in new:
            r.first_token_at = now
            self.obs.first_token(r, now - r.enqueued)
        keep = self._after_tokens(new, toks)
        if not keep:
            return
        idx = torch.tensor(keep, device=self.device)
        cache = _select(cache, idx)
        mask = mask.index_select(0, idx)
        nxt = toks.index_select(0, idx)
        rows = [new[i] for i in keep]
        if not self._rows:
            self._rows, self._cache, self._mask, self._next = rows, cache, mask, nxt
        else:
            self._cache, self._mask = _merge(self._cache, self._mask, cache, mask)
            self._next = torch.cat([self._next, nxt])
            self._rows = self._rows + rows

    # ------------------------------------------------------------ decoding
    def _decode(self) -> None:
        B = len(self._rows)
        self.bank.set_batch([r.adapter for r in self._rows])
        self.obs.batch(B, "decode")
        ones = torch.ones((B, 1), dtype=self._mask.dtype, device=self.device)
        pos = self._mask.sum(-1, keepdim=True)
        self._mask = torch.cat([self._mask, ones], dim=1)
        with torch.inference_mode():
            out = self.model(
                input_ids=self._next[:, None], attention_mask=self._mask, position_ids=pos,
                past_key_values=self._cache, use_cache=True,
            )
        toks = self._sample(out.logits[:, -1, :], self._rows)
        keep = self._after_tokens(self._rows, toks)
        if len(keep) == B:
            self._next = toks
            return
        if not keep:
            self._rows, self._cache, self._mask, self._next = [], None, None, None
            return
        idx = torch.tensor(keep, device=self.device)
        self._cache = _select(self._cache, idx)
        self._mask = self._mask.index_select(0, idx)
        self._next = toks.index_select(0, idx)
        self._rows = [self._rows[i] for i in keep]
        # drop leading columns that are padding in every remaining row
        first_real = int(self._mask.any(0).nonzero()[0])
        if first_real > 0:
            self._mask = self._mask[:, first_real:]
            self._cache = _trim_left(self._cache, first_real)

    def _sample(self, logits: torch.Tensor, rows: list[GenRequest]) -> torch.Tensor:
        temps = torch.tensor([r.temperature for r in rows], dtype=torch.float32, device=logits.device)
        top_p = torch.tensor([r.top_p for r in rows], dtype=torch.float32, device=logits.device)
        return sample(logits, temps, top_p)

    def _after_tokens(self, rows: list[GenRequest], toks: torch.Tensor) -> list[int]:
        """Record one new token per row; emit text; return the rows that continue."""
        keep = []
        for i, (r, t) in enumerate(zip(rows, toks.tolist())):
            if r.cancelled:
                self._finish(r, "cancelled")
                continue
            reason = None
            if t in self.eos_ids and not r.ignore_eos:
                reason = "stop"
            else:
                r.generated.append(t)
                self.obs.tokens(r, 1)
                if len(r.generated) >= r.max_tokens:
                    reason = "length"
            text = self.tokenizer.decode(r.generated, skip_special_tokens=True)
            cut = find_stop(text, r.stop) if r.stop else None
            if cut is not None:
                text, reason = text[:cut], "stop"
            upto = len(text) if reason else safe_emit_length(text, r.stop)
            if upto > r.emitted:
                r.sink("token", {"text": text[r.emitted:upto]})
                r.emitted = upto
            if reason:
                self._finish(r, reason)
            else:
                keep.append(i)
        return keep

    def _finish(self, r: GenRequest, reason: str, error: str | None = None) -> None:
        self._release(r)
        payload = {"finish_reason": reason, "completion_tokens": len(r.generated),
                   "prompt_tokens": len(r.prompt_ids)}
        if error:
            r.sink("error", {"message": error, **payload})
        else:
            r.sink("done", payload)

    def _release(self, r: GenRequest) -> None:
        if r.adapter is not None:
            with self._cv:
                self._refs[r.adapter] -= 1

    def _fail_all(self, message: str) -> None:
        rows, self._rows = self._rows, []
        self._cache = self._mask = self._next = None
        for r in rows:
            self._finish(r, "error", error=message)


# ---------------------------------------------------------------- KV helpers
def _layers(cache: DynamicCache):
    return [(layer.keys, layer.values) for layer in cache.layers]


def _select(cache: DynamicCache, idx: torch.Tensor) -> DynamicCache:
    return DynamicCache(ddp_cache_data=[(k.index_select(0, idx), v.index_select(0, idx)) for k, v in _layers(cache)])


def _trim_left(cache: DynamicCache, n: int) -> DynamicCache:
    return DynamicCache(ddp_cache_data=[(k[:, :, n:].contiguous(), v[:, :, n:].contiguous()) for k, v in _layers(cache)])


def _left_pad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)


def _merge(cache_a, mask_a, cache_b, mask_b):
    """Stack two batches whose caches have different lengths (left padding)."""
    La, Lb = mask_a.shape[1], mask_b.shape[1]
    L = max(La, Lb)
    layers = []
    for (ka, va), (kb, vb) in zip(_layers(cache_a), _layers(cache_b)):
        k = torch.cat([_left_pad(ka, L - La, 2), _left_pad(kb, L - Lb, 2)], dim=0)
        v = torch.cat([_left_pad(va, L - La, 2), _left_pad(vb, L - Lb, 2)], dim=0)
        layers.append((k, v))
    mask = torch.cat([_left_pad(mask_a, L - La, 1), _left_pad(mask_b, L - Lb, 1)], dim=0)
    return DynamicCache(ddp_cache_data=layers), mask
