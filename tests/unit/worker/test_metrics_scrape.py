"""A real worker's /metrics (tiny model): the shared label scheme (task and
adapter on every per-request series), hot-swap and base-load failure counters,
and `promtool check metrics` (the built promtool, loraplane/devcluster/prom_build.py)
passes on the scrape."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from loraplane.devcluster import prom_build

pytestmark = pytest.mark.unit


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(prom_build.promtool()), "check", "metrics"], input=text, text=True,
                          capture_output=True, timeout=120)


def test_promtool_check_metrics_flags_a_bad_exposition():
    """The check can fail: a counter without _total and a name with a non-base unit are reported."""
    bad = ("# HELP x_requests Requests\n# TYPE x_requests counter\nx_requests 1\n"
           "# HELP x_size_mebibytes Size\n# TYPE x_size_mebibytes gauge\nx_size_mebibytes 1\n")
    out = promtool_check_metrics(bad)
    assert out.returncode != 0 and "x_requests" in out.stdout + out.stderr


def test_worker_scrape_has_task_and_adapter_labels_and_passes_promtool(worker_store, run, helpers):
    desired, running_worker = helpers.desired, helpers.running_worker

    async def go():
        doc = desired({"synthesizer": [("synth-v1", 100)]}, adapters=[("synth-v1", "synth", "v1", "synthesizer")])
        async with running_worker(worker_store, doc) as (w, c):
            r = await c.post("/v1/completions", json={"model": "synthesizer", "prompt": "hello", "max_tokens": 2})
            assert r.status == 200, await r.text()
            # hot swap: the served name gets content that fails verification
            swap = desired({"synthesizer": [("synth-v1", 100)]}, adapters=[("synth-v1", "broken", "v1", "synthesizer")],
                           generation=2)
            await w.apply(swap)
            return await (await c.get("/metrics")).text()
    text = run(go())
    for series in ("loraplane_worker_time_to_first_token_seconds_count",
                   "loraplane_worker_generated_tokens_total", "loraplane_worker_prompt_tokens_total"):
        line = next(ln for ln in text.splitlines() if ln.startswith(series + "{"))
        assert 'task="synthesizer"' in line and 'adapter="synth-v1"' in line, line
    assert 'loraplane_worker_adapter_swap_failures_total{adapter="synth-v1"} 1.0' in text
    out = promtool_check_metrics(text)
    assert out.returncode == 0, out.stdout + out.stderr


def test_base_load_failure_is_counted(tmp_path, run, helpers):
    async def go():
        async with helpers.running_worker(tmp_path, helpers.desired({})) as (w, c):  # an empty store: no base
            return await (await c.get("/metrics")).text()
    text = run(go())
    line = next(ln for ln in text.splitlines() if ln.startswith("loraplane_worker_base_load_failures_total{"))
    assert line.endswith(" 1.0"), line


def test_an_adapter_no_longer_wanted_leaves_no_series(worker_store, run, helpers):
    desired, running_worker = helpers.desired, helpers.running_worker
    both = [("synth-v1", "synth", "v1", "synthesizer"), ("synth-v2", "synth", "v2", "synthesizer")]

    async def go():
        doc = desired({"synthesizer": [("synth-v1", 50), ("synth-v2", 50)]}, adapters=both)
        async with running_worker(worker_store, doc) as (w, c):
            for model in ("synth-v1", "synth-v2"):
                r = await c.post("/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 1})
                assert r.status == 200, await r.text()
            before = await (await c.get("/metrics")).text()
            await w.apply(desired({"synthesizer": [("synth-v1", 100)]}, adapters=both[:1], generation=2))
            return before, await (await c.get("/metrics")).text()
    before, after = run(go())
    assert 'adapter="synth-v2"' in before
    assert 'adapter="synth-v2"' not in after
    assert 'adapter="synth-v1"' in after  # the one still served keeps its series


def test_a_refused_adapter_that_leaves_keeps_its_failure_count(worker_store, run, helpers):
    """The alerts read the failure counters: they outlive the refused name's removal."""
    desired, running_worker = helpers.desired, helpers.running_worker

    async def go():
        doc = desired({"synthesizer": [("synth-v1", 100)]},
                      adapters=[("synth-v1", "synth", "v1", "synthesizer"), ("bad-v1", "broken", "v1", "synthesizer")])
        async with running_worker(worker_store, doc) as (w, c):
            await w.apply(desired({"synthesizer": [("synth-v1", 100)]},
                                  adapters=[("synth-v1", "synth", "v1", "synthesizer")], generation=2))
            return w.status(), await (await c.get("/metrics")).text()
    st, text = run(go())
    assert "bad-v1" not in st.failed
    assert 'loraplane_worker_adapter_load_failures_total{adapter="bad-v1",reason="AdapterRefused"} 1.0' in text
