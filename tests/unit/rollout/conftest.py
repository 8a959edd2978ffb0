import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

BUCKETS = (0.1, 0.25, 0.5, 1.0)


def worker_exposition(observations, buckets=BUCKETS, created=False):
    """Exposition text of real prometheus_client metrics named as the worker
    names them; ``observations`` = [(adapter, status, seconds)], task "t".
    Each call is a new registry, i.e. a new process: its ``_created`` samples
    (a restart mark for the analysis) are left out unless ``created``."""
    r = CollectorRegistry()
    h = Histogram("loraplane_worker_request_duration_seconds", "x", ["task", "adapter", "status"],
                  buckets=buckets, registry=r)
    c = Counter("loraplane_worker_requests_total", "x", ["task", "adapter", "status"], registry=r)
    for adapter, status, secs in observations:
        h.labels("t", adapter, status).observe(secs)
        c.labels("t", adapter, status).inc()
    text = generate_latest(r).decode()
    return text if created else "\n".join(ln for ln in text.splitlines() if "_created" not in ln) + "\n"


@pytest.fixture
def exposition():
    return worker_exposition
