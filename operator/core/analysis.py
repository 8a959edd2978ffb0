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
*window*. Why the window is accumulated pass by pass rather than kept as every
pod's counters at the window start: that baseline was pods x series in
``status`` (~300 B per series: a 1,000-worker pool with 10 adapters passed
etcd's object limit). Now the pool keeps one ``Baseline`` (per adapter: the
counters summed over the pods read at the last pass; per pod: only a reset
mark) and each open window keeps its own per-adapter ``Counts``. Each pass,
``advance`` gives the increment since the last pass over the pods read then:

* a pod read for the first time (new, or its scrape failed until now) joins
  the baseline with its current counters: it counts from that pass on, and
  none of its history enters a window;
* when a pod of the baseline is missing (scrape failed, pod gone) or was
  reset (its request count fell, or its series' ``_created`` time moved: the
  process restarted), the increment cannot be attributed: that pass adds
  nothing (at most one pass of data lost, never counts from outside the window).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, TypedDict

from prometheus_client.parser import text_string_to_metric_families

from ..api.rollout_types import AnalysisThresholds

REQUESTS = "loraplane_worker_requests_total"
REQUESTS_CREATED = "loraplane_worker_requests_created"
DURATION = "loraplane_worker_request_duration_seconds"


class SeriesJson(TypedDict, total=False):
    """A ``Series`` as stored in status (short keys: it is repeated per adapter and window)."""

    n: dict[str, float]  # by_status
    b: dict[str, float]  # buckets, the bound as text ("0.25", "+Inf")
    s: float  # ok_sum


@dataclass
class Series:
    """One (task, adapter) on one pod: cumulative counters."""

    by_status: dict[str, float] = field(default_factory=dict)  # requests_total per status
    buckets: dict[float, float] = field(default_factory=dict)  # 2xx latency, le -> cumulative count
    ok_sum: float = 0.0
    #: earliest ``_created`` time of its request counters (a restarted process moves it); not serialized
    created: float | None = None

    def to_json(self) -> SeriesJson:
        return {"n": self.by_status, "b": {repr(k) if math.isfinite(k) else "+Inf": v for k, v in self.buckets.items()},
                "s": self.ok_sum}

    @classmethod
    def from_json(cls, d: SeriesJson) -> "Series":
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
            elif s.name == REQUESTS_CREATED:
                ser = out.setdefault(key, Series())
                ser.created = s.value if ser.created is None else min(ser.created, s.value)
    return out


def snapshot(texts: Mapping[str, str]) -> Snapshot:
    """pod name -> exposition text  =>  Snapshot."""
    return {pod: parse_worker(text) for pod, text in texts.items()}


def dumps(snap: Snapshot) -> str:
    """Compact JSON of a whole snapshot (per pod x per series: for tests and debugging, never stored)."""
    return json.dumps({pod: {f"{t}\t{a}": s.to_json() for (t, a), s in series.items()}
                       for pod, series in snap.items()}, sort_keys=True, separators=(",", ":"))


def loads(text: str | None) -> Snapshot:
    if not text:
        return {}
    raw = json.loads(text)
    return {pod: {tuple(k.split("\t", 1)): Series.from_json(v) for k, v in series.items()}  # type: ignore[misc]
            for pod, series in raw.items()}


#: adapter -> counters summed over pods and task labels (an adapter belongs to one task; requests
#: pinned to a version by name carry task "-" and are signal about that version too)
Counts = dict[str, Series]


def _plus(a: Series, b: Series, sign: float = 1.0) -> Series:
    return Series({k: a.by_status.get(k, 0.0) + sign * b.by_status.get(k, 0.0) for k in a.by_status | b.by_status},
                  {k: a.buckets.get(k, 0.0) + sign * b.buckets.get(k, 0.0) for k in a.buckets | b.buckets},
                  a.ok_sum + sign * b.ok_sum)


def add_counts(a: Counts, b: Counts) -> Counts:
    return {k: _plus(a.get(k, Series()), b.get(k, Series())) for k in sorted(a.keys() | b.keys())}


