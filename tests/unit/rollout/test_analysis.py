import math
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from loraplane.operator.core import analysis as an
from loraplane.operator.api.rollout_types import AnalysisThresholds

BUCKETS = (0.1, 0.25, 0.5, 1.0)

# Hand-made exposition: 100 OK requests of v1: 10 <=0.1, 60 in (0.1,0.25], 20 in (0.25,0.5], 10 in (0.5,1].
HAND = """\
# TYPE loraplane_worker_request_duration_seconds histogram
loraplane_worker_request_duration_seconds_bucket{task="t",adapter="v1",status="200",le="0.1"} 10
loraplane_worker_request_duration_seconds_bucket{task="t",adapter="v1",status="200",le="0.25"} 70
loraplane_worker_request_duration_seconds_bucket{task="t",adapter="v1",status="200",le="0.5"} 90
loraplane_worker_request_duration_seconds_bucket{task="t",adapter="v1",status="200",le="1.0"} 100
loraplane_worker_request_duration_seconds_bucket{task="t",adapter="v1",status="200",le="+Inf"} 100
loraplane_worker_request_duration_seconds_count{task="t",adapter="v1",status="200"} 100
loraplane_worker_request_duration_seconds_sum{task="t",adapter="v1",status="200"} 25.0
loraplane_worker_request_duration_seconds_bucket{task="t",adapter="v1",status="500",le="0.1"} 7
loraplane_worker_request_duration_seconds_bucket{task="t",adapter="v1",status="500",le="0.25"} 7
loraplane_worker_request_duration_seconds_bucket{task="t",adapter="v1",status="500",le="0.5"} 7
loraplane_worker_request_duration_seconds_bucket{task="t",adapter="v1",status="500",le="1.0"} 7
loraplane_worker_request_duration_seconds_bucket{task="t",adapter="v1",status="500",le="+Inf"} 7
loraplane_worker_request_duration_seconds_count{task="t",adapter="v1",status="500"} 7
loraplane_worker_request_duration_seconds_sum{task="t",adapter="v1",status="500"} 0.1
# TYPE loraplane_worker_requests_total counter
loraplane_worker_requests_total{task="t",adapter="v1",status="200"} 100
loraplane_worker_requests_total{task="t",adapter="v1",status="500"} 7
loraplane_worker_requests_total{task="t",adapter="v1",status="400"} 3
"""


def test_p95_from_hand_made_buckets():
    snap = an.snapshot({"pod-a": HAND})
    st = an.aggregate(snap, "t", ["v1"])
    assert st.requests == 110 and st.errors == 7 and st.ok == 100
    # rank 95 lies in (0.5, 1.0] holding counts 90..100: 0.5 + 0.5 * (95-90)/10 = 0.75
    assert st.quantile(0.95) == pytest.approx(0.75)
    # rank 50 in (0.1, 0.25] holding 10..70: 0.1 + 0.15 * 40/60 = 0.2
    assert st.quantile(0.5) == pytest.approx(0.2)
    # rank 5 in the first bucket, lower bound 0: 0.1 * 5/10
    assert st.quantile(0.05) == pytest.approx(0.05)
    assert st.error_rate_percent == pytest.approx(100 * 7 / 110)


def test_rank_in_inf_bucket_returns_highest_finite_bound():
    assert an.histogram_quantile(0.99, {0.5: 10, 1.0: 50, math.inf: 100}) == 1.0
    assert an.histogram_quantile(0.5, {1.0: 0, math.inf: 0}) is None
    with pytest.raises(ValueError):
        an.histogram_quantile(0.5, {1.0: 3})


def _worker(observations, created=False):
    """Real prometheus_client metrics as the worker defines them (a new registry per call: its
    ``_created`` samples, a restart mark, are left out unless ``created``)."""
    r = CollectorRegistry()
    h = Histogram("loraplane_worker_request_duration_seconds", "x", ["task", "adapter", "status"],
                  buckets=BUCKETS, registry=r)
    c = Counter("loraplane_worker_requests_total", "x", ["task", "adapter", "status"], registry=r)
    for adapter, status, secs in observations:
        h.labels("t", adapter, status).observe(secs)
        c.labels("t", adapter, status).inc()
    text = generate_latest(r).decode()
    return text if created else "\n".join(ln for ln in text.splitlines() if "_created" not in ln) + "\n"


