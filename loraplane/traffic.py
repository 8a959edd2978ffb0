"""A small client that sends a task's requests to a pool's workers, standing
in for the pool's Service where nothing routes to pod IPs (KWOK pods whose
containers run as host processes, see ``devcluster/hostrunner.py``).

Why not the Service: a KWOK pod's IP is fake, so kube-proxy-style routing
cannot reach the host process. Each worker advertises its real URL in its
status annotation (``endpoint``); this client reads those, keeps only workers
that report themselves ready (what a readiness probe would do), and
round-robins over them. Every response is recorded with the version that
served it (the worker's ``adapter`` field), the worker, the status and the
latency, plus the adapters that worker had reported loaded (its status
annotation in the API) when the response arrived, so callers can check that
no version served before it was loaded.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from loraplane.contracts.desired import STATUS_ANNOTATION

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Response:
    t: float  # time.time() when the response arrived
    pod: str
    adapter: str | None  # served version; None on an error without one
    status: int
    seconds: float
    loaded: frozenset[str]  # what the pod had reported loaded (in the API) when the response arrived


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def summarize(responses: list[Response]) -> dict:
    """Per served version counts, errors, p50/p95 (seconds) of successes."""
    ok = [r for r in responses if r.status == 200]
    by: dict[str, int] = {}
    for r in ok:
        by[r.adapter or "?"] = by.get(r.adapter or "?", 0) + 1
    lat = [r.seconds for r in ok]
    return {"count": len(responses), "ok": len(ok), "errors": len(responses) - len(ok), "by_version": by,
            "p50": quantile(lat, 0.5), "p95": quantile(lat, 0.95)}


class Traffic:
    """Background load: ``concurrency`` threads, each sending one request at a time."""

    def __init__(self, kubeconfig: str | Path, namespace: str, pool: str, model: str, *, concurrency: int = 2,
                 max_tokens: int = 4, timeout: float = 30.0, pause: float = 0.0):
        from kubernetes import client, config

        self._api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
        self.namespace, self.pool, self.model = namespace, pool, model
        self.concurrency, self.max_tokens, self.timeout, self.pause = concurrency, max_tokens, timeout, pause
        self.responses: list[Response] = []
        self.workers: dict[str, tuple[str, frozenset[str]]] = {}  # pod -> (url, loaded)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._rr = itertools.count()

    # ---- endpoints ---------------------------------------------------------
    def refresh(self) -> dict[str, tuple[str, frozenset[str]]]:
        pods = self._api.list_namespaced_pod(self.namespace, label_selector=f"loraplane.io/pool={self.pool}").items
        found = {}
        for p in pods:
            if p.metadata.deletion_timestamp is not None:
                continue
            raw = (p.metadata.annotations or {}).get(STATUS_ANNOTATION)
            try:
                rep = json.loads(raw) if raw else {}
            except ValueError:
                continue
            if rep.get("ready") and rep.get("endpoint"):
                found[p.metadata.name] = (rep["endpoint"].rstrip("/"), frozenset(rep.get("loaded") or []))
        with self._lock:
            self.workers = found
        return found

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001 - the API server may be busy; keep the last view
                log.debug("endpoint refresh failed: %s", e)
            self._stop.wait(0.3)

    # ---- requests ----------------------------------------------------------
    def send_one(self) -> Response | None:
        with self._lock:
            workers = sorted(self.workers.items())
        if not workers:
            return None
        pod, (url, _) = workers[next(self._rr) % len(workers)]
        body = json.dumps({"model": self.model, "prompt": "summarize: the canary sings", "max_tokens": self.max_tokens,
                           "temperature": 0}).encode()
        req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
        t0 = time.monotonic()
        adapter, status = None, 0
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                status = r.status
                adapter = json.loads(r.read()).get("adapter")
        except urllib.error.HTTPError as e:
            status = e.code
            adapter = e.headers.get("x-loraplane-adapter")
        except OSError:
            status = 0  # connection refused / timeout: the worker went away
        loaded = self._loaded(pod)
        if adapter and status == 200 and adapter not in loaded:
            loaded = self._loaded(pod, fresh=True)  # the cached view may trail the API by one refresh
        resp = Response(time.time(), pod, adapter, status, time.monotonic() - t0, loaded)
        with self._lock:
            self.responses.append(resp)
        return resp

    def _loaded(self, pod: str, fresh: bool = False) -> frozenset[str]:
        if fresh:
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001
                log.debug("endpoint refresh failed: %s", e)
        with self._lock:
            return self.workers.get(pod, ("", frozenset()))[1]

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            if self.send_one() is None or self.pause:
                self._stop.wait(self.pause or 0.2)

    # ---- lifecycle -----------------------------------------------------------
    def start(self) -> "Traffic":
        self._stop.clear()
        self._threads = [threading.Thread(target=self._watch, daemon=True, name="traffic-endpoints")]
        self._threads += [threading.Thread(target=self._send_loop, daemon=True, name=f"traffic-{i}")
                          for i in range(self.concurrency)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 1)

    def __enter__(self) -> "Traffic":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def since(self, t: float) -> list[Response]:
        with self._lock:
            return [r for r in self.responses if r.t >= t]
