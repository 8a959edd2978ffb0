"""Stand-ins for the worker processes of KWOK pods, keeping the worker's
contract with the operator (loraplane/contracts/desired.py) without torch:

* as soon as a worker pod appears it reports ``ready: false``; once the pool's
  desired ConfigMap exists it "loads" exactly the adapters listed there and
  reports them with ``ready: true`` (a real worker reports ready only after
  loading, which is what load-before-route relies on);
* it serves ``/<pod>/metrics`` with the two series rollout analysis reads:
  every loaded adapter answers 20 requests/s, all 200 and fast, counted from
  when it was loaded, so an automated canary is promoted step by step.

It lives outside the operator process, so it survives every operator kill.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubernetes import client, watch

from loraplane.contracts.desired import DESIRED_KEY, STATUS_ANNOTATION

RATE = 20.0  # requests per second per (pod, adapter)


class Fleet:
    def __init__(self, api_client, namespace: str, pool: str):
        self.core, self.ns, self.pool = client.CoreV1Api(api_client), namespace, pool
        self.loaded_at: dict[str, dict[str, tuple[str, float]]] = {}  # pod -> adapter -> (task, since)
        self.reported: dict[str, str] = {}
        self.desired: dict | None = None  # the last desired document read (the watcher reports with it)
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]

    def __enter__(self) -> "Fleet":
        for target in (self.server.serve_forever, self._watch_pods, self._poll_desired):
            threading.Thread(target=target, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.server.shutdown()

    # --- the worker contract ---------------------------------------------------------------------
    def _desired(self) -> dict | None:
        try:
            cm = self.core.read_namespaced_config_map(f"{self.pool}-desired", self.ns)
        except client.ApiException:
            return None
        return json.loads((cm.data or {}).get(DESIRED_KEY) or "null")

    def _sync(self, pod: dict, desired: dict | None) -> None:
        meta = pod["metadata"]
        name = meta["name"]
        if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        with self.lock:
            have = self.loaded_at.setdefault(name, {})
            want = {a["name"]: a["task"] for a in (desired or {}).get("adapters") or []}
            for a in list(have):
                if a not in want:
                    del have[a]
            for a, task in want.items():
                have.setdefault(a, (task, time.monotonic()))
            report = {"ready": desired is not None, "loaded": sorted(have), "failed": {},
                      "generation": (desired or {}).get("generation", 0),
                      "variant": ((desired or {}).get("base") or {}).get("variant"),
                      "endpoint": f"http://127.0.0.1:{self.port}/{name}"}
            text = json.dumps(report, sort_keys=True)
            if self.reported.get(name) == text and (meta.get("annotations") or {}).get(STATUS_ANNOTATION) == text:
                return
            self.reported[name] = text
        try:
            self.core.patch_namespaced_pod(name, self.ns, {"metadata": {"annotations": {STATUS_ANNOTATION: text}}})
        except client.ApiException:
            pass  # deleted meanwhile

    def _pods(self) -> list[dict]:
        resp = self.core.list_namespaced_pod(self.ns, label_selector=f"loraplane.io/pool={self.pool}",
                                             _preload_content=False)
        return json.loads(resp.data)["items"]

    def _watch_pods(self) -> None:
        """Report on a new pod at once (before KWOK marks it Ready, as a real worker would be)."""
        while not self.stop.is_set():
            try:
                w = watch.Watch()
                for ev in w.stream(self.core.list_namespaced_pod, self.ns, timeout_seconds=300,
                                   label_selector=f"loraplane.io/pool={self.pool}", deserialize=False):
                    obj = ev.get("raw_object") or ev["object"]
                    if ev["type"] in ("ADDED", "MODIFIED") and self.reported.get(obj["metadata"]["name"]) is None:
                        self._sync(obj, self.desired)  # one round trip: the race is with KWOK's Ready
                    if self.stop.is_set():
                        return
            except Exception:  # noqa: BLE001 - a test harness thread: reconnect
                time.sleep(0.2)

    def _poll_desired(self) -> None:
        while not self.stop.is_set():
            try:
                desired = self.desired = self._desired()
                for pod in self._pods():
                    self._sync(pod, desired)
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.25)

    # --- /metrics ----------------------------------------------------------------------------------
    def metrics(self, pod: str) -> str:
        lines = []
        now = time.monotonic()
        with self.lock:
            series = dict(self.loaded_at.get(pod, {}))
        for adapter, (task, since) in sorted(series.items()):
            n = int(RATE * (now - since))
            lab = f'task="{task}",adapter="{adapter}",status="200"'
            lines += [f"loraplane_worker_requests_total{{{lab}}} {n}",
                      f'loraplane_worker_request_duration_seconds_bucket{{{lab},le="0.25"}} {n}',
                      f'loraplane_worker_request_duration_seconds_bucket{{{lab},le="+Inf"}} {n}',
                      f"loraplane_worker_request_duration_seconds_sum{{{lab}}} {n * 0.1}",
                      f"loraplane_worker_request_duration_seconds_count{{{lab}}} {n}"]
        return "\n".join(lines) + "\n"

    def _handler(self):
        fleet = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                pod = self.path.strip("/").split("/")[0]
                body = fleet.metrics(pod).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        return Handler
