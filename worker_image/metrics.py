"""Prometheus metrics of one worker, with conventional names.

Why a registry per worker: tests create several workers in one process;
a private ``CollectorRegistry`` keeps their series apart. Names follow the
Prometheus conventions (``_seconds``, ``_total``, ``_bytes``). Labels follow
the scheme shared with the operator (docs/operator.md "Metrics"): ``task`` and
``adapter`` (the Adapter name, i.e. the version) here; ``namespace``, ``pool``,
``node`` and ``gpu`` are target labels the chart's PodMonitor adds from the pod.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .engine import GenRequest, StepObserver

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class WorkerMetrics(StepObserver):
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "loraplane_worker_"
        self.request_duration = Histogram(p + "request_duration_seconds", "End-to-end request latency",
                                          ["task", "adapter", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Queue + prefill time to the first token",
                              ["task", "adapter"], buckets=LATENCY_BUCKETS, registry=r)
        self.generated_tokens = Counter(p + "generated_tokens_total", "Tokens generated", ["task", "adapter"],
                                        registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens_total", "Prompt tokens processed", ["task", "adapter"],
                                     registry=r)
        self.requests = Counter(p + "requests_total", "Requests by outcome", ["task", "adapter", "status"], registry=r)
        self.queue_depth_g = Gauge(p + "queue_depth", "Requests waiting to join the batch", registry=r)
        self.batch_size = Histogram(p + "batch_size", "Rows per forward pass", ["phase"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.adapter_load = Histogram(p + "adapter_load_seconds", "Adapter verify + load time",
                                      buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.adapter_load_failures = Counter(p + "adapter_load_failures_total", "Adapters refused or failed",
                                             ["adapter", "reason"], registry=r)
        self.adapter_swap_failures = Counter(p + "adapter_swap_failures_total",
                                             "Hot swaps refused: new content for a served adapter name failed",
                                             ["adapter"], registry=r)
        self.base_load_failures = Counter(p + "base_load_failures_total", "Base model verify/load failures",
                                          ["reason"], registry=r)
        self.adapters_loaded = Gauge(p + "adapters_loaded", "Adapters resident", registry=r)
        self.adapter_resident = Gauge(p + "adapter_resident",
                                      "1 when the adapter is stacked on the device, 0 when evicted to host RAM",
                                      ["adapter"], registry=r)
        self.adapter_evictions = Counter(p + "adapter_evictions_total",
                                         "Evictions to host RAM (maxLoadedAdapters, least recently used)",
                                         ["adapter"], registry=r)
        self.adapter_restores = Counter(p + "adapter_restores_total",
                                        "Evicted adapters brought back for a request", ["adapter"], registry=r)
        self.adapter_restore = Histogram(p + "adapter_restore_seconds",
                                         "Time a request waited for its evicted adapter to come back",
                                         buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                                         registry=r)
        self.kv_budget_tokens = Gauge(p + "kv_budget_tokens", "Tokens of KV cache the admission budget holds",
                                      registry=r)
        self.rejected = Counter(p + "rejected_total", "Requests refused with 429 (the wait queue was full)",
                                registry=r)
        self.adapter_bytes = Gauge(p + "adapter_memory_bytes", "Bytes held by resident adapters", registry=r)
        self.gpu_memory = Gauge(p + "gpu_memory_bytes", "CUDA memory", ["kind"], registry=r)
        self.oom_total = Counter(p + "oom_total", "Out-of-memory events", registry=r)
        self.ready = Gauge(p + "ready", "1 when base and desired adapters are loaded", registry=r)
        self.base_load = Gauge(p + "base_load_seconds", "Time the base model took to verify and load", registry=r)

    def forget_adapter(self, adapter: str) -> None:
        """Remove the per-request series labelled with ``adapter`` (it is no longer served: no stale
        series). The failure counters stay until the worker restarts: they are the evidence the
        alerts read, and a refused adapter usually leaves the desired state right after refusing."""
        for metric in (self.request_duration, self.ttft, self.generated_tokens, self.prompt_tokens, self.requests,
                       self.adapter_resident):
            names = metric._labelnames
            seen = set()
            for family in metric.collect():
                for sample in family.samples:
                    if sample.labels.get("adapter") == adapter:
                        seen.add(tuple(sample.labels[n] for n in names))
            for values in seen:
                try:
                    metric.remove(*values)
                except KeyError:
                    pass

    # StepObserver hooks (engine thread)
    def batch(self, size: int, kind: str) -> None:
        self.batch_size.labels(kind).observe(size)

    def first_token(self, req: GenRequest, seconds: float) -> None:
        self.ttft.labels(req.task, req.metric_label).observe(seconds)
        self.prompt_tokens.labels(req.task, req.metric_label).inc(len(req.prompt_ids))

    def tokens(self, req: GenRequest, n: int) -> None:
        self.generated_tokens.labels(req.task, req.metric_label).inc(n)

    def oom(self) -> None:
        self.oom_total.inc()

    def queue_depth(self, n: int) -> None:
        self.queue_depth_g.set(n)

    def sample_gpu(self) -> None:
        try:
            import torch

            if torch.cuda.is_available():
                self.gpu_memory.labels("allocated").set(torch.cuda.memory_allocated())
                self.gpu_memory.labels("reserved").set(torch.cuda.memory_reserved())
        except Exception:  # noqa: BLE001 - metrics must never break serving
            pass

    def render(self) -> bytes:
        self.sample_gpu()
        return generate_latest(self.registry)