def test_real_exposition_from_several_workers_sums():
    a = _worker([("v1", "200", 0.05)] * 4 + [("v2", "200", 0.3)] * 2)
    b = _worker([("v1", "200", 0.05)] * 6 + [("v2", "500", 0.01)])
    snap = an.snapshot({"a": a, "b": b})
    v1, v2 = an.aggregate(snap, "t", ["v1"]), an.aggregate(snap, "t", ["v2"])
    assert (v1.requests, v1.errors) == (10, 0)
    assert (v2.requests, v2.errors, v2.ok) == (3, 1, 2)
    assert v2.buckets[math.inf] == 2  # the 500 does not enter latency


def test_advance_counts_increments_of_pods_read_last_pass_and_new_pods_from_their_first_read():
    b0, inc = an.advance(None, an.snapshot({"a": _worker([("v1", "200", 0.05)] * 5)}))
    assert inc is None  # nothing to compare with yet
    now = an.snapshot({"a": _worker([("v1", "200", 0.05)] * 8), "new": _worker([("v1", "500", 0.05)] * 2)})
    b1, inc = an.advance(b0, now)
    assert (an.stats(inc, ["v1"]).requests, an.stats(inc, ["v1"]).errors) == (3, 0)  # "new" joins, adds nothing
    _, inc = an.advance(b1, an.snapshot({"a": _worker([("v1", "200", 0.05)] * 9),
                                         "new": _worker([("v1", "500", 0.05)] * 5)}))
    assert (an.stats(inc, ["v1"]).requests, an.stats(inc, ["v1"]).errors) == (4, 3)
    back = an.Baseline.loads(b1.dumps())
    assert back.dumps() == b1.dumps() and an.Baseline.loads(None) is None


def test_a_restart_is_seen_by_the_counters_created_time_even_when_the_count_grew():
    r = CollectorRegistry()
    c = Counter("loraplane_worker_requests_total", "x", ["task", "adapter", "status"], registry=r)
    c.labels("t", "v1", "200").inc(2)
    b0, _ = an.advance(None, an.snapshot({"a": generate_latest(r).decode()}))
    c.labels("t", "v1", "200").inc(3)
    b1, inc = an.advance(b0, an.snapshot({"a": generate_latest(r).decode()}))
    assert an.stats(inc, ["v1"]).requests == 3  # same process: counted
    time.sleep(0.01)
    restarted = an.snapshot({"a": _worker([("v1", "200", 0.05)] * 9, created=True)})  # a new process, more requests
    assert an.advance(b1, restarted)[1] is None


def test_snapshot_roundtrip_through_status_json():
    snap = an.snapshot({"a": HAND})
    back = an.loads(an.dumps(snap))
    assert an.aggregate(back, "t", ["v1"]) == an.aggregate(snap, "t", ["v1"])
    assert an.loads(None) == {}


TH = AnalysisThresholds(maxP95RegressionPercent=20, maxErrorRatePercent=5, minRequests=10)


def _stats(n_ok, latency, n_err=0):
    return an.aggregate(an.snapshot({"p": _worker([("x", "200", latency)] * n_ok + [("x", "500", 0.01)] * n_err)}),
                        None, ["x"])


def test_verdicts():
    base = _stats(50, 0.05)
    assert an.judge(_stats(5, 0.05), base, TH).kind == "inconclusive"
    v = an.judge(_stats(18, 0.05, n_err=2), base, TH)
    assert v.breach and v.reason == "ErrorRate" and "10.00%" in v.message
    v = an.judge(_stats(20, 0.4), base, TH)
    assert v.breach and v.reason == "LatencyRegression"
    assert an.judge(_stats(20, 0.05), base, TH).healthy
    assert an.judge(_stats(20, 0.05), _stats(3, 0.05), TH).kind == "inconclusive"
    assert an.judge(_stats(20, 0.4), None, TH).healthy  # no stable version: errors only


def test_analyze_compares_canary_with_stable_over_the_window():
    def counts(obs):
        return an.by_adapter([an.parse_worker(_worker(obs))])
    v = an.analyze(counts([("v1", "200", 0.05)] * 30 + [("v2", "200", 0.4)] * 20), canary="v2", stable=["v1"],
                   thresholds=TH)
    assert v.breach and v.reason == "LatencyRegression"
    assert an.analyze(counts([("v1", "200", 0.05)] * 30 + [("v2", "200", 0.05)] * 20), canary="v2",
                      stable=["v1"], thresholds=TH).healthy
