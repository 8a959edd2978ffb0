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
* A failure (any exception, CUDA OOM included) in prefill or merge fails
  exactly the joining requests; in decode, the running batch (its KV cache
  is half-written). Every request gets its final event and gives its
  adapter reference back exactly once, and the loop goes on, so a failure
  can never leave an unload or a swap waiting forever. ``Engine.fault``
  (env ``LORAPLANE_FAULT_PHASE``) raises in a chosen phase, for tests.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import DynamicCache

from loraplane.contracts.memory import ModelShape, kv_bytes_per_token, kv_tokens_held

from .lora import LoraBank
from .sampling import find_stop, safe_emit_length, sample

log = logging.getLogger(__name__)

_ids = itertools.count(1)

FAULT_PHASE_ENV = "LORAPLANE_FAULT_PHASE"
PHASES = ("prefill", "merge", "decode")


class InjectedFault(RuntimeError):
    """Raised by the test-only fault hook (never in normal operation)."""


class Overloaded(RuntimeError):
    """The wait queue is full (the KV budget or the batch is taken): the
    server answers 429 with ``Retry-After``."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class NoRoom(RuntimeError):
    """Every resident adapter is pinned or in use: none can be evicted now."""


class TooLargeForBudget(ValueError):
    """This request alone needs more KV cache than the worker's whole budget."""


@dataclass
class Fault:
    """Test-only: raise in ``phase`` (prefill, merge or decode) ``times`` times
    (None: every time); ``oom`` raises ``torch.cuda.OutOfMemoryError``."""

    phase: str
    times: int | None = 1
    oom: bool = False

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"fault phase {self.phase!r} is not one of {PHASES}")


