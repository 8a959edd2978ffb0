"""The training run: validate data, load base, train LoRA, save, publish.

A plain torch loop rather than ``transformers.Trainer``: the things this
trainer must get exactly right — token-weighted loss over the response only,
a micro-batch order that is a pure function of (seed, step) so a restarted
pod resumes mid-epoch, atomic checkpoints, and our own progress lines and pod
annotation — are each a few lines here and would be callbacks and overrides
there. Order of work matters: everything cheap that can fail (dataset,
config, base verification, an already-taken version) fails before the model
loads, and nothing reaches the store unless the whole run succeeded. A retry
of a run that already published (its pod died before exiting) finds its own
version in the store and succeeds at once (``published.py``).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from . import checkpoint as ckpt
from . import plan
from .base import resolve_base
from .config import TrainConfig, default_output_dir, hyperparameters, is_s3, local_cache_dir
from .dataset import IGNORE_INDEX, DatasetError, collate, load_dataset, split_eval, tokenize_all
from .modeling import load_for_training
from .progress import PodAnnotator, ProgressReporter, rates
from .published import published_already
from .summary import build_summary, write_summary


class TrainingError(RuntimeError):
    pass


@dataclass
class TrainResult:
    adapter_dir: Path | None
    summary: dict[str, Any] | None
    manifest: Any | None  # modelstore Manifest when published
    step: int
    total_steps: int
    stopped_early: bool
    signal: str | None = None  # "SIGTERM"/"SIGINT" when stopped by one


class _StopFlag:
    """SIGTERM/SIGINT -> finish the current step, checkpoint, exit.

    Why: a pod being evicted or drained gets SIGTERM and a grace period; a
    checkpoint written then means the restarted pod loses at most one step.
    """

    def __init__(self):
        self.signal: str | None = None
        self._old = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        import signal

        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


def _utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _open_store(cfg: TrainConfig):
    """The directory store, or a bucket read through the node-local cache
    (``CachingS3Store``: the base materialised and sha256-checked once per node)
    that publishes with the bucket's own atomic publish."""
    from loraplane.modelstore import ModelStore

    if is_s3(cfg.store_root):
        from loraplane.modelstore.s3 import CachingS3Store

        return CachingS3Store(cfg.store_root, local_cache_dir())
    return ModelStore(cfg.store_root) if cfg.store_root is not None else ModelStore()


def _local_datasets(cfg: TrainConfig, store) -> list[Path]:
    """Dataset files on the store's bucket, fetched into the node cache; local files as they are."""
    if not any(is_s3(p) for p in cfg.dataset):
        return list(cfg.dataset)
    if not hasattr(store, "fetch_object"):
        raise DatasetError(f"a dataset on a bucket ({next(p for p in cfg.dataset if is_s3(p))}) needs the store "
                           f"on that bucket (--store-root s3://...)")
    from loraplane.modelstore import StoreError

    try:
        return [store.fetch_object(p) if is_s3(p) else Path(p) for p in cfg.dataset]
    except StoreError as exc:
        raise DatasetError(f"dataset: {exc}") from None


def _batch_tensors(batch, pad_id: int, device: str):
    import torch

    c = collate(batch, pad_id)
    return {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in c.items()}


def _loss_sum(model, t) -> tuple[Any, int]:
    """Sum of next-token cross-entropy over response tokens, and their count."""
    import torch.nn.functional as F

    logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits
    labels = t["labels"][:, 1:]
    logits = logits[:, :-1].float()
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((labels != IGNORE_INDEX).sum())


def evaluate(model, examples, batch_size: int, pad_id: int, device: str) -> float | None:
    """Token-weighted mean loss over ``examples`` (None when there are none)."""
    import torch

    if not examples:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            loss, n = _loss_sum(model, _batch_tensors(examples[i : i + batch_size], pad_id, device))
            total += float(loss)
            count += n
    model.train()
    return total / max(1, count)


def _termination_log(message: str) -> None:
    """Kubernetes shows this file as the container's termination reason."""
    path = Path(os.environ.get("TERMINATION_LOG", "/dev/termination-log"))
    try:
        if path.exists() and os.access(path, os.W_OK):
            path.write_text(message[:4000])
    except OSError:
        pass