def by_adapter(pods: Iterable[Mapping[tuple[str, str], Series]]) -> Counts:
    out: Counts = {}
    for series in pods:
        for (_, adapter), s in series.items():
            out[adapter] = _plus(out.get(adapter, Series()), s)
    return out


def dumps_counts(counts: Counts) -> str:
    """Compact JSON for ``RolloutState.windowCounts``."""
    return json.dumps({a: s.to_json() for a, s in counts.items()}, sort_keys=True, separators=(",", ":"))


def loads_counts(text: str | None) -> Counts:
    return {a: Series.from_json(v) for a, v in json.loads(text).items()} if text else {}


def _mark(series: Mapping[tuple[str, str], Series]) -> str | int | float:
    """A pod's reset mark: a tag of its counters' earliest ``_created`` time (moves when the process
    restarts), or, where that is not exposed (Prometheus), its request count (falls on a restart)."""
    created = [s.created for s in series.values() if s.created is not None]
    if created:
        return hashlib.sha256(repr(min(created)).encode()).hexdigest()[:8]
    n = sum(v for s in series.values() for v in s.by_status.values())
    return int(n) if n == int(n) else n


def _was_reset(before: str | int | float, now: str | int | float) -> bool:
    if isinstance(before, str):
        return now != before
    return not isinstance(now, str) and now < before


@dataclass
class Baseline:
    """The counters read at the last pass: per pod a reset mark, per adapter the sum over those pods.
    About 20 bytes per pod (the pods' common name prefix is stored once) and ~400 per adapter."""

    pods: dict[str, str | int | float]
    counts: Counts

    def dumps(self) -> str:
        """Compact JSON for ``WorkerPoolStatus.analysisBaseline``."""
        prefix = os.path.commonprefix(sorted(self.pods)[:1] + sorted(self.pods)[-1:]) if self.pods else ""
        return json.dumps({"prefix": prefix, "pods": {p[len(prefix):]: m for p, m in self.pods.items()},
                           "counts": {a: s.to_json() for a, s in self.counts.items()}},
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str | None) -> "Baseline | None":
        if not text:
            return None
        raw = json.loads(text)
        prefix = raw.get("prefix", "")
        return cls(pods={prefix + p: m for p, m in raw.get("pods", {}).items()},
                   counts={a: Series.from_json(v) for a, v in raw.get("counts", {}).items()})


def advance(prev: Baseline | None, current: Snapshot) -> tuple[Baseline, Counts | None]:
    """The new baseline, and the increment since ``prev`` over the pods ``prev``
    read (None when it cannot be attributed: no ``prev``, or one of its pods
    missing or reset). See the module doc."""
    marks = {pod: _mark(series) for pod, series in current.items()}
    new = Baseline(pods=marks, counts=by_adapter(current.values()))
    if prev is None or any(pod not in current or _was_reset(m, marks[pod]) for pod, m in prev.pods.items()):
        return new, None
    kept = by_adapter(current[pod] for pod in prev.pods)
    inc = {a: _plus(kept.get(a, Series()), prev.counts.get(a, Series()), -1.0) for a in kept.keys() | prev.counts}
    if any(v < -1e-9 for s in inc.values() for v in (*s.by_status.values(), *s.buckets.values())):
        return new, None  # a reset the marks missed: never count negative requests
    return new, {a: inc[a] for a in sorted(inc)}


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


def stats(counts: Counts, adapters: Iterable[str]) -> Stats:
    """Window statistics of ``adapters`` (summed)."""
    return aggregate({"window": {("", a): s for a, s in counts.items()}}, None, adapters)


def analyze(window: Counts, *, canary: str, stable: Iterable[str], thresholds: AnalysisThresholds) -> Verdict:
    """Verdict for a window's counts: canary vs the stable version(s)."""
    stable = [a for a in stable if a != canary]
    return judge(stats(window, [canary]), stats(window, stable) if stable else None, thresholds)
