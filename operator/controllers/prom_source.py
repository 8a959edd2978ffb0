"""Canary analysis counters from Prometheus (``analysis.provider: prometheus``),
the alternative to scraping the workers directly (``scrape.py``).

Why the same Snapshot and not a ratio/p95 query per window: the direct scrape
and this source then feed the very same judgment (``analysis.advance``:
windows accumulated from cumulative counters pass by pass, a pod counted from
its first read, a reset losing one pass; 2xx-only quantiles, 5xx errors,
``minRequests``), so switching provider changes where numbers come from, not
what they mean; and the window survives an operator restart in ``status``.
Prometheus keeps no ``_created`` samples, so a pod's reset mark here is its
request count (a restart shows as a fall). Three instant queries per pass:
``loraplane_worker_requests_total<selector>``,
``loraplane_worker_request_duration_seconds_bucket<selector>`` and ``_sum``,
grouped by the ``pod`` label (the chart's PodMonitor keeps it).

Thin edge: ``snapshot`` does the HTTP; ``from_results`` is pure.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request

from ..core.analysis import DURATION, REQUESTS, Series, Snapshot, is_ok

log = logging.getLogger("loraplane.operator.prom_source")


def render_selector(template: str, namespace: str, pool: str) -> str:
    return template.replace("$namespace", namespace).replace("$pool", pool)


def queries(selector: str) -> dict[str, str]:
    return {"requests": REQUESTS + selector, "buckets": DURATION + "_bucket" + selector,
            "sum": DURATION + "_sum" + selector}


def from_results(results: dict[str, list[dict]]) -> Snapshot:
    """Instant-query results (``data.result`` per query name) => Snapshot."""
    snap: Snapshot = {}
    for kind, vector in results.items():
        for sample in vector:
            labels, value = sample["metric"], float(sample["value"][1])
            if "pod" not in labels or "task" not in labels or "adapter" not in labels:
                continue
            status = labels.get("status", "")
            ser = snap.setdefault(labels["pod"], {}).setdefault((labels["task"], labels["adapter"]), Series())
            if kind == "requests":
                ser.by_status[status] = ser.by_status.get(status, 0.0) + value
            elif kind == "buckets" and is_ok(status):
                le = float(labels["le"])
                ser.buckets[le] = ser.buckets.get(le, 0.0) + value
            elif kind == "sum" and is_ok(status):
                ser.ok_sum += value
    return snap


def _query(address: str, promql: str, timeout: float) -> list[dict]:
    url = address.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = json.loads(r.read())
    if body.get("status") != "success" or body["data"].get("resultType") != "vector":
        raise ValueError(f"prometheus answered {body.get('status')}: {body.get('error', body.get('data'))}")
    return body["data"]["result"]


def snapshot(address: str, selector_template: str, namespace: str, pool: str, timeout: float = 5.0) -> Snapshot:
    """The pool's counters as Prometheus last scraped them; raises when it cannot answer."""
    sel = render_selector(selector_template, namespace, pool)
    return from_results({k: _query(address, q, timeout) for k, q in queries(sel).items()})