def train(cfg: TrainConfig, *, store=None, annotator: PodAnnotator | None = None,
          out: TextIO | None = None) -> TrainResult:
    """Run (or resume) one training run; see module docstring for the order."""
    reporter = ProgressReporter(0, annotator if annotator is not None else PodAnnotator.from_env(), out or sys.stdout)
    reporter.report(0, "loading")
    try:
        with _StopFlag() as stop:
            return _train(cfg, store, reporter, stop)
    except BaseException as exc:
        message = f"{type(exc).__name__}: {exc}"
        last = reporter.last
        reporter.report(last.step if last else 0, "failed", loss=last.loss if last else None,
                        eval_loss=last.evalLoss if last else None, final=True, error=message)
        _termination_log(message)
        raise


@dataclass
class _Run:
    """Everything one run carries from setup through the loop to the summary."""

    cfg: TrainConfig
    data: Any
    base: Any
    out_dir: Path
    loaded: Any
    train_set: list
    eval_set: list
    dropped: int
    total: int
    params: list
    optimizer: Any
    scheduler: Any
    hyper: dict
    fingerprint: str
    ckpt_root: Path
    t_start: float
    started: str
    start: int = 0
    resumed_from: int | None = None
    history: list = field(default_factory=list)
    eval_history: list = field(default_factory=list)
    eval_initial: float | None = None
    prior_tokens: int = 0
    prior_seconds: float = 0.0
    tokens: int = 0
    window_loss: float = 0.0
    window_n: int = 0
    t_loop: float = 0.0
    step: int = 0

    @property
    def model(self):
        return self.loaded.model

    def train_seconds(self) -> float:
        return self.prior_seconds + (time.monotonic() - self.t_loop)


def _train(cfg: TrainConfig, store, reporter: ProgressReporter, stop: _StopFlag) -> TrainResult:
    cfg, store, data, base = _prepare(cfg, store)
    if cfg.publish and not cfg.force:
        done = published_already(store, cfg, data.sha256, base)
        if done is not None:  # this run published before its pod died: the retry is done
            return _done_before(*done, reporter)
    run = _setup(cfg, data, base)
    reporter.total_steps = run.total
    _resume_or_start(run)
    if run.resumed_from is not None:
        reporter.report(run.start, "training", resumedFrom=run.resumed_from)
    _loop(run, reporter, stop)
    if run.step < run.total:  # stopped on request or by a signal: leave a checkpoint, publish nothing
        _save_checkpoint(run)
        reporter.report(run.step, "stopped", final=True, signal=stop.signal)
        return TrainResult(None, None, None, run.step, run.total, True, stop.signal)
    return _finish(run, store, reporter)


def _done_before(sv, summary: dict, reporter: ProgressReporter) -> TrainResult:
    """Report success for a run whose adapter an earlier pod of the same Job published."""
    steps = summary.get("steps") or {}
    done, total = steps.get("completed") or 0, steps.get("total") or 0
    reporter.total_steps = total
    reporter.report(done, "succeeded", loss=(summary.get("train_loss") or {}).get("final"), final=True,
                    adapterDir=str(sv.path), published=True, alreadyPublished=True, checksum=sv.manifest.checksum)
    return TrainResult(sv.path, summary, sv.manifest, done, total, False)


def _prepare(cfg: TrainConfig, store) -> tuple[TrainConfig, Any, Any, Any]:
    """Everything cheap that can fail, before the model loads: the dataset (every line), the
    version, the store, the base (verified)."""
    on_bucket = cfg.store_root is not None and any(is_s3(p) for p in cfg.dataset)
    if store is None and (cfg.publish or cfg.base is not None or on_bucket):
        store = _open_store(cfg)
    data = load_dataset(_local_datasets(cfg, store))
    if cfg.version is None:
        cfg = cfg.model_copy(update={"version": datetime.now(timezone.utc).strftime("v%Y%m%d%H%M%S")})
    return cfg, store, data, resolve_base(cfg, store)


