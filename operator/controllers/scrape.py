"""Scrape ready workers' ``/metrics`` for rollout analysis (thin edge).

Why direct scraping and not Prometheus: it needs nothing installed besides
the workers, and the analysis only needs cumulative counters at two moments
(docs/rollouts.md). Why the endpoint comes from the worker's own status
annotation first: a host process standing in for a KWOK pod (devcluster
``HostRunner``) listens on a loopback port, not on the fake pod IP.

All workers are scraped in parallel with a short timeout, so one hung
worker costs a pass at most ``timeout`` seconds; a worker that fails is left
out of this snapshot. ``analysis.advance`` then counts nothing of that pass
(a pod of the baseline is missing) and, once the worker answers again, counts
it from that read on: none of its history enters an open window.
"""

from __future__ import annotations

import logging
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ..api.observed_types import PodView

log = logging.getLogger("loraplane.operator.scrape")


def endpoint_of(pod: PodView, port: int) -> str | None:
    if pod.report.endpoint:
        return pod.report.endpoint.rstrip("/")
    return f"http://{pod.pod_ip}:{port}" if pod.pod_ip else None


def _get(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=timeout) as r:
        return r.read().decode("utf-8", "replace")


def scrape(targets: dict[str, str], timeout: float = 2.0) -> dict[str, str]:
    """pod name -> base URL  =>  pod name -> exposition text (failures left out)."""
    if not targets:
        return {}
    out = {}
    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as ex:
        futures = {pod: ex.submit(_get, url, timeout) for pod, url in targets.items()}
        for pod, fut in futures.items():
            try:
                out[pod] = fut.result()
            except Exception as e:  # noqa: BLE001 - one worker must not stop the analysis
                log.warning("scrape of %s (%s) failed: %s", pod, targets[pod], e)
    return out