def parse_fault(text: str | None) -> Fault | None:
    """``"decode"`` (every step), ``"prefill:2"`` (twice), ``"merge:oom:1"``."""
    if not text or not text.strip():
        return None
    phase, *rest = [p.strip() for p in text.strip().split(":")]
    fault = Fault(phase, times=None)
    for part in rest:
        if part == "oom":
            fault.oom = True
        elif part.isdigit():
            fault.times = int(part)
        else:
            raise ValueError(f"fault setting {text!r}: {part!r} is neither 'oom' nor a count")
    return fault


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
    seed: int | None = None  # own random stream: same seed + same request -> same sample draws
    logprobs: int | None = None  # None: off; k >= 0: the chosen token's logprob and the top k alternatives
    logit_bias: dict[int, float] | None = None  # token id -> added to the logit before sampling
    grammar: Any = None  # an llguidance.LLMatcher (grammar.py): this row's tokens are constrained by it
    label: str | None = None  # adapter name for metrics (``adapter`` may be an internal bank key)
    task: str = "-"  # the task the request was routed for (metrics label)
    id: int = field(default_factory=lambda: next(_ids))
    enqueued: float = field(default_factory=time.monotonic)
    generated: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of text already sent
    cancelled: bool = False
    finished: bool = False  # the final event was sent and the adapter reference released
    first_token_at: float | None = None
    offsets: list[int] = field(default_factory=list)  # text length before each generated token
    text_len: int = 0  # length of the decoded completion so far
    lp: list[dict] = field(default_factory=list)  # logprob entries (when ``logprobs`` is set)
    lp_sent: int = 0
    generator: torch.Generator | None = None
    grammar_error: str | None = None

    @property
    def metric_label(self) -> str:
        return self.label or self.adapter or "__base__"


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
        kv_budget_bytes: int | None = None,
        max_queue: int | None = None,
    ):
        """``kv_budget_bytes``: the KV cache the running batch may ever hold
        (None: bounded by ``max_batch_size`` only); ``max_queue``: requests
        that may wait for admission before ``submit`` refuses (None: no limit)."""
        self.model = model
        self.tokenizer = tokenizer
        self.bank = bank
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.obs = observer or StepObserver()
        self.eos_ids = self._eos_ids()
        self.kv_per_token = kv_bytes_per_token(ModelShape.from_config(model.config.to_dict()),
                                               torch.tensor([], dtype=bank.dtype).element_size())
        self.kv_budget_tokens = None if kv_budget_bytes is None else kv_budget_bytes // self.kv_per_token
        self.max_queue = max_queue
        self._cv = threading.Condition()
        self._waiting: collections.deque[GenRequest] = collections.deque()
        self._control: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = collections.deque()
        self._refs: collections.Counter[str] = collections.Counter()
        self.last_used: dict[str, float] = {}  # adapter key -> when a request for it was last queued (LRU)
        self._pending_unload: dict[str, concurrent.futures.Future] = {}
        self._stop = False
        self._rows: list[GenRequest] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [B, L] 1 = real token
        self._next: torch.Tensor | None = None  # [B] token to feed next step
        self._tok_text: dict[int, str] = {}  # token id -> its text alone (top_logprobs alternatives)
        self.fault: Fault | None = parse_fault(os.environ.get(FAULT_PHASE_ENV))
        if self.fault:
            log.warning("TEST FAULT ENABLED: %s", self.fault)
        self._thread = threading.Thread(target=self._loop, name="loraplane-engine", daemon=True)
        self._thread.start()

    def _eos_ids(self) -> set[int]:
        ids = set()
        eos = getattr(self.model.generation_config, "eos_token_id", None) or self.tokenizer.eos_token_id
        for e in eos if isinstance(eos, (list, tuple)) else [eos]:
            if e is not None:
                ids.add(int(e))
        return ids

    def _maybe_fault(self, phase: str) -> None:
        f = self.fault
        if f is None or f.phase != phase or f.times == 0:
            return
        if f.times is not None:
            f.times -= 1
        if f.oom:
            raise torch.cuda.OutOfMemoryError(f"injected out-of-memory in {phase} (test setting)")
        raise InjectedFault(f"injected fault in {phase} (test setting)")

    # ------------------------------------------------------------ public API
    def hold(self, adapter: str | None) -> None:
        """Take a reference on ``adapter`` before ``submit(..., held=True)``: the
        server routes, then awaits tokenisation; the reference keeps the chosen
        version loaded in between."""
        if adapter is not None:
            with self._cv:
                self._refs[adapter] += 1

    def unhold(self, adapter: str | None) -> None:
        """Give back a reference taken by ``hold`` for a request never submitted."""
        if adapter is not None:
            with self._cv:
                self._refs[adapter] -= 1
                if self._refs[adapter] <= 0:
                    del self._refs[adapter]
                self._cv.notify()

    def submit(self, req: GenRequest, held: bool = False) -> None:
        """Queue ``req``; raises TooLargeForBudget (it could never be admitted)
        or Overloaded (the wait queue is full) without queueing it."""
        need = self.span(req)
        if self.kv_budget_tokens is not None and need > self.kv_budget_tokens:
            raise TooLargeForBudget(
                f"this request needs KV cache for {need} tokens (prompt + max_tokens); this worker's KV budget "
                f"holds {self.kv_budget_tokens} tokens")
        with self._cv:
            if self._stop:
                raise RuntimeError("engine is stopped")
            if self.max_queue is not None and len(self._waiting) >= self.max_queue:
                raise Overloaded(f"the worker is at capacity: {len(self._rows)} requests running, "
                                 f"{len(self._waiting)} waiting for KV-cache room (queue limit {self.max_queue})",
                                 retry_after=1)
            if req.adapter is not None and not held:
                self._refs[req.adapter] += 1
            if req.adapter is not None:
                self.last_used[req.adapter] = time.monotonic()
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

    # ------------------------------------------------------- adapter residency
    def place(self, lora, cap: int | None, pinned: set[str]) -> list[str] | None:
        """Engine thread: stack a newly read adapter, evicting least recently
        used ones to stay within ``cap`` (returned); with no room, keep it in
        host RAM (None) unless it is pinned (then it is stacked anyway: a
        routed version is never left out; the cap is exceeded and logged)."""
        with self._cv:
            self.last_used.setdefault(lora.name, time.monotonic())
            victims = self._victims(cap, pinned)
            if victims is None and lora.name not in pinned:
                lora.modules = {m: (a.to("cpu"), b.to("cpu")) for m, (a, b) in lora.modules.items()}
                self.bank.host[lora.name] = lora
                return None
            self.bank.evict(victims or [])
        if victims is None:
            log.warning("adapter %s is pinned by a route with weight > 0: stacked beyond maxLoadedAdapters=%s",
                        lora.name, cap)
        self.bank.install(lora)
        return victims or []

    def make_resident(self, key: str, cap: int | None, pinned: set[str]) -> concurrent.futures.Future:
        """Bring an evicted adapter back (engine thread, between steps),
        evicting the least recently used unpinned, unused ones; the future's
        result is the keys evicted (None: it was resident already); NoRoom
        when none can be evicted."""
        return self.call(lambda: self._make_resident(key, cap, pinned))

    def _make_resident(self, key: str, cap: int | None, pinned: set[str]) -> list[str] | None:
        if key in self.bank.adapters:
            return None  # another request brought it back first
        with self._cv:  # the choice and the removal under the lock ``hold`` takes: no request slips in between
            victims = self._victims(cap, pinned | {key})
            if victims is None:
                raise NoRoom(f"all {len(self.bank.adapters)} resident adapters are pinned or in use "
                             f"(maxLoadedAdapters={cap})")
            if len(victims) == 1:  # at the cap: the restored adapter takes the victim's slot in place
                self.bank.restore(key, into=victims[0])
                return victims
            self.bank.evict(victims)
        self.bank.restore(key)
        return victims

    def _victims(self, cap: int | None, keep: set[str]) -> list[str] | None:
        """Resident adapters to evict so one more fits within ``cap``, least
        recently used first; never one in ``keep`` or with a queued or
        running request. None when not enough can go. Caller holds ``_cv``."""
        resident = list(self.bank.adapters)
        over = len(resident) + 1 - cap if cap is not None else 0
        if over <= 0:
            return []
        free = [k for k in resident if k not in keep and self._refs[k] == 0]
        if len(free) < over:
            return None
        return sorted(free, key=lambda k: self.last_used.get(k, 0.0))[:over]

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
            new = self._admit()
            if new:
                self._guarded("prefill", new, self._prefill)
            if self._rows:
                self._guarded("decode", None, self._decode)
        self._fail_all("worker is shutting down")
        with self._cv:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for r in waiting:
            self._finish(r, "error", error="worker is shutting down")

    def _guarded(self, phase: str, new: list[GenRequest] | None, step: Callable) -> None:
        """Run one step; on any exception fail exactly the requests it affects.

        A failed prefill (or merge) affects only the joining requests ``new``:
        the running batch's cache is replaced only after a successful merge.
        A failed decode leaves the batch's KV cache half-written, so every
        running row fails. Each failed request gets its final event and its
        adapter reference back (``_finish`` is idempotent), so no request
        hangs and an unload waiting for the adapter is never blocked.
        """
        try:
            step(new) if new is not None else step()
        except BaseException as e:  # noqa: BLE001 - fail the affected requests, keep serving
            oom = isinstance(e, torch.cuda.OutOfMemoryError)
            if oom:
                self.obs.oom()
                message, code = f"out of GPU memory during {phase}: {e}", "out_of_memory"
            else:
                log.exception("engine %s failed", phase)
                message, code = f"generation failed during {phase}: {type(e).__name__}: {e}", None
            if new is not None:
                for r in new:
                    self._finish(r, "error", error=message, code=code)
            else:
                self._fail_all(message, code)
            if oom and torch.cuda.is_available():
                torch.cuda.empty_cache()
            if not isinstance(e, Exception):
                raise

    def _due_unloads(self) -> bool:
        return any(self._refs[n] == 0 for n in self._pending_unload)

    def _run_unloads(self) -> None:
        with self._cv:
            due = [n for n in self._pending_unload if self._refs[n] == 0]
            futs = [self._pending_unload.pop(n) for n in due]
        for name, fut in zip(due, futs):
            try:
                self.last_used.pop(name, None)
                self.bank.remove(name)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                fut.set_result(True)
            except BaseException as e:  # noqa: BLE001
                fut.set_exception(e)

    # ------------------------------------------------------------ admission
    @staticmethod
    def span(req: GenRequest) -> int:
        """The most KV-cache tokens this request's row can span."""
        return len(req.prompt_ids) + req.max_tokens

    def _fits(self, taken: list[GenRequest], r: GenRequest) -> bool:
        """Would the batch (running rows + ``taken``) plus ``r`` stay inside the
        KV budget at its largest? Left padding: rows x the longest span."""
        if self.kv_budget_tokens is None:
            return True
        spans = [self.span(x) for x in self._rows] + [self.span(x) for x in taken] + [self.span(r)]
        return kv_tokens_held(spans) <= self.kv_budget_tokens

    def _admit(self) -> list[GenRequest]:
        """Take up to the free batch room off the queue, in order, while the KV
        budget allows (cancelled ones are answered here)."""
        room = self.max_batch_size - len(self._rows)
        if room <= 0:
            return []
        with self._cv:
            if not self._waiting:
                return []
            if not self._rows and len(self._waiting) < room and self.max_wait > 0:
                deadline = self._waiting[0].enqueued + self.max_wait
                while len(self._waiting) < room and not self._stop:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            new = []
            while self._waiting and len(new) < room:
                if self._waiting[0].cancelled:
                    new.append(self._waiting.popleft())
                    continue
                if not self._fits([x for x in new if not x.cancelled], self._waiting[0]):
                    break  # first come, first served: a large request is not overtaken for ever
                new.append(self._waiting.popleft())
            self.obs.queue_depth(len(self._waiting))
        live = []
        for r in new:
            if r.cancelled:
                self._finish(r, "cancelled")
            else:
                live.append(r)
        return live

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
        self._maybe_fault("prefill")
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
        first_real = int(mask.any(0).nonzero()[0])  # rows that finished at once may have held the longest prompt
        if first_real > 0:
            mask, cache = mask[:, first_real:], _trim_left(cache, first_real)
        nxt = toks.index_select(0, idx)
        rows = [new[i] for i in keep]
        if not self._rows:
            self._rows, self._cache, self._mask, self._next = rows, cache, mask, nxt
        else:
            self._maybe_fault("merge")
            merged_cache, merged_mask = _merge(self._cache, self._mask, cache, mask)
            merged_next = torch.cat([self._next, nxt])
            # only now replace the running batch: a failed merge leaves it intact
            self._cache, self._mask, self._next = merged_cache, merged_mask, merged_next
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
        self._maybe_fault("decode")
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
        logits = logits.float()
        if any(r.logit_bias for r in rows):
            logits = logits.clone()  # an inference-mode tensor cannot be updated in place outside it
        for i, r in enumerate(rows):
            if r.logit_bias:
                ids = torch.tensor(list(r.logit_bias), dtype=torch.long, device=logits.device)
                vals = torch.tensor(list(r.logit_bias.values()), dtype=torch.float32, device=logits.device)
                logits[i].index_add_(0, ids, vals)
        raw = logits
        constrained = [i for i, r in enumerate(rows) if r.grammar is not None]
        if constrained:
            logits = self._constrain(logits, rows, constrained)
        temps = torch.tensor([r.temperature for r in rows], dtype=torch.float32, device=logits.device)
        top_p = torch.tensor([r.top_p for r in rows], dtype=torch.float32, device=logits.device)
        uniforms = None
        if any(r.temperature > 0 for r in rows):
            draws = []
            for r in rows:
                if r.temperature <= 0:
                    draws.append(0.0)
                    continue
                if r.seed is not None and r.generator is None:
                    r.generator = torch.Generator().manual_seed(r.seed)
                draws.append(float(torch.rand(1, generator=r.generator)))
            uniforms = torch.tensor(draws, dtype=torch.float32)
        toks = sample(logits, temps, top_p, uniforms=uniforms)
        want = [i for i, r in enumerate(rows) if r.logprobs is not None]
        if want:
            idx = torch.tensor(want, device=logits.device)
            lp = torch.log_softmax(raw.index_select(0, idx), dim=-1)  # the model's, before any grammar
            k = max(rows[i].logprobs for i in want)
            top_v, top_i = lp.topk(k, dim=-1) if k > 0 else (None, None)
            chosen = lp.gather(-1, toks.index_select(0, idx)[:, None]).squeeze(-1).tolist()
            for j, i in enumerate(want):
                r = rows[i]
                kk = r.logprobs
                top = list(zip(top_i[j, :kk].tolist(), top_v[j, :kk].tolist())) if kk else []
                r.lp.append({"id": int(toks[i]), "logprob": chosen[j], "top": top})
        for i in constrained:
            r = rows[i]
            if r.grammar_error is None and not r.grammar.consume_token(int(toks[i])):
                r.grammar_error = f"grammar refused token {int(toks[i])}: {r.grammar.get_error()}"
        return toks

    def _constrain(self, logits: torch.Tensor, rows: list[GenRequest], constrained: list[int]) -> torch.Tensor:
        """Mask each constrained row with its own grammar (CPU bitmask, applied
        on the logits' device); rows without a grammar are untouched. A row
        whose grammar allows no token is failed after this step."""
        from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask

        V = logits.shape[-1]
        bm = allocate_token_bitmask(len(constrained), V)  # CPU, pinned when CUDA is there
        for j, i in enumerate(constrained):
            fill_next_token_bitmask(rows[i].grammar, bm, j)
            if rows[i].grammar.is_error():
                rows[i].grammar_error = f"grammar failed: {rows[i].grammar.get_error()}"
            elif not bool(bm[j].any()):
                rows[i].grammar_error = "the grammar allows no next token"
        # unpack the bits on the logits' device (measured: llguidance.torch.apply_token_bitmask_inplace's
        # repeat_interleave costs ~100x more on CPU at a 512 vocabulary)
        shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
        bits = bm.to(logits.device, non_blocking=True)
        allowed = ((bits.unsqueeze(-1) >> shifts) & 1).view(len(constrained), -1)[:, :V].bool()
        logits = logits.clone()
        idx = torch.tensor(constrained, device=logits.device)
        logits[idx] = logits[idx].masked_fill(~allowed, float("-inf"))
        return logits

    def _after_tokens(self, rows: list[GenRequest], toks: torch.Tensor) -> list[int]:
        """Record one new token per row; emit text; return the rows that continue."""
        keep = []
        for i, (r, t) in enumerate(zip(rows, toks.tolist())):
            if r.cancelled:
                self._finish(r, "cancelled")
                continue
            if r.grammar_error is not None:
                self._finish(r, "error", error=r.grammar_error, code="grammar_error")
                continue
            reason = None
            if t in self.eos_ids and (not r.ignore_eos or r.grammar is not None):
                reason = "stop"
                if r.lp:
                    r.lp.pop()  # the EOS token is not part of the completion
            else:
                r.generated.append(t)
                self.obs.tokens(r, 1)
                if len(r.generated) >= r.max_tokens:
                    reason = "length"
                elif r.grammar is not None and r.grammar.is_stopped():
                    reason = "stop"  # the grammar is complete and allows nothing more
            text = self.tokenizer.decode(r.generated, skip_special_tokens=True)
            if len(r.offsets) < len(r.generated):
                r.offsets.append(r.text_len)
            r.text_len = len(text)
            cut = find_stop(text, r.stop) if r.stop else None
            if cut is not None:
                text, reason = text[:cut], "stop"
            upto = len(text) if reason else safe_emit_length(text, r.stop)
            if upto > r.emitted:
                payload = {"text": text[r.emitted:upto]}
                if r.logprobs is not None:
                    payload["logprobs"] = self._logprob_entries(r, upto if reason else None, text)
                self._emit(r, "token", payload)
                r.emitted = upto
            if reason:
                self._finish(r, reason, text=text)
            else:
                keep.append(i)
        return keep

    def _logprob_entries(self, r: GenRequest, final_len: int | None, text: str) -> list[dict]:
        """Logprob entries not sent yet. A token's text is what it added to the
        decoded completion (its offsets); at the end, tokens that start at or
        after a stop-string cut are dropped."""
        n = len(r.lp)
        if final_len is not None:
            n = sum(1 for j in range(n) if j < len(r.offsets) and r.offsets[j] < final_len) if r.stop else n
        out = []
        for j in range(r.lp_sent, n):
            e = r.lp[j]
            start = r.offsets[j] if j < len(r.offsets) else len(text)
            end = r.offsets[j + 1] if j + 1 < len(r.offsets) else len(text)
            tok = text[start:end] if end <= len(text) else text[start:]
            top = [(tok if tid == e["id"] else self._token_text(tid), v) for tid, v in e["top"]]
            out.append({"token": tok, "logprob": e["logprob"], "top": top, "offset": start})
        r.lp_sent = max(r.lp_sent, n)
        return out

    def _token_text(self, tid: int) -> str:
        if tid not in self._tok_text:
            self._tok_text[tid] = self.tokenizer.decode([tid], skip_special_tokens=False)
        return self._tok_text[tid]

    def _emit(self, r: GenRequest, kind: str, payload: dict) -> None:
        """Hand an event to the request's sink; a broken sink (its event loop
        gone) must not fail the other rows of the batch."""
        try:
            r.sink(kind, payload)
        except Exception:  # noqa: BLE001
            log.warning("request %s: could not deliver %s event", r.id, kind, exc_info=True)
            r.cancelled = True

    def _finish(self, r: GenRequest, reason: str, error: str | None = None, code: str | None = None,
                text: str | None = None) -> None:
        """Send the final event and release the adapter reference, exactly once."""
        if r.finished:
            return
        r.finished = True
        self._release(r)
        payload = {"finish_reason": reason, "completion_tokens": len(r.generated),
                   "prompt_tokens": len(r.prompt_ids)}
        if error:
            self._emit(r, "error", {"message": error, "code": code, **payload})
            return
        if r.logprobs is not None and text is not None:
            payload["logprobs"] = self._logprob_entries(r, r.emitted, text)
        self._emit(r, "done", payload)

    def _release(self, r: GenRequest) -> None:
        if r.adapter is not None:
            with self._cv:
                self._refs[r.adapter] -= 1
                if self._refs[r.adapter] <= 0:
                    del self._refs[r.adapter]
                self._cv.notify()

    def _fail_all(self, message: str, code: str | None = None) -> None:
        rows, self._rows = self._rows, []
        self._cache = self._mask = self._next = None
        for r in rows:
            self._finish(r, "error", error=message, code=code)


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