def _setup(cfg: TrainConfig, data, base) -> _Run:
    """Load the model, tokenize, build the optimizer."""
    import torch

    started, t_start = _utc(), time.monotonic()
    out_dir = default_output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    loaded = load_for_training(cfg, base.path)
    train_idx, eval_idx = split_eval(len(data.examples), cfg.eval_split, cfg.seed)
    train_set, dropped_t = tokenize_all(loaded.tokenizer, [data.examples[i] for i in train_idx], cfg.seq_len)
    eval_set, dropped_e = tokenize_all(loaded.tokenizer, [data.examples[i] for i in eval_idx], cfg.seq_len)
    if not train_set:
        raise TrainingError(f"no training example keeps any response token within seq_len={cfg.seq_len}")
    total = plan.total_steps(len(train_set), cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.max_steps)
    params = [p for p in loaded.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: plan.lr_factor(s, total, cfg.warmup_steps, cfg.lr_scheduler))
    hyper = hyperparameters(cfg)
    run = _Run(cfg=cfg, data=data, base=base, out_dir=out_dir, loaded=loaded, train_set=train_set,
               eval_set=eval_set, dropped=dropped_t + dropped_e, total=total, params=params, optimizer=optimizer,
               scheduler=scheduler, hyper=hyper, fingerprint=ckpt.fingerprint(data.sha256, hyper, base.checksum),
               ckpt_root=out_dir / "checkpoints", t_start=t_start, started=started)
    return run


def _evaluate(run: _Run) -> float | None:
    return evaluate(run.model, run.eval_set, run.cfg.batch_size, run.loaded.tokenizer.pad_token_id,
                    run.loaded.device)


def _resume_or_start(run: _Run) -> None:
    """Continue from the latest matching checkpoint (``--resume``), else start clean."""
    from peft import set_peft_model_state_dict

    if run.cfg.resume:
        found = ckpt.load_latest(run.ckpt_root, run.fingerprint)
        if found is not None:
            set_peft_model_state_dict(run.model, found.adapter_state)
            run.optimizer.load_state_dict(found.state["optimizer"])
            run.scheduler.load_state_dict(found.state["scheduler"])
            ckpt.set_rng_state(found.state["rng"])
            run.start = run.resumed_from = found.step
            run.history = found.meta.get("train_loss_history", [])
            run.eval_history = found.meta.get("eval_loss_history", [])
            run.prior_tokens, run.prior_seconds = found.meta.get("tokens_trained", 0), found.meta.get(
                "train_seconds", 0.0)
            run.eval_initial = found.meta.get("eval_loss_initial")
            # the unlogged steps before the stop still count in the next line
            run.window_loss, run.window_n = found.meta.get("log_window", [0.0, 0])
    else:
        ckpt.clear(run.ckpt_root)
    if run.start == 0:
        run.eval_initial = _evaluate(run)


def _save_checkpoint(run: _Run) -> None:
    from peft import get_peft_model_state_dict

    ckpt.save(run.ckpt_root, run.step, get_peft_model_state_dict(run.model), run.optimizer, run.scheduler, {
        "fingerprint": run.fingerprint, "train_loss_history": run.history, "eval_loss_history": run.eval_history,
        "tokens_trained": run.prior_tokens + run.tokens, "train_seconds": run.train_seconds(),
        "eval_loss_initial": run.eval_initial, "log_window": [run.window_loss, run.window_n],
    })


def _loop(run: _Run, reporter: ProgressReporter, stop: _StopFlag) -> None:
    """Optimizer steps until done, ``stop_after_steps`` or a signal; logs and checkpoints on the way."""
    cfg = run.cfg
    run.model.train()
    run.t_loop = time.monotonic()
    run.step = run.start
    stop_at = min(run.total, cfg.stop_after_steps) if cfg.stop_after_steps else run.total
    while run.step < stop_at and stop.signal is None:
        _optimizer_step(run)
        if run.step % cfg.logging_steps == 0 or run.step == run.total:
            mean = run.window_loss / run.window_n
            run.history.append({"step": run.step, "loss": round(mean, 6)})
            tps, eta = rates(run.step - run.start, run.tokens, time.monotonic() - run.t_loop, run.total, run.step)
            epoch = round(plan.epoch_of(run.step, cfg.grad_accum, len(run.train_set), cfg.batch_size), 3)
            reporter.report(run.step, "training", loss=mean, tps=tps, eta=eta, epoch=epoch,
                            lr=run.scheduler.get_last_lr()[0])
            run.window_loss, run.window_n = 0.0, 0
        if run.step % cfg.save_steps == 0 and run.step < stop_at and stop.signal is None:
            _save_checkpoint(run)


