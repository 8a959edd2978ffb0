"""Is this run's adapter version already in the store? Makes a retried
training Job idempotent.

Why: the trainer publishes, then reports and exits. A pod that dies in
between (node loss, OOM kill of a sidecar, eviction) is retried by the Job,
and the retry used to fail with "already published" although the work was
done. Now the retry looks at the published version: if its
``training_summary.json`` records the same run (adapter identity, method,
dataset sha256, every weight-deciding hyper-parameter, base checksum) and the
files verify against the manifest, the run is done and exits 0. A version
holding anything else is refused (exit 2, not retried): that is a different
run under a taken version, and only ``--force`` may replace it.
"""

from __future__ import annotations

import json
from typing import Any

from .config import ConfigError, TrainConfig, hyperparameters
from .summary import SUMMARY_FILE


class VersionTaken(ConfigError):
    """The version is published by another run (exit 2: a retry would fail the same way)."""


def mismatch(summary: dict[str, Any], cfg: TrainConfig, dataset_sha256: str, base_checksum: str) -> list[str]:
    """What differs between the published run's summary and this run (empty: the same run)."""
    want = {
        "adapter": {"owner": cfg.owner, "name": cfg.name, "version": cfg.version, "task": cfg.task},
        "method": cfg.method,
        "dataset sha256": dataset_sha256,
        "base checksum": base_checksum,
    }
    got = {
        "adapter": summary.get("adapter"), "method": summary.get("method"),
        "dataset sha256": (summary.get("dataset") or {}).get("sha256"),
        "base checksum": (summary.get("base") or {}).get("checksum"),
    }
    out = [k for k in want if want[k] != got[k]]
    hyper, published = hyperparameters(cfg), summary.get("hyperparameters") or {}
    out += [k for k in hyper if _norm(hyper[k]) != _norm(published.get(k))]
    return out


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))  # as the summary file holds it (tuples -> lists, ...)


def published_already(store, cfg: TrainConfig, dataset_sha256: str, base) -> tuple[Any, dict] | None:
    """(the store's ``StoredVersion``, its summary) when this very run already published
    ``cfg.version``; None when the version is free; raises ``VersionTaken`` when another run (or a
    damaged copy) holds it."""
    from loraplane.modelstore import StoreError

    where = f"adapter {cfg.owner}/{cfg.name}@{cfg.version}"
    try:
        sv = store.resolve(cfg.owner, "adapter", cfg.name, cfg.version)
    except StoreError:
        return None
    try:
        summary = json.loads((sv.path / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        raise VersionTaken(f"{where} is already in the store without a readable {SUMMARY_FILE} "
                           f"(use --force to replace it, or a new version)") from None
    diff = mismatch(summary, cfg, dataset_sha256, base.checksum)
    if diff:
        raise VersionTaken(f"{where} is already in the store from another run ({', '.join(diff)} differ); "
                           f"use --force to replace it, or a new version")
    report = store.verify(cfg.owner, "adapter", cfg.name, cfg.version)
    if not report.ok:
        raise VersionTaken(f"{where} is already in the store but fails verification ({report.summary()}); "
                           f"use --force to replace it")
    return sv, summary
