"""Canary analysis from the workers' own Prometheus metrics. Pure: the
handler scrapes each ready worker's ``/metrics`` and passes the texts in.

Why scrape the workers directly rather than query a Prometheus server: the
operator already knows every ready pod, the worker exposes exactly the two
series needed, and a rollout must not depend on a monitoring stack being
installed and correctly configured. With ``analysis.provider: prometheus``
``prom_source.py`` builds the same ``Snapshot`` from Prometheus queries.

Series read (``loraplane.worker.metrics``), labels ``task``, ``adapter``, ``status``:

* ``loraplane_worker_requests_total`` — request count; ``status`` is the
  HTTP status as text ("200", "500", "499" for a client that went away, 4xx).
* ``loraplane_worker_request_duration_seconds`` histogram — latency.

Definitions (per adapter version = the served adapter name):

* requests: all statuses; errors: 5xx (and any non-numeric status other than
  "ok"/"success"). 4xx and 499 are the client's doing, not a regression of
  the version, so they count as requests but not as errors.
* latency quantiles: over 2xx requests only — a canary failing fast with 500s
  must not look *faster*; its failures show in the error rate instead.
* quantiles are estimated from the buckets like PromQL ``histogram_quantile``:
  linear interpolation inside the bucket holding the rank, lower bound 0 for
  the first bucket, and the highest finite bound when the rank falls in +Inf.
  Accuracy is bounded by the bucket layout (0.25, 0.5, 1, 2.5 s, ...).

Counters are cumulative since each worker started, so analysis compares a
*window*: ``delta(now, at_step_start)`` per pod. A pod whose counters went down
restarted; its current values are all inside the window (Prometheus' reset
rule). A pod absent at the window start is new: all its counts count.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

from ..api.rollout_types import AnalysisThresholds

REQUESTS = "loraplane_worker_requests_total"
DURATION = "loraplane_worker_request_duration_seconds"


@dataclass
class Series:
    """One (task, adapter) on one pod: cumulative counters."""

    by_status: dict[str, float] = field(default_factory=dict)  # requests_total per status
    buckets: dict[float, float] = field(default_factory=dict)  # 2xx latency, le -> cumulative count
    ok_sum: float = 0.0

    def to_json(self) -> dict:
        return {"n": self.by_status, "b": {repr(k) if math.isfinite(k) else "+Inf": v for k, v in self.buckets.items()},
                "s": self.ok_sum}

    @classmethod
    def from_json(cls, d: dict) -> "Series":
        return cls(by_status=dict(d.get("n", {})), ok_sum=float(d.get("s", 0.0)),
                   buckets={float(k): float(v) for k, v in d.get("b", {}).items()})


#: pod -> (task, adapter) -> Series
Snapshot = dict[str, dict[tuple[str, str], Series]]


def is_ok(status: str) -> bool:
    return status.startswith("2") or status in ("ok", "success")


def is_error(status: str) -> bool:
    if status.isdigit():
        return status.startswith("5")
    return not is_ok(status)


def parse_worker(text: str) -> dict[tuple[str, str], Series]:
    """Series of one worker's exposition text (other metrics ignored)."""
    out: dict[tuple[str, str], Series] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = s.labels
            if "task" not in labels or "adapter" not in labels:
                continue
            key = (labels["task"], labels["adapter"])
            status = labels.get("status", "")
            if s.name == REQUESTS:
                ser = out.setdefault(key, Series())
                ser.by_status[status] = ser.by_status.get(status, 0.0) + s.value
            elif s.name == DURATION + "_bucket" and is_ok(status):
                ser = out.setdefault(key, Series())
                le = float(labels["le"])
                ser.buckets[le] = ser.buckets.get(le, 0.0) + s.value
            elif s.name == DURATION + "_sum" and is_ok(status):
                out.setdefault(key, Series()).ok_sum += s.value
    return out


def snapshot(texts: Mapping[str, str]) -> Snapshot:
    """pod name -> exposition text  =>  Snapshot."""
    return {pod: parse_worker(text) for pod, text in texts.items()}


def dumps(snap: Snapshot) -> str:
    """Compact JSON for ``RolloutState.windowStart``."""
    return json.dumps({pod: {f"{t}\t{a}": s.to_json() for (t, a), s in series.items()}
                       for pod, series in snap.items()}, sort_keys=True, separators=(",", ":"))


def loads(text: str | None) -> Snapshot:
    if not text:
        return {}
    raw = json.loads(text)
    return {pod: {tuple(k.split("\t", 1)): Series.from_json(v) for k, v in series.items()}  # type: ignore[misc]
            for pod, series in raw.items()}


def _reset(cur: Series, base: Series) -> bool:
    return (any(v < base.by_status.get(k, 0.0) for k, v in cur.by_status.items())
            or any(cur.by_status.get(k) is None for k in base.by_status)
            or any(v < base.buckets.get(k, 0.0) for k, v in cur.buckets.items()))


