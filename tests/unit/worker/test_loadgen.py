import math

from loraplane.perf.loadgen import Result, percentile, summarize


def test_percentile_nearest_rank():
    v = list(range(1, 101))
    assert percentile(v, 50) == 50 and percentile(v, 95) == 95 and percentile(v, 99) == 99 and percentile(v, 100) == 100
    assert percentile([3.0], 99) == 3.0 and math.isnan(percentile([], 50))


def test_summarize_counts_errors_and_tokens():
    rs = [Result(0.1, 200, 10, "a"), Result(0.3, 200, 5, "b"), Result(9.0, 500, 0, None)]
    s = summarize(rs, wall_s=1.0)
    assert s["errors"] == 1 and s["completion_tokens"] == 15 and s["tokens_per_s"] == 15
    assert s["p99_s"] == 0.3  # failed requests do not count in latency
