"""analysis.provider: prometheus — counters from Prometheus instant queries
(operator/prom_source.py) give the same Snapshot as the direct scrape, and only
a progressing rollout asking for it switches the source."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from loraplane.operator.core import analysis, routing as pool_routing
from loraplane.operator.api.resources import WorkerPoolResource
from loraplane.operator.controllers import prom_source

pytestmark = pytest.mark.unit

TEXT = """# TYPE loraplane_worker_requests_total counter
loraplane_worker_requests_total{task="chat",adapter="v1",status="200"} 40
loraplane_worker_requests_total{task="chat",adapter="v1",status="500"} 2
loraplane_worker_requests_total{task="chat",adapter="v2",status="200"} 10
# TYPE loraplane_worker_request_duration_seconds histogram
loraplane_worker_request_duration_seconds_bucket{task="chat",adapter="v1",status="200",le="0.25"} 30
loraplane_worker_request_duration_seconds_bucket{task="chat",adapter="v1",status="200",le="+Inf"} 40
loraplane_worker_request_duration_seconds_count{task="chat",adapter="v1",status="200"} 40
loraplane_worker_request_duration_seconds_sum{task="chat",adapter="v1",status="200"} 8.5
loraplane_worker_request_duration_seconds_bucket{task="chat",adapter="v1",status="500",le="0.25"} 2
loraplane_worker_request_duration_seconds_bucket{task="chat",adapter="v1",status="500",le="+Inf"} 2
loraplane_worker_request_duration_seconds_count{task="chat",adapter="v1",status="500"} 2
loraplane_worker_request_duration_seconds_sum{task="chat",adapter="v1",status="500"} 0.1
loraplane_worker_request_duration_seconds_bucket{task="chat",adapter="v2",status="200",le="0.25"} 1
loraplane_worker_request_duration_seconds_bucket{task="chat",adapter="v2",status="200",le="+Inf"} 10
loraplane_worker_request_duration_seconds_count{task="chat",adapter="v2",status="200"} 10
loraplane_worker_request_duration_seconds_sum{task="chat",adapter="v2",status="200"} 9.0
"""


def as_prometheus(text: str, pod: str, ns: str = "ml", pool: str = "chat") -> dict[str, list[dict]]:
    """What Prometheus answers for the three queries after scraping ``text`` from ``pod``."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {"requests": [], "buckets": [], "sum": []}
    kinds = {analysis.REQUESTS: "requests", analysis.DURATION + "_bucket": "buckets", analysis.DURATION + "_sum": "sum"}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in kinds:
                labels = {"__name__": s.name, **s.labels, "namespace": ns, "pool": pool, "pod": pod, "job": "w"}
                if "le" in labels:
                    labels["le"] = "+Inf" if labels["le"] == "+Inf" else repr(float(labels["le"]))
                out[kinds[s.name]].append({"metric": labels, "value": [1.0, str(s.value)]})
    return out


def test_prometheus_results_give_the_direct_scrape_snapshot():
    direct = analysis.snapshot({"chat-0": TEXT, "chat-1": TEXT})
    results = {k: as_prometheus(TEXT, "chat-0")[k] + as_prometheus(TEXT, "chat-1")[k] for k in ("requests", "buckets", "sum")}
    assert analysis.dumps(prom_source.from_results(results)) == analysis.dumps(direct)


def test_selector_template_and_queries():
    sel = prom_source.render_selector('{namespace="$namespace",pool="$pool"}', "ml", "chat")
    assert prom_source.queries(sel)["requests"] == 'loraplane_worker_requests_total{namespace="ml",pool="chat"}'
    assert prom_source.queries(sel)["buckets"].startswith("loraplane_worker_request_duration_seconds_bucket{")


def pool(provider: str | None, phase: str = "Progressing") -> WorkerPoolResource:
    """Parsed, as the controller hands pools to the core."""
    an = {} if provider is None else {"provider": provider}
    if provider == "prometheus":
        an["prometheus"] = {"address": "http://prom:9090"}
    return WorkerPoolResource.model_validate({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"baseModelRef": "m", "routes": {"chat": [{"adapter": "v1", "weight": 100}]},
                     "rollouts": {"chat": {"canary": "v2", "analysis": an}}},
            "status": {"rollouts": {"chat": {"task": "chat", "canary": "v2", "stable": [{"adapter": "v1", "weight": 100}],
                                             "baseRoute": [{"adapter": "v1", "weight": 100}], "phase": phase,
                                             "lastTransition": "2026-01-01T00:00:00+00:00"}}}})


def test_only_a_progressing_rollout_with_provider_prometheus_selects_it():
    src = pool_routing.prometheus_source(pool("prometheus"))
    assert src is not None and src.address == "http://prom:9090" and "$pool" in src.selector
    assert pool_routing.prometheus_source(pool(None)) is None
    assert pool_routing.prometheus_source(pool("direct")) is None
    assert pool_routing.prometheus_source(pool("prometheus", phase="Promoted")) is None


def test_provider_prometheus_without_an_address_is_refused():
    from pydantic import ValidationError

    from loraplane.operator.api.rollout_types import AnalysisThresholds
    with pytest.raises(ValidationError):
        AnalysisThresholds.model_validate({"provider": "prometheus", "prometheus": {"address": "prom:9090"}})
    with pytest.raises(ValidationError):
        AnalysisThresholds.model_validate({"provider": "graphite"})


def test_snapshot_queries_the_http_api_and_raises_on_an_error():
    seen = []
    answers = {**as_prometheus(TEXT, "chat-0")}

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            q = parse_qs(urlparse(self.path).query)["query"][0]
            seen.append(q)
            kind = "requests" if "requests_total" in q else "buckets" if "_bucket" in q else "sum"
            body = {"status": "success", "data": {"resultType": "vector", "result": answers[kind]}}
            if "bad" in q:
                body = {"status": "error", "error": "parse error"}
            data = json.dumps(body).encode()
            self.send_response(200 if "bad" not in q else 400)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass
    srv = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        addr = f"http://127.0.0.1:{srv.server_port}"
        snap = prom_source.snapshot(addr, '{namespace="$namespace",pool="$pool"}', "ml", "chat")
        assert analysis.dumps(snap) == analysis.dumps(analysis.snapshot({"chat-0": TEXT}))
        assert seen[0] == 'loraplane_worker_requests_total{namespace="ml",pool="chat"}'
        with pytest.raises(Exception):
            prom_source.snapshot(addr, '{bad="$pool"}', "ml", "chat")
    finally:
        srv.shutdown()