def delta(current: Snapshot, start: Snapshot) -> Snapshot:
    """Counts inside the window: ``current - start`` per pod, reset-aware."""
    out: Snapshot = {}
    for pod, series in current.items():
        base_pod = start.get(pod, {})
        out[pod] = {}
        for key, cur in series.items():
            base = base_pod.get(key)
            if base is None or _reset(cur, base):
                out[pod][key] = Series(dict(cur.by_status), dict(cur.buckets), cur.ok_sum)
            else:
                out[pod][key] = Series(
                    {k: v - base.by_status.get(k, 0.0) for k, v in cur.by_status.items()},
                    {k: v - base.buckets.get(k, 0.0) for k, v in cur.buckets.items()},
                    cur.ok_sum - base.ok_sum)
    return out


@dataclass
class Stats:
    """Aggregated window statistics of one or more adapter versions."""

    requests: float = 0.0
    errors: float = 0.0
    ok: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    @property
    def error_rate_percent(self) -> float:
        return 100.0 * self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(q, self.buckets)


def aggregate(window: Snapshot, task: str | None, adapters: Iterable[str]) -> Stats:
    """Sum a window over pods (and over ``adapters``), for ``task`` (None: any task)."""
    want = set(adapters)
    st = Stats()
    for series in window.values():
        for (t, a), s in series.items():
            if a not in want or (task is not None and t != task):
                continue
            for status, n in s.by_status.items():
                st.requests += n
                if is_error(status):
                    st.errors += n
                if is_ok(status):
                    st.ok += n
            for le, n in s.buckets.items():
                st.buckets[le] = st.buckets.get(le, 0.0) + n
    return st


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """PromQL-style quantile of cumulative ``le -> count`` buckets; None when empty."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be within 0..1, got {q}")
    items = sorted(buckets.items())
    if not items or not math.isinf(items[-1][0]):
        raise ValueError("histogram buckets must include le=+Inf")
    total = items[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if math.isinf(le):
                return prev_le if len(items) > 1 else None
            if count == prev_count:
                return le
            lower = prev_le if prev_le > 0 or le > 0 else le
            return lower + (le - lower) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return items[-2][0] if len(items) > 1 else None


@dataclass(frozen=True)
class Verdict:
    kind: str  # "healthy" | "breach" | "inconclusive"
    reason: str = ""  # CamelCase, e.g. LatencyRegression
    message: str = ""

    @property
    def healthy(self) -> bool:
        return self.kind == "healthy"

    @property
    def breach(self) -> bool:
        return self.kind == "breach"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1000:.0f}ms"


def judge(canary: Stats, baseline: Stats | None, th: AnalysisThresholds) -> Verdict:
    """Healthy, breach(reason) or inconclusive for one window.

    Errors are judged as soon as the canary has ``minRequests`` requests.
    Latency needs ``minRequests`` on both sides; ``baseline=None`` (the task
    had no stable version) skips the latency comparison."""
    if canary.requests < th.min_requests:
        return Verdict("inconclusive", "NotEnoughRequests",
                       f"canary served {canary.requests:.0f} requests in the window, need {th.min_requests}")
    if canary.error_rate_percent > th.max_error_rate_percent:
        return Verdict("breach", "ErrorRate",
                       f"canary error rate {canary.error_rate_percent:.2f}% > {th.max_error_rate_percent:g}% "
                       f"({canary.errors:.0f}/{canary.requests:.0f})")
    summary = f"canary error rate {canary.error_rate_percent:.2f}%"
    if baseline is None:
        return Verdict("healthy", "Healthy", summary + "; no stable version to compare latency with")
    if baseline.requests < th.min_requests:
        return Verdict("inconclusive", "NotEnoughRequests",
                       f"stable served {baseline.requests:.0f} requests in the window, need {th.min_requests}")
    checks = [(0.95, th.max_p95_regression_percent)]
    if th.max_p99_regression_percent is not None:
        checks.append((0.99, th.max_p99_regression_percent))
    for q, limit in checks:
        c, b = canary.quantile(q), baseline.quantile(q)
        if c is None or b is None:
            return Verdict("inconclusive", "NoLatencyData", f"no successful requests to estimate p{q * 100:.0f}")
        reg = math.inf if b <= 0 < c else (0.0 if b <= 0 else 100.0 * (c - b) / b)
        name = f"p{q * 100:.0f}"
        summary += f"; {name} {_fmt(c)} vs stable {_fmt(b)} ({reg:+.1f}%)"
        if reg > limit:
            return Verdict("breach", "LatencyRegression",
                           f"canary {name} {_fmt(c)} is {reg:.1f}% above stable {_fmt(b)} (limit {limit:g}%)")
    return Verdict("healthy", "Healthy", summary)


def analyze(current: Snapshot, start: Snapshot, *, canary: str, stable: Iterable[str],
            thresholds: AnalysisThresholds) -> Verdict:
    """Verdict for the window ``start -> current``: canary vs the stable version(s)."""
    window = delta(current, start)
    stable = [a for a in stable if a != canary]
    # Any task label: requests pinned to a version by name (task "-") are
    # signal about that version too; an adapter belongs to one task anyway.
    base = aggregate(window, None, stable) if stable else None
    return judge(aggregate(window, None, [canary]), base, thresholds)