def _optimizer_step(run: _Run) -> None:
    """One step: gradient accumulation over its micro-batches, token-weighted loss."""
    import torch

    cfg, pad_id, device = run.cfg, run.loaded.tokenizer.pad_token_id, run.loaded.device
    batches = [[run.train_set[i] for i in idx] for idx in
               plan.step_micro_batches(run.step, cfg.grad_accum, len(run.train_set), cfg.batch_size, cfg.seed)]
    tensors = [_batch_tensors(b, pad_id, device) for b in batches]
    n_labels = sum(int((t["labels"][:, 1:] != IGNORE_INDEX).sum()) for t in tensors)
    step_loss = 0.0
    for t in tensors:
        loss, _ = _loss_sum(run.model, t)
        (loss / max(1, n_labels)).backward()
        step_loss += loss.item()
        run.tokens += int(t["attention_mask"].sum())
    if cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.window_loss += step_loss / max(1, n_labels)
    run.window_n += 1


def _finish(run: _Run, store, reporter: ProgressReporter) -> TrainResult:
    """Final eval, checkpoint, adapter and summary on disk, then publish."""
    cfg, step, history = run.cfg, run.step, run.history
    train_seconds = run.train_seconds()
    reporter.report(step, "evaluating", loss=history[-1]["loss"] if history else None)
    eval_final = _evaluate(run)
    if eval_final is not None and (not run.eval_history or run.eval_history[-1]["step"] != step):
        run.eval_history.append({"step": step, "loss": round(eval_final, 6)})
    _save_checkpoint(run)  # a crash while saving/publishing resumes here, not from scratch

    reporter.report(step, "saving", loss=history[-1]["loss"] if history else None, eval_loss=eval_final)
    adapter_dir = _save_adapter(run.model, run.out_dir)
    summary = _summary(run, eval_final, train_seconds)
    write_summary(adapter_dir, summary)

    manifest = None
    if cfg.publish:
        base = run.base
        reporter.report(step, "publishing", loss=summary["train_loss"]["final"], eval_loss=eval_final)
        manifest = store.publish(adapter_dir, owner=cfg.owner, kind="adapter", name=cfg.name, version=cfg.version,
                                 force=cfg.force, source=f"local:{adapter_dir}", task=cfg.task,
                                 base_name=base.name, base_version=base.version, base_owner=base.owner)
    reporter.report(step, "succeeded", loss=summary["train_loss"]["final"], eval_loss=eval_final, final=True,
                    adapterDir=str(adapter_dir), published=bool(manifest),
                    checksum=getattr(manifest, "checksum", None))
    return TrainResult(adapter_dir, summary, manifest, step, run.total, False)


def _summary(run: _Run, eval_final: float | None, train_seconds: float) -> dict[str, Any]:
    cfg, base, data, history = run.cfg, run.base, run.data, run.history
    tokens = run.prior_tokens + run.tokens
    return build_summary(
        adapter={"owner": cfg.owner, "name": cfg.name, "version": cfg.version, "task": cfg.task},
        method=cfg.method,
        base={"ref": base.ref, "path": str(base.path), "checksum": base.checksum,
              "checksum_source": base.checksum_source, "name": base.name, "version": base.version},
        dataset={"sha256": data.sha256, "files": data.files, "records": len(data.examples),
                 "train_examples": len(run.train_set), "eval_examples": len(run.eval_set),
                 "dropped_no_response_within_seq_len": run.dropped},
        hyperparameters=run.hyper,
        steps={"total": run.total, "completed": run.step, "resumed_from": run.resumed_from},
        train_loss={"first": history[0]["loss"] if history else None,
                    "final": history[-1]["loss"] if history else None, "history": history},
        eval_loss={"initial": run.eval_initial, "final": eval_final, "history": run.eval_history},
        parameters={"trainable": sum(p.numel() for p in run.params),
                    "total": sum(p.numel() for p in run.model.parameters())},
        tokens_trained=tokens,
        tokens_per_second=round(tokens / train_seconds, 1) if train_seconds > 0 else None,
        duration_seconds=round(time.monotonic() - run.t_start + run.prior_seconds, 3),
        train_seconds=round(train_seconds, 3),
        started=run.started, finished=_utc(), device=run.loaded.device, dtype=run.loaded.dtype,
    )


def _save_adapter(model, out_dir: Path) -> Path:
    """PEFT adapter dir written beside, then renamed into ``<out>/adapter``."""
    import shutil

    final = out_dir / "adapter"
    tmp = out_dir / ".adapter.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final
