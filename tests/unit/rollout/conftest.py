import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

BUCKETS = (0.1, 0.25, 0.5, 1.0)


def worker_exposition(observations, buckets=BUCKETS):
    """Exposition text of real prometheus_client metrics named as the worker
    names them; ``observations`` = [(adapter, status, seconds)], task "t"."""
    r = CollectorRegistry()
    h = Histogram("loraplane_worker_request_duration_seconds", "x", ["task", "adapter", "status"],
                  buckets=buckets, registry=r)
    c = Counter("loraplane_worker_requests_total", "x", ["task", "adapter", "status"], registry=r)
    for adapter, status, secs in observations:
        h.labels("t", adapter, status).observe(secs)
        c.labels("t", adapter, status).inc()
    return generate_latest(r).decode()


@pytest.fixture
def exposition():
    return worker_exposition
