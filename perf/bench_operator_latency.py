"""Benchmark: apply-to-all-pods-bound latency of WorkerPools on KWOK nodes.

For each pool: the time from ``kubectl apply`` of the WorkerPool to the
moment every one of its worker Pods has ``spec.nodeName`` (bound by the
kube-scheduler after the operator placed and created it). Baseline in the
same run, on the same cluster: a plain Deployment with the same replica
count and node pinning, i.e. the latency Kubernetes' own controllers give
without loraplane. Goal (issue 4): p99 < 2 s for 100 pools on 200 nodes.

Pools are applied at a steady rate (``--rate`` per second) and, separately,
all at once (burst). Everything runs on this machine: the control plane,
KWOK, the operator and this script share its CPUs, so absolute figures are
pessimistic for a real cluster; the ratio to the Deployment baseline is the
figure to compare.

    .venv/bin/python -m loraplane.perf.bench_operator_latency --nodes 200 --pools 100 --replicas 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kubernetes import client, watch

from loraplane.devcluster.cluster import DevCluster


class BoundWatch:
    """Records when each pod in a namespace is first seen bound."""

    def __init__(self, api_client, ns):
        self.core = client.CoreV1Api(api_client)
        self.ns, self.bound, self.stop = ns, {}, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            try:
                w = watch.Watch()
                for ev in w.stream(self.core.list_namespaced_pod, self.ns, timeout_seconds=30):
                    pod = ev["object"]
                    if pod.spec.node_name and pod.metadata.name not in self.bound:
                        self.bound[pod.metadata.name] = time.monotonic()
                    if self.stop:
                        break
            except Exception as e:  # noqa: BLE001 - an overloaded API server: re-list and go on
                print(f"watch restarted: {e}", file=sys.stderr)
                time.sleep(0.2)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def kubectl_apply(cluster, ns, doc):
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc))


def run_round(cluster, ns, docs, pod_names, rate, watcher):
    applied = {}
    t0 = time.monotonic()
    for i, doc in enumerate(docs):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        applied[doc["metadata"]["name"]] = time.monotonic()
        kubectl_apply(cluster, ns, doc)
    deadline = time.monotonic() + 300
    lat = {}
    while len(lat) < len(docs) and time.monotonic() < deadline:
        for name, t in applied.items():
            names = pod_names(name)
            if name not in lat and all(n in watcher.bound for n in names):
                lat[name] = max(watcher.bound[n] for n in names) - t
        time.sleep(0.05)
    return [lat.get(n, float("inf")) for n in applied]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--pools", type=int, default=100)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--rate", type=float, default=5.0, help="pools applied per second in the paced round")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "bench_operator_latency.json")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lp-bench-"))
    existing = os.environ.get("LORAPLANE_DEVCLUSTER_DIR")
    cluster = DevCluster.attach(Path(existing)) if existing else DevCluster(workdir=work / "cluster").start()
    op = None
    try:
        tag = f"b{int(time.time()) % 100000}"
        label = {"loraplane.io/bench": tag}
        ns = _prepare_cluster(cluster, args.nodes, tag, label)
        store = _ready_base_store(work)
        op = _start_operator(cluster, store, work)
        kubectl_apply(cluster, ns, {"apiVersion": "loraplane.io/v1alpha1", "kind": "BaseModel",
                                    "metadata": {"name": "m"},
                                    "spec": {"storeName": "mistral", "version": "v1",
                                             "store": {"hostPath": {"path": str(store)}}}})
        cluster.kubectl("wait", "--for=condition=Ready", "bm/m", "-n", ns, "--timeout=120s")
        watcher = BoundWatch(cluster.api_client(), ns)
        results = _rounds(cluster, ns, watcher, args, label)
        watcher.stop = True
        _report(results, args)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "nodes", "-l", f"loraplane.io/bench={tag}", "--wait=false", check=False)
    finally:
        if op and op.poll() is None:
            os.killpg(op.pid, signal.SIGTERM)
            op.wait(timeout=20)
        if not existing:
            cluster.stop()
    return 0


def _prepare_cluster(cluster, nodes: int, tag: str, label: dict) -> str:
    """CRDs, ``nodes`` KWOK GPU nodes carrying ``label``, and the bench namespace (returned)."""
    root = Path(__file__).resolve().parents[1]
    cluster.kubectl("apply", "-f", str(root / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    t = time.monotonic()
    for start in range(0, nodes, 50):
        cluster.create_gpu_nodes(min(50, nodes - start), gpus_per_node=2, prefix=f"bench-{tag}-{start}",
                                 labels=label)
    print(f"{nodes} KWOK nodes in {time.monotonic() - t:.1f}s", flush=True)
    ns = f"bench-{tag}"
    cluster.kubectl("create", "namespace", ns)
    time.sleep(2)
    return ns


def _ready_base_store(work: Path) -> Path:
    """A BaseModel that is Ready without a store: the operator is given a summary through --store-root."""
    store = work / "store"
    vd = store / "default/base_models/mistral/versions/v1"
    vd.mkdir(parents=True)
    from loraplane.modelstore.manifest import Manifest, total_checksum
    import datetime as dt
    man = Manifest(kind="base", owner="default", name="mistral", version="v1", checksum=total_checksum({}),
                   files={}, total_size=0, created=dt.datetime.now(dt.timezone.utc), source="bench",
                   parameters=7_250_000_000, variants={"bnb-int8": {"vram_mib": 7680}})
    (vd / "manifest.json").write_text(man.model_dump_json())
    return store


def _start_operator(cluster, store: Path, work: Path) -> subprocess.Popen:
    log = open(work / "operator.log", "w")
    return subprocess.Popen([sys.executable, "-m", "loraplane.cli", "operator", "run", "--kubeconfig",
                             str(cluster.kubeconfig), "--store-root", str(store), "--metrics-port", "0",
                             "--job-pod-annotations", json.dumps({"loraplane.io/kwok-result": "Succeeded"})],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _rounds(cluster, ns: str, watcher: BoundWatch, args, label: dict) -> dict[str, list[float]]:
    """Paced and burst rounds of Deployments (the baseline) and WorkerPools: latencies per round."""
    def pool(name):
        return {"apiVersion": "loraplane.io/v1alpha1", "kind": "WorkerPool", "metadata": {"name": name},
                "spec": {"baseModelRef": "m", "replicas": args.replicas, "variants": ["bnb-int8"],
                         "gpu": {"nodeSelector": label}}}

    def deployment(name):
        sel = {"app": name}
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                "spec": {"replicas": args.replicas, "selector": {"matchLabels": sel},
                         "template": {"metadata": {"labels": sel},
                                      "spec": {"nodeSelector": label,
                                               "containers": [{"name": "w", "image": "worker"}]}}}}

    results = {}
    for round_name, rate in (("paced", args.rate), ("burst", 0.0)):
        for kind, make in (("deployment", deployment), ("workerpool", pool)):
            prefix = f"{kind[:2]}{round_name[0]}"
            docs = [make(f"{prefix}-{i}") for i in range(args.pools)]
            if kind == "workerpool":
                names = lambda n: [f"{n}-{r}" for r in range(args.replicas)]  # noqa: E731
            else:
                def names(n):
                    mine = [p for p in list(watcher.bound)
                            if p.startswith(n + "-") and p.count("-") == n.count("-") + 2]
                    return mine if len(mine) >= args.replicas else [f"{n}-missing"]
            lat = run_round(cluster, ns, docs, names, rate, watcher)
            results[f"{kind} {round_name}"] = lat
            print(f"{kind:10} {round_name:5} ({'%.0f/s' % rate if rate else 'all at once'}): "
                  f"p50 {pct(lat, 50):.3f}s p99 {pct(lat, 99):.3f}s max {max(lat):.3f}s", flush=True)
    return results


def _report(results: dict[str, list[float]], args) -> None:
    print()
    for round_name in ("paced", "burst"):
        d, w = results[f"deployment {round_name}"], results[f"workerpool {round_name}"]
        print(f"{round_name}: workerpool p50 {pct(w, 50) / pct(d, 50):.2f}x, p99 {pct(w, 99) / pct(d, 99):.2f}x "
              f"the Deployment baseline; goal p99 < 2 s: {'MET' if pct(w, 99) < 2 else 'NOT MET'} "
              f"({pct(w, 99):.2f}s)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "nodes": args.nodes, "pools": args.pools, "replicas": args.replicas, "rate": args.rate,
        "summary": {k: {"p50": pct(v, 50), "p99": pct(v, 99), "max": max(v), "mean": statistics.mean(v)}
                    for k, v in results.items()}}, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
